#!/usr/bin/env bash
# NVRTC compile check of every CUDA kernel kdc ships, without a GPU or a CUDA toolkit:
# downloads NVRTC and the CUDA runtime headers as PyPI wheels (cached), unpacks them, and runs
# the compile_kernels binary (feature `nvrtc`) for sm_80 and sm_90.
#
#   KDC_CUDA_WHEELS   where the wheels are downloaded and unpacked (default ~/.cache/kdc-cuda-wheels)
#   CARGO_TARGET_DIR  as usual
#   PIP               the pip to use (default: pip3, else python3 -m pip)
# Extra arguments go to compile_kernels (e.g. --arch sm_80,sm_86,sm_90).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${KDC_CUDA_WHEELS:-$HOME/.cache/kdc-cuda-wheels}"
mkdir -p "$cache"

pip_cmd() {
    if [[ -n "${PIP:-}" ]]; then $PIP "$@";
    elif command -v pip3 >/dev/null; then pip3 "$@";
    else python3 -m pip "$@"; fi
}

if ! ls "$cache"/nvidia_cuda_nvrtc_cu12-*.whl >/dev/null 2>&1 \
    || ! ls "$cache"/nvidia_cuda_runtime_cu12-*.whl >/dev/null 2>&1; then
    echo "downloading the NVRTC and CUDA runtime wheels into $cache"
    pip_cmd download --no-deps --quiet nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12 -d "$cache"
fi

unpack() {  # wheel glob, target dir
    local whl
    whl="$(ls "$cache"/$1 | sort | tail -n 1)"
    if [[ ! -f "$2/.unpacked-$(basename "$whl")" ]]; then
        rm -rf "$2" && mkdir -p "$2"
        python3 -m zipfile -e "$whl" "$2"
        touch "$2/.unpacked-$(basename "$whl")"
    fi
}
unpack 'nvidia_cuda_nvrtc_cu12-*.whl' "$cache/nvrtc"
unpack 'nvidia_cuda_runtime_cu12-*.whl' "$cache/runtime"

nvrtc_lib="$cache/nvrtc/nvidia/cuda_nvrtc/lib"
include="$cache/runtime/nvidia/cuda_runtime/include"
# The wheel ships libnvrtc.so.12 only; cudarc also looks for the unversioned name.
[[ -e "$nvrtc_lib/libnvrtc.so" ]] || ln -s "$(ls "$nvrtc_lib"/libnvrtc.so.12* | head -n 1)" "$nvrtc_lib/libnvrtc.so"
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

cd "$here"
cargo build --quiet --features nvrtc --bin compile_kernels
exec cargo run --quiet --features nvrtc --bin compile_kernels -- --include-path "$include" "$@"
