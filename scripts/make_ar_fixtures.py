"""Fixtures for tests/autoregressive_parity.rs: the networks of train_ar_reference.py (FVSBN, AR-N,
NADE, PixelCNN with Bernoulli and with 256-way softmax outputs, Row LSTM, Diagonal BiLSTM) at small
widths, each fed one fixed batch: the weights, the logits, the training loss (NLL summed over the
pixels of an image, in nats, averaged over the batch: train_ar_reference.nll(...).mean()) and the
gradient of every parameter. The networks are built (seeded) and the inputs drawn in float32, the
values genzoo loads; then they run in float64, so the fixture holds the exact results rounded to
float32, and the test measures genzoo's float32 rounding alone (torch's own float32 gradients
stray by 1.1e-5 of their scale from these in PixelCNN, more than the test's tolerance). One thread.

    .venv/bin/python scripts/make_ar_fixtures.py   # writes tests/fixtures/autoregressive.safetensors
    .venv/bin/python scripts/make_ar_fixtures.py --float32-drift   # prints torch's float32 error, writes nothing

Names, each under its model's prefix (fvsbn, ar_n, nade, pixelcnn, pixelcnn_softmax, row_lstm,
diagonal_bilstm): `{m}.param.<name>` and `{m}.grad.<name>` under genzoo's names (the reference's
`residual.{i}` of a PixelRNN is genzoo's `layers.{i}.residual`, the rest are equal); `{m}.x` the
input (b, 1, side, side), binary, or intensities level / 255 for the softmax; `{m}.logits`
(b, levels, side, side); `{m}.loss` shape [1]. The configurations are the metadata's `config`.
"""
import contextlib
import json
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import train_ar_reference as ref
from common import binarize, load_mnist

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                   "autoregressive.safetensors")
LEVELS = 256


@contextlib.contextmanager
def image_side(side):
    """The reference fixes 28 x 28 in module constants that its networks read when built and run;
    FVSBN's (n, n) weight and the softmax's 256 logits per pixel are kept small with a smaller side."""
    saved = ref.D, ref.SIDE
    ref.D, ref.SIDE = side * side, side
    try:
        yield
    finally:
        ref.D, ref.SIDE = saved


def digits(n, side):
    """The first n test digits (pixel >= 128), their central side x side crop: (n, side * side)."""
    images, _ = load_mnist("test")
    lo = (28 - side) // 2
    crop = np.ascontiguousarray(images[:n, lo:lo + side, lo:lo + side])
    return binarize(crop)


def genzoo_name(name):
    """The reference's PixelRNN keeps its residual 1x1 convolutions in their own list."""
    return re.sub(r"^residual\.(\d+)\.", r"layers.\1.residual.", name)


def nonzero_biases(net):
    """Parameters the reference initialises to zero (FVSBN's and NADE's biases) get small random
    values, so that a bias dropped or misplaced shows in the forward pass."""
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.uniform_(-0.1, 0.1)


def bernoulli_case(net, x):
    """Logits and loss of a binary model, as train_ar_reference trains it."""
    logits = net(x)
    return logits, ref.nll(net, x).mean()


def softmax_case(net, x):
    """The reference PixelCNN with a 256-way head: its output (b * 256, side^2) is the (b, 256,
    side, side) map flattened; the loss is the cross entropy summed per image, batch mean."""
    b = x.shape[0]
    logits = net(x).reshape(b, LEVELS, ref.SIDE, ref.SIDE)
    level = torch.round(x * (LEVELS - 1)).long().reshape(b, ref.SIDE, ref.SIDE)
    loss = F.cross_entropy(logits, level, reduction="none").sum((1, 2)).mean()
    return logits, loss


def record(t, prefix, net, x, logits, loss):
    side = ref.SIDE
    for name, p in net.named_parameters():
        t[f"{prefix}.param.{genzoo_name(name)}"] = p.detach().clone()
        t[f"{prefix}.grad.{genzoo_name(name)}"] = p.grad.detach().clone()
    t[f"{prefix}.x"] = x.reshape(x.shape[0], 1, side, side)
    t[f"{prefix}.logits"] = logits.detach().reshape(x.shape[0], -1, side, side)
    t[f"{prefix}.loss"] = loss.detach().reshape(1)


