"""Fixtures for genzoo's CycleGAN and StarGAN parity tests: the reference networks of
translation_reference.py at small widths, one training iteration of each, every tensor a test
compares. float32, one thread, seeded.

    .venv/bin/python scripts/make_translation_fixtures.py
    # writes tests/fixtures/cyclegan.safetensors and tests/fixtures/stargan.safetensors

Names (all float32; losses have shape [1]):
  cyclegan: before.<net>.<key>, grad.<net>.<key>, after.<net>.<key> for net in netG_A, netG_B,
    netD_A, netD_B (the networks' state_dict keys); real_A, real_B; fake_B, rec_A, fake_A, rec_B,
    idt_A, idt_B; loss_G_A, loss_G_B, loss_cycle_A, loss_cycle_B, loss_idt_A, loss_idt_B, loss_G,
    loss_D_A, loss_D_B.
  stargan: before./grad./after. generator.<key> and discriminator.<key> (G's InstanceNorm
    running_mean / running_var included, num_batches_tracked left out); x_real, label_org,
    label_trg, alpha; the D step's d_out_src_real, d_out_cls_real, x_fake, d_out_src_fake, x_hat,
    d_out_src_hat, gp_grad, gp_grad_norm, d_loss_real, d_loss_fake, d_loss_cls, d_loss_gp, d_loss;
    the G step's g_x_fake, g_out_src, g_out_cls, g_x_reconst, g_loss_fake, g_loss_rec, g_loss_cls,
    g_loss; single-label (RaFD) losses on the same outputs: ce.label_org, ce.label_trg (class
    indices stored as float32), ce.d_loss_cls, ce.g_loss_cls.
The configuration is in each file's metadata.
"""
import argparse
import os
import random

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from translation_reference import (Discriminator, Generator, ImagePool, cyclegan_iteration, make_cyclegan,
                                   stargan_d_step, stargan_g_step)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def snapshot(t, tag, nets):
    for name, net in nets.items():
        for k, v in net.state_dict().items():
            if v.dtype.is_floating_point:
                t[f"{tag}.{name}.{k}"] = v.detach().clone()


def save(t, path, config):
    t = {k: (v.reshape(1) if v.dim() == 0 else v).detach().float().contiguous() for k, v in t.items()}
    save_file(t, path, metadata={k: str(v) for k, v in config.items()})
    return len(t), os.path.getsize(path)


def cyclegan(args):
    cfg = dict(input_nc=1, output_nc=1, ngf=args.ngf, ndf=args.ndf, n_blocks=2, n_layers_D=2, size=16, batch=2,
               pool_size=0, lr=2e-4, beta1=0.5, lambda_A=10.0, lambda_B=10.0, lambda_idt=0.5, seed=0)
    torch.manual_seed(cfg["seed"])
    random.seed(cfg["seed"])
    nets, opts = make_cyclegan(cfg["input_nc"], cfg["output_nc"], cfg["ngf"], cfg["ndf"], cfg["n_blocks"],
                               cfg["n_layers_D"], cfg["lr"], cfg["beta1"])
    t = {}
    snapshot(t, "before", nets)
    shape = (cfg["batch"], cfg["input_nc"], cfg["size"], cfg["size"])
    real_A = torch.rand(shape) * 2 - 1
    real_B = torch.rand(shape) * 2 - 1
    t.update(real_A=real_A, real_B=real_B)
    t.update(cyclegan_iteration(nets, opts, real_A, real_B, ImagePool(cfg["pool_size"]), ImagePool(cfg["pool_size"]),
                                cfg["lambda_A"], cfg["lambda_B"], cfg["lambda_idt"], keep_grads=True))
    snapshot(t, "after", nets)
    return t, cfg


def stargan(args):
    cfg = dict(c_dim=3, g_conv_dim=args.g_conv_dim, g_repeat_num=2, image_size=16, d_conv_dim=8, d_repeat_num=3,
               batch=4, lr=1e-4, beta1=0.5, beta2=0.999, lambda_cls=1.0, lambda_rec=10.0, lambda_gp=10.0, seed=0)
    torch.manual_seed(cfg["seed"])
    G = Generator(cfg["g_conv_dim"], cfg["c_dim"], cfg["g_repeat_num"])
    D = Discriminator(cfg["image_size"], cfg["d_conv_dim"], cfg["c_dim"], cfg["d_repeat_num"])
    g_opt = torch.optim.Adam(G.parameters(), cfg["lr"], [cfg["beta1"], cfg["beta2"]])
    d_opt = torch.optim.Adam(D.parameters(), cfg["lr"], [cfg["beta1"], cfg["beta2"]])
    nets = {"generator": G, "discriminator": D}
    t = {}
    snapshot(t, "before", nets)
    b, c = cfg["batch"], cfg["c_dim"]
    x_real = torch.rand(b, 3, cfg["image_size"], cfg["image_size"]) * 2 - 1
    label_org = (torch.rand(b, c) < 0.5).float()
    perm = torch.randperm(b)
    label_trg = label_org[perm]
    alpha = torch.rand(b, 1, 1, 1)
    t.update(x_real=x_real, label_org=label_org, label_trg=label_trg, alpha=alpha)
    d = stargan_d_step(G, D, d_opt, x_real, label_org, label_trg, alpha, c, cfg["lambda_cls"], cfg["lambda_gp"],
                       g_opt=g_opt, keep_grads=True)
    g = stargan_g_step(G, D, g_opt, x_real, label_org, label_trg, c, cfg["lambda_cls"], cfg["lambda_rec"],
                       d_opt=d_opt, keep_grads=True)
    t.update(d)
    t.update(g)
    snapshot(t, "after", nets)
    # The single-label (RaFD) classification losses on the same forward outputs.
    # Fixed class indices, chosen so that the permutation changes some targets.
    ce_org = torch.tensor([0, 2, 1, 0])[:b]
    ce_trg = ce_org[perm]
    t["ce.label_org"], t["ce.label_trg"] = ce_org.float(), ce_trg.float()
    t["ce.d_loss_cls"] = F.cross_entropy(d["d_out_cls_real"], ce_org)
    t["ce.g_loss_cls"] = F.cross_entropy(g["g_out_cls"], ce_trg)
    cfg["perm"] = perm.tolist()
    return t, cfg


def main():
    p = argparse.ArgumentParser()
    # Generator widths are half the brief's 8 to keep each file well under 1 MB (the residual blocks at
    # 4x the width dominate); pass --ngf 8 --g-conv-dim 8 for the brief's sizes (about 1.3 and 0.9 MB).
    p.add_argument("--ngf", type=int, default=4)
    p.add_argument("--ndf", type=int, default=8)
    p.add_argument("--g-conv-dim", type=int, default=4)
    p.add_argument("--out-dir", default=FIXTURES)
    args = p.parse_args()
    torch.set_num_threads(1)
    summary = []
    for name, build in [("cyclegan", cyclegan), ("stargan", stargan)]:
        t, cfg = build(args)
        path = os.path.join(args.out_dir, f"{name}.safetensors")
        n, size = save(t, path, cfg)
        loss = t["loss_G"].item() if name == "cyclegan" else t["g_loss"].item()
        summary.append(f"{name}: {n} tensors, {size / 1024:.0f} KiB, {'loss_G' if name == 'cyclegan' else 'g_loss'} "
                       f"{loss:.4f}")
    print(f"wrote {args.out_dir}: " + "; ".join(summary) + f" (torch {torch.__version__})")


if __name__ == "__main__":
    main()
