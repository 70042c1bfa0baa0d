"""Writes tests/fixtures/vae_mlp.safetensors: the pytorch/examples VAE's weights (reference
names), inputs, and its outputs, for genzoo's parity test (tests/vae_parity.rs).

    python3 -m venv .venv && .venv/bin/pip install torch numpy safetensors
    .venv/bin/python scripts/make_vae_fixtures.py
"""
import os

import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from common import ROOT, VAE, binarize, load_mnist

torch.manual_seed(20261125)
model = VAE()
images, _ = load_mnist("test")
x = binarize(images[:8])  # (8, 784) real digits, pixel >= 128
eps = torch.randn(8, 20)
z = torch.randn(5, 20)

tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
tensors["input.x"] = x
tensors["input.eps"] = eps
tensors["input.z"] = z

with torch.no_grad():
    mu, logvar = model.encode(x)
    rec, kl = model.elbo_terms(x, eps)
    tensors["output.mu"] = mu
    tensors["output.logvar"] = logvar
    tensors["output.logits_z"] = model.decode_logits(z)
    tensors["output.reconstruction"] = rec
    tensors["output.kl"] = kl
    # pytorch/examples' own loss on sigmoid outputs, to show the logits form equals it.
    recon_x = torch.sigmoid(model.decode_logits(mu + eps * torch.exp(0.5 * logvar)))
    tensors["output.examples_loss"] = (
        F.binary_cross_entropy(recon_x, x, reduction="sum") + kl.sum()
    ).reshape(1)

# Three Adam steps (lr 1e-3, as pytorch/examples trains) on the summed negative ELBO.
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for _ in range(3):
    opt.zero_grad()
    rec, kl = model.elbo_terms(x, eps)
    (rec.sum() + kl.sum()).backward()
    opt.step()
for k, v in model.state_dict().items():
    tensors[f"after_adam.{k}"] = v.detach().clone().contiguous()

out = os.path.join(ROOT, "tests", "fixtures", "vae_mlp.safetensors")
os.makedirs(os.path.dirname(out), exist_ok=True)
save_file(tensors, out, metadata={"torch": torch.__version__, "script": "scripts/make_vae_fixtures.py"})
print(f"wrote {out} ({len(tensors)} tensors)")
