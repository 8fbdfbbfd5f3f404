"""TensorRT plugins of VGGT_MV (CUDA C++ in csrc/), their op contract and CPU references.

Building the library is plugins/build.py; finding and loading it into TensorRT is
runtime/trt/plugins.py. Heavy pieces are imported lazily: `import plugins` costs nothing,
so the runtime can use `plugins.contract` on a Jetson without onnxruntime and the
exporter can use `plugins.reference` without a CUDA toolchain.
"""
from __future__ import annotations

from importlib import import_module

__all__ = ["contract", "reference", "build"]


def __getattr__(name: str):
    if name in ("contract", "reference", "build"):
        return import_module(f"plugins.{name}")
    raise AttributeError(name)
