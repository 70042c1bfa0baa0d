"""Fixtures for genzoo's Progressive GAN parity test: the networks of progan_reference.py (the zoo's
GNet / DNet names) at small widths, 16 x 16 grey, and one training iteration at two stages: 8 x 8
fading in (alpha 0.3) and 16 x 16 stable. float32, one thread, seeded.

    .venv/bin/python scripts/make_progan_fixtures.py
    # writes tests/fixtures/progan.safetensors

Names (all float32; scalars have shape [1]):
  before.generator.<key>, before.discriminator.<key>: the initial weights (state_dict keys);
  x_full (b, 1, 16, 16) in [-1, 1]; then per stage <s> in fade, stable: <s>.level, <s>.alpha;
  <s>.z, <s>.z2 (latents of the D and the G step), <s>.mix (the penalty's weights);
  <s>.reals (x_full as D sees it), <s>.fake (G(z)), <s>.d_real (D(reals));
  <s>.wasserstein, <s>.gp, <s>.drift, <s>.d_loss, <s>.g_loss;
  <s>.grad.discriminator.<key> (of d_loss), <s>.grad.generator.<key> (of g_loss, after D's step),
  for the layers the stage uses;
  <s>.after.generator.<key>, <s>.after.discriminator.<key>: after one Adam step each
  (lr 1e-3, betas (0, 0.99)), D first, from the `before` weights.
The configuration is in the file's metadata.
"""
import copy
import os

import torch
from safetensors.torch import save_file

from progan_reference import DNet, GNet, critic_terms, generator_loss, reals_at

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def main():
    torch.set_num_threads(1)
    cfg = dict(resolution=16, channels=1, latent_dim=8, depths=[8, 8, 4], minibatch_group=2, batch=4,
               lr=1e-3, beta1=0.0, beta2=0.99, lambda_gp=10.0, drift=0.001, seed=0)
    torch.manual_seed(cfg["seed"])
    G0 = GNet(cfg["latent_dim"], cfg["depths"], cfg["channels"])
    D0 = DNet(cfg["depths"], cfg["channels"], cfg["minibatch_group"])
    t = {}
    for name, net in (("generator", G0), ("discriminator", D0)):
        for k, v in net.state_dict().items():
            t[f"before.{name}.{k}"] = v.clone()
    b = cfg["batch"]
    x_full = torch.rand(b, 1, 16, 16) * 2 - 1
    t["x_full"] = x_full
    for tag, level, alpha in (("fade", 1, 0.3), ("stable", 2, 1.0)):
        G, D = copy.deepcopy(G0), copy.deepcopy(D0)
        g_opt = torch.optim.Adam(G.parameters(), cfg["lr"], (cfg["beta1"], cfg["beta2"]))
        d_opt = torch.optim.Adam(D.parameters(), cfg["lr"], (cfg["beta1"], cfg["beta2"]))
        z, z2 = torch.randn(b, cfg["latent_dim"]), torch.randn(b, cfg["latent_dim"])
        mix = torch.rand(b)
        reals = reals_at(x_full, level, alpha)
        t.update({f"{tag}.level": torch.tensor([float(level)]), f"{tag}.alpha": torch.tensor([alpha]),
                  f"{tag}.z": z, f"{tag}.z2": z2, f"{tag}.mix": mix, f"{tag}.reals": reals,
                  f"{tag}.fake": G(z, level, alpha).detach(), f"{tag}.d_real": D(reals, level, alpha).detach()})
        terms = critic_terms(G, D, reals, z, mix, level, alpha, cfg["lambda_gp"], cfg["drift"])
        d_opt.zero_grad()
        terms["d_loss"].backward()
        for k, p in D.named_parameters():
            if p.grad is not None:  # the layers of other resolutions take no part
                t[f"{tag}.grad.discriminator.{k}"] = p.grad.clone()
        d_opt.step()
        g_loss = generator_loss(G, D, z2, level, alpha)
        g_opt.zero_grad()
        g_loss.backward()
        for k, p in G.named_parameters():
            if p.grad is not None:
                t[f"{tag}.grad.generator.{k}"] = p.grad.clone()
        g_opt.step()
        for k, v in terms.items():
            t[f"{tag}.{k}"] = v.detach().reshape(1)
        t[f"{tag}.g_loss"] = g_loss.detach().reshape(1)
        for name, net in (("generator", G), ("discriminator", D)):
            for k, v in net.state_dict().items():
                t[f"{tag}.after.{name}.{k}"] = v.clone()
    t = {k: v.detach().float().contiguous().clone() for k, v in t.items()}
    path = os.path.join(FIXTURES, "progan.safetensors")
    save_file(t, path, metadata={k: str(v) for k, v in cfg.items()})
    print(f"wrote {path}: {len(t)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
