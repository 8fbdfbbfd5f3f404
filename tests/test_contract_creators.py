"""The contract's build-time plugin creators (runtime/trt/contract_creators.py) called directly,
in this process, with TensorRT for RTX's Python plugin classes: what the parser route in
tests/test_trt_rtx_build.py exercises through real graphs, here per rule (field names and
types, refusals with their reasons, the format combinations the C++ plugin accepts)."""
import importlib.util

import numpy as np
import pytest

from plugins import contract

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="TensorRT for RTX not installed (pip install -e .[test])")

BIASED, SPARSE = "VggtBiasedAttention", "VggtSparseAttention"
_KEEP: list = []


@pytest.fixture(scope="module")
def trt():
    import tensorrt_rtx

    return tensorrt_rtx


def fields(trt, op, drop=(), **override):
    """A PluginFieldCollection like the parser builds for a contract-following node."""
    good = {BIASED: {"scale": 0.25, "num_heads": 4, "has_bias": 1},
            SPARSE: {"scale": 0.25, "num_heads": 4, "strategy": 0, "frame_len": 17, "num_t": 2,
                     "num_n": 2, "num_memory": 0, "level_mask": 0}}[op]
    good.update(plugin_version=contract.plugin_version(op), plugin_namespace=contract.PLUGIN_NAMESPACE)
    good.update(override)
    out = []
    for name, value in good.items():
        if name in drop:
            continue
        if isinstance(value, str):
            data, kind = np.frombuffer(value.encode() + b"\0", np.int8), trt.PluginFieldType.CHAR
        elif isinstance(value, float):
            data, kind = np.array([value], np.float32), trt.PluginFieldType.FLOAT32
        else:
            data, kind = np.array([value], np.int32), trt.PluginFieldType.INT32
        _KEEP.append(data)  # a PluginField points at the array's memory without owning it
        out.append(trt.PluginField(name, data, kind))
    return trt.PluginFieldCollection(out)


def make(trt, op, fc):
    from runtime.trt.contract_creators import make_creator

    return make_creator(trt, op).create_plugin("node0", fc, trt.TensorRTPhase.BUILD)


@pytest.mark.parametrize("op", [BIASED, SPARSE])
def test_creator_identity_and_fields_follow_the_contract(trt, op):
    from runtime.trt.contract_creators import make_creator

    c = make_creator(trt, op)
    assert (c.name, c.plugin_version, c.plugin_namespace) == (
        op, contract.plugin_version(op), contract.PLUGIN_NAMESPACE)
    kinds = {"int": trt.PluginFieldType.INT32, "float": trt.PluginFieldType.FLOAT32}
    assert {f.name: f.type for f in c.field_names} == {
        k: kinds[a["type"]] for k, a in contract.op_spec(op)["attributes"].items()}


@pytest.mark.parametrize("op", [BIASED, SPARSE])
def test_plugin_serializes_what_it_was_given(trt, op):
    from runtime.trt.contract_creators import make_creator

    plugin = make(trt, op, fields(trt, op, num_heads=6))
    assert plugin.values["num_heads"] == 6 and plugin.values["scale"] == pytest.approx(0.25)
    again = make_creator(trt, op).create_plugin("node0", plugin.get_fields_to_serialize(),
                                                trt.TensorRTPhase.RUNTIME)
    assert again.values == plugin.values
    assert plugin.clone().values == plugin.values
    with pytest.raises(RuntimeError, match="no kernel"):
        plugin.enqueue(None, None, None, None, None, None)


@pytest.mark.parametrize("broken, reason", [
    ({"drop": ("scale",)}, "missing attribute 'scale'"),
    ({"bogus": 3}, "unknown attribute 'bogus'"),
    ({"scale": 1}, "attribute 'scale' arrives as INT32.*float"),          # ONNX INT, not FLOAT
    ({"num_heads": 4.0}, "attribute 'num_heads' arrives as FLOAT32.*int"),
    ({"plugin_version": "2"}, "plugin_version '2' != '1'"),
])
def test_broken_attributes_are_refused_with_the_reason(trt, broken, reason):
    from runtime.trt.contract_creators import REFUSALS

    drop = broken.pop("drop", ())
    REFUSALS.clear()
    with pytest.raises(ValueError, match=reason) as e:
        make(trt, BIASED, fields(trt, BIASED, drop=drop, **broken))
    assert "VggtBiasedAttention node 'node0' breaks contract" in str(e.value)
    assert str(e.value).count(";") == 0, "one reason, said once"
    assert REFUSALS == [str(e.value)]  # kept for the caller: the parser drops the text
    REFUSALS.clear()


def test_sparse_strategy_outside_the_contract_is_refused(trt):
    with pytest.raises(ValueError, match="strategy 7"):
        make(trt, SPARSE, fields(trt, SPARSE, strategy=7))


def _descs(trt, types, fmt=None):
    out = []
    for t in types:
        d = trt.DynamicPluginTensorDesc()
        d.desc.type = t
        d.desc.format = fmt or trt.TensorFormat.LINEAR
        out.append(d)
    return out


def _accepts(trt, op, types, fmt=None):
    plugin = make(trt, op, fields(trt, op))
    descs = _descs(trt, types, fmt)
    n_in = len(types) - 1
    return all(plugin.supports_format_combination(pos, descs, n_in) for pos in range(len(types)))


def test_format_combinations_are_the_contracts(trt):
    F, H, I, B = trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.INT32, trt.DataType.BF16
    assert _accepts(trt, BIASED, [F, F, F, F, F, F])
    assert _accepts(trt, BIASED, [H, H, H, F, F, H])    # FP16 q/k/v/out, r and c stay FP32
    assert not _accepts(trt, BIASED, [H, F, H, F, F, H])  # k must follow q
    assert not _accepts(trt, BIASED, [H, H, H, H, F, H])  # r is FP32 only
    assert not _accepts(trt, BIASED, [H, H, H, F, F, F])  # out has q's type
    assert not _accepts(trt, BIASED, [B, B, B, F, F, B])  # no BF16 in the contract
    assert _accepts(trt, SPARSE, [F, F, F, I, F])
    assert _accepts(trt, SPARSE, [H, H, H, I, H])
    assert not _accepts(trt, SPARSE, [F, F, F, F, F])     # landmarks are int32
    assert not _accepts(trt, BIASED, [F] * 6, fmt=trt.TensorFormat.CHW32)  # linear only
