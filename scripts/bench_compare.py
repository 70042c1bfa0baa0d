"""Issue 'benchmarks', done-when: genzoo and PyTorch on the same workloads, run alternately
(genzoo, PyTorch, genzoo, ...) so that both see the same machine load, each workload in its own
process; prints the median images/s of each and the ratio genzoo / PyTorch, with peak memory.

    cargo build --release
    .venv/bin/python scripts/bench_compare.py [WORKLOAD ...] [--pairs 3] [--steps 5] [--device cpu|cuda]
    .venv/bin/python scripts/bench_compare.py --json rows.jsonl ...   # also write the rows
    .venv/bin/python scripts/bench_compare.py --threads 1 progan      # one thread each
    .venv/bin/python scripts/bench_compare.py --device cuda --dtype bf16 dcgan   # both in bf16 autocast

With --device cuda both run on the GPU, and the GPU memory in use is polled from nvidia-smi while
each runs (`gpu MiB`: the most it held, CUDA context and allocator caches included, alike for both). A
workload that fails in either is reported with its error and the rest go on. GENZOO=path picks
the binary (scripts/gpu_check.sh runs a carried CUDA build).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import GENZOO, ROOT

DEFAULT = ["dcgan", "vae", "pixelcnn", "nade", "rowlstm", "diagbilstm", "pixelcnn_sample", "cyclegan", "stargan", "progan"]
# genzoo's workload -> PyTorch's: genzoo samples PixelCNN with its cached sampler, the done-when
# compares it with PyTorch's naive loop (the whole network per pixel).
PYTORCH_NAME = {"pixelcnn_sample": "pixelcnn_sample_naive"}


def gpu_used_mib():
    """MiB in use on the GPU now, from nvidia-smi (0 without it). One process runs at a time, so
    its memory is this less what was in use before it started: the per-process query does not
    see processes of another PID namespace, as in a container."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10).stdout
        return int(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0


def one(cmd, on_gpu, timeout, env=None):
    """Runs one benchmark process (killed after `timeout` seconds); its JSON result, with
    `gpu_mib` when on the GPU."""
    baseline = gpu_used_mib() if on_gpu else 0
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, text=True, env=env)
        start, peak = time.monotonic(), 0
        while proc.poll() is None:
            if on_gpu:
                peak = max(peak, gpu_used_mib() - baseline)
            if time.monotonic() - start > timeout:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{os.path.basename(cmd[0])} ran past {timeout} s")
            time.sleep(0.1)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    results = json.loads(stdout[stdout.index("["):]) if proc.returncode == 0 and "[" in stdout else []
    if not results:
        lines = [line for line in stderr.splitlines() if line.strip()]
        # genzoo bench reports a failed workload as "NAME skipped: ..." (before any backtrace).
        said = [line for line in lines if "skipped:" in line or line.startswith("error")] or lines[-3:]
        raise RuntimeError(f"{os.path.basename(cmd[0])} exit {proc.returncode}: {' | '.join(said)}")
    result = results[0]
    if on_gpu:
        result["gpu_mib"] = peak
    return result


def compare(w, args):
    on_gpu = args.device.startswith("cuda")
    ours, theirs = [], []
    # genzoo's pool takes RAYON_NUM_THREADS, PyTorch's script --threads: the same count for both.
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    for _ in range(args.pairs):
        ours.append(one([GENZOO, "bench", w, "--steps", str(args.steps), "--json", "--device", args.device,
                         "--dtype", args.dtype], on_gpu, args.timeout, env))
        theirs.append(one([sys.executable, os.path.join("scripts", "bench_pytorch.py"), PYTORCH_NAME.get(w, w),
                           "--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype,
                           "--threads", str(args.threads)], on_gpu, args.timeout))
    g = statistics.median(r["images_per_sec"] for r in ours)
    t = statistics.median(r["images_per_sec"] for r in theirs)
    row = {"workload": w, "device": args.device, "dtype": args.dtype, "genzoo_images_per_sec": g, "pytorch_images_per_sec": t,
           "ratio": g / t, "genzoo_peak_mib": max(r["peak_mib"] or 0 for r in ours),
           "pytorch_peak_mib": max(r["peak_mib"] for r in theirs), "pairs": args.pairs}
    if on_gpu:
        row["genzoo_gpu_mib"] = max(r["gpu_mib"] for r in ours)
        row["pytorch_gpu_mib"] = max(r["gpu_mib"] for r in theirs)
    return row


def print_table(rows, on_gpu):
    memory = "gpu MiB" if on_gpu else "MiB"
    print(f"{'workload':<16} {'genzoo img/s':>13} {'PyTorch img/s':>14} {'ratio':>7} "
          f"{'genzoo ' + memory:>15} {'PyTorch ' + memory:>16}")
    for r in rows:
        if "error" in r:
            print(f"{r['workload']:<16} failed: {r['error']}")
            continue
        key = "gpu_mib" if on_gpu else "peak_mib"
        print(f"{r['workload']:<16} {r['genzoo_images_per_sec']:>13.1f} {r['pytorch_images_per_sec']:>14.1f} "
              f"{r['ratio']:>7.2f} {r['genzoo_' + key]:>15.0f} {r['pytorch_' + key]:>16.0f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workloads", nargs="*", default=DEFAULT)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N], for both")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"],
                   help="products in this precision, for both (genzoo --dtype, PyTorch's autocast)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of each (both on all of a 2-core machine)")
    p.add_argument("--timeout", type=float, default=600, help="seconds before a benchmark process is killed")
    p.add_argument("--json", help="also append each row to this JSON-lines file")
    args = p.parse_args()
    rows = []
    for w in args.workloads:
        try:
            row = compare(w, args)
        except (RuntimeError, ValueError, KeyError) as e:
            row = {"workload": w, "device": args.device, "error": str(e)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    print_table(rows, args.device.startswith("cuda"))


if __name__ == "__main__":
    main()
