#!/usr/bin/env bash
# Creates .venv-serving: the environment tritonserver (from nvidia-pytriton) and its
# Python-backend models run in. Separate from .venv on purpose: pytriton pins numpy<2 and
# the Python-backend stub returns empty outputs with numpy 2, while the export stack
# (.venv) is on numpy 2. runtime/ needs only numpy, Pillow and onnxruntime, so this
# environment stays small (no torch). Idempotent; a finished env is marked by .ready.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ENV=${VGGT_MV_SERVING_ENV:-.venv-serving}
# .ready marks a finished env; one made before scene.glb (trimesh) is topped up below.
if [ -f "$ENV/.ready" ] && "$ENV/bin/python" -c "import trimesh" >/dev/null 2>&1; then
  echo "serving env ready: $ENV"
  exit 0
fi
if [ ! -x "$ENV/bin/python" ]; then
  "$PY" -m venv "$ENV"
fi
"$ENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# onnxruntime (CPU) for the portable graph; onnxruntime-gpu works too on a GPU machine.
# typer/rich/tqdm: cli.py itself, so `infer --server` runs from this environment;
# trimesh: the scene.glb it writes like local infer.
"$ENV/bin/python" -m pip install -q "numpy>=1.26,<2" "nvidia-pytriton==0.7.*" \
    "pillow>=10" "onnxruntime>=1.20" "tritonclient[http,grpc]>=2.51" \
    "typer>=0.12" "rich" "tqdm>=4.66" "trimesh>=4"
"$ENV/bin/python" - <<'PY'
import importlib, os, sys
from pathlib import Path
import numpy
assert numpy.__version__.startswith("1."), f"numpy {numpy.__version__}: the stub needs numpy<2"
import pytriton, onnxruntime, trimesh
server = Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
assert server.is_file(), f"no tritonserver binary in {server.parent}"
print(f"numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}, tritonserver {server}")
PY
touch "$ENV/.ready"
echo "serving env ready: $ENV"
