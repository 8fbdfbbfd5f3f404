"""INT8 explicit quantization (Q/DQ) of a bucket's portable graph, calibrated on real clips.

What TensorRT 11 (and 10.3 in strongly typed mode) needs is explicit Q/DQ: here every
weight-bearing MatMul / Gemm / Conv gets
  activation:  QuantizeLinear -> DequantizeLinear, per-tensor symmetric, scale from the
               calibration set (percentile of |x| over real frames),
  weight:      int8 initializer -> DequantizeLinear, per output channel, symmetric.
Attention sites are vggt_mv.fn function calls, not MatMul nodes of the main graph, so the
quantizer never sees them and surgery still finds every site; they stay FP32 (and become
FP16/FP32 plugins). Sensitive layers are excluded by module path (graph_utils).

ModelOpt's ONNX PTQ (TOOLCHAIN_FACTS) would need onnx/onnxruntime pins and inlines or
rejects our local functions; this explicit pass is small, deterministic, and keeps the
plugin sites intact by construction.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph_utils import (DEFAULT_EXCLUDE, all_names, excluded, unique_name, weight_node_indices,
                          weight_nodes)


def activation_ranges(model_path: str | Path, feeds: Iterable[dict[str, np.ndarray]],
                      tensors: list[str], percentile: float = 99.99,
                      chunk: int = 64) -> dict[str, float]:
    """|x| percentile of each tensor over all calibration feeds (onnxruntime CPU).

    Tensors are exposed as extra graph outputs a chunk at a time, so memory stays bounded
    by `chunk` activations instead of the whole network's.
    """
    import onnxruntime as ort

    feeds = list(feeds)
    model = onnx.load(str(model_path), load_external_data=False)
    base_dir = str(Path(model_path).parent)
    out: dict[str, float] = {}
    for s in range(0, len(tensors), chunk):
        part = tensors[s:s + chunk]
        m = onnx.ModelProto()
        m.CopyFrom(model)
        del m.graph.output[:]
        m.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                              for t in part)
        tmp = Path(base_dir) / f".calib_probe_{s}.onnx"
        try:
            onnx.save(m, str(tmp))
            sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            samples: dict[str, list[np.ndarray]] = {t: [] for t in part}
            names = [i.name for i in sess.get_inputs()]
            for f in feeds:
                for t, v in zip(part, sess.run(part, {k: f[k] for k in names})):
                    samples[t].append(np.abs(v).ravel())
            for t, vals in samples.items():
                out[t] = float(np.percentile(np.concatenate(vals), percentile))
        finally:
            tmp.unlink(missing_ok=True)
    return out


def _per_channel_axis(op: str, node: onnx.NodeProto) -> int:
    if op == "MatMul":
        return 1      # W [K, N_out]
    if op == "ConvTranspose":
        return 1      # W [C_in, C_out / g, ...]
    if op == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0          # Conv: W [C_out, C_in / g, ...]


def quantize_int8(model: onnx.ModelProto, ranges: dict[str, float], exclude=DEFAULT_EXCLUDE
                  ) -> tuple[onnx.ModelProto, dict]:
    inits = {i.name: i for i in model.graph.initializer}
    taken = all_names(model)
    candidates = weight_node_indices(model)
    target = {k for k in candidates if not excluded(model.graph.node[k], exclude)
              and model.graph.node[k].input[0] in ranges}
    qdq_of: dict[str, str] = {}
    wq_of: dict[tuple[str, int], str] = {}
    new_nodes, new_inits = [], []
    zero8 = unique_name("qdq_zero_int8", taken)
    new_inits.append(numpy_helper.from_array(np.array(0, np.int8), zero8))

    for k, node in enumerate(model.graph.node):
        if k not in target:
            new_nodes.append(node)
            continue
        x = node.input[0]
        if x not in qdq_of:
            amax = max(ranges[x], 1e-8)
            s_name = unique_name(f"{x}_scale", taken)
            new_inits.append(numpy_helper.from_array(np.array(amax / 127.0, np.float32), s_name))
            q, dq = unique_name(f"{x}_q", taken), unique_name(f"{x}_dq", taken)
            new_nodes.append(helper.make_node("QuantizeLinear", [x, s_name, zero8], [q],
                                              name=unique_name(f"{node.name}_act_q", taken)))
            new_nodes.append(helper.make_node("DequantizeLinear", [q, s_name, zero8], [dq],
                                              name=unique_name(f"{node.name}_act_dq", taken)))
            qdq_of[x] = dq
        w = node.input[1]
        axis = _per_channel_axis(node.op_type, node)
        key = (w, axis)
        if key not in wq_of:
            W = numpy_helper.to_array(inits[w]).astype(np.float32)
            red = tuple(i for i in range(W.ndim) if i != axis)
            scale = np.maximum(np.abs(W).max(axis=red), 1e-12) / 127.0
            shape = [1] * W.ndim
            shape[axis] = -1
            Wq = np.clip(np.round(W / scale.reshape(shape)), -127, 127).astype(np.int8)
            wq, ws, wz = (unique_name(f"{w}_{sfx}", taken) for sfx in ("int8", "scale", "zero"))
            new_inits += [numpy_helper.from_array(Wq, wq),
                          numpy_helper.from_array(scale.astype(np.float32), ws),
                          numpy_helper.from_array(np.zeros_like(scale, np.int8), wz)]
            wdq = unique_name(f"{w}_dq", taken)
            new_nodes.append(helper.make_node("DequantizeLinear", [wq, ws, wz], [wdq], axis=axis,
                                              name=unique_name(f"{w}_w_dq", taken)))
            wq_of[key] = wdq
        node.input[0] = qdq_of[x]
        node.input[1] = wq_of[key]
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + new_inits)
    return model, {"quantized_nodes": len(target),
                   "excluded_nodes": len(candidates) - len(target),
                   "activation_tensors": len(qdq_of)}


def calibration_tensors(model: onnx.ModelProto, exclude=DEFAULT_EXCLUDE) -> list[str]:
    seen, out = set(), []
    for n in weight_nodes(model):
        if not excluded(n, exclude) and n.input[0] not in seen:
            seen.add(n.input[0])
            out.append(n.input[0])
    return out
