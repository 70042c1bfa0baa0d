"""Converts a PyTorch checkpoint (.pth / .pt / .ckpt) into a safetensors file genzoo can load by
model name: `genzoo sample OUT.safetensors --model vae`.

    .venv/bin/python scripts/convert_pytorch.py netG_epoch_24.pth out.safetensors [--key avgG]

A file holding a plain state_dict converts as it is; a dict of state_dicts (the PGAN zoo's
`{config, netG, netD, avgG}`, StarGAN's, ...) needs --key to pick one. Keys keep their names;
`module.` prefixes left by DataParallel are stripped. Tensors genzoo's model does not use (old
InstanceNorm running stats, `num_batches_tracked`) are ignored by genzoo with a warning.
"""
import argparse

import torch
from safetensors.torch import save_file

parser = argparse.ArgumentParser()
parser.add_argument("src")
parser.add_argument("dst")
parser.add_argument("--key", help="entry of a dict of state_dicts to convert")
args = parser.parse_args()

obj = torch.load(args.src, map_location="cpu", weights_only=False)
if args.key:
    obj = obj[args.key]
if hasattr(obj, "state_dict"):
    obj = obj.state_dict()
tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
if not tensors:
    keys = ", ".join(map(str, obj.keys())) if isinstance(obj, dict) else type(obj).__name__
    raise SystemExit(f"{args.src}: no tensors at the top level (found: {keys}); pick one with --key")
tensors = {
    (k[len("module."):] if k.startswith("module.") else k): v.detach().float().contiguous()
    if v.is_floating_point() else v.contiguous()
    for k, v in tensors.items()
}
save_file(tensors, args.dst, metadata={"converted_from": args.src})
print(f"wrote {args.dst}: {len(tensors)} tensors, {sum(v.numel() for v in tensors.values())} values")
