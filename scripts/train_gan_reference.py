"""The PyTorch reference of genzoo's DCGAN and GAN runs (issue 'implicit models', done-when 2):
the pytorch/examples dcgan/main.py networks at 32 x 32 (one stride-2 stage fewer than its 64 x 64),
or with `--model gan` PyTorch-GAN gan.py's MLPs (PyTorch's default initialisation, BatchNorm
eps 0.8 as the script has it) at 28 x 28; the same data (the 8,006 bundled training digits,
28 x 28, centred on a black 32 x 32 frame for dcgan, in [-1, 1]), the same hyperparameters (Adam 2e-4, beta1 0.5, batch 64, BCE with the
non-saturating generator loss, N(0, 0.02) init) and the same sampling rule (an exponential
moving average of G's weights and BatchNorm buffers, decay 0.999 after a warm-up). Saves safetensors with
genzoo's names, so genzoo's own evaluator measures both:

    python scripts/train_gan_reference.py --epochs 5 --ngf 32 --ndf 32 --out runs/dcgan-pytorch.safetensors
    genzoo eval runs/dcgan-pytorch.safetensors --model dcgan --config models/dcgan.toml
    python scripts/train_gan_reference.py --model gan --epochs 200 --out runs/gan-pytorch.safetensors
    genzoo eval runs/gan-pytorch.safetensors --model gan --config models/gan.toml

Both train in genzoo's order (a D step on real and detached G(z), then a G step on fresh noise);
gan.py steps G first on the images it then shows D, a difference of one half-step.
"""
import argparse
import copy
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import load_mnist


def generator(nz, ngf, nc):
    return nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())


def discriminator(ndf, nc):
    return nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False))


def weights_init(m):
    name = m.__class__.__name__
    if name.find("Conv") != -1:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif name.find("BatchNorm") != -1:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def update_average(average, net, steps, ema):
    """genzoo's weight average: decay min(ema, (1 + n) / (10 + n)) at the n-th update, BatchNorm
    buffers included."""
    with torch.no_grad():
        d = min(ema, (1 + steps) / (10 + steps))
        for a, v in zip(average.state_dict().values(), net.state_dict().values()):
            if a.dtype.is_floating_point:
                a.mul_(d).add_(v, alpha=1 - d)


def save_prefixed(nets, out):
    """Saves the floating-point state of each (prefix, module) under genzoo's names."""
    # Imported here: scripts/bench_pytorch.py imports this module on GPU machines that may have
    # PyTorch without safetensors.
    from safetensors.torch import save_file

    tensors = {}
    for prefix, net in nets:
        for k, v in net.state_dict().items():
            if v.dtype.is_floating_point:
                tensors[f"{prefix}.{k}"] = v.contiguous()
    save_file(tensors, out)


def networks(args):
    """(G, D, the noise's shape after the batch, the prefixes of G's and D's saved names)."""
    if args.model == "gan":
        # Imported here: make_gan_fixtures imports train_infogan_reference, which imports this file.
        from make_gan_fixtures import GanDiscriminator, MlpGenerator

        class LogitsDiscriminator(GanDiscriminator):
            """gan.py's Discriminator with its logits alone out (the fixtures' returns a pair)."""

            def forward(self, img):
                return super().forward(img)[0]

        # Their state is already under `model.` (gan.py's `self.model`), as genzoo names it.
        return MlpGenerator(args.nz), LogitsDiscriminator(), (args.nz,), ("generator", "discriminator")
    net_g, net_d = generator(args.nz, args.ngf, 1), discriminator(args.ndf, 1)
    net_g.apply(weights_init)
    net_d.apply(weights_init)
    return net_g, net_d, (args.nz, 1, 1), ("generator.main", "discriminator.main")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["dcgan", "gan"], default="dcgan")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--nz", type=int, default=100)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-at", default="", help="also save after these epochs (comma-separated): OUT with -epN")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, _ = load_mnist("train")
    pad = 2 if args.model == "dcgan" else 0
    x = torch.from_numpy(np.pad(images.astype(np.float32) / 255.0, ((0, 0), (pad, pad), (pad, pad))))
    x = (x * 2 - 1).unsqueeze(1)  # (n, 1, 32, 32) for dcgan, (n, 1, 28, 28) for gan, in [-1, 1]
    net_g, net_d, noise_shape, names = networks(args)
    average = copy.deepcopy(net_g)
    opt_g = torch.optim.Adam(net_g.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(net_d.parameters(), lr=args.lr, betas=(0.5, 0.999))
    bce = F.binary_cross_entropy_with_logits
    start, steps = time.time(), 0
    for epoch in range(args.epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), args.batch_size):
            real = x[perm[i:i + args.batch_size]]
            b = len(real)
            fake = net_g(torch.randn(b, *noise_shape))
            d_real, d_fake = net_d(real).view(-1), net_d(fake.detach()).view(-1)
            loss_d = bce(d_real, torch.ones(b)) + bce(d_fake, torch.zeros(b))
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            fake = net_g(torch.randn(b, *noise_shape))
            loss_g = bce(net_d(fake).view(-1), torch.ones(b))
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            update_average(average, net_g, steps, args.ema)
            steps += 1
        if str(epoch + 1) in args.save_at.split(","):
            save_prefixed([(names[0], net_g), (names[1], net_d), (f"ema.{names[0]}", average)],
                          args.out.replace(".safetensors", f"-ep{epoch + 1}.safetensors"))
        print(f"epoch {epoch + 1}: loss_d {loss_d.item():.3f} loss_g {loss_g.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    seconds = time.time() - start
    save_prefixed([(names[0], net_g), (names[1], net_d), (f"ema.{names[0]}", average)], args.out)
    print(json.dumps({"framework": "pytorch", "torch": torch.__version__, "model": args.model, "epochs": args.epochs,
                      "ngf": args.ngf, "ndf": args.ndf, "steps": steps, "train_seconds": seconds,
                      "images_per_sec": steps * args.batch_size / seconds, "out": args.out}))


if __name__ == "__main__":
    main()
