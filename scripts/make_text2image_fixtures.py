"""Fixtures for genzoo's text-to-image GAN parity test: aelnouby/Text-to-Image-Synthesis'
`models/gan_cls.py` generator and discriminator (with `utils.py`'s Concat_embed) at 32 x 32 grey
and small widths, one stage fewer than the reference's 64 x 64 as genzoo builds them, and one
GAN-CLS + GAN-INT training iteration: a D step on real / wrong-caption / fake, then a G step on
the batch's embeddings and their interpolations. float32, one thread, seeded.

    .venv/bin/python scripts/make_text2image_fixtures.py
    # writes tests/fixtures/text2image.safetensors

The reference's D ends in a sigmoid read by BCELoss; here it returns the logit and the losses are
BCE with logits, the same function. The text embeddings are random unit vectors: the encoder is
genzoo's own (the reference reads precomputed char-CNN-RNN vectors), so parity covers G and D.

Names (float32; scalars have shape [1]):
  before.generator.<key>, before.discriminator.<key>: the initial state dicts;
  real (b, 1, 32, 32) in [-1, 1]; embed (b, e); partners (b) (the wrong caption's image);
  order (b) (GAN-INT's pairing); z (b, nz); z2 (b, nz) (the interpolations' noise);
  fake (G(embed, z), training mode); d_real_logits, d_wrong_logits, d_fake_logits;
  d_real, d_wrong, d_fake (BCE terms), d_loss, g_loss;
  grad.discriminator.<key> (of d_loss), grad.generator.<key> (of g_loss, after D's step);
  after.generator.<key>, after.discriminator.<key>: after one Adam step each (2e-4, (0.5, 0.999));
  mid.discriminator.<running buffer>: D's BatchNorm statistics after its three passes of the D step
  (the G step's pass then runs D with the stepped weights).
"""
import os

import torch
from torch import nn
from torch.nn import functional as F
from safetensors.torch import save_file

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def weights_init(m):
    name = m.__class__.__name__
    if name.find("Conv") != -1:
        m.weight.data.normal_(0.0, 0.02)
    elif name.find("BatchNorm") != -1:
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.fill_(0)


def projection(embed_dim, projected):
    return nn.Sequential(nn.Linear(embed_dim, projected), nn.BatchNorm1d(projected),
                         nn.LeakyReLU(0.2, inplace=True))


class Generator(nn.Module):
    """gan_cls.generator at 32 x 32: (ngf * 4) x 4 x 4 after the first layer."""

    def __init__(self, nc, nz, embed_dim, projected, ngf):
        super().__init__()
        self.projection = projection(embed_dim, projected)
        self.netG = nn.Sequential(
            nn.ConvTranspose2d(nz + projected, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, embed, z):
        projected = self.projection(embed).unsqueeze(2).unsqueeze(3)
        return self.netG(torch.cat([projected, z.unsqueeze(2).unsqueeze(3)], 1))


class ConcatEmbed(nn.Module):
    def __init__(self, embed_dim, projected):
        super().__init__()
        self.projection = projection(embed_dim, projected)

    def forward(self, inp, embed):
        replicated = self.projection(embed).repeat(4, 4, 1, 1).permute(2, 3, 0, 1)
        return torch.cat([inp, replicated], 1)


class Discriminator(nn.Module):
    """gan_cls.discriminator at 32 x 32, returning the logit (no final sigmoid)."""

    def __init__(self, nc, embed_dim, projected, ndf):
        super().__init__()
        self.netD_1 = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True))
        self.projector = ConcatEmbed(embed_dim, projected)
        self.netD_2 = nn.Sequential(nn.Conv2d(ndf * 4 + projected, 1, 4, 1, 0, bias=False))

    def forward(self, inp, embed):
        return self.netD_2(self.projector(self.netD_1(inp), embed)).view(-1)


def bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def main():
    torch.set_num_threads(1)
    cfg = dict(channels=1, noise_dim=4, embed_dim=16, projected_embed_dim=8, ngf=8, ndf=8, batch=6,
               lr=2e-4, beta1=0.5, beta2=0.999, beta=0.5, seed=0)
    torch.manual_seed(cfg["seed"])
    G = Generator(cfg["channels"], cfg["noise_dim"], cfg["embed_dim"], cfg["projected_embed_dim"], cfg["ngf"])
    D = Discriminator(cfg["channels"], cfg["embed_dim"], cfg["projected_embed_dim"], cfg["ndf"])
    G.apply(weights_init)
    D.apply(weights_init)
    t = {}
    for name, net in (("generator", G), ("discriminator", D)):
        for k, v in net.state_dict().items():
            t[f"before.{name}.{k}"] = v.clone()
    b = cfg["batch"]
    real = torch.rand(b, 1, 32, 32) * 2 - 1
    embed = F.normalize(torch.randn(b, cfg["embed_dim"]), dim=1)
    partners = torch.tensor([2, 2, 3, 4, 5, 0])
    order = torch.randperm(b)
    z, z2 = torch.randn(b, cfg["noise_dim"]), torch.randn(b, cfg["noise_dim"])
    t.update(real=real, embed=embed, partners=partners.float(), order=order.float(), z=z, z2=z2)
    g_opt = torch.optim.Adam(G.parameters(), cfg["lr"], (cfg["beta1"], cfg["beta2"]))
    d_opt = torch.optim.Adam(D.parameters(), cfg["lr"], (cfg["beta1"], cfg["beta2"]))

    # D: the matching-aware loss.
    wrong = embed[partners]
    fake = G(embed, z).detach()
    real_logits, wrong_logits, fake_logits = D(real, embed), D(real, wrong), D(fake, embed)
    d_real, d_wrong, d_fake = bce(real_logits, 1.0), bce(wrong_logits, 0.0), bce(fake_logits, 0.0)
    d_loss = d_real + 0.5 * (d_wrong + d_fake)
    d_opt.zero_grad()
    d_loss.backward()
    for k, p in D.named_parameters():
        t[f"grad.discriminator.{k}"] = p.grad.clone()
    d_opt.step()
    for k, v in D.state_dict().items():
        if "running" in k:
            t[f"mid.discriminator.{k}"] = v.clone()

    # G: the batch's embeddings and their interpolations.
    g_embed = torch.cat([embed, cfg["beta"] * embed + (1 - cfg["beta"]) * embed[order]], 0)
    g_loss = bce(D(G(g_embed, torch.cat([z, z2], 0)), g_embed), 1.0)
    g_opt.zero_grad()
    g_loss.backward()
    for k, p in G.named_parameters():
        t[f"grad.generator.{k}"] = p.grad.clone()
    g_opt.step()

    t.update(fake=fake, d_real_logits=real_logits, d_wrong_logits=wrong_logits, d_fake_logits=fake_logits)
    for k, v in dict(d_real=d_real, d_wrong=d_wrong, d_fake=d_fake, d_loss=d_loss, g_loss=g_loss).items():
        t[k] = v.reshape(1)
    for name, net in (("generator", G), ("discriminator", D)):
        for k, v in net.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                t[f"after.{name}.{k}"] = v.clone()
    t = {k: v.detach().float().contiguous().clone() for k, v in t.items() if not k.endswith("num_batches_tracked")}
    path = os.path.join(FIXTURES, "text2image.safetensors")
    save_file(t, path, metadata={k: str(v) for k, v in cfg.items()})
    print(f"wrote {path}: {len(t)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
