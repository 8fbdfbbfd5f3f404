"""VGGT_MV runtime: the part a user embeds next to TensorRT on a Jetson.

Importing this package imports nothing heavy: names resolve lazily, and only numpy (+
Pillow for decoding frames) is needed until a backend is created. OnnxSession imports
onnxruntime, TrtSession imports tensorrt and cuda-python; torch and onnx are never used.

    from runtime import Predictor
    with Predictor("artifacts", backend="trt") as p:
        p.predict("scene/", T=8, N=4).write_outputs("out/")
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Predictor": "predictor",
    "Prediction": "predictor",
    "Session": "session",
    "OnnxSession": "session",
    "SessionError": "session",
    "TrtSession": "trt_session",
    "TrtUnavailableError": "trt_session",
    "BucketIndex": "dispatch",
    "BucketSpec": "dispatch",
    "Selection": "dispatch",
    "UnknownBucketError": "dispatch",
    "FeedError": "dispatch",
    "check_feeds": "dispatch",
    "pad_feeds": "dispatch",
    "trim_outputs": "dispatch",
    "EnvironmentInfo": "sidecar",
    "SidecarError": "sidecar",
    "SidecarMismatchError": "sidecar",
    "check_sidecar": "sidecar",
    "read_sidecar": "sidecar",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
