"""CPU reference of the plugin ops: tiled numpy == torch reference, and in onnxruntime."""
import resource
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from plugins import contract
from plugins.reference import numpy_ref
from vggt_mv.layers import attention_ops as ops


def torch_biased(q, k, v, r, c, scale, has_bias):
    t = torch.from_numpy
    return ops.biased_attention_reference(t(q), t(k), t(v), t(r), t(c), scale, has_bias).numpy()


@pytest.mark.parametrize("L,S,D,has_bias,mag", [
    (7, 7, 8, 1, 1.0), (1500, 1100, 16, 1, 1.0), (1025, 2049, 8, 0, 1.0),
    (300, 300, 64, 1, 30.0),  # large-magnitude logits: online softmax must stay stable
])
def test_tiled_biased_matches_reference(L, S, D, has_bias, mag):
    rng = np.random.default_rng(L)
    q = (rng.standard_normal((1, 2, L, D)) * mag).astype(np.float32)
    k = (rng.standard_normal((1, 2, S, D)) * mag).astype(np.float32)
    v = rng.standard_normal((1, 2, S, D)).astype(np.float32)
    r = rng.standard_normal((1, L)).astype(np.float32)
    c = (rng.standard_normal((1, S)) * 50).astype(np.float32)
    got = numpy_ref.biased_attention(q, k, v, r, c, D ** -0.5, has_bias)
    ref = torch_biased(q, k, v, r, c, D ** -0.5, has_bias)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, atol=5e-4 if mag > 1 else 2e-5, rtol=1e-4)


@pytest.mark.parametrize("strategy,T,N,F,M,levels", [
    ("landmark", 2, 2, 7, 0, (0,)), ("dilated", 5, 2, 3, 0, (1, 2)),
    ("dilated", 6, 2, 3, 0, (1, 4)), ("memory_bank", 2, 3, 5, 4, (0,)),
])
def test_sparse_matches_reference(strategy, T, N, F, M, levels):
    L = T * N * F + M
    rng = np.random.default_rng(L)
    q, k, v = (rng.standard_normal((2, 2, L, 8)).astype(np.float32) for _ in range(3))
    lm = np.stack([np.r_[0, 3, rng.choice(np.arange(F, L), 4, replace=False)]
                   for _ in range(2)]).astype(np.int32)
    sid, mask = ops.STRATEGIES[strategy], ops.levels_to_mask(levels)
    got = numpy_ref.sparse_attention(q, k, v, lm, 0.3, sid, F, T, N, M, mask)
    t = torch.from_numpy
    ref = ops.sparse_attention_reference(t(q), t(k), t(v), t(lm), 0.3, sid, F, T, N, M,
                                         mask).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=2e-5)


def plugin_model(op, inputs, attrs):
    vi = [helper.make_tensor_value_info(n, TensorProto.INT32 if a.dtype == np.int32
                                        else TensorProto.FLOAT, list(a.shape))
          for n, a in inputs.items()]
    node = helper.make_node(op, list(inputs), ["out"], domain=contract.ONNX_DOMAIN,
                            plugin_version="1", plugin_namespace="vggt_mv", **attrs)
    g = helper.make_graph([node], "g", vi, [helper.make_tensor_value_info(
        "out", TensorProto.FLOAT, list(inputs["q"].shape))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                            helper.make_opsetid(contract.ONNX_DOMAIN, 1)])
    m.ir_version = 10
    return m.SerializeToString()


def test_onnxruntime_and_polygraphy_run_plugin_nodes(tmp_path):
    from plugins.reference.ort_ops import make_session, polygraphy_runner

    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, 2, 40, 8)).astype(np.float32) for n in "qkv"}
    feeds["r"] = rng.standard_normal((1, 40)).astype(np.float32)
    feeds["c"] = rng.standard_normal((1, 40)).astype(np.float32)
    model = plugin_model(contract.BIASED_OP, feeds, dict(scale=0.3, num_heads=2, has_bias=1))
    out = make_session(model).run(None, feeds)[0]
    np.testing.assert_allclose(out, torch_biased(*feeds.values(), 0.3, 1), atol=2e-5)
    path = tmp_path / "m.onnx"
    path.write_bytes(model)
    with polygraphy_runner(path) as runner:
        got = runner.infer(feeds)["out"]
    np.testing.assert_allclose(got, out, atol=1e-6)
    sfeeds = {n: rng.standard_normal((1, 2, 24, 8)).astype(np.float32) for n in "qkv"}
    sfeeds["landmarks"] = np.zeros((1, 1), np.int32)
    smodel = plugin_model(contract.SPARSE_OP, sfeeds, dict(
        scale=0.3, num_heads=2, strategy=1, frame_len=3, num_t=4, num_n=2, num_memory=0,
        level_mask=0b10))
    got = make_session(smodel).run(None, sfeeds)[0]
    t = torch.from_numpy
    ref = ops.sparse_attention_reference(t(sfeeds["q"]), t(sfeeds["k"]), t(sfeeds["v"]),
                                         t(sfeeds["landmarks"]), 0.3, 1, 3, 4, 2, 0, 0b10)
    np.testing.assert_allclose(got, ref.numpy(), atol=2e-5)


def test_node_without_required_attribute_fails_clearly():
    from plugins.reference.ort_ops import make_session

    feeds = {n: np.zeros((1, 1, 4, 8), np.float32) for n in "qkv"}
    feeds["r"] = feeds["c"] = np.zeros((1, 4), np.float32)
    model = plugin_model(contract.BIASED_OP, feeds, dict(num_heads=1, has_bias=1))
    with pytest.raises(Exception, match="scale"):
        make_session(model).run(None, feeds)


def test_time_sa_sized_call_is_memory_bounded():
    """L = 10,992 (Time-SA at T=8, N=4, 518x518): dense fp32 logits for 2 heads would be
    ~970 MB; the tiled reference must stay far below that."""
    code = (
        "import numpy as np, resource\n"
        "from plugins.reference import numpy_ref\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "rng = np.random.default_rng(0)\n"
        "q = rng.standard_normal((1, 2, 10992, 64), dtype=np.float32)\n"
        "r = np.ones((1, 10992), np.float32)\n"
        "out = numpy_ref.biased_attention(q, q, q, r, r, 0.125, 1)\n"
        "assert np.isfinite(out).all()\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown_mb = float(res.stdout.strip().splitlines()[-1])
    assert grown_mb < 300, f"reference grew {grown_mb:.0f} MB: is it materializing L x L?"
