"""The workloads of BENCHMARKS.md in PyTorch, printing the JSON `genzoo bench --json` prints, so
the two can be compared side by side on one machine (scripts/bench_compare.py alternates them).

    .venv/bin/python scripts/bench_pytorch.py [WORKLOAD ...] [--steps 10] [--threads 2]
"""
import argparse
import json
import resource
import time

import torch

import torch.nn.functional as F

from common import VAE
from train_ar_reference import MODELS, nll
from train_gan_reference import discriminator, generator, weights_init

WORKLOADS = {
    # name: (model factory, batch, lr, kind)
    "dcgan": (lambda: (generator(100, 64, 1), discriminator(64, 1)), 64, 2e-4, "gan"),
    "vae": (VAE, 128, 1e-3, "vae"),
    "pixelcnn": (MODELS["pixelcnn"], 32, 1e-3, "train"),
    "pixelcnn_sample_naive": (MODELS["pixelcnn"], 16, 0.0, "sample"),
    "nade": (MODELS["nade"], 128, 1e-3, "train"),
    "rowlstm": (MODELS["row-lstm"], 16, 1e-3, "train"),
    "diagbilstm": (MODELS["diagonal-bilstm"], 16, 1e-3, "train"),
}


def peak_mib():
    # ru_maxrss is in KiB on Linux; a high-water mark of the whole process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(step, steps):
    """Seconds for `steps` calls of `step` after 2 warm-up calls."""
    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def result(name, threads, batch, steps, seconds):
    return {"workload": name, "device": "cpu", "threads": threads, "batch": batch, "steps": steps,
            "images_per_sec": batch * steps / seconds, "ms_per_step": 1000 * seconds / steps, "peak_mib": peak_mib()}


def run(name, steps, threads):
    factory, batch, lr, kind = WORKLOADS[name]
    torch.manual_seed(0)
    model = factory()
    x = (torch.rand(batch, 784) < 0.5).float()
    if kind == "gan":
        return gan_run(name, model, batch, lr, steps, threads)
    if kind == "sample":
        start = time.perf_counter()
        with torch.no_grad():
            img = torch.zeros(batch, 784)
            for i in range(784):
                p = torch.sigmoid(model(img)[:, i])
                img[:, i] = (torch.rand(batch) < p).float()
        seconds, steps = time.perf_counter() - start, 1
        return result(name, threads, batch, steps, seconds)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)

        def step():
            if kind == "vae":
                rec, kl = model.elbo_terms(x, torch.randn(batch, 20))
                loss = rec.sum() + kl.sum()
            else:
                loss = nll(model, x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        seconds = timed(step, steps)
    return result(name, threads, batch, steps, seconds)


def gan_run(name, nets, batch, lr, steps, threads):
    """One iteration of pytorch/examples dcgan/main.py on random images in [-1, 1]."""
    net_g, net_d = nets
    net_g.apply(weights_init)
    net_d.apply(weights_init)
    opt_g = torch.optim.Adam(net_g.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(net_d.parameters(), lr=lr, betas=(0.5, 0.999))
    real = torch.rand(batch, 1, 32, 32) * 2 - 1
    ones, zeros = torch.ones(batch), torch.zeros(batch)

    def step():
        fake = net_g(torch.randn(batch, 100, 1, 1))
        err_d = F.binary_cross_entropy_with_logits(net_d(real).view(-1), ones) + \
            F.binary_cross_entropy_with_logits(net_d(fake.detach()).view(-1), zeros)
        opt_d.zero_grad()
        err_d.backward()
        opt_d.step()
        fake = net_g(torch.randn(batch, 100, 1, 1))
        err_g = F.binary_cross_entropy_with_logits(net_d(fake).view(-1), ones)
        opt_g.zero_grad()
        err_g.backward()
        opt_g.step()

    return result(name, threads, batch, steps, timed(step, steps))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps([run(w, args.steps, args.threads) for w in args.workloads], indent=2))


if __name__ == "__main__":
    main()
