"""FP16 and INT8 graphs of a tiny bucket, calibrated and evaluated on real frames."""
import json

import numpy as np
import onnx
import pytest
import torch

from calib.dataset import build_calibration_set
from calib.precision import PrecisionError, make_precision
from export.buckets import Bucket
from export.exporter import export_bucket
from plugins import contract
from vggt_mv.config import tiny_config
from vggt_mv.models import VGGTMV


@pytest.fixture(scope="module")
def bucket(tmp_path_factory, mv_scene):
    root = tmp_path_factory.mktemp("q")
    torch.manual_seed(0)
    res = export_bucket(VGGTMV(tiny_config()).eval(), Bucket(2, 2, 42, 56), root)
    npz = build_calibration_set(mv_scene, 2, 2, (42, 56), 6, root / "calib.npz")
    return res.folder, npz


@pytest.fixture(scope="module")
def records(bucket):
    folder, npz = bucket
    return {m: make_precision(folder, m, npz, log=lambda s: None) for m in ("fp16", "int8")}


def ops(path):
    m = onnx.load(str(path))
    return m, [n.op_type for n in m.graph.node]


def test_fp16_graph_keeps_sensitive_ops_fp32(bucket, records):
    folder, _ = bucket
    rec = records["fp16"]
    assert rec["passed"] and rec["conversion"]["converted_nodes"] > 50
    assert rec["conversion"]["excluded_nodes"] > 0            # DPT outputs, patch embed, ...
    m, types = ops(folder / "model.fp16.onnx")
    half = {i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert half
    for n in m.graph.node:                                       # norms and softmax see FP32
        if n.op_type in ("LayerNormalization", "Softmax"):
            assert not set(n.input) & half
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in m.graph.output)


def test_int8_graph_has_qdq_around_matmuls_not_attention(bucket, records):
    folder, _ = bucket
    rec = records["int8"]
    assert rec["passed"] and rec["calibration"]["calibration_clips"] == 4
    assert rec["calibration"]["held_out_clips"] == 2
    m, types = ops(folder / "model.int8.onnx")
    assert types.count("QuantizeLinear") == rec["conversion"]["activation_tensors"]
    assert types.count("DequantizeLinear") >= rec["conversion"]["quantized_nodes"]
    # attention stays in the function bodies, untouched by the quantizer
    for f in m.functions:
        assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in f.node}
    calls = [n for n in m.graph.node if n.domain == contract.FUNCTION_DOMAIN]
    produced_by = {o: n.op_type for n in m.graph.node for o in n.output}
    assert calls and all(produced_by.get(i) != "DequantizeLinear" for n in calls for i in n.input)
    int8 = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) > rec["conversion"]["quantized_nodes"] // 2


@pytest.mark.parametrize("mode", ["fp16", "int8"])
def test_surgery_keeps_plugin_counts_and_plugin_graph_runs(bucket, records, mode):
    folder, _ = bucket
    manifest = json.loads((folder / "manifest.json").read_text())
    rec = records[mode]
    assert rec["surgery"]["totals"] == manifest["attention_sites"]
    plug = onnx.load(str(folder / f"model.{mode}.plugins.onnx"))
    assert sum(n.domain == contract.ONNX_DOMAIN for n in plug.graph.node) == \
        manifest["attention_sites"][contract.BIASED_OP]
    acc = rec["accuracy_vs_fp32"][f"model.{mode}.plugins.onnx"]
    assert acc["passed"]
    errs = {r["output"]: r["max_abs"] for r in acc["rows"]}
    # quantization really changed the numbers, and INT8 more than FP16
    assert errs["pose_enc"] > 0
    if mode == "int8":
        fp16_errs = {r["output"]: r["max_abs"] for r in
                     records["fp16"]["accuracy_vs_fp32"]["model.fp16.plugins.onnx"]["rows"]}
        assert errs["depth"] > fp16_errs["depth"]
    assert (folder / f"precision_{mode}.json").is_file()


def test_mismatched_calibration_set(bucket, tmp_path, mv_scene):
    folder, _ = bucket
    wrong = build_calibration_set(mv_scene, 3, 2, (42, 56), 2, tmp_path / "wrong.npz")
    with pytest.raises(Exception, match="T|shape|match"):
        make_precision(folder, "int8", wrong, log=lambda s: None)


def test_int8_without_calibration_is_refused(bucket):
    folder, _ = bucket
    with pytest.raises(PrecisionError, match="calibration set"):
        make_precision(folder, "int8", None, log=lambda s: None)


def test_fp16_weight_overflow_stays_fp32():
    from onnx import TensorProto, helper, numpy_helper

    from calib.fp16 import convert_fp16

    w = numpy_helper.from_array(np.full((4, 4), 1e6, np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    m, rep = convert_fp16(helper.make_model(g))
    assert rep["converted_nodes"] == 0 and rep["excluded_nodes"] == 1
