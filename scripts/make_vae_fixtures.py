"""Writes tests/fixtures/vae_mlp.safetensors: the pytorch/examples VAE (hidden width 32 instead
of 400, to keep the file small; the test builds genzoo's VAE at the same width) with its
weights under the reference names, inputs, outputs, and three Adam steps with the gradient of
every parameter at the first, for genzoo's parity test (tests/vae_parity.rs).

    python3 -m venv .venv && .venv/bin/pip install torch numpy safetensors
    .venv/bin/python scripts/make_vae_fixtures.py

Names: fc1.weight ... fc4.bias (the initial weights); input.x (8 binarized test digits, flat),
input.eps, input.z; output.mu, output.logvar, output.logits_z, output.reconstruction,
output.kl, output.examples_loss, output.iw_nll_first10 (the initial weights' NLL of the first
10 test digits, k = 5000); per Adam step k = 1, 2, 3 step<k>.eps and step<k>.loss (the
summed negative ELBO); step1.grad.<name>; after_adam.<name> after the third step. Later
steps' gradients are left out: they are taken at weights that already differ from genzoo's by
float32 rounding, which the summed loss amplifies to about 1e-5 of the gradient (the losses and
the weights after the third step check those steps).
"""
import os

import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from common import ROOT, VAE, binarize, load_mnist

HIDDEN, STEPS = 32, 3

torch.set_num_threads(1)
torch.manual_seed(20261125)
model = VAE(hidden=HIDDEN)
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

# Adam steps (lr 1e-3, as pytorch/examples trains) on the summed negative ELBO, a fresh noise
# draw each step.
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for k in range(1, STEPS + 1):
    step_eps = torch.randn(8, 20)
    opt.zero_grad()
    rec, kl = model.elbo_terms(x, step_eps)
    loss = rec.sum() + kl.sum()
    loss.backward()
    tensors[f"step{k}.eps"] = step_eps
    tensors[f"step{k}.loss"] = loss.detach().reshape(1)
    if k == 1:
        for name, p in model.named_parameters():
            tensors[f"step{k}.grad.{name}"] = p.grad.detach().clone()
    opt.step()
for k, v in model.state_dict().items():
    tensors[f"after_adam.{k}"] = v.detach().clone().contiguous()

# The initial weights' importance-weighted NLL of the first 10 test digits (k = 5000, float64),
# drawn last so the tensors above stay as they were: `genzoo eval` of these plain weights must
# land within Monte Carlo noise of it (about 0.05 nats at k = 1000; other initialisations of
# the same network land 1.5 to 3 nats away).
initial = VAE(hidden=HIDDEN).double()
initial.load_state_dict({k: tensors[k].double() for k in initial.state_dict()})
with torch.no_grad():
    first10 = binarize(images[:10]).double()
    tensors["output.iw_nll_first10"] = -initial.iw_log_prob(first10, 5000).mean().float().reshape(1)

out = os.path.join(ROOT, "tests", "fixtures", "vae_mlp.safetensors")
os.makedirs(os.path.dirname(out), exist_ok=True)
save_file(tensors, out, metadata={"torch": torch.__version__, "script": "scripts/make_vae_fixtures.py",
                                  "hidden": str(HIDDEN)})
print(f"wrote {out} ({len(tensors)} tensors, {os.path.getsize(out) / 1024:.0f} KiB)")
