"""Fixtures for tests/dcgan_parity.rs: pytorch/examples' DCGAN networks at 32 x 32 (small
widths), one step of its training loop, every tensor the test compares.

    python scripts/make_dcgan_fixtures.py   # writes tests/fixtures/dcgan.safetensors
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from train_gan_reference import discriminator, generator, weights_init

NZ, NGF, NDF, B = 16, 8, 8, 4


def main():
    torch.manual_seed(0)
    net_g, net_d = generator(NZ, NGF, 1), discriminator(NDF, 1)
    net_g.apply(weights_init)
    net_d.apply(weights_init)
    t = {}

    def snapshot(tag):
        for prefix, net in [("generator.main", net_g), ("discriminator.main", net_d)]:
            for k, v in net.state_dict().items():
                if v.dtype.is_floating_point:
                    t[f"{tag}.{prefix}.{k}"] = v.detach().clone().contiguous()

    snapshot("before")
    z = torch.randn(B, NZ)
    real = torch.rand(B, 1, 32, 32) * 2 - 1
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    # One iteration of pytorch/examples dcgan/main.py (train mode throughout).
    fake = net_g(z.view(B, NZ, 1, 1))
    d_real = net_d(real).view(-1)
    d_fake = net_d(fake.detach()).view(-1)
    err_d = F.binary_cross_entropy_with_logits(d_real, torch.ones(B)) + \
        F.binary_cross_entropy_with_logits(d_fake, torch.zeros(B))
    opt_d.zero_grad()
    err_d.backward()
    opt_d.step()
    d_fake_after = net_d(fake).view(-1)
    err_g = F.binary_cross_entropy_with_logits(d_fake_after, torch.ones(B))
    opt_g.zero_grad()
    err_g.backward()
    opt_g.step()
    t.update({"z": z, "real": real, "fake": fake.detach(), "d_real": d_real.detach(),
              "d_fake": d_fake.detach(), "err_d": err_d.detach().reshape(1),
              "d_fake_after": d_fake_after.detach(), "err_g": err_g.detach().reshape(1)})
    snapshot("after")
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "dcgan.safetensors")
    save_file({k: v.contiguous() for k, v in t.items()}, out)
    print(f"wrote {out} ({len(t)} tensors), torch {torch.__version__}")


if __name__ == "__main__":
    main()
