"""PyTorch references for the autoregressive family, trained as `genzoo train --config
models/<model>.toml` trains them: the bundled 8,006 training digits (pixel >= 128), batches
shuffled each epoch (last partial batch kept), Adam, loss = summed NLL per image averaged over
the batch; then the exact test NLL on the 997 test digits. Prints one JSON line.

    .venv/bin/python scripts/train_ar_reference.py MODEL [--epochs N]
        [--batch-size N] [--lr X] [--seed N] [--threads 2]
"""
import argparse
import json
import math
import time

import torch
from torch import nn
from torch.nn import functional as F

from common import binarize, load_mnist

D, SIDE = 784, 28


def uniform_(t, fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(t, -bound, bound)
    return t


class Fvsbn(nn.Module):
    """p(x_i | x_<i) = sigmoid(b_i + sum_j W_ij x_j), j over all earlier pixels or the last N."""

    def __init__(self, window=0):
        super().__init__()
        seen = D if window == 0 else window
        self.weight = nn.Parameter(uniform_(torch.empty(D, D), seen))
        self.bias = nn.Parameter(torch.zeros(D))
        mask = torch.tril(torch.ones(D, D), diagonal=-1)
        if window:
            mask = mask - torch.tril(torch.ones(D, D), diagonal=-window - 1)
        self.register_buffer("mask", mask)

    def forward(self, x):
        return x @ (self.weight * self.mask).t() + self.bias


class Nade(nn.Module):
    """Larochelle & Murray 2011, the O(DH) form: a_d = c + sum_{j<d} W[:, j] x_j."""

    def __init__(self, hidden=500):
        super().__init__()
        self.W = nn.Parameter(uniform_(torch.empty(hidden, D), D))
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter(uniform_(torch.empty(D, hidden), hidden))
        self.b = nn.Parameter(torch.zeros(D))

    def forward(self, x):
        contributions = x[:, :, None] * self.W.t()[None]  # (b, D, H)
        a = torch.cumsum(contributions, 1) - contributions + self.c
        return (torch.sigmoid(a) * self.V[None]).sum(-1) + self.b


class MaskedConv2d(nn.Conv2d):
    """Square k x k, or (kh, kw) given as a tuple; single colour group."""

    def __init__(self, cin, cout, k, mask_type, bias=True):
        kh, kw = (k, k) if isinstance(k, int) else k
        super().__init__(cin, cout, (kh, kw), padding=(kh // 2, kw // 2), bias=bias)
        mask = torch.ones_like(self.weight)
        cy, cx = kh // 2, kw // 2
        mask[:, :, cy, cx + (mask_type == "B"):] = 0
        mask[:, :, cy + 1:] = 0
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCnn(nn.Module):
    """BENCHMARKS.md's pixelcnn: 7x7 mask A, 7 x (3x3 mask B + ReLU), 1x1 + ReLU, 1x1."""

    def __init__(self, hidden=64, layers=7):
        super().__init__()
        self.input_conv = MaskedConv2d(1, hidden, 7, "A")
        self.layers = nn.ModuleList(MaskedConv2d(hidden, hidden, 3, "B") for _ in range(layers))
        self.head = nn.ModuleList([MaskedConv2d(hidden, hidden, 1, "B"), MaskedConv2d(hidden, 1, 1, "B")])

    def forward(self, x):
        h = self.input_conv(x.view(-1, 1, SIDE, SIDE))
        for layer in self.layers:
            h = F.relu(layer(h))
        return self.head[1](F.relu(self.head[0](h))).view(-1, D)


def lstm_update(gates, c_prev, h):
    o, f, i, g = gates.split(h, 1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class RowLstmLayer(nn.Module):
    """Sec. 3.1: masked 1x3 input-to-state for the whole map, 1x3 state-to-state row by row."""

    def __init__(self, h):
        super().__init__()
        self.h = h
        self.input_to_state = MaskedConv2d(2 * h, 4 * h, (1, 3), "B")
        self.state_to_state = nn.Conv2d(h, 4 * h, (1, 3), padding=(0, 1), bias=False)

    def forward(self, x):
        b, _, rows, width = x.shape
        gates_in = self.input_to_state(x)
        hs = x.new_zeros(b, self.h, 1, width)
        c = torch.zeros_like(hs)
        out = []
        for r in range(rows):
            hs, c = lstm_update(gates_in[:, :, r : r + 1] + self.state_to_state(hs), c, self.h)
            out.append(hs)
        return torch.cat(out, 2)


def skew(x):
    rows = x.shape[2]
    return torch.cat([F.pad(x[:, :, r : r + 1], (r, rows - 1 - r)) for r in range(rows)], 2)


def unskew(x, width):
    return torch.cat([x[:, :, r : r + 1, r : r + width] for r in range(x.shape[2])], 2)


class DiagonalLstm(nn.Module):
    """Sec. 3.2, one direction: skew, 1x1 input-to-state, 2x1 state-to-state per column."""

    def __init__(self, h):
        super().__init__()
        self.h = h
        self.input_to_state = MaskedConv2d(2 * h, 4 * h, 1, "B")
        self.state_to_state = nn.Conv2d(h, 4 * h, (2, 1), bias=False)

    def forward(self, x):
        b, _, rows, width = x.shape
        gates_in = self.input_to_state(skew(x))
        hs = x.new_zeros(b, self.h, rows, 1)
        c = torch.zeros_like(hs)
        out = []
        for j in range(gates_in.shape[3]):
            hs, c = lstm_update(gates_in[:, :, :, j : j + 1] + self.state_to_state(F.pad(hs, (0, 0, 1, 0))), c, self.h)
            out.append(hs)
        return unskew(torch.cat(out, 3), width)


class DiagonalBiLstmLayer(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.left, self.right = DiagonalLstm(h), DiagonalLstm(h)

    def forward(self, x):
        rows = x.shape[2]
        r2l = self.right(x.flip(3)).flip(3)
        return self.left(x) + F.pad(r2l, (0, 0, 1, 0))[:, :, :rows]


class PixelRnn(nn.Module):
    """Sec. 3.4: 7x7 mask A to 2h, residual recurrent layers, ReLU, 1x1 + ReLU, 1x1."""

    def __init__(self, layer, h=16, layers=7, head_hidden=32):
        super().__init__()
        self.input_conv = MaskedConv2d(1, 2 * h, 7, "A")
        self.layers = nn.ModuleList(layer(h) for _ in range(layers))
        self.residual = nn.ModuleList(MaskedConv2d(h, 2 * h, 1, "B") for _ in range(layers))
        self.head = nn.ModuleList([MaskedConv2d(2 * h, head_hidden, 1, "B"), MaskedConv2d(head_hidden, 1, 1, "B")])

    def forward(self, x):
        h = self.input_conv(x.view(-1, 1, SIDE, SIDE))
        for layer, residual in zip(self.layers, self.residual):
            h = h + residual(layer(h))
        return self.head[1](F.relu(self.head[0](F.relu(h)))).view(-1, D)


MODELS = {
    "fvsbn": lambda: Fvsbn(),
    "ar-n": lambda: Fvsbn(window=28),
    "nade": lambda: Nade(),
    "pixelcnn": lambda: PixelCnn(),
    "row-lstm": lambda: PixelRnn(RowLstmLayer),
    "diagonal-bilstm": lambda: PixelRnn(DiagonalBiLstmLayer),
}


def nll(model, x):
    return F.binary_cross_entropy_with_logits(model(x), x, reduction="none").sum(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in all (0: no limit)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_x = binarize(load_mnist("train")[0])
    test_x = binarize(load_mnist("test")[0])
    model = MODELS[args.model]()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = time.time()
    steps = 0
    for epoch in range(args.epochs):
        perm = torch.randperm(len(train_x))
        total = 0.0
        for i in range(0, len(train_x), args.batch_size):
            if args.max_steps and steps >= args.max_steps:
                break
            steps += 1
            x = train_x[perm[i : i + args.batch_size]]
            loss = nll(model, x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
        print(f"epoch {epoch + 1}: train NLL {total / len(train_x):.3f} ({time.time() - start:.0f} s)", flush=True)
    seconds = time.time() - start
    with torch.no_grad():
        test = torch.cat([nll(model, test_x[i : i + 100]) for i in range(0, len(test_x), 100)]).mean().item()
    print(json.dumps({"framework": "pytorch", "torch": torch.__version__, "model": args.model, "epochs": args.epochs,
                      "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "test_nll": test,
                      "max_steps": args.max_steps, "train_seconds": seconds,
                      "images_per_sec": min(steps * args.batch_size, args.epochs * len(train_x)) / seconds}))


if __name__ == "__main__":
    main()
