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


def all_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
    for n in model.graph.node:
        names.update(n.input)
        names.update(n.output)
        names.add(n.name)
    return names
