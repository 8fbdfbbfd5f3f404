"""INT8 explicit quantization (Q/DQ) of a bucket's portable graph, calibrated on real clips.

TensorRT 11 (and 10.3 built strongly typed) takes precision from the ONNX, so INT8 means
explicit QuantizeLinear / DequantizeLinear: activations per tensor, symmetric, scales from
real frames; weights int8 per output channel with a DequantizeLinear. Only weight-bearing
MatMul / Gemm / Conv / ConvTranspose of the main graph are quantized; sensitive layers are
excluded by PyTorch module path (graph_utils.DEFAULT_EXCLUDE: patch embedding, DPT output
convs, camera-head pose layers, mask head) and LayerNorm / Softmax / head activations are
never quantized (not in the op list). Everything not quantized stays FP32.

Two backends, same contract:
  modelopt  NVIDIA ModelOpt ONNX PTQ (`modelopt.onnx.quantization.quantize`, int8,
            calibration_eps=["cpu"], entropy or max calibration, high_precision fp32),
            told exactly which nodes to quantize (op_types + anchored node names).
  builtin   a small explicit pass (percentile of |x| per activation, max per weight
            channel) for machines without ModelOpt.
"auto" uses ModelOpt when it imports and falls back to builtin if ModelOpt fails or breaks
the invariant below; the record says which backend produced the graph.

Keeping the plugin sites intact: attention is a call of a vggt_mv.fn local function
(export/portable.py), not MatMul/Softmax nodes of the main graph. ModelOpt 0.47 runs the
calibration in onnxruntime, which executes the function bodies, and its graph passes
(onnx-graphsurgeon, ORT's QDQ quantizer) treat the calls as opaque nodes of an unknown
op type: it neither inlines nor quantizes them, and since we pass it the weight nodes by
name it has no reason to place Q/DQ at the calls. That is checked, not assumed:
graph_utils.check_attention_intact compares the call names and the byte-serialized
function bodies before/after and rejects Q/DQ directly on a call's inputs or outputs,
then surgery re-checks the count against the manifest. (ModelOpt's *autocast* FP16 path,
by contrast, rejects the calls as custom ops needing TensorRT; see fp16.py.)
Quantize the portable graph, never model.plugins.onnx: ModelOpt cannot load plugin ops.
"""
from __future__ import annotations

import contextlib
import io
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph_utils import (DEFAULT_EXCLUDE, WEIGHT_OPS, AttentionSitesChanged,
                          check_attention_intact, all_names, excluded, replace_nodes, unique_name,
                          weight_node_indices, weight_nodes)

BACKENDS = ("auto", "modelopt", "builtin")
CALIBRATION_METHODS = ("entropy", "max")


class QuantizationError(RuntimeError):
    pass


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


def insert_qdq(model: onnx.ModelProto, ranges: dict[str, float], exclude=DEFAULT_EXCLUDE
               ) -> tuple[onnx.ModelProto, dict]:
    """Builtin backend: Q/DQ from precomputed activation ranges (activation_ranges)."""
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
    replace_nodes(model, new_nodes, new_inits)
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


def targets(model: onnx.ModelProto, exclude=DEFAULT_EXCLUDE) -> tuple[list[str], list[str]]:
    """(names of weight nodes to quantize, names kept FP32 by the exclude patterns)."""
    keep, skip = [], []
    for n in weight_nodes(model):
        (skip if excluded(n, exclude) else keep).append(n.name)
    return keep, skip


