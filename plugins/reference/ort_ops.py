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

    # onnxruntime-extensions' Python ops take no float16 ("Type float16 not supported by
    # python customops api"), so the reference takes float32 q/k/v and make_session widens
    # float16 sites (fp32_view): exact, since the kernel also computes in float32 from the
    # float16 values and rounds only its output.
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


def _float16_tensors(graph) -> set[str]:
    from onnx import TensorProto

    half = {n.output[0] for n in graph.node if n.op_type == "Cast" and any(
        a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute)}
    half |= {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT16}
    half |= {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT16}
    return half


def fp32_view(model) -> int:
    """In place: every plugin node whose q/k/v are float16 gets Casts to float32 in front
    and its output cast back to float16, so the float32 reference can run it. Returns the
    number of sites widened (0: the model is untouched)."""
    from onnx import TensorProto, helper

    half = _float16_tensors(model.graph)
    nodes, n = [], 0
    for node in model.graph.node:
        if node.domain != contract.ONNX_DOMAIN or node.input[0] not in half:
            nodes.append(node)
            continue
        n += 1
        for j in range(3):
            wide = f"{node.name}_ref_in{j}_fp32"
            nodes.append(helper.make_node("Cast", [node.input[j]], [wide], to=TensorProto.FLOAT,
                                          name=wide))
            node.input[j] = wide
        out, wide_out = node.output[0], f"{node.name}_ref_out_fp32"
        node.output[0] = wide_out
        nodes += [node, helper.make_node("Cast", [wide_out], [out], to=TensorProto.FLOAT16,
                                         name=f"{node.name}_ref_out_fp16")]
    if n:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        del model.graph.value_info[:]
    return n


def session_source(model: str | Path | bytes, so) -> str | bytes:
    """What to hand to onnxruntime.InferenceSession for a plugin graph: the path itself, or
    the serialized fp32_view when the graph has float16 plugin sites (then `so` is told
    where the graph's external weights are)."""
    import onnx

    proto = (onnx.load_from_string(model) if isinstance(model, bytes)
             else onnx.load(str(model), load_external_data=False))
    if not fp32_view(proto):
        return model if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes):  # external weights stay where the graph points
        so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                    str(Path(model).resolve().parent))
    return proto.SerializeToString()


def make_session(model: str | Path | bytes, providers: Sequence[str] = ("CPUExecutionProvider",)):
    import onnxruntime as ort

    so = session_options()
    return ort.InferenceSession(session_source(model, so), so, providers=list(providers))


def polygraphy_runner(model_path: str | Path, name: str | None = None):
    """Polygraphy OnnxrtRunner over a session with the reference ops registered."""
    from polygraphy.backend.onnxrt import OnnxrtRunner

    return OnnxrtRunner(lambda: make_session(model_path), name=name or Path(model_path).name)


def run(model: str | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = make_session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))
