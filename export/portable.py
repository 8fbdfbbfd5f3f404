"""Raw export (one plugin-contract node per attention site) -> portable model.onnx.

Each vggt_mv::Vggt*Attention node becomes a call of an ONNX local function
(domain vggt_mv.fn) whose body uses standard ONNX ops only, so model.onnx runs in any
ONNX runtime while every site stays one identifiable node for surgery.
"""
from __future__ import annotations

import onnx

from plugins import contract

PLUGIN_ONLY_ATTRS = ("plugin_version", "plugin_namespace")


def _function_protos(opset: int) -> dict[str, onnx.FunctionProto]:
    from .functions import function_protos

    return {f.name: f for f in function_protos(opset)}


def _set_opset(model: onnx.ModelProto, domain: str, version: int | None) -> None:
    keep = [o for o in model.opset_import if o.domain != domain]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    if version is not None:
        model.opset_import.append(onnx.helper.make_opsetid(domain, version))


def default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    raise ValueError("model has no default-domain opset import")


def to_portable(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """In place: plugin nodes -> local function calls. Returns (model, counts per op)."""
    fns = _function_protos(default_opset(model))
    counts = {op: 0 for op in contract.op_names()}
    used = set()
    for node in model.graph.node:
        if node.domain != contract.ONNX_DOMAIN:
            continue
        fname = contract.portable_function(node.op_type)
        fn = fns[fname]
        declared = set(fn.attribute) | {a.name for a in fn.attribute_proto}
        attrs = [a for a in node.attribute if a.name in declared]
        del node.attribute[:]
        node.attribute.extend(attrs)
        node.domain = contract.FUNCTION_DOMAIN
        node.op_type = fname
        counts[contract.op_for_function(fname)] += 1
        used.add(fname)
    existing = {f.name for f in model.functions}
    for name in sorted(used - existing):
        model.functions.append(fns[name])
    _set_opset(model, contract.ONNX_DOMAIN, None)
    if used:
        _set_opset(model, contract.FUNCTION_DOMAIN, 1)
    return model, counts
