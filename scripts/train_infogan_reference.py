"""The PyTorch reference of genzoo's InfoGAN run with the paper's networks (`network = "paper"`
in models/infogan.toml): Chen et al. 2016, appendix C table 1, with the module names of
Natsu6767/InfoGAN-PyTorch, trained as genzoo trains it: the 8,006 bundled digits in [-1, 1]
(tanh output), batch 64, Adam beta1 0.5 (D at --lr, G and Q's head at --g-lr: 2e-4 and 1e-3 as
in models/infogan.toml, the paper's rates), non-saturating BCE, Q's head
stepping with G and D's trunk learning only the adversarial loss, L_I = CE(c_cat) +
0.1 MSE(c_cont), a weight average of G (decay 0.999 after genzoo's warm-up) for sampling.
Saves safetensors with genzoo's names, so genzoo's evaluator measures both:

    python scripts/train_infogan_reference.py --epochs 40 --g-lr 1e-3 --out runs/gans/infogan-pytorch.safetensors
    # (--fc-width 1024 for the paper's width; its figures in models/gans.md were measured so,
    # and `genzoo eval` then needs a run file with `fc_width = 1024`)
    genzoo eval runs/gans/infogan-pytorch.safetensors --model infogan --config models/infogan.toml
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
from train_gan_reference import save_prefixed, update_average, weights_init

NOISE, CATEGORIES, CODES = 62, 10, 2
# The paper's fully connected width; models/infogan.toml trains 256 (`fc_width`, --fc-width).
PAPER_FC_WIDTH = 1024


class Generator(nn.Module):
    def __init__(self, width=PAPER_FC_WIDTH):
        super().__init__()
        self.tconv1 = nn.ConvTranspose2d(NOISE + CATEGORIES + CODES, width, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.tconv2 = nn.ConvTranspose2d(width, 128, 7, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(128)
        self.tconv3 = nn.ConvTranspose2d(128, 64, 4, 2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.tconv4 = nn.ConvTranspose2d(64, 1, 4, 2, padding=1, bias=False)

    def forward(self, x):
        x = F.relu(self.bn1(self.tconv1(x)))
        x = F.relu(self.bn2(self.tconv2(x)))
        x = F.relu(self.bn3(self.tconv3(x)))
        return torch.tanh(self.tconv4(x))


class Discriminator(nn.Module):
    """The trunk, the D head and Q's head (genzoo's `discriminator.*`)."""

    def __init__(self, width=PAPER_FC_WIDTH):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 4, 2, 1)
        self.conv2 = nn.Conv2d(64, 128, 4, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(128)
        self.conv3 = nn.Conv2d(128, width, 7, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.d_head = nn.Module()
        self.d_head.conv = nn.Conv2d(width, 1, 1)
        self.q_head = nn.Module()
        self.q_head.conv1 = nn.Conv2d(width, 128, 1, bias=False)
        self.q_head.bn1 = nn.BatchNorm2d(128)
        self.q_head.conv_disc = nn.Conv2d(128, CATEGORIES, 1)
        self.q_head.conv_mu = nn.Conv2d(128, CODES, 1)

    def trunk(self, x):
        x = F.leaky_relu(self.conv1(x), 0.1)
        x = F.leaky_relu(self.bn2(self.conv2(x)), 0.1)
        return F.leaky_relu(self.bn3(self.conv3(x)), 0.1)

    def forward(self, x):
        h = self.trunk(x)
        q = F.leaky_relu(self.q_head.bn1(self.q_head.conv1(h)), 0.1)
        return self.d_head.conv(h).view(-1), self.q_head.conv_disc(q).flatten(1), self.q_head.conv_mu(q).flatten(1)

    def q_parameters(self):
        return self.q_head.parameters()

    def trunk_parameters(self):
        q = set(id(p) for p in self.q_head.parameters())
        return [p for p in self.parameters() if id(p) not in q]


def draw_input(b):
    categories = torch.randint(0, CATEGORIES, (b,))
    codes = torch.rand(b, CODES) * 2 - 1
    z = torch.cat([torch.randn(b, NOISE), F.one_hot(categories, CATEGORIES).float(), codes], 1)
    return z.view(b, -1, 1, 1), categories, codes


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--fc-width", type=int, default=256,
                   help="the two fully connected layers' width (models/infogan.toml: 256; the paper: 1024)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4, help="D's learning rate")
    p.add_argument("--g-lr", type=float, default=None, help="G's and Q's head's learning rate (default: --lr)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--out", required=True)
    p.add_argument("--save-at", default="", help="also save after these epochs, e.g. 20,30 (to OUT with -epNN)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, _ = load_mnist("train")
    x = (torch.from_numpy(images.astype(np.float32) / 255.0) * 2 - 1).unsqueeze(1)  # (n, 1, 28, 28)
    net_g, net_d = Generator(args.fc_width), Discriminator(args.fc_width)
    net_g.apply(weights_init)
    net_d.apply(weights_init)
    average = copy.deepcopy(net_g)
    g_lr = args.lr if args.g_lr is None else args.g_lr
    opt_g = torch.optim.Adam(list(net_g.parameters()) + list(net_d.q_parameters()), lr=g_lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(net_d.trunk_parameters(), lr=args.lr, betas=(0.5, 0.999))
    bce = F.binary_cross_entropy_with_logits
    start, steps = time.time(), 0
    for epoch in range(args.epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), args.batch_size):
            if args.max_steps and steps >= args.max_steps:
                break
            real = x[perm[i:i + args.batch_size]]
            b = len(real)
            z, _, _ = draw_input(b)
            fake = net_g(z)
            d_real, d_fake = net_d(real)[0], net_d(fake.detach())[0]
            loss_d = bce(d_real, torch.ones(b)) + bce(d_fake, torch.zeros(b))
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            z, categories, codes = draw_input(b)
            fake = net_g(z)
            logit, q_cat, q_code = net_d(fake)
            info = F.cross_entropy(q_cat, categories) + 0.1 * F.mse_loss(q_code, codes)
            loss_g = bce(logit, torch.ones(b)) + info
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            update_average(average, net_g, steps, args.ema)
            steps += 1
            if steps % args.log_every == 0:
                print(f"step {steps}: d_real {d_real.mean().item():.3f} d_fake {d_fake.mean().item():.3f} "
                      f"info {info.item():.3f} G mean {fake.mean().item():.3f} ({time.time() - start:.0f} s)", flush=True)
        if str(epoch + 1) in args.save_at.split(","):
            save_prefixed([("generator", net_g), ("discriminator", net_d), ("ema.generator", average)],
                          args.out.replace(".safetensors", f"-ep{epoch + 1:02d}.safetensors"))
        print(f"epoch {epoch + 1}: loss_d {loss_d.item():.3f} loss_g {loss_g.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    seconds = time.time() - start
    save_prefixed([("generator", net_g), ("discriminator", net_d), ("ema.generator", average)], args.out)
    print(json.dumps({"framework": "pytorch", "torch": torch.__version__, "model": "infogan", "network": "paper",
                      "epochs": args.epochs, "lr": args.lr, "g_lr": g_lr, "seed": args.seed, "steps": steps, "train_seconds": seconds,
                      "images_per_sec": steps * args.batch_size / seconds, "out": args.out}))


if __name__ == "__main__":
    main()