def softmax_pixelcnn(hidden, layers):
    """The reference trains binary digits only; its PixelCNN with the last 1x1 mask-B layer widened
    to 256 outputs is genzoo's softmax head (one colour group, levels as channels)."""
    net = ref.PixelCnn(hidden, layers)
    net.head[1] = ref.MaskedConv2d(hidden, LEVELS, 1, "B")
    return net


# prefix: (side, batch, builder, configuration for the metadata, output)
CASES = {
    "fvsbn": (10, 4, lambda: ref.Fvsbn(), dict(window=0), "bernoulli"),
    "ar_n": (10, 4, lambda: ref.Fvsbn(window=28), dict(window=28), "bernoulli"),
    "nade": (28, 4, lambda: ref.Nade(hidden=8), dict(hidden=8), "bernoulli"),
    "pixelcnn": (28, 4, lambda: ref.PixelCnn(hidden=8, layers=2),
                 dict(hidden=8, layers=2, first_kernel=7, kernel=3, head_hidden=8), "bernoulli"),
    "pixelcnn_softmax": (10, 2, lambda: softmax_pixelcnn(8, 2),
                         dict(hidden=8, layers=2, first_kernel=7, kernel=3, head_hidden=8), "softmax"),
    "row_lstm": (28, 2, lambda: ref.PixelRnn(ref.RowLstmLayer, h=4, layers=2, head_hidden=8),
                 dict(hidden=4, layers=2, first_kernel=7, head_hidden=8), "bernoulli"),
    "diagonal_bilstm": (28, 2, lambda: ref.PixelRnn(ref.DiagonalBiLstmLayer, h=4, layers=2, head_hidden=8),
                        dict(hidden=4, layers=2, first_kernel=7, head_hidden=8), "bernoulli"),
}


def run_case(t, seed, prefix, side, batch, build, output, dtype=torch.float64):
    """Builds one model and its batch in float32, runs forward and backward in dtype into t."""
    torch.manual_seed(seed)
    with image_side(side):
        net = build()
        nonzero_biases(net)
        net.to(dtype)
        if output == "softmax":
            # The float32 intensities genzoo reads (level / 255 rounded to float32).
            x = (torch.randint(0, LEVELS, (batch, side * side)).float() / (LEVELS - 1)).to(dtype)
            logits, loss = softmax_case(net, x)
        else:
            x = digits(batch, side).to(dtype)
            logits, loss = bernoulli_case(net, x)
        loss.backward()
        record(t, prefix, net, x, logits, loss)
    return loss.item()


def all_cases(dtype):
    t = {}
    for seed, (prefix, (side, batch, build, _, output)) in enumerate(CASES.items()):
        run_case(t, seed, prefix, side, batch, build, output, dtype)
    return t


def float32_drift():
    """How far torch's own float32 results stray from the float64 ones, per model, relative to
    each tensor's scale (its largest entry, or 1): why the fixture is computed in float64."""
    exact, single = all_cases(torch.float64), all_cases(torch.float32)
    worst = {}
    for k, v in exact.items():
        if ".param." not in k and not k.endswith(".x"):
            drift = (single[k].double() - v).abs().max().item() / max(v.abs().max().item(), 1.0)
            prefix = k.split(".")[0]
            worst[prefix] = max(worst.get(prefix, 0.0), drift)
    for prefix, drift in worst.items():
        print(f"{prefix}: torch float32 vs float64, worst {drift:.2e} of scale")


def main():
    torch.set_num_threads(1)
    if "--float32-drift" in sys.argv[1:]:
        float32_drift()
        return
    t, meta = {}, {}
    for seed, (prefix, (side, batch, build, cfg, output)) in enumerate(CASES.items()):
        loss = run_case(t, seed, prefix, side, batch, build, output)
        meta[prefix] = dict(image_size=side, batch=batch, output=output, seed=seed, **cfg)
        print(f"{prefix}: loss {loss:.4f}")
    # One metadata entry: safetensors writes several in no fixed order, and the file should not
    # change when it is regenerated.
    save_file({k: v.float().contiguous() for k, v in t.items()}, OUT, metadata={"config": json.dumps(meta)})
    print(f"wrote {OUT} ({len(t)} tensors, {os.path.getsize(OUT) / 1024:.0f} KiB), torch {torch.__version__}")


if __name__ == "__main__":
    main()
