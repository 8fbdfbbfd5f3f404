"""export/: bucketed ONNX, surgery and CPU validation on the tiny preset (real frames)."""
import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from export.buckets import Bucket, BucketError, make_buckets
from export.exporter import ExportError, export_bucket
from runtime.layout import ManifestError, load_manifest
from export.pipeline import ExportOptions, ValidationError, make_validator
from export.shared_weights import load_model
from export.surgery import SurgeryError, surgery
from plugins import contract
from vggt_mv.config import tiny_config
from vggt_mv.models import VGGTMV


def tiny_model(**opt):
    torch.manual_seed(0)
    return VGGTMV(tiny_config(**opt)).eval()


def do_export(model, bucket, root, inputs="random", **kw):
    opts = ExportOptions(inputs=str(inputs))
    logs = []
    res = export_bucket(model, bucket, root, weights={"source": "random init, seed 0"},
                        log=logs.append, validate_fn=make_validator(model, bucket, opts,
                                                                    logs.append), **kw)
    return res, "\n".join(logs)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mv_scene):
    root = tmp_path_factory.mktemp("buckets")
    model = tiny_model()
    res, log = do_export(model, Bucket(2, 2, 42, 56), root, inputs=mv_scene)
    return model, res, log


def test_bucket_folder_contents(exported):
    model, res, log = exported
    names = {p.name for p in res.folder.iterdir()}
    assert names == {"model.onnx", "model.plugins.onnx", "model.native.onnx", "manifest.json"}
    m = load_manifest(res.folder)
    assert m["bucket"]["T"] == 2 and m["bucket"]["N"] == 2
    assert m["attention_sites"] == {contract.BIASED_OP: 14, contract.SPARSE_OP: 0}
    assert m["surgery"]["replaced"][contract.BIASED_OP] == 14
    assert m["validation"]["passed"] and "real frames" in m["validation"]["inputs"]
    assert {f["name"] for f in m["files"]} == {"model.onnx", "model.plugins.onnx",
                                               "model.native.onnx"}
    assert m["native_surgery"]["native"][contract.BIASED_OP] == 14
    assert m["validation"]["graphs"]["model.native.onnx"]["passed"]
    assert m["outputs"]["depth"]["shape"] == [1, 2, 2, 42, 56, 1]
    assert "random init" in m["weights"]["source"]
    assert "PASS" in log and "FAIL" not in log


def test_graphs_are_what_they_claim(exported):
    _, res, _ = exported
    portable = onnx.load(str(res.folder / "model.onnx"))
    plug = onnx.load(str(res.folder / "model.plugins.onnx"))
    onnx.checker.check_model(portable, full_check=True)
    onnx.checker.check_model(plug)
    # portable: only standard ops + our local functions, no plugin node
    assert not [n for n in portable.graph.node if n.domain == contract.ONNX_DOMAIN]
    calls = [n for n in portable.graph.node if n.domain == contract.FUNCTION_DOMAIN]
    assert len(calls) == 14 and {f.name for f in portable.functions} == {"BiasedAttention"}
    for f in portable.functions:
        assert all(n.domain in ("", "ai.onnx") for n in f.node)
    plugin_nodes = [n for n in plug.graph.node if n.domain == contract.ONNX_DOMAIN]
    assert len(plugin_nodes) == 14 and not plug.functions
    for n in plugin_nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"vggt_mv"
        assert -2**31 <= attrs["num_heads"] < 2**31
    # no float64 anywhere, no sequence outputs
    for t in list(plug.graph.initializer):
        assert t.data_type != onnx.TensorProto.DOUBLE
    for o in plug.graph.output:
        assert o.type.HasField("tensor_type")


def test_surgery_is_idempotent_and_exact(exported):
    _, res, _ = exported
    plug = onnx.load(str(res.folder / "model.plugins.onnx"))
    again, report = surgery(plug, {contract.BIASED_OP: 14, contract.SPARSE_OP: 0})
    assert report.replaced[contract.BIASED_OP] == 0
    assert report.already_plugins[contract.BIASED_OP] == 14
    assert [(n.op_type, n.domain) for n in again.graph.node] == \
        [(n.op_type, n.domain) for n in plug.graph.node]
    portable = onnx.load(str(res.folder / "model.onnx"))
    with pytest.raises(SurgeryError, match="reports 15 sites, graph has 14"):
        surgery(portable, {contract.BIASED_OP: 15, contract.SPARSE_OP: 0})


