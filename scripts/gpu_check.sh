#!/usr/bin/env bash
# The GPU check of issue 16, for a machine with CUDA and PyTorch but no Rust. Build here first:
#
#     scripts/build_cuda.sh                          # target/gpu/{genzoo,cuda_matches_cpu}
#     scripts/gpu_check.sh [OUT_DIR]                 # on the GPU machine, carrying target/gpu
#
# In about 6 minutes it runs, each part under its own time limit so that one slow part cannot
# take the rest:
#   1. a CUDA smoke test of the carried binary (stops here, with the library search, if CUDA does
#      not open);
#   2. every fused CPU op against the same op on CUDA, values and gradients (cuda_matches_cpu);
#   3. `genzoo bench --device cuda` beside `scripts/bench_pytorch.py --device cuda`, alternately,
#      for every workload of docs/BENCHMARKS.md, with the GPU memory each process held;
#   4. a short CUDA training run per family (vae, pixelcnn, dcgan) whose checkpoint is then
#      evaluated and sampled on the CPU and on CUDA, and shipped CPU-trained weights evaluated on
#      CUDA and on the CPU;
#   5. reduced precision (`--dtype`): dcgan, cyclegan and stargan in bf16 beside PyTorch's bf16
#      autocast, a short bf16 DCGAN run, and the shipped DCGAN evaluated in bf16 against f32;
# and prints one table (scripts/gpu_check_report.py), also written to OUT_DIR/table.md; the rest
# (grids, logs, JSON) is packed into OUT_DIR/details.tar.gz. GPU_CHECK_PARTS="ops bench train" (the
# default, about 6 minutes) or "dtype" (part 5 alone, about 3 minutes: a second call) and
# GPU_CHECK_WORKLOADS pick what a rerun repeats.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${1:-${OUT:-gpu-check}}"
mkdir -p "$OUT_DIR"
BIN="${GENZOO_BIN:-$PWD/target/gpu/genzoo}"
TESTS="${CUDA_TESTS:-$PWD/target/gpu/cuda_matches_cpu}"
PY="${PYTHON:-python3}"
WORKLOADS="${GPU_CHECK_WORKLOADS:-dcgan vae pixelcnn cyclegan stargan progan nade rowlstm diagbilstm pixelcnn_sample}"
PARTS="${GPU_CHECK_PARTS:-ops bench train}" # a rerun may take a part alone; dtype runs on its own
wants() { [[ " $PARTS " == *" $1 "* ]]; }
# Errors stay one line (Candle attaches a backtrace to its errors when this is set).
unset RUST_BACKTRACE
LOG="$OUT_DIR/check.log"
WORK=$(mktemp -d)

section() { echo "== $* (at ${SECONDS}s)" | tee -a "$LOG"; }

# shellcheck source=scripts/gpu/cuda_libs.sh
source scripts/gpu/cuda_libs.sh
cuda_libs=$(cuda_library_path "$BIN" "$PY")
# The genzoo that the benchmark script runs: the carried binary with those libraries (exec keeps
# the process id, so its GPU memory is its own).
G="$WORK/genzoo"
printf '#!/bin/sh\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' \
    "$cuda_libs" "$BIN" > "$G"
chmod +x "$G"

section environment
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$LOG"
"$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())' \
    2>&1 | tee -a "$LOG"
ls -l "$BIN" "$TESTS" | tee -a "$LOG"

section "smoke: genzoo bench vae --device cuda"
if ! timeout 90 "$G" bench vae --device cuda --steps 2 > "$OUT_DIR/smoke.txt" 2>&1; then
    cat "$OUT_DIR/smoke.txt" | tee -a "$LOG"
    echo "CUDA did not open; libraries searched: $cuda_libs" | tee -a "$LOG"
    LD_LIBRARY_PATH="$cuda_libs" ldd "$BIN" | tee -a "$LOG"
    find / \( -name 'libcublas.so*' -o -name 'libcurand.so*' -o -name 'libcuda.so*' \) 2>/dev/null \
        | head -20 | tee -a "$LOG"
    exit 1
fi
cat "$OUT_DIR/smoke.txt" | tee -a "$LOG"

if wants ops; then
    section "fused CPU ops against CUDA"
    timeout 100 env LD_LIBRARY_PATH="${cuda_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        "$TESTS" --test-threads 1 --nocapture > "$OUT_DIR/cuda_matches_cpu.txt" 2>&1
    echo "exit $?" >> "$OUT_DIR/cuda_matches_cpu.txt"
    grep -E '^(cuda-vs-cpu|test |test result)|panicked' -A1 "$OUT_DIR/cuda_matches_cpu.txt" | tee -a "$LOG"
fi

if wants bench; then
    section "benchmarks: genzoo against PyTorch on CUDA"
    # shellcheck disable=SC2086 # the workloads are words
    timeout 220 env GENZOO="$G" "$PY" scripts/bench_compare.py --device cuda --pairs 2 --steps 10 \
        --timeout 60 --json "$OUT_DIR/bench.jsonl" $WORKLOADS > "$OUT_DIR/bench.txt" 2>&1
    tail -15 "$OUT_DIR/bench.txt" | tee -a "$LOG"
