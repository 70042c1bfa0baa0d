# Sourced by scripts/gpu_check.sh and scripts/gpu_profile.sh: `cuda_library_path BIN PYTHON` prints
# the LD_LIBRARY_PATH that the carried genzoo BIN needs on a GPU machine.
#
# Candle (cudarc) links cuBLAS and cuRAND, looked for where a CUDA toolkit or PyTorch's wheels keep
# them; first the CUDA runtime that scripts/build_cuda.sh carries beside the binary, and, where the
# binary's cuBLAS (11, from nvcc 11.8) is missing, the forwarder to the newer one before all. The
# path is for genzoo alone, so that PyTorch keeps its own libraries.
cuda_library_path() {
    local bin=$1 python=$2 found linked
    found=$("$python" - <<'EOF'
import glob, os, site
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
    dirs.append(os.path.join(sp, "torch", "lib"))
dirs += sorted(glob.glob("/usr/local/cuda*/lib64")) + sorted(glob.glob("/usr/local/cuda*/targets/*/lib"))
print(":".join(d for d in dirs if os.path.isdir(d)))
EOF
)
    local path
    path="$(dirname "$bin")/lib${found:+:$found}"
    # ldd's output read whole first: `grep -q` leaving a pipe early fails it under pipefail.
    linked=$(LD_LIBRARY_PATH="$path" ldd "$bin")
    if grep -q 'libcublas.so.11 => not found' <<< "$linked"; then
        path="$(dirname "$bin")/compat:$path"
    fi
    echo "$path"
}
