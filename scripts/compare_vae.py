"""Issue 'VAE end to end', done-when 2: the MLP VAE trained 50 epochs by genzoo and by the
PyTorch reference (scripts/train_vae_reference.py), same data, budget and hyperparameters, for
several seeds; both evaluated by importance weighting (k = 1000) on the 997 test digits.

    cargo build --release
    .venv/bin/python scripts/compare_vae.py [--seeds 0 1 2] [--out runs/compare-vae]

Prints a table and a JSON summary. genzoo's evaluator is also run on the PyTorch-trained weights
(loaded by their reference names), so the two estimators can be compared on the same model.
"""
import argparse
import json
import os
import statistics
import sys

from common import GENZOO, ROOT, genzoo_eval, last_json_line, run

parser = argparse.ArgumentParser()
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
parser.add_argument("--out", default=os.path.join(ROOT, "runs", "compare-vae"))
parser.add_argument("--genzoo", default=GENZOO)
parser.add_argument("--epochs", type=int, default=50)
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)


def genzoo_nll(checkpoint, extra=()):
    return genzoo_eval(checkpoint, extra, args.genzoo)


rows = []
for seed in args.seeds:
    run_dir = os.path.join(args.out, f"genzoo-seed{seed}")
    ckpt = os.path.join(run_dir, "checkpoints", "last.safetensors")
    if not os.path.exists(ckpt):
        run([args.genzoo, "train", "--config", "models/vae.toml", "--seed", str(seed),
             "--epochs", str(args.epochs), "--out", run_dir])
    ours = genzoo_nll(ckpt)
    ref_weights = os.path.join(args.out, f"pytorch-seed{seed}.safetensors")
    ref = last_json_line(run([sys.executable, "scripts/train_vae_reference.py", "--seed", str(seed),
                              "--epochs", str(args.epochs), "--save", ref_weights]))
    ref_by_genzoo = genzoo_nll(ref_weights, ["--model", "vae"])
    rows.append({
        "seed": seed,
        "genzoo_nll": ours["nll"],
        "genzoo_neg_elbo": ours["neg_elbo"],
        "pytorch_nll": ref["test_nll_iw"],
        "pytorch_neg_elbo": ref["test_neg_elbo"],
        "pytorch_nll_by_genzoo_eval": ref_by_genzoo["nll"],
    })

print(f"{'seed':>4} {'genzoo NLL':>11} {'PyTorch NLL':>12} {'diff':>7} {'PyTorch NLL (genzoo eval)':>26} {'genzoo -ELBO':>13} {'PyTorch -ELBO':>14}")
for r in rows:
    print(f"{r['seed']:>4} {r['genzoo_nll']:>11.3f} {r['pytorch_nll']:>12.3f} {r['genzoo_nll'] - r['pytorch_nll']:>7.3f} "
          f"{r['pytorch_nll_by_genzoo_eval']:>26.3f} {r['genzoo_neg_elbo']:>13.3f} {r['pytorch_neg_elbo']:>14.3f}")
g = statistics.mean(r["genzoo_nll"] for r in rows)
p = statistics.mean(r["pytorch_nll"] for r in rows)
print(f"mean {g:>11.3f} {p:>12.3f} {g - p:>7.3f}")
print(json.dumps({"rows": rows, "genzoo_mean_nll": g, "pytorch_mean_nll": p, "difference": g - p}))
