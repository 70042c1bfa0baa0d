"""Helpers shared by genzoo's PyTorch scripts: the bundled MNIST subset and the reference VAE."""
import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data", "mnist")


def read_idx(path):
    """Reads a (gzipped) IDX file of unsigned bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    rank = raw[3]
    dims = struct.unpack(">" + "I" * rank, raw[4 : 4 + 4 * rank])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def load_mnist(split, data_dir=DATA):
    """Images as uint8 (n, 28, 28) and labels; split is 'train' or 'test'."""
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    return images, labels


def binarize(images):
    """genzoo's standard binarization: pixel >= 128, as float32 (n, 784)."""
    return torch.from_numpy((images >= 128).astype(np.float32).reshape(len(images), -1))


class VAE(nn.Module):
    """pytorch/examples vae/main.py, returning decoder logits instead of sigmoid outputs."""

    def __init__(self, hidden=400, latent=20):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.fc21 = nn.Linear(hidden, latent)
        self.fc22 = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def decode_logits(self, z):
        return self.fc4(F.relu(self.fc3(z)))

    def elbo_terms(self, x, eps):
        """Per-image reconstruction NLL and KL with the given noise."""
        mu, logvar = self.encode(x)
        z = mu + eps * torch.exp(0.5 * logvar)
        logits = self.decode_logits(z)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
        return rec, kl

    @torch.no_grad()
    def iw_log_prob(self, x, k, chunk=100):
        """Importance-weighted log p(x) (Burda et al. 2015) with k samples, per image."""
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        log_ws = []
        done = 0
        while done < k:
            kc = min(chunk, k - done)
            eps = torch.randn(x.shape[0], kc, mu.shape[1])
            z = mu[:, None] + std[:, None] * eps
            log_q = (-0.5 * (eps**2) - 0.5 * logvar[:, None] - 0.5 * np.log(2 * np.pi)).sum(-1)
            log_prior = (-0.5 * z**2 - 0.5 * np.log(2 * np.pi)).sum(-1)
            logits = self.decode_logits(z)
            log_lik = -F.binary_cross_entropy_with_logits(
                logits, x[:, None].expand_as(logits), reduction="none"
            ).sum(-1)
            log_ws.append((log_lik + log_prior - log_q).double())
            done += kc
        log_w = torch.cat(log_ws, 1)
        return torch.logsumexp(log_w, 1) - np.log(k)


# The binary to run: a release build here, or the one a GPU check carries (GENZOO=...).
GENZOO = os.environ.get("GENZOO", os.path.join(ROOT, "target", "release", "genzoo"))


def run(cmd):
    """Runs a command from the repository root, echoing it, and returns its stdout."""
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout


def genzoo_eval(checkpoint, extra=(), genzoo=GENZOO):
    """genzoo's evaluation of a checkpoint: {metric name: nats per image}."""
    report = json.loads(run([genzoo, "eval", checkpoint, "--json", *extra]))
    return {m["name"]: m["nats"] for m in report["metrics"]}


def last_json_line(text):
    return json.loads(text.strip().splitlines()[-1])
