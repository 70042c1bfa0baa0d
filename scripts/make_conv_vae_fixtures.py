"""Writes tests/fixtures/vae_conv.safetensors for tests/vae_parity.rs: genzoo's convolutional
VAE (crates/vae/src/conv.rs, `arch = "conv"`) written in torch under the names genzoo loads,
at small widths (4 and 8 channels, latent 4) on 8 binarized test digits: its weights, the
encoder's and decoder's outputs, both ELBO terms, the gradient of every parameter of the
summed negative ELBO, and three Adam steps (lr 1e-3, as models/conv-vae.toml trains).

    .venv/bin/python scripts/make_conv_vae_fixtures.py

The network has no external reference: it is the MLP VAE of pytorch/examples (scripts/common.py)
with two stride-2 4x4 convolutions (and their mirror image) around the linear heads. Names:
enc.0, enc.2, fc_mu, fc_logvar, fc_dec, dec.0, dec.2 (the initial weights); input.x (8, 1, 28,
28), input.eps, input.z; output.mu, output.logvar, output.logits_z, output.reconstruction,
output.kl; step<k>.eps and step<k>.loss for k = 1, 2, 3; step1.grad.<name>; after_adam.<name>
after the third step (later steps' gradients left out, as in make_vae_fixtures.py).
"""
import os

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from common import ROOT, VAE, binarize, load_mnist

WIDTHS, LATENT, SIZE, STEPS = (4, 8), 4, 28, 3


class ConvVAE(VAE):
    """genzoo's conv VAE: the reference VAE's ELBO with convolutional encoder and decoder."""

    def __init__(self, widths=WIDTHS, latent=LATENT, size=SIZE, channels=1):
        nn.Module.__init__(self)
        self.shape = (widths[1], size // 4, size // 4)
        flat = widths[1] * (size // 4) ** 2
        self.enc = nn.Sequential(nn.Conv2d(channels, widths[0], 4, 2, 1), nn.ReLU(),
                                 nn.Conv2d(widths[0], widths[1], 4, 2, 1), nn.ReLU())
        self.fc_mu = nn.Linear(flat, latent)
        self.fc_logvar = nn.Linear(flat, latent)
        self.fc_dec = nn.Linear(latent, flat)
        self.dec = nn.Sequential(nn.ConvTranspose2d(widths[1], widths[0], 4, 2, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(widths[0], channels, 4, 2, 1))

    def encode(self, x):
        h = self.enc(x).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z):
        h = F.relu(self.fc_dec(z)).view(len(z), *self.shape)
        return self.dec(h).flatten(1)

    def elbo_terms(self, x, eps):
        """VAE.elbo_terms on flat targets."""
        mu, logvar = self.encode(x)
        logits = self.decode_logits(mu + eps * torch.exp(0.5 * logvar))
        rec = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(1)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
        return rec, kl


def main():
    torch.set_num_threads(1)
    torch.manual_seed(20261130)
    model = ConvVAE()
    x = binarize(load_mnist("test")[0][:8]).view(8, 1, SIZE, SIZE)
    eps, z = torch.randn(8, LATENT), torch.randn(5, LATENT)
    t = {k: v.detach().clone() for k, v in model.state_dict().items()}
    t.update({"input.x": x, "input.eps": eps, "input.z": z})
    with torch.no_grad():
        mu, logvar = model.encode(x)
        rec, kl = model.elbo_terms(x, eps)
        t.update({"output.mu": mu, "output.logvar": logvar, "output.logits_z": model.decode_logits(z),
                  "output.reconstruction": rec, "output.kl": kl})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for k in range(1, STEPS + 1):
        step_eps = torch.randn(8, LATENT)
        opt.zero_grad()
        rec, kl = model.elbo_terms(x, step_eps)
        loss = rec.sum() + kl.sum()
        loss.backward()
        t[f"step{k}.eps"], t[f"step{k}.loss"] = step_eps, loss.detach().reshape(1)
        if k == 1:
            t.update({f"step1.grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters()})
        opt.step()
    t.update({f"after_adam.{k}": v.detach().clone() for k, v in model.state_dict().items()})
    out = os.path.join(ROOT, "tests", "fixtures", "vae_conv.safetensors")
    save_file({k: v.contiguous() for k, v in t.items()}, out,
              metadata={"torch": torch.__version__, "script": "scripts/make_conv_vae_fixtures.py",
                        "conv_channels": str(list(WIDTHS)), "latent_dim": str(LATENT)})
    print(f"wrote {out} ({len(t)} tensors, {os.path.getsize(out) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
