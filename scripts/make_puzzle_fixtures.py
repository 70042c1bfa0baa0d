"""Fixtures for genzoo's Puzzle-GAN parity test: hellbell/KeyPatchGan's U-net networks
(`models/networks.py`: PartEncoderU, MaskGeneratorU, ImageGeneratorU, DiscriminatorU) at 32 x 32
grey and small widths, and one iteration of its loop (`models/model.py`): a D step, then a G step
after a fresh forward pass. Weights and inputs drawn in float32, the iteration computed in
float64, everything stored as float32; one thread, seeded.

    .venv/bin/python scripts/make_puzzle_fixtures.py
    # writes tests/fixtures/puzzle.safetensors

Written for Python 3 (the reference's `i/2` indices are `i // 2` here). Two departures, both
genzoo's: D's last sigmoid is left out (the reference feeds it to BCEWithLogitsLoss, a second
sigmoid), and the patches present are weighted 1 / 0 before the sum (the reference always sums
three; the second image here has two). The reference's D also runs on two composites its loss
never reads (generated parts on the real background and the converse), which move only D's
BatchNorm statistics; they are left out, and those statistics are not compared.

Names (float32; scalars [1]):
  before.<net>.<key> for net in part_encoder, mask_generator, generator, discriminator;
  x (b, 1, 32, 32) in [-1, 1]; parts (b, 3, 1, 32, 32) in [-1, 1]; present (b, 3); mask (b, 1, 32,
  32) (the true mask); shuffled (x turned by one); z (b, z_dim) in [-1, 1]; w [1];
  gen_mask, gen_image (the first forward pass); d_loss, d_real, d_fake, d_parts, d_background;
  g_loss, g_adversarial, g_mask_l1, g_appearance_l1;
  grad.<net>.<key>: D's of d_loss, the others' of g_loss;
  after.<net>.<key>: after one Adam step each (2e-4, (0.5, 0.999)).
"""
import os

import torch
from torch import nn
from torch.nn import functional as F
from safetensors.torch import save_file

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


class Opts:
    c_dim = 1
    conv_dim = 4
    part_embed_dim = 8
    z_dim = 4
    output_size = 32
    num_conv_layers = 3


