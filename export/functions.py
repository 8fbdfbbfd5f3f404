"""Standard-op bodies of the plugin ops, as ONNX local functions (domain vggt_mv.fn).

These make model.onnx portable: any ONNX runtime can execute a BiasedAttention /
SparseAttention call by inlining the body, while the call node itself stays the single,
exact handle that surgery swaps for a TensorRT plugin. Bodies are dense (they build the
L x S logits): fine for a reference graph, and exactly why TensorRT gets the plugins.
The sparse visibility is computed from index arithmetic, never stored as an L x L
constant, so the graph stays small at any bucket.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from plugins import contract

_FLOAT = TensorProto.FLOAT
_INT64 = TensorProto.INT64


class _Body:
    def __init__(self, prefix: str):
        self.nodes: list[onnx.NodeProto] = []
        self.prefix = prefix
        self.n = 0

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        self.n += 1
        out = f"{self.prefix}{self.n}_{op_type}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, value, dtype=_INT64) -> str:
        vals = value if isinstance(value, (list, tuple)) else [value]
        dims = [len(vals)] if isinstance(value, (list, tuple)) else []
        return self.op("Constant", value=helper.make_tensor("v", dtype, dims, vals))

    def attr_const(self, attr: str, kind: str) -> str:
        """A Constant whose value is the calling node's attribute `attr`."""
        self.n += 1
        out = f"{self.prefix}{self.n}_{attr}"
        node = helper.make_node("Constant", [], [out])
        a = onnx.AttributeProto()
        a.name = {"int": "value_int", "float": "value_float"}[kind]
        a.ref_attr_name = attr
        a.type = onnx.AttributeProto.INT if kind == "int" else onnx.AttributeProto.FLOAT
        node.attribute.append(a)
        self.nodes.append(node)
        return out


def _attention_core(b: _Body, q: str, k: str, v: str, logit_bias_or_mask, kind: str) -> str:
    """softmax(scale * q kᵀ + bias | mask) v, precisions as the plugin kernel has them.

    Both products run in q's type, so in model.fp16.onnx TensorRT gets FP16 x FP16 GEMMs
    (tensor cores) instead of FP32 ones. q is scaled before q kᵀ so FP16 logits carry
    |q k|·scale, not |q k| (8x further from FP16's 65504 at D=64, where the scale is exact).
    Logits are widened to FP32 for the bias / mask and the softmax (the kernel keeps its
    statistics in FP32 too); P is rounded to v's type for P v, as the kernel does before its
    second MMA. In model.onnx every cast is FP32 -> FP32, a no-op."""
    scale = b.op("CastLike", b.attr_const("scale", "float"), q)
    logits = b.op("MatMul", b.op("Mul", q, scale), b.op("Transpose", k, perm=[0, 1, 3, 2]))
    logits = b.op("Cast", logits, to=_FLOAT)
    if kind == "bias":
        logits = b.op("Add", logits, logit_bias_or_mask)
    else:
        neg = b.const(float("-inf"), _FLOAT)
        logits = b.op("Where", logit_bias_or_mask, logits, neg)
    probs = b.op("CastLike", b.op("Softmax", logits, axis=-1), v)
    return b.op("CastLike", b.op("MatMul", probs, v), q)


def biased_attention_function(opset: int) -> onnx.FunctionProto:
    b = _Body("ba")
    r4 = b.op("Unsqueeze", "r", b.const([1, 3]))          # [B, 1, L, 1]
    c4 = b.op("Unsqueeze", "c", b.const([1, 2]))          # [B, 1, 1, S]
    gate = b.op("Cast", b.attr_const("has_bias", "int"), to=_FLOAT)
    bias = b.op("Mul", b.op("Mul", r4, c4), gate)
    out = _attention_core(b, "q", "k", "v", bias, "bias")
    b.nodes.append(helper.make_node("Identity", [out], ["out"]))
    return helper.make_function(
        contract.FUNCTION_DOMAIN, contract.portable_function(contract.BIASED_OP),
        ["q", "k", "v", "r", "c"], ["out"], b.nodes,
        [helper.make_opsetid("", opset)], ["scale", "num_heads", "has_bias"])


