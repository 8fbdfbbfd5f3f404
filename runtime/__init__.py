"""VGGT_MV runtime: the part a user embeds next to TensorRT on a Jetson.

Importing this package imports nothing heavy: names resolve lazily, and only numpy (+
Pillow for decoding frames) is needed until a backend is created. OnnxSession imports
onnxruntime, TrtSession imports tensorrt and cuda-python; torch and onnx are never used.
Layout: layout.py (the bucket folder), dispatch.py, session.py (onnxruntime),
trt/ (everything TensorRT), preprocess / postprocess / outputs, predictor.py.

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
    "StreamingPredictor": "streaming",
    "WorldChainer": "streaming",
    "Session": "session",
    "OnnxSession": "session",
    "SessionError": "session",
    "TrtSession": "trt.session",
    "TrtUnavailableError": "trt.env",
    "BucketIndex": "dispatch",
    "Bucket": "layout",
    "BucketSpec": "dispatch",
    "load_manifest": "layout",
    "Selection": "dispatch",
    "UnknownBucketError": "dispatch",
    "FeedError": "dispatch",
    "check_feeds": "dispatch",
    "pad_feeds": "dispatch",
    "trim_outputs": "dispatch",
    "EnvironmentInfo": "trt.sidecar",
    "SidecarError": "trt.sidecar",
    "SidecarMismatchError": "trt.sidecar",
    "check_sidecar": "trt.sidecar",
    "read_sidecar": "trt.sidecar",
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
