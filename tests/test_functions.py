"""The portable (standard-op) bodies of the plugin ops, run alone in plain onnxruntime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from export.functions import function_protos
from plugins import contract
from vggt_mv.layers import attention_ops as ops


def run_single(op, inputs, attrs, dtype=np.float32):
    fname = contract.portable_function(op)
    names = list(inputs)
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    vi = []
    for n, a in inputs.items():
        t = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
             np.dtype(np.int32): TensorProto.INT32}[a.dtype]
        vi.append(helper.make_tensor_value_info(n, t, list(a.shape)))
    node = helper.make_node(fname, names, ["out"], domain=contract.FUNCTION_DOMAIN, **attrs)
    graph = helper.make_graph([node], "g", vi, [helper.make_tensor_value_info(
        "out", elem, list(inputs["q"].shape))])
    model = helper.make_model(graph, functions=function_protos(18), opset_imports=[
        helper.make_opsetid("", 18), helper.make_opsetid(contract.FUNCTION_DOMAIN, 1)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0]


@pytest.mark.parametrize("L,S,has_bias,dtype", [(9, 9, 1, np.float32), (20, 13, 1, np.float32),
                                                (17, 17, 0, np.float32), (16, 24, 1, np.float16)])
def test_biased_function(L, S, has_bias, dtype):
    rng = np.random.default_rng(L)
    q = rng.standard_normal((2, 3, L, 8)).astype(dtype)
    k = rng.standard_normal((2, 3, S, 8)).astype(dtype)
    v = rng.standard_normal((2, 3, S, 8)).astype(dtype)
    r = rng.standard_normal((2, L)).astype(np.float32)
    c = (rng.standard_normal((2, S)) * 4).astype(np.float32)
    got = run_single(contract.BIASED_OP, dict(q=q, k=k, v=v, r=r, c=c),
                     dict(scale=0.35, num_heads=3, has_bias=has_bias), dtype)
    t = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    ref = ops.biased_attention_reference(t(q), t(k), t(v), t(r), t(c), 0.35, has_bias).numpy()
    tol = 2e-2 if dtype == np.float16 else 2e-5
    np.testing.assert_allclose(got.astype(np.float32), ref, atol=tol, rtol=tol)
    assert got.dtype == dtype


@pytest.mark.parametrize("strategy,T,N,F,M,levels", [
    ("landmark", 2, 2, 5, 0, (0,)), ("landmark", 3, 1, 4, 0, (0,)),
    ("dilated", 5, 2, 3, 0, (1, 2)), ("dilated", 4, 3, 2, 0, (2,)),
    ("memory_bank", 2, 2, 5, 3, (0,)), ("memory_bank", 1, 3, 4, 2, (0,)),
])
def test_sparse_function(strategy, T, N, F, M, levels):
    L = T * N * F + M
    rng = np.random.default_rng(L)
    q, k, v = (rng.standard_normal((2, 2, L, 8)).astype(np.float32) for _ in range(3))
    if strategy == "landmark":
        landmarks = np.stack([rng.choice(L, 4, replace=False) for _ in range(2)]).astype(np.int32)
    else:
        landmarks = np.zeros((2, 1), np.int32)
    mask = ops.levels_to_mask(levels)
    sid = ops.STRATEGIES[strategy]
    got = run_single(contract.SPARSE_OP, dict(q=q, k=k, v=v, landmarks=landmarks),
                     dict(scale=0.3, num_heads=2, strategy=sid, frame_len=F, num_t=T, num_n=N,
                          num_memory=M, level_mask=mask))
    t = torch.from_numpy
    ref = ops.sparse_attention_reference(t(q), t(k), t(v), t(landmarks), 0.3, sid, F, T, N, M,
                                         mask).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=2e-5)
    dense = ops.biased_attention_reference(t(q), t(k), t(v), t(q[:, 0, :, 0]), t(q[:, 0, :, 0]),
                                           0.3, 0).numpy()
    assert np.abs(got - dense).max() > 1e-3  # the pattern really restricts attention
