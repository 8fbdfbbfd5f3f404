"""TensorRT plugins of VGGT_MV (CUDA C++ in csrc/), their op contract and CPU references.

Heavy pieces are imported lazily: `import plugins` costs nothing, so the runtime can
use `plugins.contract` on a Jetson without onnxruntime and the exporter can use
`plugins.reference` without a CUDA toolchain.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["load", "contract", "reference"]


def load(*args: Any, **kwargs: Any):
    """Find (or build) libvggt_mv_plugins.so and load it; see plugins/build.py."""
    return import_module("plugins.build").load(*args, **kwargs)


def __getattr__(name: str):
    if name in ("contract", "reference", "build"):
        return import_module(f"plugins.{name}")
    raise AttributeError(name)
