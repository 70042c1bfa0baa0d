#!/usr/bin/env bash
# Where CUDA time goes in genzoo's benchmark workloads: Nsight Compute's per-kernel GPU time of
# `genzoo bench W --device cuda --steps 1` (2 warm-up steps and 1 timed), on the GPU machine with
# the build scripts/gpu_check.sh uses (scripts/build_cuda.sh packs it). About 30 s a workload.
#
#     scripts/gpu_profile.sh OUT_DIR dcgan nade ...
#
# Writes OUT_DIR/W-ncu.csv and prints each workload's kernels by total GPU time.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${1:?usage: scripts/gpu_profile.sh OUT_DIR WORKLOAD...}"
shift
mkdir -p "$OUT_DIR"
BIN="${GENZOO_BIN:-$PWD/target/gpu/genzoo}"
PY="${PYTHON:-python3}"
unset RUST_BACKTRACE

NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
if [ -z "$NCU" ]; then
    echo "gpu_profile.sh: ncu (Nsight Compute) not found" >&2
    exit 1
fi
# The libraries scripts/gpu_check.sh hands genzoo.
# shellcheck source=scripts/gpu/cuda_libs.sh
source scripts/gpu/cuda_libs.sh
libs=$(cuda_library_path "$BIN" "$PY")

for w in "$@"; do
    LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" timeout 120 "$NCU" \
        --metrics gpu__time_duration.sum --print-summary per-kernel --csv \
        "$BIN" bench "$w" --device cuda --steps 1 > "$OUT_DIR/$w-ncu.csv" 2> "$OUT_DIR/$w-ncu.err"
    "$PY" - "$OUT_DIR/$w-ncu.csv" "$w" <<'EOF'
import csv, sys
path, workload = sys.argv[1], sys.argv[2]
with open(path) as f:
    lines = [line for line in f if line.startswith('"')]
rows = []
for r in csv.DictReader(lines):
    n, mean_ns = int(r["Invocations"]), float(r["Average"].replace(",", ""))
    rows.append((n * mean_ns / 1e6, n, mean_ns / 1e3, r["Kernel Name"][:60], r["Grid Size"]))
rows.sort(reverse=True)
total = sum(r[0] for r in rows)
print(f"== {workload}: {total:.1f} ms of GPU time in {sum(r[1] for r in rows)} launches")
for ms, n, us, name, grid in rows[:12]:
    print(f"{ms:8.2f} ms {100 * ms / max(total, 1e-9):5.1f}%  x{n:<5d} {us:9.1f} us  {name}  grid {grid}")
EOF
done