fi

train_then_evaluate() { # NAME MAX_STEPS EVAL_ARGS...
    local name=$1 steps=$2
    shift 2
    local run="$WORK/$name"
    # SIGINT, as Ctrl-C: a run cut short still saves its checkpoint.
    timeout -s INT -k 20 100 "$G" train "$name" --device cuda --max-steps "$steps" --out "$run" \
        > "$OUT_DIR/train-$name.txt" 2>&1
    echo "exit $?" >> "$OUT_DIR/train-$name.txt"
    cp "$run/log.jsonl" "$OUT_DIR/train-$name.log.jsonl" 2>/dev/null
    evaluate "trained-$name" "$run/checkpoints/last.safetensors" "$@"
    for device in cpu cuda; do
        timeout 60 "$G" sample "$run/checkpoints/last.safetensors" --device "$device" -n 16 --nrow 4 \
            --out "$OUT_DIR/sample-$name-$device.png" > "$OUT_DIR/sample-$name-$device.txt" 2>&1
        echo "exit $?" >> "$OUT_DIR/sample-$name-$device.txt"
    done
}
evaluate() { # LABEL CHECKPOINT EVAL_ARGS...: the same evaluation on both devices
    local label=$1 checkpoint=$2
    shift 2
    for device in cpu cuda; do
        timeout 60 "$G" eval "$checkpoint" --device "$device" --json "$@" \
            > "$OUT_DIR/eval-$label-$device.json" 2> "$OUT_DIR/eval-$label-$device.err"
    done
}
if wants train; then
    section "training on CUDA, then the checkpoint on the CPU and on CUDA"
    train_then_evaluate vae 300 --limit 200 --k 20 --samples 500
    train_then_evaluate pixelcnn 150 --limit 100 --samples 0
    train_then_evaluate dcgan 400 --samples 500

    section "shipped CPU-trained weights on CUDA and on the CPU"
    evaluate shipped-vae models/vae.safetensors --limit 200 --k 20 --samples 500
    evaluate shipped-nade models/nade.safetensors --limit 200 --samples 0
    evaluate shipped-dcgan models/dcgan.safetensors --samples 500
fi

if wants dtype; then
    section "reduced precision on CUDA: genzoo --dtype bf16 beside PyTorch's bf16 autocast"
    timeout 150 env GENZOO="$G" "$PY" scripts/bench_compare.py --device cuda --dtype bf16 --pairs 1 --steps 5 \
        --timeout 40 --json "$OUT_DIR/dtype-bench.jsonl" dcgan cyclegan stargan > "$OUT_DIR/dtype-bench.txt" 2>&1
    tail -4 "$OUT_DIR/dtype-bench.txt" | tee -a "$LOG"
    timeout -s INT -k 10 60 "$G" train dcgan --device cuda --dtype bf16 --max-steps 300 \
        --out "$WORK/dcgan-bf16" > "$OUT_DIR/dtype-train-dcgan.txt" 2>&1
    cp "$WORK/dcgan-bf16/log.jsonl" "$OUT_DIR/dtype-train-dcgan.log.jsonl" 2>/dev/null
    for dt in f32 bf16; do
        timeout 40 "$G" eval models/dcgan.safetensors --device cuda --dtype "$dt" --json --samples 300 \
            > "$OUT_DIR/dtype-eval-dcgan-$dt.json" 2> "$OUT_DIR/dtype-eval-dcgan-$dt.err"
    done
    "$PY" - "$OUT_DIR" <<'PY' | tee -a "$LOG"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
log = out / "dtype-train-dcgan.log.jsonl"
steps = [json.loads(l) for l in log.read_text().splitlines() if '"step"' in l] if log.exists() else []
if steps:
    print(f"bf16 dcgan training: g_loss {steps[0].get('g_loss')} at step {steps[0]['step']}, "
          f"{steps[-1].get('g_loss')} at step {steps[-1]['step']}")
else:
    print("bf16 dcgan training: no log (see dtype-train-dcgan.txt)")
for dt in ["f32", "bf16"]:
    try:
        r = json.loads((out / f"dtype-eval-dcgan-{dt}.json").read_text())
        print(f"shipped dcgan, {dt}: {json.dumps(r)[:300]}")
    except Exception as e:  # a failed run: say so
        print(f"shipped dcgan, {dt}: failed ({e})")
PY
fi

section report
"$PY" scripts/gpu_check_report.py "$OUT_DIR" | tee "$OUT_DIR/table.md"
# Few files to fetch back: the table, the log and one archive of the rest (grids, logs, JSON).
(cd "$OUT_DIR" && find . -maxdepth 1 -type f ! -name table.md ! -name check.log ! -name details.tar.gz \
    -printf '%P\n' | tar -czf details.tar.gz -T - --remove-files)
rm -rf "$WORK"
