"""Issue 'benchmarks', done-when: genzoo and PyTorch on the same workloads, run alternately
(genzoo, PyTorch, genzoo, ...) so that both see the same machine load, each workload in its own
process; prints the median images/s of each and the ratio genzoo / PyTorch, with peak memory.

    cargo build --release
    .venv/bin/python scripts/bench_compare.py [WORKLOAD ...] [--pairs 3] [--steps 5]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from common import GENZOO, ROOT

DEFAULT = ["dcgan", "vae", "pixelcnn", "nade", "rowlstm", "diagbilstm", "pixelcnn_sample", "cyclegan", "stargan", "progan"]
# genzoo's workload -> PyTorch's: genzoo samples PixelCNN with its cached sampler, the done-when
# compares it with PyTorch's naive loop (the whole network per pixel).
PYTORCH_NAME = {"pixelcnn_sample": "pixelcnn_sample_naive"}


def one(cmd):
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("["):])[0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workloads", nargs="*", default=DEFAULT)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    rows = []
    for w in args.workloads:
        ours, theirs = [], []
        for _ in range(args.pairs):
            ours.append(one([GENZOO, "bench", w, "--steps", str(args.steps), "--json"]))
            theirs.append(one([sys.executable, os.path.join("scripts", "bench_pytorch.py"), PYTORCH_NAME.get(w, w),
                               "--steps", str(args.steps)]))
        g = statistics.median(r["images_per_sec"] for r in ours)
        t = statistics.median(r["images_per_sec"] for r in theirs)
        rows.append({"workload": w, "genzoo_images_per_sec": g, "pytorch_images_per_sec": t, "ratio": g / t,
                     "genzoo_peak_mib": max(r["peak_mib"] or 0 for r in ours),
                     "pytorch_peak_mib": max(r["peak_mib"] for r in theirs), "pairs": args.pairs})
        print(json.dumps(rows[-1]), flush=True)
    print(f"{'workload':<14} {'genzoo img/s':>13} {'PyTorch img/s':>14} {'ratio':>7} {'genzoo MiB':>11} {'PyTorch MiB':>12}")
    for r in rows:
        print(f"{r['workload']:<14} {r['genzoo_images_per_sec']:>13.1f} {r['pytorch_images_per_sec']:>14.1f} "
              f"{r['ratio']:>7.2f} {r['genzoo_peak_mib']:>11.0f} {r['pytorch_peak_mib']:>12.0f}")


if __name__ == "__main__":
    main()
