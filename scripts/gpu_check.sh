#!/usr/bin/env bash
# One-shot check of the attention kernels on a GPU (H100 / H200 class, PyTorch + nvcc, no
# TensorRT, no pytest needed), one overall deadline (default 8 minutes): builds
# attention_launch.cu + attention_capi.cu with the plugin library's nvcc flags plus
# -lineinfo, runs every kernel case of plugins/kernel_cases.py on both kernels against the
# numpy reference, compares the tensor-core kernel with torch SDPA at the four dense sites
# of T=8, N=4, 518x518 on all rows (with and without the bias) and times both there, then
# runs compute-sanitizer memcheck / racecheck / initcheck / synccheck on small cases.
# Writes gpu_check.json + gpu_check.md (and logs/) to --out, also when a step fails.
# --dry-run runs every step without a GPU against the host (CPU shim) build of the same
# entry point; scripts/gpu_check.py says how.
#
# usage: bash scripts/gpu_check.sh [--dry-run] [--out DIR] [--arch NN] [--deadline SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) ARGS+=(--dry-run) ;;
    --out|--arch|--deadline)
      [ $# -ge 2 ] || { echo "gpu_check: $1 needs a value" >&2; exit 2; }
      ARGS+=("$1" "$2"); shift ;;
    *) echo "gpu_check: unknown argument '$1' (use --dry-run, --out DIR, --arch NN, --deadline SECONDS)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-$(command -v python3 || command -v python)}
exec "$PY" scripts/gpu_check.py "${ARGS[@]}"