@pytest.mark.parametrize("bucket,opt", [
    (Bucket(1, 3, 28, 42), {}),                                  # T = 1, non-square
    (Bucket(2, 1, 42, 28), {"sparse_global": True}),             # N = 1, landmark
    (Bucket(3, 2, 28, 28, ext_mask=True),
     {"sparse_global": True, "sparse_strategy": "dilated", "dual_stream": True}),
    (Bucket(2, 2, 28, 28), {"sparse_global": True, "sparse_strategy": "memory_bank"}),
    (Bucket(3, 1, 28, 42, single_view=True), {}),                # VGGT layout
])
def test_buckets_and_options_validate(tmp_path, mv_scene, bucket, opt):
    model = tiny_model(**opt)
    res, log = do_export(model, bucket, tmp_path, inputs=mv_scene)
    m = res.manifest
    assert m["validation"]["passed"], log
    sites = model.attention_sites(bucket.images_shape, with_ext_mask=bucket.ext_mask)
    assert m["attention_sites"][contract.SPARSE_OP] == sites["sparse_attention"]
    assert m["surgery"]["totals"][contract.BIASED_OP] == sites["biased_attention"]


@pytest.mark.parametrize("route,graph,op", [
    ("plugin", "model.plugins.onnx", contract.BIASED_OP),
    ("native", "model.native.onnx", "Attention")])
def test_validation_catches_a_broken_graph(tmp_path, monkeypatch, route, graph, op):
    """Corrupt one attention site's scale in one route's graph: that graph must fail
    validation and the bucket folder must not be written."""
    import export.exporter as ex

    real = ex.surgery

    def bad_surgery(m, expected, sites=None, route="plugin"):
        out, rep = real(m, expected, sites, route=route)
        for n in out.graph.node:
            if n.op_type == op and route == broken:
                for a in n.attribute:
                    if a.name == "scale":
                        a.f *= 3.0
                break
        return out, rep

    broken = route
    monkeypatch.setattr(ex, "surgery", bad_surgery)
    with pytest.raises(ValidationError, match=graph):
        do_export(tiny_model(), Bucket(1, 2, 28, 28), tmp_path)
    assert not (tmp_path / "T1_N2_28x28").exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_interrupted_export_leaves_previous_bucket(tmp_path, monkeypatch):
    model = tiny_model()
    b = Bucket(1, 2, 28, 28)
    res, _ = do_export(model, b, tmp_path)
    before = (res.folder / "manifest.json").read_text()
    import export.exporter as ex

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "to_portable", boom)
    with pytest.raises(KeyboardInterrupt):
        do_export(model, b, tmp_path)
    assert (res.folder / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [b.name]


def test_external_data_is_shared_and_checked(tmp_path, monkeypatch):
    import export.exporter as ex

    monkeypatch.setattr(ex, "EXTERNAL_DATA_BYTES", 0)
    res, _ = do_export(tiny_model(), Bucket(1, 2, 28, 28), tmp_path)
    files = {p.name for p in res.folder.iterdir()}
    assert "model.onnx.data" in files and res.manifest["external_data"] == "model.onnx.data"
    # the graph keeps only the bucket-only constants (kilobytes), never the weights
    assert (res.folder / "model.plugins.onnx").stat().st_size < \
        res.manifest["shared_weights"]["bytes"] / 10
    # both graphs resolve their weights from the one data file
    for g in ("model.onnx", "model.plugins.onnx"):
        m = load_model(res.folder / g)  # onnx.load refuses the hard-linked shared file
        assert sum(t.ByteSize() for t in m.graph.initializer) > 100_000
    # missing external data: clear error from onnx / onnxruntime naming the file
    (res.folder / "model.onnx.data").unlink()
    from export.validate import run_onnx
    with pytest.raises(Exception, match="model.onnx.data|data"):
        run_onnx(res.folder / "model.onnx", {"images": np.zeros((1, 1, 2, 3, 28, 28),
                                                               np.float32)}, plugins=False)


def test_bad_buckets_are_explained():
    with pytest.raises(BucketError, match="multiples of 14"):
        make_buckets("2", "2", 500, 518)
    with pytest.raises(BucketError, match="integers"):
        make_buckets("2,x", "2", 518, 518)
    with pytest.raises(BucketError, match=">= 1"):
        make_buckets("0", "2", 518, 518)
    assert [b.name for b in make_buckets("4,8", "2,4", 518, 392)] == [
        "T4_N2_518x392", "T4_N4_518x392", "T8_N2_518x392", "T8_N4_518x392"]
    # --N has no meaning for single-view buckets: refused, not silently dropped
    with pytest.raises(BucketError, match="--N 4 does not apply to --single-view"):
        make_buckets("2", "4", 518, 518, single_view=True)
    assert [b.name for b in make_buckets("2", None, 518, 518, single_view=True)] == ["S2_518x518"]
    assert [b.name for b in make_buckets("2", None, 518, 518)] == ["T2_N4_518x518"]


def test_corrupt_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="corrupt"):
        load_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="not an exported bucket"):
        load_manifest(tmp_path / "nope")


