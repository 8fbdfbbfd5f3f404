#!/usr/bin/env bash
# One-shot check of the attention kernels on a GPU (H100 / H200 class, PyTorch + nvcc, no
# TensorRT needed), <= 8 minutes:
#   1. builds attention_launch.cu + attention_capi.cu into a small shared library;
#   2. runs every kernel case of plugins/tests/test_kernels_host.py on the GPU against the
#      numpy reference (CUDA-core and tensor-core kernels);
#   3. compute-sanitizer memcheck, racecheck, initcheck and synccheck on small cases;
#   4. times the kernels at the Time-SA / View-SA / DINOv2 shapes of T=8, N=4, 518x518
#      against torch SDPA (flash backend) at the same FLOPs;
#   5. writes gpu_check.json + gpu_check.md to --out (default docs/gpu_check).
# --dry-run checks this plumbing without a GPU: the case lists, the shapes, the build
# command (compiled for sm_80 when nvcc exists), the sanitizer commands and the report
# writers; the report says dry_run and holds no measurements.
#
# usage: bash scripts/gpu_check.sh [--dry-run] [--out DIR] [--arch NN]
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
OUT=docs/gpu_check
ARCH=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    --arch) ARCH=$2; shift ;;
    *) echo "gpu_check: unknown argument '$1' (use --dry-run, --out DIR, --arch NN)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-$(command -v python3 || command -v python)}
NVCC=${NVCC:-$(command -v nvcc || true)}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

if [ -z "$ARCH" ]; then
  if [ "$DRY" = 0 ] && command -v nvidia-smi >/dev/null; then
    ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
  else
    ARCH=80
  fi
fi

LIB="$WORK/libvggt_attention_check.so"
if [ -n "$NVCC" ]; then
  echo "gpu_check: building $LIB for sm_$ARCH"
  "$NVCC" -std=c++17 -O3 -arch=sm_$ARCH -shared -Xcompiler -fPIC \
    plugins/csrc/attention/attention_launch.cu plugins/csrc/attention/attention_capi.cu -o "$LIB"
elif [ "$DRY" = 1 ]; then
  echo "gpu_check: nvcc not found; dry run continues without the build" >&2
  LIB=""
else
  echo "gpu_check: nvcc not found; install the CUDA toolkit (or 'pip install nvidia-cuda-nvcc')" >&2
  exit 1
fi

ARGS=(--lib "$LIB" --out "$OUT" --arch "$ARCH")
[ "$DRY" = 1 ] && ARGS+=(--dry-run)
"$PY" scripts/gpu_check.py "${ARGS[@]}"
