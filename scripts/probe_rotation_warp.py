"""Probe (models/translation.md, issue 'One training interface', CycleGAN digits <-> digits turned a
quarter): can a geometric front end let CycleGAN find the rotation that its generators miss?

junyanz's networks and step (translation_reference.py: ResnetGenerator, NLayerDiscriminator, LSGAN,
pools of 50, cycle weight 10, no identity term, Adam 2e-4 (0.5, 0.999)) at genzoo's run-file sizes
(16 wide, 6 blocks, a 2-layer PatchGAN, batch 8), on the bundled digits: A the even-numbered
training digits, B the odd-numbered ones turned a quarter counter-clockwise. Each generator first
warps its input with a spatial transformer (Jaderberg et al. 2015; PyTorch's affine_grid /
grid_sample, black outside the image), then edits it:

    --warp affine     a localisation network predicts the 2 x 3 map per image, initialised at the
                      identity as the paper does, then the ResNet generator
    --warp rotation   one learned angle per generator (from --angle0 degrees, its own Adam rate
                      --warp-lr), and with --no-generator nothing after it: a pure rotation
    --warp dihedral   a learned blend of the input's 8 symmetries (quarter turns, each also
                      mirrored), softmax weights from equal logits at their own rate --warp-lr

Every 250 steps it prints the error of G_A and G_B against the true translations of 300 test
digits (mean |x - y| with pixels in [0, 1], as `genzoo eval` reports it) and the map it has found.

    python scripts/probe_rotation_warp.py --warp affine --steps 1000
    python scripts/probe_rotation_warp.py --warp rotation --no-generator --warp-lr 1e-2 --angle0 0
    python scripts/probe_rotation_warp.py --warp dihedral --warp-lr 1e-2
"""
import argparse
import math
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import load_mnist
from translation_reference import ImagePool, NLayerDiscriminator, ResnetGenerator, cyclegan_iteration, init_weights


def quarter_turn(x):
    """genzoo's `{ rotate = 90 }`: a quarter turn counter-clockwise."""
    return torch.rot90(x, 1, dims=(-2, -1))


def symmetries(x):
    """The 8 symmetries of the square: the quarter turns, then each mirrored."""
    turns = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return turns + [t.flip(-1) for t in turns]


class Warped(nn.Module):
    """A generator behind a spatial transformer."""

    def __init__(self, warp, generator, side, angle0):
        super().__init__()
        self.warp, self.generator = warp, generator
        if warp == "dihedral":
            self.logits = nn.Parameter(torch.zeros(8))
        elif warp == "rotation":
            self.angle = nn.Parameter(torch.tensor([math.radians(angle0)]))
        else:
            self.loc = nn.Sequential(
                nn.Conv2d(1, 8, 5, 2, 2), nn.ReLU(True), nn.Conv2d(8, 16, 5, 2, 2), nn.ReLU(True), nn.Flatten(),
                nn.Linear(16 * (side // 4) ** 2, 32), nn.ReLU(True), nn.Linear(32, 6))
            # The identity map at the start, as Jaderberg et al. initialise it.
            nn.init.zeros_(self.loc[-1].weight)
            self.loc[-1].bias.data = torch.tensor([1.0, 0, 0, 0, 1, 0])

    def theta(self, x):
        if self.warp == "rotation":
            c, s, zero = torch.cos(self.angle), torch.sin(self.angle), torch.zeros(1)
            rows = torch.stack([torch.cat([c, -s, zero]), torch.cat([s, c, zero])])
            return rows.unsqueeze(0).expand(x.shape[0], 2, 3)
        return self.loc(x).view(-1, 2, 3)

    def forward(self, x):
        if self.warp == "dihedral":
            weights = torch.softmax(self.logits, 0)
            x = sum(w * t for w, t in zip(weights, symmetries(x)))
            return x if self.generator is None else self.generator(x)
        grid = F.affine_grid(self.theta(x), list(x.shape), align_corners=False)
        x = F.grid_sample(x + 1, grid, align_corners=False) - 1
        return x if self.generator is None else self.generator(x)

    def describe(self, x):
        if self.warp == "dihedral":
            return "weights " + str(torch.softmax(self.logits, 0).numpy().round(2).tolist())
        if self.warp == "rotation":
            return f"angle {math.degrees(self.angle.item()):.1f} deg"
        return "theta " + str(self.theta(x).mean(0).numpy().round(2).tolist())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warp", choices=["affine", "rotation", "dihedral"], default="affine")
    p.add_argument("--no-generator", action="store_true", help="the warp alone (with --warp rotation)")
    p.add_argument("--angle0", type=float, default=0.0, help="the angle's start, degrees")
    p.add_argument("--warp-lr", type=float, default=2e-4, help="the angle's or the weights' Adam rate")
    p.add_argument("--n-layers-d", type=int, default=2, help="stride-2 layers of the PatchGAN (3: one output at 28 x 28)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    train, _ = load_mnist("train")
    test, _ = load_mnist("test")
    to_tanh = lambda u8: torch.from_numpy(u8.astype(np.float32) / 127.5 - 1).unsqueeze(1)
    domain_a, domain_b = to_tanh(train[0::2]), quarter_turn(to_tanh(train[1::2]))
    test_a = to_tanh(test[:300])

    def generator():
        if args.no_generator:
            return None
        return init_weights(ResnetGenerator(1, 1, 16, 6))

    nets = {
        "netG_A": Warped(args.warp, generator(), 28, args.angle0),
        "netG_B": Warped(args.warp, generator(), 28, args.angle0),
        "netD_A": init_weights(NLayerDiscriminator(1, 16, args.n_layers_d)),
        "netD_B": init_weights(NLayerDiscriminator(1, 16, args.n_layers_d)),
    }
    g_nets = [nets["netG_A"], nets["netG_B"]]
    own_rate = ("angle", "logits")
    warps = [q for n in g_nets for name, q in n.named_parameters() if name in own_rate]
    rest = [q for n in g_nets for name, q in n.named_parameters() if name not in own_rate]
    groups = [{"params": rest}] if rest else []
    groups += [{"params": warps, "lr": args.warp_lr}] if warps else []
    opt_g = torch.optim.Adam(groups, lr=2e-4, betas=(0.5, 0.999))
    d_params = list(nets["netD_A"].parameters()) + list(nets["netD_B"].parameters())
    opt_d = torch.optim.Adam(d_params, lr=2e-4, betas=(0.5, 0.999))
    pool_a, pool_b = ImagePool(50), ImagePool(50)

    start = time.time()
    for step in range(1, args.steps + 1):
        real_a = domain_a[torch.randint(len(domain_a), (8,))]
        real_b = domain_b[torch.randint(len(domain_b), (8,))]
        cyclegan_iteration(nets, (opt_g, opt_d), real_a, real_b, pool_a, pool_b, lambda_idt=0.0)
        if step % 250 == 0:
            with torch.no_grad():
                error_a2b = ((nets["netG_A"](test_a) - quarter_turn(test_a)).abs().mean() / 2).item()
                error_b2a = ((nets["netG_B"](quarter_turn(test_a)) - test_a).abs().mean() / 2).item()
                maps = [n.describe(test_a[:50]) for n in g_nets]
            print(f"step {step} ({time.time() - start:.0f} s): error A->B {error_a2b:.4f}, B->A {error_b2a:.4f}; "
                  f"G_A {maps[0]}; G_B {maps[1]}", flush=True)


if __name__ == "__main__":
    main()
