"""CPU implementations of the plugin op types for onnxruntime (onnxruntime-extensions).

Registering them lets model.plugins.onnx (and its FP16 / INT8 variants) run on any CPU
exactly as TensorRT would run it with the CUDA plugins, so every artifact is validated
here. Importing this module registers the ops once; sessions must be created with
session_options() (or make_session), which loads the extensions library.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .. import contract
from . import numpy_ref

_REGISTERED = False


def register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    F, I, S = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64, PyCustomOpDef.dt_string
    common = {"plugin_version": S, "plugin_namespace": S}
    dom = contract.ONNX_DOMAIN

    # A Python custom op has one fixed input type per op type, so the CPU reference takes
    # float32 q/k/v: precision conversions (calib/) keep the plugin sites' I/O in float32
    # for onnxruntime; the CUDA plugins accept float16 as well.
    T = PyCustomOpDef.dt_float

    def biased(q, k, v, r, c, **attrs):
        return numpy_ref.biased_attention(q, k, v, r, c, float(attrs["scale"]),
                                          int(attrs["has_bias"]))

    def sparse(q, k, v, landmarks, **attrs):
        return numpy_ref.sparse_attention(
            q, k, v, landmarks, float(attrs["scale"]), int(attrs["strategy"]),
            int(attrs["frame_len"]), int(attrs["num_t"]), int(attrs["num_n"]),
            int(attrs["num_memory"]), int(attrs["level_mask"]))

    onnx_op(op_type=f"{dom}::{contract.BIASED_OP}", inputs=[T, T, T, F, F], outputs=[T],
            attrs={"scale": F, "num_heads": I, "has_bias": I, **common})(biased)
    onnx_op(op_type=f"{dom}::{contract.SPARSE_OP}", inputs=[T, T, T, PyCustomOpDef.dt_int32],
            outputs=[T], attrs={"scale": F, "num_heads": I, "strategy": I, "frame_len": I,
                                "num_t": I, "num_n": I, "num_memory": I, "level_mask": I,
                                **common})(sparse)
    _REGISTERED = True


def session_options():
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    register()
    so = ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    return so


def make_session(model: str | Path | bytes, providers: Sequence[str] = ("CPUExecutionProvider",)):
    import onnxruntime as ort

    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, session_options(), providers=list(providers))


def polygraphy_runner(model_path: str | Path, name: str | None = None):
    """Polygraphy OnnxrtRunner over a session with the reference ops registered."""
    from polygraphy.backend.onnxrt import OnnxrtRunner

    return OnnxrtRunner(lambda: make_session(model_path), name=name or Path(model_path).name)


def run(model: str | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = make_session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))
