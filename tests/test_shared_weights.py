"""One copy of the weights (issue 23): buckets of one export share one model.onnx.data
(hard links of one content-addressed file under OUT/weights/), weight-stripped TensorRT
plans refitted from it, and the weight-streaming budget. The tiny preset's weights are
pushed to external data by lowering the threshold, as the full-size model's are."""
import shutil
import subprocess

import numpy as np
import pytest
import torch

import export.exporter as exporter
from export.buckets import Bucket
from export.pipeline import ExportOptions, export_buckets
from export.shared_weights import STORE_DIR, prune_store
from runtime.layout import ArtifactIntegrityError, load_manifest, sha256_file
from runtime.session import OnnxSession
from vggt_mv.config import tiny_config
from vggt_mv.models import VGGTMV

BUCKETS = [Bucket(2, 2, 28, 28), Bucket(2, 4, 28, 28)]
QUIET = {"log": lambda s: None}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return VGGTMV(tiny_config()).eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("shared")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exporter, "EXTERNAL_DATA_BYTES", 0)
        export_buckets(tiny_model(), BUCKETS, out, ExportOptions(), {"source": "random, seed 0"},
                       **QUIET)
    return out


def _copy_tree_with_links(src, dst):
    # cp -a keeps hard links inside what it copies (shutil.copytree does not)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def _run(folder, graph="model.plugins.onnx"):
    feeds = {"images": np.random.default_rng(1).random(BUCKETS[0].images_shape, np.float32)}
    return OnnxSession(folder, graph=graph).run(feeds)


def test_buckets_share_one_file_and_each_validates(root):
    folders = [root / b.name for b in BUCKETS]
    stats = [(f / "model.onnx.data").stat() for f in folders]
    assert len({(s.st_dev, s.st_ino) for s in stats}) == 1
    m = [load_manifest(f) for f in folders]
    rec = m[0]["shared_weights"]
    same = ("name", "bytes", "sha256", "store", "layout")
    assert {k: rec[k] for k in same} == {k: m[1]["shared_weights"][k] for k in same}
    assert rec["sha256"] == sha256_file(folders[0] / "model.onnx.data")
    store = root / rec["store"]
    assert store.parent.name == STORE_DIR and store.stat().st_ino == stats[0].st_ino
    assert stats[0].st_nlink == 3  # two buckets + the store's name: one copy on disk
    for mf in m:  # recorded once, apart from the per-bucket files
        assert "model.onnx.data" not in {e["name"] for e in mf["files"]}
        assert mf["validation"]["passed"]
        assert set(mf["validation"]["graphs"]) == {"model.onnx", "model.native.onnx",
                                                   "model.plugins.onnx"}
    # the bucket-specific constants (position embeddings, expanded tokens) stay inline
    assert 0 < rec["bucket_only_bytes"] < rec["bytes"] / 10


def test_damaging_the_shared_file_is_detected_in_every_bucket(root, tmp_path):
    copy = _copy_tree_with_links(root, tmp_path / "copy")
    first = copy / BUCKETS[0].name / "model.onnx.data"
    first.chmod(0o644)
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0x01
    with open(first, "r+b") as f:  # in place: through the link, as a disk error would
        f.write(bytes(data))
    for b in BUCKETS:
        for graph in ("model.onnx", "model.plugins.onnx"):
            with pytest.raises(ArtifactIntegrityError, match=rf"{b.name}/model.onnx.data .*sha256"):
                OnnxSession(copy / b.name, graph=graph)


def test_a_bucket_copied_alone_still_loads(root, tmp_path):
    alone = tmp_path / BUCKETS[0].name
    shutil.copytree(root / BUCKETS[0].name, alone)  # breaks the hard link: a plain file
    assert (alone / "model.onnx.data").stat().st_nlink == 1
    got, want = _run(alone), _run(root / BUCKETS[0].name)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_quantize_leaves_the_shared_file_alone(root, tmp_path):
    from calib.precision import make_precision

    copy = _copy_tree_with_links(root, tmp_path / "copy")
    bucket = copy / BUCKETS[0].name
    before = sha256_file(bucket / "model.onnx.data")
    make_precision(bucket, "fp16", **QUIET)
    assert sha256_file(bucket / "model.onnx.data") == before
    assert (bucket / "model.onnx.data").stat().st_nlink == 3
    _run(bucket, "model.fp16.onnx")


