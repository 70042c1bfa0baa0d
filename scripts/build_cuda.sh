#!/usr/bin/env bash
# The CUDA build, checked before stopping whenever GPU code changed (CI has no nvcc): genzoo and the
# CUDA-against-CPU test binary with `--features cuda`, copied to target/gpu/ with the CUDA runtime they
# link, and packed into target/gpu-carry/gpu.tar.xz for a GPU machine without Rust:
#     tar -xJf target/gpu-carry/gpu.tar.xz -C target && scripts/gpu_check.sh
# Needs nvcc (Debian's nvidia-cuda-toolkit, with contrib and non-free in the sources), no GPU.
#
#     scripts/build_cuda.sh                 # PTX for compute capability 80 (A100; newer GPUs JIT it)
#     CUDA_COMPUTE_CAP=86 CUDA_TARGET_DIR=/tmp/cuda-target scripts/build_cuda.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvcc >/dev/null; then
    echo "build_cuda.sh: nvcc not found; install a CUDA toolkit (Debian: nvidia-cuda-toolkit)" >&2
    exit 1
fi
# nvcc 11.8 cannot target 90; PTX built for 80 is compiled by the driver on newer GPUs.
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
export CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-target/cuda}"

# CI lints without CUDA: the code behind `cfg(feature = "cuda")` is linted here.
cargo clippy --workspace --all-targets --features cuda -- -D warnings
cargo build --release --features cuda --bin genzoo
test_binary=$(cargo test --release --features cuda -p layers --test cuda_matches_cpu --no-run \
    --message-format=json | sed -n 's/.*"executable":"\([^"]*cuda_matches_cpu[^"]*\)".*/\1/p' | tail -1)
if [ -z "$test_binary" ]; then
    echo "build_cuda.sh: cargo did not report the cuda_matches_cpu test binary" >&2
    exit 1
fi

rm -rf target/gpu
mkdir -p target/gpu/lib
cp "$CARGO_TARGET_DIR/release/genzoo" target/gpu/genzoo
cp "$test_binary" target/gpu/cuda_matches_cpu
strip target/gpu/genzoo target/gpu/cuda_matches_cpu
# Candle's quantized kernels link the CUDA runtime of this nvcc (libcudart.so.11.0 for 11.8), which
# a GPU machine with another CUDA (PyTorch's wheels bring 12) may lack: it travels with the binary.
cudart=$(ldd target/gpu/genzoo | sed -n 's/.*libcudart[^ ]* => \([^ ]*\) .*/\1/p' | head -1)
if [ -n "$cudart" ]; then
    cp -L "$cudart" target/gpu/lib/
fi
# A machine with only a newer cuBLAS gets a libcublas.so.11 that forwards to it (scripts/gpu/).
# (ldd's output is read whole first: `grep -q` leaving a pipe early fails it under pipefail.)
linked=$(ldd target/gpu/genzoo)
if grep -q 'libcublas.so.11 ' <<< "$linked"; then
    mkdir -p target/gpu/compat
    gcc -shared -fPIC -O2 -Wall -Wextra -Wl,-soname,libcublas.so.11 \
        -Wl,--version-script=scripts/gpu/cublas11_shim.map -o target/gpu/compat/libcublas.so.11 \
        scripts/gpu/cublas11_shim.c -ldl
fi
# One compressed file to carry (the two binaries hold Candle's kernels twice: ~140 MB, ~25 MB in xz).
mkdir -p target/gpu-carry
XZ_OPT="-T0 -6" tar -C target -cJf target/gpu-carry/gpu.tar.xz gpu
ls -l target/gpu target/gpu/lib target/gpu-carry
