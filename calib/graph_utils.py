"""Small ONNX helpers shared by the FP16 and INT8 converters."""
from __future__ import annotations

import ast
import fnmatch

import onnx

WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")

# Layers whose error the heads amplify or that see raw pixels: kept in FP32 by default.
# Matched against the PyTorch module path the exporter records on every node.
DEFAULT_EXCLUDE = (
    "*patch_embed.patch_embed.proj",     # raw pixels in, every token depends on it
    "*output_conv2*",                    # DPT head outputs feed exp / inv_log activations
    "*camera_head.pose_branch*",         # pose regression output
    "*camera_head.embed_pose",
    "*camera_head.poseLN_modulation*",
    "*spatial_mask_head*",               # mask logits become attention biases
)


def module_path(node: onnx.NodeProto) -> str:
    """The innermost PyTorch module that produced a node (torch.onnx dynamo metadata)."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(p.value)
                # [..., 'model.point_head.scratch.output_conv2.0', 'conv2d_62']: the last
                # entry names the op, the one before it the module
                return scopes[-2] if len(scopes) >= 2 else ""
            except (ValueError, SyntaxError):
                return ""
    return ""


def excluded(node: onnx.NodeProto, patterns) -> bool:
    path = module_path(node)
    return any(fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(node.name, pat) for pat in patterns)


def weight_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Top-level MatMul / Gemm / Conv / ConvTranspose nodes whose second input is a weight
    initializer. Attention lives in vggt_mv.fn functions, so this never touches it."""
    return [model.graph.node[i] for i in weight_node_indices(model)]


def weight_node_indices(model: onnx.ModelProto) -> list[int]:
    """Positions (protobuf wrappers have no stable identity, positions do)."""
    inits = {i.name for i in model.graph.initializer}
    return [k for k, n in enumerate(model.graph.node)
            if n.domain in ("", "ai.onnx") and n.op_type in WEIGHT_OPS and len(n.input) > 1
            and n.input[1] in inits]


def unique_name(base: str, taken: set[str]) -> str:
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def replace_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto],
                  new_initializers: list[onnx.TensorProto]) -> None:
    """Swap in a rewritten node list and its new initializers, dropping initializers no
    node reads any more (the FP32 weights a conversion replaced)."""
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + list(new_initializers))


def all_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
    for n in model.graph.node:
        names.update(n.input)
        names.update(n.output)
        names.add(n.name)
    return names


class AttentionSitesChanged(RuntimeError):
    """A converter touched the vggt_mv.fn attention functions or the calls to them."""


def attention_calls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    from plugins import contract

    return [n for n in model.graph.node if n.domain == contract.FUNCTION_DOMAIN]


def check_attention_intact(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """Raises AttentionSitesChanged unless `after` still calls the same attention functions,
    with bodies byte-identical to `before`, and no QuantizeLinear / DequantizeLinear sits
    directly on a call's inputs or outputs (the plugins take FP16/FP32, not INT8)."""
    problems = []
    names_before = sorted(n.name for n in attention_calls(before))
    names_after = sorted(n.name for n in attention_calls(after))
    if names_before != names_after:
        lost = sorted(set(names_before) - set(names_after))
        problems.append(f"{len(names_before)} attention calls before, {len(names_after)} "
                        f"after (missing: {', '.join(lost[:5]) or '-'})")
    bodies = {(f.domain, f.name): _canonical(f) for f in after.functions}
    for f in before.functions:
        if bodies.get((f.domain, f.name)) != _canonical(f):
            problems.append(f"function {f.domain}::{f.name} was removed or rewritten")
    producer = {o: n.op_type for n in after.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in after.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    for call in attention_calls(after):
        if any(producer.get(i) == "DequantizeLinear" for i in call.input):
            problems.append(f"{call.name}: an input comes straight from DequantizeLinear")
        if any("QuantizeLinear" in consumers.get(o, []) for o in call.output):
            problems.append(f"{call.name}: an output goes straight into QuantizeLinear")
    if problems:
        raise AttentionSitesChanged("; ".join(problems[:10]))


def _canonical(f: onnx.FunctionProto) -> tuple:
    # onnx-graphsurgeon re-sorts function bodies topologically: node order is not meaning.
    return (tuple(f.input), tuple(f.output), tuple(f.attribute),
            tuple(a.SerializeToString(deterministic=True) for a in f.attribute_proto),
            tuple(sorted((o.domain, o.version) for o in f.opset_import)),
            tuple(sorted(n.SerializeToString(deterministic=True) for n in f.node)))