# ------------------------------------------------------------- stripped engines, refit
@pytest.fixture(scope="module")
def other_export(root, tmp_path_factory):
    """The fixture's export copied (links kept) with bucket 0 re-exported from other
    weights: the re-export rule on a shared store, and weights of another export."""
    copy = _copy_tree_with_links(root, tmp_path_factory.mktemp("other") / "copy")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exporter, "EXTERNAL_DATA_BYTES", 0)
        export_buckets(tiny_model(seed=1), BUCKETS[:1], copy, ExportOptions(validate=False),
                       {"source": "random, seed 1"}, **QUIET)
    return copy


def _stripped_sidecar(folder, engine_bytes=b"a weight-stripped plan"):
    from runtime.layout import sha256_bytes, sidecar_path_for
    from runtime.trt.sidecar import EnvironmentInfo, make_sidecar, write_sidecar
    from runtime.trt.weights import weights_record

    graph = "model.plugins.onnx"
    src = sha256_file(folder / graph)
    engine = folder / "model.fp32.engine"
    engine.write_bytes(engine_bytes)
    m = load_manifest(folder)
    side = make_sidecar(engine_file=engine.name, engine_sha256=sha256_bytes(engine_bytes),
                        env=EnvironmentInfo("10.3.0", "Orin", "8.7"), bucket=m["bucket"],
                        precision="fp32", source_onnx=graph, source_onnx_sha256=src,
                        build_options={"strip_weights": True}, inputs=m["inputs"],
                        outputs=m["outputs"], extra={"weights": weights_record(
                            folder, graph, src, {"strip_weights": True})})
    write_sidecar(sidecar_path_for(engine), side)
    return side


def test_refit_with_weights_of_another_export_is_refused_before_tensorrt(
        root, other_export, tmp_path, monkeypatch):
    from runtime.trt import session as trt_session
    from runtime.trt.sidecar import SidecarMismatchError

    mine = tmp_path / BUCKETS[0].name
    shutil.copytree(root / BUCKETS[0].name, mine)
    side = _stripped_sidecar(mine)
    assert side["weights"]["stripped"] and side["weights"]["file"] == "model.onnx.data"
    assert side["weights"]["sha256"] == load_manifest(mine)["shared_weights"]["sha256"]
    theirs = other_export / BUCKETS[0].name / "model.onnx.data"
    (mine / "model.onnx.data").chmod(0o644)
    shutil.copyfile(theirs, mine / "model.onnx.data")  # same graphs, other weights
    asked = []
    monkeypatch.setattr(trt_session, "import_tensorrt", lambda **kw: asked.append(kw))
    with pytest.raises(SidecarMismatchError) as e:
        trt_session.TrtSession(mine, tensorrt_library="tensorrt")  # the .engine written
    msg = str(e.value)
    assert side["weights"]["sha256"] in msg and sha256_file(theirs) in msg
    assert "--strip-weights" in msg and asked == []  # TensorRT never loaded


def test_reexport_with_other_weights_gets_its_own_file_and_old_ones_are_pruned(
        root, other_export):
    old = load_manifest(root / BUCKETS[0].name)["shared_weights"]
    new = load_manifest(other_export / BUCKETS[0].name)["shared_weights"]
    assert new["sha256"] != old["sha256"]
    # the other bucket still links the old weights, so the store keeps both
    assert {p.name for p in (other_export / STORE_DIR).iterdir()} == {
        f"{old['sha256']}.data", f"{new['sha256']}.data"}
    _run(other_export / BUCKETS[0].name)
    lone = other_export / STORE_DIR / ("0" * 64 + ".data")  # nothing links it
    lone.write_bytes(b"stale")
    assert prune_store(other_export) == [lone.name]


class _FakeEngine:
    streamable_weights_size = 3 << 20
    minimum_weight_streaming_budget = 1 << 20
    weight_streaming_budget_v2 = None

    def get_weight_streaming_automatic_budget(self):
        return 2 << 20


