"""FP16 graph: weight-bearing MatMul / Gemm / Conv run in FP16, everything else in FP32.

TensorRT 11 has no FP16 builder flag: in a strongly typed network precision is what the
ONNX says. So the conversion is explicit: each weight layer gets FP16 weights, a Cast of
its activation to FP16 and a Cast of its result back to FP32. LayerNorm, Softmax,
reductions and the head activations (exp, expp1, inv_log) stay FP32 — the ops that
overflow or lose range in FP16 ViTs. Graph inputs and outputs stay FP32, so runtime/ does
not change.

Attention sites (vggt_mv.fn calls, later the plugins) get FP16 q, k, v and give FP16 out,
cast back to FP32: that is what lets an FP16 engine reach the tensor-core kernel, the most
expensive part of the model. The softmax statistics and sums stay FP32 inside the kernel
(and inside the portable function bodies, which cast to FP32 and back); the bias factors
r, c and the sparse landmarks keep their types.

Why not a library converter (tried with ModelOpt 0.47 / onnxconverter-common 1.16):
ModelOpt's autocast (modelopt.onnx.autocast.convert_to_mixed_precision) classifies the
vggt_mv.fn calls as custom ops and asks TensorRT for their shapes, which cannot run here;
onnxconverter-common's float16 converter, even with the calls on its block list, leaves
a ConstantOfShape typed FP16 where FP32 is expected and onnxruntime refuses the graph.
Casting only around weight layers is conservative (elementwise ops stay FP32) but exact
about what is FP16; the price is a Cast pair per weight layer.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from plugins import contract

from .graph_utils import (
    DEFAULT_EXCLUDE,
    all_names,
    excluded,
    replace_nodes,
    unique_name,
    weight_node_indices,
)


def convert_fp16(model: onnx.ModelProto, exclude=DEFAULT_EXCLUDE) -> tuple[onnx.ModelProto, dict]:
    """In place; returns (model, report with converted / excluded node counts)."""
    inits = {i.name: i for i in model.graph.initializer}
    taken = all_names(model)
    candidates = weight_node_indices(model)
    fp16_max = float(np.finfo(np.float16).max)

    def representable(k: int) -> bool:
        node = model.graph.node[k]
        return all(float(np.abs(numpy_helper.to_array(inits[x])).max(initial=0)) < fp16_max
                   for x in node.input[1:3] if x in inits)

    by_pattern = [k for k in candidates if excluded(model.graph.node[k], exclude)]
    overflow = [k for k in candidates if k not in by_pattern and not representable(k)]
    targets = set(candidates) - set(by_pattern) - set(overflow)
    n_excluded = len(candidates) - len(targets)
    excluded_names = {"excluded_by_pattern": [model.graph.node[k].name for k in by_pattern],
                      "excluded_fp16_overflow": [model.graph.node[k].name for k in overflow]}
    fp16_of: dict[str, str] = {}      # fp32 initializer -> fp16 copy
    cast_of: dict[str, str] = {}      # fp32 activation -> its fp16 cast
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []

    def fp16_init(name: str) -> str:
        if name not in fp16_of:
            arr = numpy_helper.to_array(inits[name]).astype(np.float16)
            new = unique_name(f"{name}_fp16", taken)
            new_inits.append(numpy_helper.from_array(arr, new))
            fp16_of[name] = new
        return fp16_of[name]

    def half(x: str, node: onnx.NodeProto) -> str:
        if x not in cast_of:
            cast_of[x] = unique_name(f"{x}_fp16", taken)
            new_nodes.append(helper.make_node("Cast", [x], [cast_of[x]], to=TensorProto.FLOAT16,
                                              name=unique_name(f"{node.name}_in_fp16", taken)))
        return cast_of[x]

    n_attention = 0
    for k, node in enumerate(model.graph.node):
        is_attention = node.domain in (contract.FUNCTION_DOMAIN, contract.ONNX_DOMAIN)
        if k not in targets and not is_attention:
            new_nodes.append(node)
            continue
        ins = list(node.input)
        if is_attention:  # q, k, v
            n_attention += 1
            for j in range(3):
                ins[j] = half(ins[j], node)
        else:
            ins[0] = half(ins[0], node)
            for j in range(1, min(len(ins), 3)):  # weight and bias
                if ins[j] in inits:
                    ins[j] = fp16_init(ins[j])
        out = node.output[0]
        half_out = unique_name(f"{out}_fp16", taken)
        del node.input[:]
        node.input.extend(ins)
        node.output[0] = half_out
        new_nodes.append(node)
        new_nodes.append(helper.make_node("Cast", [half_out], [out], to=TensorProto.FLOAT,
                                          name=unique_name(f"{node.name}_out_fp32", taken)))
    replace_nodes(model, new_nodes, new_inits)
    # Intermediate shapes recorded by the exporter may now carry the old element type.
    del model.graph.value_info[:]
    return model, {"converted_nodes": len(targets), "excluded_nodes": n_excluded,
                   "fp16_attention_sites": n_attention,
                   "fp16_initializers": len(new_inits), **excluded_names}
