"""Issue 'autoregressive family', done-when 1-2: each model trained by genzoo with its run file
(models/<model>.toml) and by the PyTorch reference (scripts/train_ar_reference.py) with the same
budget, both measured by the exact test NLL on the 997 bundled test digits (pixel >= 128).

    cargo build --release
    .venv/bin/python scripts/compare_ar.py [MODEL ...] [--out runs/compare-ar]

MODEL: fvsbn, ar-n, nade, pixelcnn, row-lstm, diagonal-bilstm (default: all six, the README's
figures).
"""
import argparse
import json
import os
import sys
import tomllib

from common import GENZOO, ROOT, genzoo_eval, last_json_line, run

parser = argparse.ArgumentParser()
parser.add_argument("models", nargs="*",
                    default=["fvsbn", "ar-n", "nade", "pixelcnn", "row-lstm", "diagonal-bilstm"])
parser.add_argument("--out", default=os.path.join(ROOT, "runs", "compare-ar"))
args = parser.parse_args()

rows = []
for model in args.models:
    with open(os.path.join(ROOT, "models", f"{model}.toml"), "rb") as f:
        train = tomllib.load(f)["train"]
    run_dir = os.path.join(args.out, model)
    ckpt = os.path.join(run_dir, "checkpoints", "last.safetensors")
    if not os.path.exists(ckpt):
        run([GENZOO, "train", "--config", f"models/{model}.toml", "--out", run_dir])
    ours = genzoo_eval(ckpt)["nll"]
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        speeds = [json.loads(l)["images_per_sec"] for l in f if '"type":"step"' in l]
    ref = last_json_line(run([sys.executable, "scripts/train_ar_reference.py", model, "--epochs", str(train["epochs"]),
                              "--batch-size", str(train["batch_size"]), "--lr", str(train["lr"]),
                              "--max-steps", str(train.get("max_steps", 0))]))
    rows.append({"model": model, "epochs": train["epochs"], "batch_size": train["batch_size"],
                 "max_steps": train.get("max_steps", 0), "genzoo_nll": ours,
                 "pytorch_nll": ref["test_nll"], "genzoo_images_per_sec": sorted(speeds)[len(speeds) // 2],
                 "pytorch_images_per_sec": ref["images_per_sec"]})
    print(json.dumps(rows[-1]), flush=True)

print(f"{'model':<10} {'budget':<16} {'genzoo NLL':>11} {'PyTorch NLL':>12} {'diff':>7} {'genzoo img/s':>13} {'PyTorch img/s':>14}")
for r in rows:
    budget = f"{r['epochs']} ep x bs {r['batch_size']}" + (f", {r['max_steps']} steps" if r["max_steps"] else "")
    print(f"{r['model']:<10} {budget:<16} {r['genzoo_nll']:>11.3f} {r['pytorch_nll']:>12.3f} {r['genzoo_nll'] - r['pytorch_nll']:>7.3f} "
          f"{r['genzoo_images_per_sec']:>13.1f} {r['pytorch_images_per_sec']:>14.1f}")