def test_weight_budget_is_refused_below_the_minimum_with_that_number():
    from runtime.trt.weights import AUTO_BUDGET, WeightsError, apply_weight_budget

    eng = _FakeEngine()
    with pytest.raises(WeightsError, match=r"below the minimum 1,048,576 bytes.*--weight-budget 1M"):
        apply_weight_budget(eng, 1000, "model.fp16.engine")
    assert eng.weight_streaming_budget_v2 is None
    assert apply_weight_budget(eng, 1 << 20, "e") == 1 << 20 == eng.weight_streaming_budget_v2
    assert apply_weight_budget(eng, AUTO_BUDGET, "e") == 2 << 20
    assert apply_weight_budget(eng, None, "e") is None
    eng.streamable_weights_size = 0
    with pytest.raises(WeightsError, match="--weight-streaming"):
        apply_weight_budget(eng, 1 << 20, "e")


def test_refit_reads_the_buckets_graph_through_the_onnx_refitter(root, tmp_path):
    import types

    from runtime.trt.weights import WeightsError, check_refit_weights, refit_engine

    mine = tmp_path / BUCKETS[0].name
    shutil.copytree(root / BUCKETS[0].name, mine)
    graph = check_refit_weights(mine, _stripped_sidecar(mine))
    assert graph == mine / "model.plugins.onnx"
    calls = []

    class Refitter:
        def __init__(self, engine, logger):
            calls.append(("refitter", engine))

        def refit_cuda_engine(self):
            return refit_ok

    class OnnxParserRefitter:
        num_errors = 0

        def __init__(self, refitter, logger):
            pass

        def refit_from_file(self, path):
            calls.append(("file", path))
            return True

    trt = types.SimpleNamespace(Refitter=Refitter, OnnxParserRefitter=OnnxParserRefitter)
    refit_ok = True
    assert refit_engine(trt, "ENGINE", None, graph) >= 0
    assert calls == [("refitter", "ENGINE"), ("file", str(graph))]
    refit_ok = False
    with pytest.raises(WeightsError, match="could not refit"):
        refit_engine(trt, "ENGINE", None, graph)
    assert check_refit_weights(mine, {"weights": {"stripped": False}}) is None


HAS_RTX = __import__("importlib").util.find_spec("tensorrt_rtx") is not None


def _has_cuda_driver() -> bool:
    import ctypes.util

    return ctypes.util.find_library("cuda") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RTX, reason="TensorRT for RTX not installed (pip install -e .[test])")
def test_stripped_rtx_plan_is_much_smaller(root, tmp_path):
    """TensorRT for RTX builds (ahead of time, no GPU) of one shared-weights bucket's
    portable graph, with and without --strip-weights: the parser reads the hard-linked
    file, and the stripped plan leaves the weights out."""
    from runtime.layout import sidecar_path_for
    from runtime.trt.build import build_engines, plan_build
    from runtime.trt.sidecar import read_sidecar

    bucket = tmp_path / BUCKETS[0].name
    subprocess.run(["cp", "-a", str(root / BUCKETS[0].name), str(bucket)], check=True)
    sizes, sides = {}, {}
    for strip in (False, True):
        opts = {"target": "rtx", "compute_capabilities": ["8.6"]}
        if strip:
            opts["strip_weights"] = True
        plan = plan_build([bucket], "fp32", options=opts)
        item = plan.items[0]
        item.onnx_path, item.needs_plugins = bucket / "model.onnx", False  # no plugin library
        item.engine_path = tmp_path / f"strip{int(strip)}" / item.engine_path.name
        item.engine_path.parent.mkdir()
        plan.problems.clear()
        res = build_engines(plan, **QUIET)
        if strip and res[0].status == "failed" and "needs a CUDA GPU" in res[0].message \
                and not _has_cuda_driver():
            pytest.skip("TensorRT for RTX builds refittable plans only with a CUDA driver "
                        f"(full plan here: {sizes[False]:,} bytes): {res[0].message[-160:]}")
        assert [r.status for r in res] == ["built"], res[0].message
        sizes[strip] = item.engine_path.stat().st_size
        sides[strip] = read_sidecar(sidecar_path_for(item.engine_path))
    weights = load_manifest(bucket)["shared_weights"]
    print(f"\nRTX plan bytes: full {sizes[False]:,}, stripped {sizes[True]:,}; "
          f"weights {weights['bytes']:,}")
    assert sizes[False] - sizes[True] > 0.8 * weights["bytes"]
    assert not sides[False]["weights"]["stripped"]
    assert sides[True]["weights"] == {"stripped": True, "streaming": False,
                                      "refit_from": "model.onnx", "file": "model.onnx.data",
                                      "sha256": weights["sha256"]}