class PartEncoderU(nn.Module):
    def __init__(self, o):
        super().__init__()
        n = o.num_conv_layers
        dims_in = [o.c_dim] + [o.conv_dim * 2 ** min(3, i) for i in range(n)]
        dims_out = [o.conv_dim * 2 ** min(3, i) for i in range(n)] + [o.part_embed_dim]
        layers = []
        for i in range(n + 1):
            k, s, p = (o.output_size // 2 ** n, 1, 0) if i == n else (5, 2, 2)
            actv = nn.LeakyReLU(0.2) if i in (0, n) else nn.Sequential(nn.BatchNorm2d(dims_out[i]), nn.LeakyReLU(0.2))
            layers.append(nn.Sequential(nn.Conv2d(dims_in[i], dims_out[i], k, s, p, bias=True), actv))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        e, out = [], x
        for layer in self.model:
            out = layer(out)
            e.append(out)
        return e


class UpU(nn.Module):
    """MaskGeneratorU (mult 2, out 1, sigmoid) and ImageGeneratorU (mult 3, out c_dim, tanh)."""

    def __init__(self, o, first_in, mult, out, last):
        super().__init__()
        n = o.num_conv_layers
        dims_in = [first_in] + [o.conv_dim * 2 ** min(3, n - 1 - i) * mult for i in range(n)]
        dims_out = [o.conv_dim * 2 ** min(3, n - 1 - i) for i in range(n)] + [out]
        layers = []
        for i in range(n + 1):
            k, s, p = (o.output_size // 2 ** n, 1, 0) if i == 0 else (5, 2, 2)
            actv = last if i == n else nn.Sequential(nn.BatchNorm2d(dims_out[i]), nn.ReLU())
            layers += [nn.ConvTranspose2d(dims_in[i], dims_out[i], k, s, p, bias=True), actv]
        self.model = nn.Sequential(*layers)

    def run(self, out, skips):
        sizes = [4 * 2 ** i for i in range(len(self.model) // 2)]
        m = []
        for i, layer in enumerate(self.model):
            if i % 2 == 0:
                out = layer(out, output_size=[sizes[i // 2], sizes[i // 2]])
            else:
                out = layer(out)
                if i < len(self.model) - 1:
                    out = torch.cat([out, skips(i)], 1)
                m.append(out)
        return m


class DiscriminatorU(nn.Module):
    def __init__(self, o):
        super().__init__()
        n = o.num_conv_layers
        dims_in = [o.c_dim] + [o.conv_dim * 2 ** min(3, i) for i in range(n)]
        dims_out = [o.conv_dim * 2 ** min(3, i) for i in range(n)] + [1]
        layers = []
        for i in range(n + 1):
            k, s, p = (o.output_size // 2 ** n, 1, 0) if i == n else (5, 2, 2)
            layers.append(nn.Conv2d(dims_in[i], dims_out[i], k, s, p, bias=True))
            if i == 0:
                layers.append(nn.LeakyReLU(0.2))
            elif i < n:
                layers.append(nn.Sequential(nn.BatchNorm2d(dims_out[i]), nn.LeakyReLU(0.2)))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x).view(-1)


def bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    o = Opts()
    E = PartEncoderU(o)
    M = UpU(o, o.part_embed_dim, 2, 1, nn.Sigmoid())
    G = UpU(o, o.part_embed_dim + o.z_dim, 3, o.c_dim, nn.Tanh())
    D = DiscriminatorU(o)
    nets = dict(part_encoder=E, mask_generator=M, generator=G, discriminator=D)
    t = {}
    for name, net in nets.items():
        for k, v in net.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                t[f"before.{name}.{k}"] = v.clone()
    b = 4
    x = torch.rand(b, 1, 32, 32) * 2 - 1
    parts = torch.rand(b, 3, 1, 32, 32) * 2 - 1
    present = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    mask = (torch.rand(b, 1, 32, 32) > 0.6).float()
    shuffled = torch.roll(x, -1, 0)
    z = torch.rand(b, o.z_dim) * 2 - 1
    w = 0.5
    t.update(x=x, parts=parts, present=present, mask=mask, shuffled=shuffled, z=z, w=torch.tensor([w]))
    # The iteration itself in float64 (from the same float32 values): torch's float32 sum of the
    # image layer's bias gradient (4,096 terms that mostly cancel) is 2.7e-7 off the exact value,
    # where genzoo's is 1e-9 off; the reference values are exact, then stored as float32.
    for net in nets.values():
        net.double()
    x, parts, present, mask, shuffled, z = [v.double() for v in (x, parts, present, mask, shuffled, z)]

    def forward():
        encoded = [E(parts[:, p]) for p in range(3)]
        levels = [sum(present[:, p].view(-1, 1, 1, 1) * encoded[p][l] for p in range(3)) for l in range(len(encoded[0]))]
        m = M.run(levels[-1], lambda i: levels[-2 - (i - 1) // 2])
        g = G.run(torch.cat([levels[-1], z.view(b, -1, 1, 1)], 1), lambda i: m[(i - 1) // 2])
        return m[-1], g[-1]

    g_opt = torch.optim.Adam(list(G.parameters()) + list(E.parameters()) + list(M.parameters()), 2e-4, (0.5, 0.999))
    d_opt = torch.optim.Adam(D.parameters(), 2e-4, (0.5, 0.999))
    gen_mask, gen_image = forward()
    t.update(gen_mask=gen_mask.detach().clone(), gen_image=gen_image.detach().clone())
    fake = gen_image.detach()
    d_real = bce(D(x), 1.0)
    d_fake = bce(D(fake), 0.0)
    d_parts = bce(D(shuffled * mask + x * (1 - mask)), 0.0)
    d_background = bce(D(x * mask + shuffled * (1 - mask)), 0.0)
    d_loss = d_real + d_fake + d_parts + d_background
    d_opt.zero_grad()
    d_loss.backward()
    for k, p in D.named_parameters():
        t[f"grad.discriminator.{k}"] = p.grad.clone()
    d_opt.step()

    gen_mask, gen_image = forward()
    D(x)  # the reference's unused d_real of backward_G
    g_adversarial = bce(D(gen_image), 1.0)
    g_mask_l1 = F.l1_loss(gen_mask, mask) * w
    g_appearance_l1 = F.l1_loss(gen_image * gen_mask, x * mask) * w
    g_loss = g_adversarial + g_mask_l1 + g_appearance_l1
    g_opt.zero_grad()
    g_loss.backward()
    for name in ("part_encoder", "mask_generator", "generator"):
        for k, p in nets[name].named_parameters():
            t[f"grad.{name}.{k}"] = p.grad.clone()
    g_opt.step()
    for k, v in dict(d_loss=d_loss, d_real=d_real, d_fake=d_fake, d_parts=d_parts, d_background=d_background,
                     g_loss=g_loss, g_adversarial=g_adversarial, g_mask_l1=g_mask_l1,
                     g_appearance_l1=g_appearance_l1).items():
        t[k] = v.reshape(1)
    for name, net in nets.items():
        for k, v in net.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                t[f"after.{name}.{k}"] = v.clone()
    t = {k: v.detach().float().contiguous().clone() for k, v in t.items()}
    path = os.path.join(FIXTURES, "puzzle.safetensors")
    save_file(t, path)
    print(f"wrote {path}: {len(t)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
