"""runtime/layout.py: the bucket folder's one description (names, manifest, scan, writes)."""
import json
import os
import stat

import pytest

from runtime.layout import (
    ALL_GRAPHS,
    Bucket,
    BucketError,
    ManifestError,
    atomic_directory,
    atomic_path,
    atomic_write_json,
    bucket_folders,
    engine_filename,
    engine_filenames,
    graph_for_route,
    graph_has_plugins,
    load_manifest,
    native_graph,
    ort_disabled_optimizers,
    plugin_graph,
    portable_graph,
    sidecar_path_for,
)


def test_file_names():
    assert (portable_graph("fp32"), plugin_graph("fp32")) == ("model.onnx", "model.plugins.onnx")
    assert (portable_graph("int8"), plugin_graph("fp16")) == ("model.int8.onnx",
                                                              "model.fp16.plugins.onnx")
    assert ALL_GRAPHS[:3] == ("model.onnx", "model.native.onnx", "model.plugins.onnx")
    assert len(ALL_GRAPHS) == len(set(ALL_GRAPHS)) == 9
    assert sidecar_path_for(engine_filename("fp16")).name == "model.fp16.engine.json"
    with pytest.raises(ValueError, match="precision"):
        engine_filename("bf16")


def test_native_route_names():
    assert native_graph("fp16") == graph_for_route("fp16", "native") == "model.fp16.native.onnx"
    assert graph_for_route("int8", "plugin") == "model.int8.plugins.onnx"
    # both routes' engines sit side by side, per target; native is looked for first
    assert engine_filename("fp16", "trt", "native") == "model.fp16.native.engine"
    assert engine_filename("int8", "rtx", "native") == "model.int8.native.rtx.engine"
    assert engine_filenames("fp32") == ["model.fp32.native.engine", "model.fp32.engine",
                                        "model.fp32.native.rtx.engine", "model.fp32.rtx.engine"]
    assert engine_filenames("fp16", "rtx", "plugin") == ["model.fp16.rtx.engine"]
    with pytest.raises(ValueError, match="attention route"):
        engine_filename("fp16", "trt", "fused")
    dense = {"VggtBiasedAttention": 4, "VggtSparseAttention": 0}
    sparse = {"VggtBiasedAttention": 4, "VggtSparseAttention": 2}
    assert not graph_has_plugins("model.fp16.native.onnx", dense)
    assert graph_has_plugins("model.native.onnx", sparse)      # a mixed graph
    assert graph_has_plugins("model.int8.plugins.onnx", dense)
    assert not graph_has_plugins("model.onnx", sparse)
    assert ort_disabled_optimizers("model.int8.native.onnx") and \
        not ort_disabled_optimizers("model.int8.plugins.onnx")


def test_bucket_round_trip_and_validation():
    b = Bucket(2, 4, 56, 70, ext_mask=True)
    d = b.to_dict()
    assert d["name"] == "T2_N4_56x70_mask" == b.name
    assert Bucket.from_dict({**d, "name": "renamed folder"}) == b  # name is derived
    assert b.images_shape == (1, 2, 4, 3, 56, 70) and b.mask_shape == (1, 2, 4, 56, 70)
    with pytest.raises(BucketError, match="multiples of 14"):
        Bucket(2, 2, 30, 70).validate()
    with pytest.raises(BucketError, match="not a bucket"):
        Bucket.from_dict({"T": 2})


def _bucket(folder, **over):
    folder.mkdir(parents=True)
    m = {"bucket": Bucket(2, 2, 28, 28).to_dict(), "inputs": {}, "outputs": {}, **over}
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def test_manifest_and_scan(tmp_path):
    a = _bucket(tmp_path / "root" / "T2_N2_28x28")
    _bucket(tmp_path / "root" / ".T2_N2_28x28.partial-x")  # export's scratch folder
    (tmp_path / "root" / "notes").mkdir()
    assert bucket_folders(tmp_path / "root") == [a]
    assert bucket_folders([a, tmp_path / "missing"]) == [a, tmp_path / "missing"]
    assert load_manifest(a)["bucket"]["name"] == "T2_N2_28x28"
    (a / "manifest.json").write_text(json.dumps({"bucket": {}}))
    with pytest.raises(ManifestError, match="no 'inputs'"):
        load_manifest(a)
    with pytest.raises(FileNotFoundError, match="python cli.py export"):
        load_manifest(tmp_path / "root" / "notes")


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_json(tmp_path / "a" / "x.json", {"k": 1})
        with atomic_path(tmp_path / "g.onnx") as tmp:
            tmp.write_bytes(b"graph")
        with atomic_directory(tmp_path / "bucket") as d:
            (d / "f").write_text("x")
    finally:
        os.umask(old)
    assert json.loads(p.read_text()) == {"k": 1}
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "g.onnx").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "bucket").stat().st_mode) == 0o755
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a", "bucket", "g.onnx"]


def test_atomic_directory_keeps_the_old_one_on_failure(tmp_path):
    with atomic_directory(tmp_path / "b") as d:
        (d / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "b") as d:
        (d / "v").write_text("2")
        raise RuntimeError("interrupted")
    assert (tmp_path / "b" / "v").read_text() == "1"
    assert [x.name for x in tmp_path.iterdir()] == ["b"]
