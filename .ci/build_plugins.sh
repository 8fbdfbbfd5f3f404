#!/usr/bin/env bash
# Compiles every CUDA source of plugins/csrc for each target architecture with warnings
# as errors. Nothing can run them here (no GPU), but a kernel that does not compile for
# sm_80 / 86 / 87 (Jetson Orin) / 89 / 90 never lands.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ]; then
  echo "build_plugins: nvcc not found; install the CUDA toolkit (or 'pip install nvidia-cuda-nvcc') to compile the plugins" >&2
  exit 1
fi
ARCHS=${VGGT_MV_CUDA_ARCHS:-"80 86 87 89 90"}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for cu in $(find plugins/csrc -name '*.cu' | sort); do
  for a in $ARCHS; do
    "$NVCC" -std=c++17 -O3 -arch=sm_$a -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror \
      -c "$cu" -o "$OUT/$(basename "$cu" .cu)_sm$a.o"
    echo "build_plugins: $cu sm_$a ok"
  done
done