def sparse_attention_function(opset: int) -> onnx.FunctionProto:
    b = _Body("sa")
    i = lambda name: b.attr_const(name, "int")  # noqa: E731
    F, T, N, strategy, level_mask = (i(n) for n in ("frame_len", "num_t", "num_n",
                                                      "strategy", "level_mask"))
    shape_q = b.op("Shape", "q")
    L = b.op("Gather", shape_q, b.const(2), axis=0)
    Bdim = b.op("Gather", shape_q, b.const([0]), axis=0)
    idx = b.op("Range", b.const(0), L, b.const(1))                 # [L]
    n_frame_tok = b.op("Mul", b.op("Mul", T, N), F)
    is_mem = b.op("GreaterOrEqual", idx, n_frame_tok)             # [L]
    frame = b.op("Div", idx, F)
    t = b.op("Div", frame, N)
    n = b.op("Mod", frame, N)

    def rows(x):  # [L] -> [L, 1]
        return b.op("Unsqueeze", x, b.const([1]))

    def cols(x):  # [L] -> [1, L]
        return b.op("Unsqueeze", x, b.const([0]))

    not_mem_i = rows(b.op("Not", is_mem))
    same_frame = b.op("And", b.op("Equal", rows(frame), cols(frame)), not_mem_i)  # [L, L]
    # landmark: own frame or key j among the landmarks of this batch row
    zeros = b.op("ConstantOfShape", b.op("Concat", Bdim, b.op("Unsqueeze", L, b.const([0])),
                                         axis=0),
                 value=helper.make_tensor("z", _FLOAT, [1], [0.0]))
    ones = b.op("ConstantOfShape", b.op("Shape", "landmarks"),
                value=helper.make_tensor("o", _FLOAT, [1], [1.0]))
    lm = b.op("ScatterElements", zeros, b.op("Cast", "landmarks", to=_INT64), ones, axis=1)
    lm_cols = b.op("Unsqueeze", b.op("Greater", lm, b.const(0.5, _FLOAT)), b.const([1]))
    vis_landmark = b.op("Or", b.op("Unsqueeze", same_frame, b.const([0])), lm_cols)  # [B,L,L]
    # dilated: same time step (any view), or same view at a dilation set in level_mask
    dt = b.op("Abs", b.op("Sub", rows(t), cols(t)))
    bit = b.op("Mod", b.op("Div", level_mask, b.op("Pow", b.const(2), dt)), b.const(2))
    same_view_dil = b.op("And", b.op("Equal", rows(n), cols(n)),
                         b.op("Equal", bit, b.const(1)))
    vis_dilated = b.op("Or", b.op("Equal", rows(t), cols(t)), same_view_dil)
    vis_dilated = b.op("And", vis_dilated, b.op("And", not_mem_i, cols(b.op("Not", is_mem))))
    # memory bank: own frame, memory keys, and memory queries see everything
    vis_memory = b.op("Or", b.op("Or", same_frame, cols(is_mem)), rows(is_mem))
    pick = lambda s: b.op("Equal", strategy, b.const(s))  # noqa: E731
    # onnxruntime has no bool Where: select among the patterns as 0/1 floats.
    f = lambda x: b.op("Cast", x, to=_FLOAT)  # noqa: E731
    vis = b.op("Where", pick(1), f(b.op("Unsqueeze", vis_dilated, b.const([0]))),
               b.op("Where", pick(2), f(b.op("Unsqueeze", vis_memory, b.const([0]))),
                    f(vis_landmark)))
    vis4 = b.op("Unsqueeze", b.op("Greater", vis, b.const(0.5, _FLOAT)), b.const([1]))
    out = _attention_core(b, "q", "k", "v", vis4, "mask")
    b.nodes.append(helper.make_node("Identity", [out], ["out"]))
    return helper.make_function(
        contract.FUNCTION_DOMAIN, contract.portable_function(contract.SPARSE_OP),
        ["q", "k", "v", "landmarks"], ["out"], b.nodes, [helper.make_opsetid("", opset)],
        ["scale", "num_heads", "strategy", "frame_len", "num_t", "num_n", "num_memory",
         "level_mask"])


def function_protos(opset: int) -> list[onnx.FunctionProto]:
    return [biased_attention_function(opset), sparse_attention_function(opset)]
