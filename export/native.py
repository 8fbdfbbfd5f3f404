"""Dense attention sites -> one standard ONNX `Attention` node each (opset 23).

TensorRT >= 10.14 and TensorRT for RTX parse `Attention` into their own fused IAttention
layer, so a graph whose dense sites are lowered here needs no plugin library of ours.
Sparse sites are not touched (surgery turns them into plugin nodes: a mixed graph), since
their visibility patterns have no dense form without an L x S mask.

The rank-1 bias. A biased site computes softmax(scale * q kᵀ + r_i c_j) v. Materialising
r cᵀ as the layer's additive mask would be an L x S tensor (483 MB per batch row at the
Time-SA site of T=8, N=4, 518²), so the bias is folded into extra head channels instead:

    scale * [q, r/scale] · [k, c] = scale * q·k + r_i c_j

In an FP16 graph those channels are rounded to FP16, which the plugin (FP32 bias) does
not do: a plain extra channel gives |Δ logit| ~ |r c| * 2^-11. Each factor is therefore
split into FP16 hi + lo parts and three channels carry r_hi c_hi + r_hi c_lo + r_lo c_hi,
which leaves only r_lo c_lo (~|r c| * 2^-22) and the MMA's FP32 accumulation
(scripts/native_bias_error.py measures both forms). In an FP32 graph lo is zero.

The channels are zero-padded to 8 so the head size stays a multiple of 8 (tensor-core
MMA granularity, and what the fused kernels require); K and V must have one shape for
IAttention, so V gets 8 zero channels too and the output drops them: +12.5% attention
FLOPs at D = 64 on biased sites only. Unbiased sites are one plain `Attention` node.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from plugins import contract

ATTENTION_OPSET = 23          # first opset with the standard Attention operator
NATIVE_MIN_IR = 11            # the IR version opset 23 belongs to
PAD = 8                       # extra head channels on biased sites (3 used, 5 zero)
SITE_SUFFIX = "::vggt_site"   # the Attention node of a site is named <site><SITE_SUFFIX>

# Ops whose meaning changed between the export opset (>= 18) and 23; bumping the import
# would silently change them, so a graph that has one is refused instead.
_CHANGED_BEFORE_23 = {"GroupNormalization"}


class NativeLoweringError(RuntimeError):
    pass


def native_site_name(site: str) -> str:
    return site + SITE_SUFFIX


def is_native_site(node: onnx.NodeProto) -> bool:
    return node.op_type == "Attention" and node.domain in ("", "ai.onnx") \
        and node.name.endswith(SITE_SUFFIX)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Site:
    """Emits the nodes of one site, every name prefixed by the site's so they stay unique."""

    def __init__(self, name: str, inits: list[onnx.TensorProto]):
        self.name, self.inits, self.nodes, self.n = name, inits, [], 0

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        self.n += 1
        out = out or f"{self.name}::{self.n}_{op_type}"
        self.nodes.append(helper.make_node(op_type, inputs, [out],
                                           name=f"{self.name}::{self.n}_{op_type}", **attrs))
        return out

    def const(self, values, dtype=np.int64) -> str:
        self.n += 1
        name = f"{self.name}::c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def split(self, x: str, like: str) -> tuple[str, str]:
        """x (any float type) -> (hi, lo) in like's type with hi + lo ≈ x to ~2^-22."""
        xf = self.op("Cast", [x], to=TensorProto.FLOAT)
        hi = self.op("CastLike", [xf, like])
        lo = self.op("CastLike", [self.op("Sub", [xf, self.op("Cast", [hi],
                                                                 to=TensorProto.FLOAT)]), like])
        return hi, lo

    def channels(self, parts: list[str], like: str) -> str:
        """[B, L] parts -> [B, H, L, PAD] (zero-padded, broadcast over like's heads)."""
        axes = self.const([1, 3])
        cols = [self.op("Unsqueeze", [p, axes]) for p in parts]       # [B, 1, L, 1] each
        x = self.op("Concat", cols, axis=3)
        x = self.op("Pad", [x, self.const([0, 0, 0, 0, 0, 0, 0, PAD - len(parts)])])
        lead = self.op("Slice", [self.op("Shape", [like]), self.const([0]), self.const([3])])
        return self.op("Expand", [x, self.op("Concat", [lead, self.const([PAD])], axis=0)])


def _lower(node: onnx.NodeProto, inits: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    a = _attrs(node)
    scale = float(a["scale"])
    q, k, v, r, c = node.input
    out = node.output[0]
    s = _Site(node.name, inits)
    if not int(a.get("has_bias", 1)):
        s.op("Attention", [q, k, v], out=out, scale=scale)
        s.nodes[-1].name = native_site_name(node.name)
        return s.nodes
    # r is divided by scale before the split, so the hi/lo parts carry r/scale exactly
    # as the kernel's logit sees it once the layer multiplies by scale again.
    rs = s.op("Div", [s.op("Cast", [r], to=TensorProto.FLOAT),
                      s.const(scale, np.float32)])
    r_hi, r_lo = s.split(rs, q)
    c_hi, c_lo = s.split(c, k)
    q2 = s.op("Concat", [q, s.channels([r_hi, r_hi, r_lo], q)], axis=3)
    k2 = s.op("Concat", [k, s.channels([c_hi, c_lo, c_hi], k)], axis=3)
    v2 = s.op("Pad", [v, s.const([0, 0, 0, 0, 0, 0, 0, PAD])])
    o2 = s.op("Attention", [q2, k2, v2], scale=scale)
    s.nodes[-1].name = native_site_name(node.name)
    s.op("Slice", [o2, s.const([0]), s.const([-PAD]), s.const([3])], out=out)
    return s.nodes


def lower_dense_sites(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """In place: every vggt_mv.fn::BiasedAttention call -> standard nodes ending in one
    `Attention` node. Returns (model, names of the lowered sites). Exact site handles
    only (the call nodes export/portable.py made), never a pattern match."""
    biased_fn = contract.portable_function(contract.BIASED_OP)
    changed = sorted({n.op_type for n in model.graph.node
                      if n.domain in ("", "ai.onnx") and n.op_type in _CHANGED_BEFORE_23})
    if changed:
        raise NativeLoweringError(
            f"the graph uses {', '.join(changed)}, whose meaning changed before opset "
            f"{ATTENTION_OPSET}; the native graph cannot raise its opset import safely")
    new_nodes: list[onnx.NodeProto] = []
    lowered: list[str] = []
    inits: list[onnx.TensorProto] = []
    for node in model.graph.node:
        if node.domain == contract.FUNCTION_DOMAIN and node.op_type == biased_fn:
            new_nodes.extend(_lower(node, inits))
            lowered.append(node.name)
        else:
            new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    model.graph.initializer.extend(inits)
    if lowered:
        imports = [o for o in model.opset_import if o.domain not in ("", "ai.onnx")]
        old = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
                  or [ATTENTION_OPSET])
        del model.opset_import[:]
        model.opset_import.extend(imports)
        model.opset_import.append(helper.make_opsetid("", max(old, ATTENTION_OPSET)))
        model.ir_version = max(model.ir_version, NATIVE_MIN_IR)
        # value_info of a lowered site's old outputs stays valid (same name, same shape).
    return model, lowered
