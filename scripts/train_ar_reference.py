"""PyTorch references for the autoregressive family, trained as `genzoo train --config
models/<model>.toml` trains them: the bundled 8,006 training digits (pixel >= 128), batches
shuffled each epoch (last partial batch kept), Adam, loss = summed NLL per image averaged over
the batch; then the exact test NLL on the 997 test digits. Prints one JSON line.

    .venv/bin/python scripts/train_ar_reference.py fvsbn|ar-n|nade|pixelcnn [--epochs N]
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
    def __init__(self, cin, cout, k, mask_type):
        super().__init__(cin, cout, k, padding=k // 2)
        mask = torch.ones_like(self.weight)
        c = k // 2
        mask[:, :, c, c + (mask_type == "B"):] = 0
        mask[:, :, c + 1:] = 0
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


MODELS = {
    "fvsbn": lambda: Fvsbn(),
    "ar-n": lambda: Fvsbn(window=28),
    "nade": lambda: Nade(),
    "pixelcnn": lambda: PixelCnn(),
}


def nll(model, x):
    return F.binary_cross_entropy_with_logits(model(x), x, reduction="none").sum(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
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
    for epoch in range(args.epochs):
        perm = torch.randperm(len(train_x))
        total = 0.0
        for i in range(0, len(train_x), args.batch_size):
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
                      "train_seconds": seconds, "images_per_sec": args.epochs * len(train_x) / seconds}))


if __name__ == "__main__":
    main()
