"""The workloads of docs/BENCHMARKS.md in PyTorch, printing the JSON `genzoo bench --json` prints, so
the two can be compared side by side on one machine (scripts/bench_compare.py alternates them).

    .venv/bin/python scripts/bench_pytorch.py [WORKLOAD ...] [--steps 10] [--threads 2] [--device cpu|cuda]
                                              [--dtype f32|bf16|f16]

With --device cuda every tensor and module is made on the GPU (torch.set_default_device) and each timed
step ends with torch.cuda.synchronize(), as `genzoo bench --device cuda` synchronises its device.
With --dtype bf16 or f16 every workload runs under torch.autocast in that precision, as `genzoo bench
--dtype` lowers its convolutions and dense layers (no gradient scaler: the same work, not a recipe).
"""
import argparse
import contextlib
import json
import resource
import time

import torch

import torch.nn.functional as F

from common import VAE
from progan_reference import DNet, GNet, critic_terms, generator_loss
from train_ar_reference import MODELS, nll
from train_gan_reference import discriminator, generator, weights_init
from translation_reference import (Discriminator, Generator, ImagePool, cyclegan_iteration, make_cyclegan,
                                   permuted_targets, stargan_d_step, stargan_g_step)

WORKLOADS = {
    # name: (model factory, batch, lr, kind)
    "dcgan": (lambda: (generator(100, 64, 1), discriminator(64, 1)), 64, 2e-4, "gan"),
    "vae": (VAE, 128, 1e-3, "vae"),
    "pixelcnn": (MODELS["pixelcnn"], 32, 1e-3, "train"),
    "pixelcnn_sample_naive": (MODELS["pixelcnn"], 16, 0.0, "sample"),
    "nade": (MODELS["nade"], 128, 1e-3, "train"),
    "rowlstm": (MODELS["row-lstm"], 16, 1e-3, "train"),
    "diagbilstm": (MODELS["diagonal-bilstm"], 16, 1e-3, "train"),
    # 1x32x32, ResnetGenerator ngf 32 with 6 blocks, PatchGAN ndf 32 n_layers 2, batch 8 pairs.
    "cyclegan": (lambda: make_cyclegan(1, 1, 32, 32, 6, 2, 2e-4, 0.5), 8, 2e-4, "cyclegan"),
    # 3x32x32, c 3; G(conv_dim 32, repeat 3), D(image_size 32, conv_dim 32, repeat 4); batch 16.
    "stargan": (lambda: (Generator(32, 3, 3), Discriminator(32, 32, 3, 4)), 16, 1e-4, "stargan"),
    # The final 32x32x1 stage (alpha 1): latent 128, depths 128, 128, 128, 64 (the zoo's GNet / DNet).
    "progan": (lambda: (GNet(128, [128, 128, 128, 64], 1), DNet([128, 128, 128, 64], 1)), 64, 1e-3, "progan"),
}


def peak_mib():
    # ru_maxrss is in KiB on Linux; a high-water mark of the whole process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


DEVICE = "cpu"


def synchronize():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def timed(step, steps):
    """Seconds for `steps` calls of `step` after 2 warm-up calls, the device's queue drained."""
    for _ in range(2):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return time.perf_counter() - start


def result(name, threads, batch, steps, seconds, images_per_step=None):
    images = batch if images_per_step is None else images_per_step
    return {"workload": name, "device": DEVICE.split(":")[0], "threads": threads, "batch": batch, "steps": steps,
            "images_per_sec": images * steps / seconds, "ms_per_step": 1000 * seconds / steps, "peak_mib": peak_mib()}


def run(name, steps, threads):
    factory, batch, lr, kind = WORKLOADS[name]
    torch.manual_seed(0)
    model = factory()
    x = (torch.rand(batch, 784) < 0.5).float()
    if kind == "gan":
        return gan_run(name, model, batch, lr, steps, threads)
    if kind == "cyclegan":
        return cyclegan_run(name, model, batch, steps, threads)
    if kind == "stargan":
        return stargan_run(name, model, batch, lr, steps, threads)
    if kind == "progan":
        return progan_run(name, model, batch, lr, steps, threads)
    if kind == "sample":
        start = time.perf_counter()
        with torch.no_grad():
            img = torch.zeros(batch, 784)
            for i in range(784):
                p = torch.sigmoid(model(img)[:, i])
                img[:, i] = (torch.rand(batch) < p).float()
        synchronize()
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


def cyclegan_run(name, model, batch, steps, threads):
    """One junyanz optimize_parameters() (both G, then D_A and D_B through ImagePool(50)) on a fixed
    batch of 8 random pairs in [-1, 1]; images/s counts the 8 pairs of a step."""
    nets, opts = model
    real_A = torch.rand(batch, 1, 32, 32) * 2 - 1
    real_B = torch.rand(batch, 1, 32, 32) * 2 - 1
    pool_A, pool_B = ImagePool(50), ImagePool(50)

    def step():
        cyclegan_iteration(nets, opts, real_A, real_B, pool_A, pool_B)

    return result(name, threads, batch, steps, timed(step, steps))


def stargan_run(name, model, batch, lr, steps, threads, n_critic=5, c_dim=3):
    """One generator update of yunjey's solver.py with what precedes it: n_critic D iterations, each
    on a fresh random batch (images in [-1, 1], random binary attributes, targets = the labels
    permuted), then the G step on the last batch. images/s counts the n_critic x batch real images."""
    G, D = model
    g_opt = torch.optim.Adam(G.parameters(), lr, [0.5, 0.999])
    d_opt = torch.optim.Adam(D.parameters(), lr, [0.5, 0.999])

    def step():
        for _ in range(n_critic):
            x_real = torch.rand(batch, 3, 32, 32) * 2 - 1
            label_org = (torch.rand(batch, c_dim) < 0.5).float()
            label_trg = permuted_targets(label_org)
            alpha = torch.rand(batch, 1, 1, 1)
            stargan_d_step(G, D, d_opt, x_real, label_org, label_trg, alpha, c_dim, g_opt=g_opt)
        stargan_g_step(G, D, g_opt, x_real, label_org, label_trg, c_dim, d_opt=d_opt)

    return result(name, threads, batch, steps, timed(step, steps), images_per_step=n_critic * batch)


def progan_run(name, nets, batch, lr, steps, threads, level=3):
    """One D step (WGAN-GP with the drift term) and one G step at the final stage, alpha 1, on random
    images in [-1, 1]; Adam (0, 0.99)."""
    G, D = nets
    g_opt = torch.optim.Adam(G.parameters(), lr, (0.0, 0.99))
    d_opt = torch.optim.Adam(D.parameters(), lr, (0.0, 0.99))
    real = torch.rand(batch, 1, 32, 32) * 2 - 1

    def step():
        terms = critic_terms(G, D, real, torch.randn(batch, 128), torch.rand(batch), level, 1.0)
        d_opt.zero_grad()
        terms["d_loss"].backward()
        d_opt.step()
        g_loss = generator_loss(G, D, torch.randn(batch, 128), level, 1.0)
        g_opt.zero_grad()
        g_loss.backward()
        g_opt.step()

    return result(name, threads, batch, steps, timed(step, steps))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = args.device
    torch.set_default_device(DEVICE)
    lowered = {"bf16": torch.bfloat16, "f16": torch.float16}.get(args.dtype)
    precision = (torch.autocast(device_type=DEVICE.split(":")[0], dtype=lowered) if lowered
                 else contextlib.nullcontext())
    with precision:
        rows = [dict(run(w, args.steps, args.threads), dtype=args.dtype) for w in args.workloads]
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
