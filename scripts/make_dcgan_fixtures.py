"""Fixtures for tests/dcgan_parity.rs: pytorch/examples' DCGAN networks at 32 x 32 (small
widths), three iterations of its training loop, every tensor the test compares.

    python scripts/make_dcgan_fixtures.py   # writes tests/fixtures/dcgan.safetensors

Names (float32; losses have shape [1]): before.<net>.<key> (the torch-initialised state) and
after.<net>.<key> (after three iterations), net generator.main or discriminator.main; per
iteration k = 1, 2, 3 its inputs iter<k>.z and iter<k>.real, its outputs iter<k>.fake,
iter<k>.d_real, iter<k>.d_fake, iter<k>.err_d, iter<k>.d_fake_after, iter<k>.err_g, and the
gradient of every parameter from the loss its optimiser steps on, iter<k>.grad.<net>.<key>
(errD for the discriminator, errG for the generator).
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from train_gan_reference import discriminator, generator, weights_init

NZ, NGF, NDF, B, ITERATIONS = 16, 8, 8, 4, 3
NETS = ["generator.main", "discriminator.main"]


def snapshot(t, tag, nets):
    for prefix, net in zip(NETS, nets):
        for k, v in net.state_dict().items():
            if v.dtype.is_floating_point:
                t[f"{tag}.{prefix}.{k}"] = v.detach().clone()


def save_grads(t, tag, prefix, net):
    for k, p in net.named_parameters():
        t[f"{tag}.grad.{prefix}.{k}"] = p.grad.detach().clone()


def iteration(t, k, net_g, net_d, opt_g, opt_d):
    """One iteration of pytorch/examples dcgan/main.py (train mode throughout): D's step on a
    real batch and G(z) detached, then G's step on the same fake batch scored by the new D."""
    tag = f"iter{k}"
    z = torch.randn(B, NZ)
    real = torch.rand(B, 1, 32, 32) * 2 - 1
    fake = net_g(z.view(B, NZ, 1, 1))
    d_real = net_d(real).view(-1)
    d_fake = net_d(fake.detach()).view(-1)
    err_d = F.binary_cross_entropy_with_logits(d_real, torch.ones(B)) + \
        F.binary_cross_entropy_with_logits(d_fake, torch.zeros(B))
    opt_d.zero_grad()
    err_d.backward()
    save_grads(t, tag, NETS[1], net_d)
    opt_d.step()
    d_fake_after = net_d(fake).view(-1)
    err_g = F.binary_cross_entropy_with_logits(d_fake_after, torch.ones(B))
    opt_g.zero_grad()
    err_g.backward()
    save_grads(t, tag, NETS[0], net_g)
    opt_g.step()
    for name, v in [("z", z), ("real", real), ("fake", fake), ("d_real", d_real), ("d_fake", d_fake),
                    ("err_d", err_d), ("d_fake_after", d_fake_after), ("err_g", err_g)]:
        t[f"{tag}.{name}"] = v.detach().clone()


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net_g, net_d = generator(NZ, NGF, 1), discriminator(NDF, 1)
    net_g.apply(weights_init)
    net_d.apply(weights_init)
    t = {}
    snapshot(t, "before", [net_g, net_d])
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for k in range(1, ITERATIONS + 1):
        iteration(t, k, net_g, net_d, opt_g, opt_d)
    snapshot(t, "after", [net_g, net_d])
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "dcgan.safetensors")
    t = {k: (v.reshape(1) if v.dim() == 0 else v).contiguous() for k, v in t.items()}
    save_file(t, out, metadata={"torch": torch.__version__, "script": "scripts/make_dcgan_fixtures.py"})
    print(f"wrote {out} ({len(t)} tensors, {os.path.getsize(out) / 1024:.0f} KiB), torch {torch.__version__}")


if __name__ == "__main__":
    main()
