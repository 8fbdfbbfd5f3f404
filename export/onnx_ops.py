"""ONNX translations of the model's attention custom ops into the plugin op contract.

torch.export keeps vggt_mv::biased_attention / vggt_mv::sparse_attention opaque, and
these translations turn each call into exactly one node of domain "vggt_mv" with the
contract's attributes (plugins/contract.json). That raw graph is never written as is:
export/portable.py gives each node a standard-op body (model.onnx) and
export/surgery.py turns those back into plugin nodes (model.plugins.onnx).
"""
from __future__ import annotations

from typing import Callable

import onnxscript
import torch
from onnx.defs import OpSchema

from plugins import contract

import vggt_mv.layers.attention_ops  # noqa: F401  (registers the torch custom ops)

_P = OpSchema.FormalParameter
_A = OpSchema.Attribute
_AT = OpSchema.AttrType
_FLOATS = ["tensor(float)", "tensor(float16)"]


def _common_attrs() -> list:
    return [_A("plugin_version", _AT.STRING, "TensorRT plugin creator version"),
            _A("plugin_namespace", _AT.STRING, "TensorRT plugin creator namespace")]


BIASED_SCHEMA = OpSchema(
    contract.BIASED_OP, contract.ONNX_DOMAIN, 1,
    inputs=[_P("q", "T"), _P("k", "T"), _P("v", "T"), _P("r", "tensor(float)"),
            _P("c", "tensor(float)")],
    outputs=[_P("out", "T")],
    type_constraints=[("T", _FLOATS, "q/k/v/out element type")],
    attributes=[_A("scale", _AT.FLOAT, ""), _A("num_heads", _AT.INT, ""),
                _A("has_bias", _AT.INT, "")] + _common_attrs(),
)

SPARSE_SCHEMA = OpSchema(
    contract.SPARSE_OP, contract.ONNX_DOMAIN, 1,
    inputs=[_P("q", "T"), _P("k", "T"), _P("v", "T"), _P("landmarks", "tensor(int32)")],
    outputs=[_P("out", "T")],
    type_constraints=[("T", _FLOATS, "q/k/v/out element type")],
    attributes=[_A(n, _AT.INT, "") for n in ("num_heads", "strategy", "frame_len", "num_t",
                                           "num_n", "num_memory", "level_mask")]
    + [_A("scale", _AT.FLOAT, "")] + _common_attrs(),
)

_OPSET = onnxscript.values.Opset(contract.ONNX_DOMAIN, 1)
_BIASED = onnxscript.values.Op(_OPSET, contract.BIASED_OP, BIASED_SCHEMA)
_SPARSE = onnxscript.values.Op(_OPSET, contract.SPARSE_OP, SPARSE_SCHEMA)


def _plugin_attrs(op: str) -> dict[str, str]:
    return {"plugin_version": contract.plugin_version(op),
            "plugin_namespace": contract.PLUGIN_NAMESPACE}


def _biased(q, k, v, r, c, scale: float, has_bias: int):
    return _BIASED(q, k, v, r, c, scale=float(scale), num_heads=int(q.shape[1]),
                   has_bias=int(has_bias), **_plugin_attrs(contract.BIASED_OP))


def _sparse(q, k, v, landmarks, scale: float, strategy: int, frame_len: int, num_t: int,
            num_n: int, num_memory: int, level_mask: int):
    return _SPARSE(q, k, v, landmarks, scale=float(scale), num_heads=int(q.shape[1]),
                   strategy=int(strategy), frame_len=int(frame_len), num_t=int(num_t),
                   num_n=int(num_n), num_memory=int(num_memory), level_mask=int(level_mask),
                   **_plugin_attrs(contract.SPARSE_OP))


def translation_table() -> dict[Callable, Callable]:
    return {torch.ops.vggt_mv.biased_attention.default: _biased,
            torch.ops.vggt_mv.sparse_attention.default: _sparse}
