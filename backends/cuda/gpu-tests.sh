#!/usr/bin/env bash
# The GPU suite: on a machine with an NVIDIA GPU and its driver, every operation's kernels
# (through the same dispatch as training) and a whole CLIP-KD training step, on the device,
# against the CPU backend. It fails loudly anywhere else (no driver, no GPU, no NVRTC): the
# ordinary suite (`cargo test --workspace`) runs the same comparisons on the CPU emulator.
#
#   NVRTC:   the CUDA toolkit's, or the PyPI wheel nvidia-cuda-nvrtc-cu12 (its lib/ on
#            LD_LIBRARY_PATH); cuBLAS and cuBLASLt likewise (nvidia-cublas-cu12 has both).
#   headers: KDC_CUDA_INCLUDE=<.../include> with cuda_bf16.h (toolkit, or nvidia-cuda-runtime-cu12)
set -euo pipefail
cd "$(dirname "$0")/../.."
export KDC_TEST_CUDA=1
cargo test --release -p kdc-cuda --features cuda --test dispatch
cargo test --release -p kdc --features cuda --test cuda_emulated -- --nocapture
