#!/usr/bin/env bash
# Creates .venv with everything the toolkit and its tests need on a CPU-only machine.
# torch is pinned first so pip takes the local CPU build instead of a multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q "torch==2.13.0"
# batch: Ray for tests/test_batch.py (`batch`, `infer --stream --workers`)
python -m pip install -q -e ".[export,test,batch]"
python - <<'PY'
import importlib
for m in ("torch", "onnx", "onnxruntime", "onnxruntime_extensions", "onnx_graphsurgeon", "polygraphy", "ray"):
    mod = importlib.import_module(m)
    print(f"{m:24s} {getattr(mod, '__version__', '?')}")
PY