def test_dense_validation_guard_for_full_size():
    """At T=8, N=4, 518x518 one dense Time-SA logits tensor is 31 GB (ARCHITECTURE_FACTS):
    the portable graph cannot be validated on a 24 GB machine, the plugin graph can."""
    from export.pipeline import dense_attention_bytes
    from vggt_mv.config import get_config

    full = dense_attention_bytes(get_config(), Bucket(8, 4, 518, 518))
    assert full == 2 * 4 * 4 * 16 * (8 * 1374) ** 2
    assert full > 24 * 2**30
    assert dense_attention_bytes(get_config(), Bucket(2, 2, 392, 518)) < 2 * 2**30


# ----------------------------------------------------------------- native attention
def _attention_shaped(model: onnx.ModelProto, lengths: set[int]) -> list[str]:
    """Tensors (after shape inference) whose last two dims are both sequence lengths of an
    attention site: an L x S logits / mask / probability tensor."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    found = []
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in vi.type.tensor_type.shape.dim]
        if len(dims) >= 2 and dims[-1] in lengths and dims[-2] in lengths:
            found.append(vi.name)
    return found


def test_native_graph_has_no_l_by_s_tensor(exported):
    """Every dense site is one Attention node; the rank-1 bias became head channels, never
    an L x S tensor. The same walk over the portable graph with its functions inlined
    finds the dense logits, so the check can fail."""
    from onnx import inliner

    from export.native import PAD, SITE_SUFFIX

    _, res, _ = exported
    native = onnx.load(str(res.folder / "model.native.onnx"))
    onnx.checker.check_model(native, full_check=True)
    att = [n for n in native.graph.node if n.op_type == "Attention"]
    assert len(att) == 14 and all(n.name.endswith(SITE_SUFFIX) for n in att)
    assert not [n for n in native.graph.node if n.domain == contract.ONNX_DOMAIN]
    assert not native.functions and {o.domain for o in native.opset_import} == {""}
    assert next(o.version for o in native.opset_import) == 23
    inferred = onnx.shape_inference.infer_shapes(native, data_prop=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in inferred.graph.value_info}
    # sequence lengths of the token sites (the camera trunk's few tokens would match
    # unrelated small dims, and its logits would be tiny anyway)
    lengths = {shapes[n.input[0]][2] for n in att} - set(range(PAD + 1))
    assert len(lengths) >= 2, lengths
    assert _attention_shaped(native, lengths) == []
    portable = inliner.inline_local_functions(onnx.load(str(res.folder / "model.onnx")))
    assert _attention_shaped(portable, lengths), "the walk must see the dense logits"


def test_native_surgery_is_idempotent_and_counted(exported):
    _, res, _ = exported
    native = onnx.load(str(res.folder / "model.native.onnx"))
    expected = {contract.BIASED_OP: 14, contract.SPARSE_OP: 0}
    again, report = surgery(native, expected, route="native")
    assert report.native[contract.BIASED_OP] == 14 and report.replaced[contract.BIASED_OP] == 0
    assert [(n.op_type, n.name) for n in again.graph.node] == \
        [(n.op_type, n.name) for n in native.graph.node]
    portable = onnx.load(str(res.folder / "model.onnx"))
    with pytest.raises(SurgeryError, match="reports 15 sites, graph has 14"):
        surgery(portable, {contract.BIASED_OP: 15, contract.SPARSE_OP: 0}, route="native")


def test_native_graph_matches_portable_in_onnxruntime(exported, mv_scene):
    """Real frames: the native graph agrees with model.onnx (both on onnxruntime's CPU)."""
    from export.pipeline import validation_feeds
    from export.validate import run_onnx

    _, res, _ = exported
    feeds, _ = validation_feeds(Bucket(2, 2, 42, 56), str(mv_scene))
    a = run_onnx(res.folder / "model.onnx", feeds, plugins=False)
    b = run_onnx(res.folder / "model.native.onnx", feeds, plugins=False)
    for k in a:
        assert np.allclose(a[k], b[k], atol=1e-4, rtol=1e-4), (k, np.abs(a[k] - b[k]).max())


def test_bias_channels_are_exact_in_fp16_to_the_plugins_order():
    """scripts/native_bias_error.py: the hi/lo split keeps the FP16 bias error within a
    few times the plugin's own FP32 rounding, where one FP16 channel is ~1000x worse."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "native_bias_error.py"
    spec = importlib.util.spec_from_file_location("native_bias_error", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.measure(L=64, D=64, seed=1)
    for case, rec in res.items():
        assert rec["hilo"]["logit_err"] <= 10 * rec["plugin"]["logit_err"] + 1e-7, (case, rec)
        assert rec["single"]["logit_err"] > 100 * rec["hilo"]["logit_err"], (case, rec)