def qdq_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """What a Q/DQ graph really contains, read off the graph (not what was asked for)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}

    def from_dq(t: str) -> bool:
        return t in producer and producer[t].op_type == "DequantizeLinear"

    quantized, fp32 = [], []
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx") or n.op_type not in WEIGHT_OPS or len(n.input) < 2:
            continue
        w = n.input[1]
        while w in producer and producer[w].op_type in ("DequantizeLinear", "QuantizeLinear"):
            w = producer[w].input[0]
        if w not in inits:
            continue  # activation x activation product: not a weight layer
        (quantized if from_dq(n.input[0]) and from_dq(n.input[1]) else fp32).append(n.name)
    ops = [n.op_type for n in model.graph.node]
    return {"quantized_nodes": len(quantized), "fp32_weight_nodes": len(fp32),
            "quantize_linear": ops.count("QuantizeLinear"),
            "dequantize_linear": ops.count("DequantizeLinear"),
            "int8_initializers": sum(i.data_type == TensorProto.INT8
                                     for i in model.graph.initializer),
            "fp32_weight_node_names": fp32}


def stack_batches(batches: Sequence[dict[str, np.ndarray]], names: Sequence[str] | None = None
                  ) -> dict[str, np.ndarray]:
    """Concatenates same-named arrays along axis 0 (all names of the first, or `names`)."""
    return {k: np.concatenate([b[k] for b in batches], axis=0)
            for k in (batches[0] if names is None else names)}


def quantize_modelopt(src: str | Path, feeds: Sequence[dict[str, np.ndarray]],
                      nodes: list[str], method: str = "entropy", large: bool = False
                      ) -> onnx.ModelProto:
    """ModelOpt backend: INT8 Q/DQ on exactly `nodes` (names), CPU calibration."""
    from runtime.interrupts import deferred

    try:
        # its import loads C extensions that run Python during their init: a signal raised
        # there aborts the process ("terminate called"), so it waits for the import to end
        with deferred():
            from modelopt.onnx.quantization import quantize as mo_quantize
    except ImportError as e:
        raise QuantizationError("ModelOpt is not installed: pip install nvidia-modelopt "
                                "onnxslim onnxconverter-common lief cppimport (not the [onnx] "
                                "extra, it downgrades onnx/onnxruntime)") from e
    from export.shared_weights import private_copy

    src = Path(src)
    model = onnx.load(str(src), load_external_data=False)
    names = [i.name for i in model.graph.input]
    scratch = Path(tempfile.mkdtemp(prefix=".modelopt-", dir=src.parent))
    out = scratch / "model.int8.onnx"
    # ModelOpt rewrites the graph it is given in place (a kill -9 there left the bucket's
    # model.onnx at 0 bytes): it only ever sees a copy of its own, which also keeps onnx
    # away from the hard-linked shared weights it refuses.
    src = private_copy(src, scratch / "source")
    chatter = io.StringIO()
    try:
        # ModelOpt narrates with tqdm bars and prints; keep them for the error message only.
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            mo_quantize(str(src), quantize_mode="int8",
                        # ModelOpt splits each input along axis 0 into batches of the
                        # model's batch size (1)
                        calibration_data=stack_batches(feeds, names),
                        calibration_method=method, calibration_eps=["cpu"],
                        op_types_to_quantize=list(WEIGHT_OPS),
                        nodes_to_quantize=[f"^{re.escape(n)}$" for n in nodes],
                        use_external_data_format=large, output_path=str(out),
                        high_precision_dtype="fp32", log_level="WARNING",
                        # int8 weight initializers + DequantizeLinear: a quarter of the bytes
                        dq_only=True)
        q = onnx.load(str(out), load_external_data=True)
    except Exception as e:
        tail = "\n".join(chatter.getvalue().strip().splitlines()[-8:])
        raise QuantizationError(f"ModelOpt INT8 quantization failed: {e}\n{tail}") from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # onnxruntime 1.31 reads IR <= 13 and TensorRT 10.3's parser <= 10: keep the source's.
    q.ir_version = model.ir_version
    return q


def quantize_int8(src: str | Path, feeds: Sequence[dict[str, np.ndarray]],
                  exclude=DEFAULT_EXCLUDE, backend: str = "auto", method: str = "entropy",
                  large: bool = False, log: Callable[[str], None] = print
                  ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """INT8 Q/DQ graph of the portable FP32 graph at `src`, calibrated on `feeds`.

    Returns (model, report); the report names the backend, the nodes kept FP32 by the
    exclude patterns and what the graph really holds (qdq_summary).
    """
    if backend not in BACKENDS:
        raise QuantizationError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if method not in CALIBRATION_METHODS:
        raise QuantizationError(f"calibration method must be one of {CALIBRATION_METHODS}")
    feeds = list(feeds)
    if not feeds:
        raise QuantizationError("INT8 calibration needs at least one clip")
    from export.shared_weights import load_model  # onnx.load refuses hard-linked data

    source = load_model(src) if not large else onnx.load(str(src), load_external_data=False)
    nodes, skipped = targets(source, exclude)
    report: dict[str, Any] = {"excluded_by_pattern": skipped}
    q = None
    if backend in ("auto", "modelopt"):
        try:
            q = quantize_modelopt(src, feeds, nodes, method, large)
            check_attention_intact(source, q)
            report["backend"] = "modelopt"
            report["calibration_method"] = method
        except (QuantizationError, AttentionSitesChanged) as e:
            if backend == "modelopt":
                raise QuantizationError(str(e)) from e
            log(f"ModelOpt unusable here ({str(e).splitlines()[0]}); using the builtin Q/DQ pass")
            report["modelopt_error"] = str(e).splitlines()[0]
            q = None
    if q is None:
        if large:
            source = load_model(src)
        ranges = activation_ranges(src, feeds, calibration_tensors(source, exclude))
        pristine = onnx.load(str(src), load_external_data=False)
        q, _ = insert_qdq(source, ranges, exclude)
        check_attention_intact(pristine, q)
        report["backend"] = "builtin"
        report["calibration_method"] = "percentile 99.99 of |x|"
    report.update(qdq_summary(q))
    return q, report
