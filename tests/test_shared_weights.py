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
        assert set(mf["validation"]["graphs"]) == {"model.onnx", "model.plugins.onnx"}
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


def test_reexport_with_other_weights_gets_its_own_file_and_old_ones_are_pruned(root, tmp_path):
    copy = _copy_tree_with_links(root, tmp_path / "copy")
    old = load_manifest(copy / BUCKETS[0].name)["shared_weights"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exporter, "EXTERNAL_DATA_BYTES", 0)
        export_buckets(tiny_model(seed=1), BUCKETS[:1], copy, ExportOptions(validate=False),
                       {"source": "random, seed 1"}, **QUIET)
    new = load_manifest(copy / BUCKETS[0].name)["shared_weights"]
    assert new["sha256"] != old["sha256"]
    # the other bucket still links the old weights, so the store keeps both
    assert {p.name for p in (copy / STORE_DIR).iterdir()} == {
        f"{old['sha256']}.data", f"{new['sha256']}.data"}
    shutil.rmtree(copy / BUCKETS[1].name)
    assert prune_store(copy) == [f"{old['sha256']}.data"]
    _run(copy / BUCKETS[0].name)


def test_quantize_leaves_the_shared_file_alone(root, tmp_path):
    from calib.precision import make_precision

    copy = _copy_tree_with_links(root, tmp_path / "copy")
    bucket = copy / BUCKETS[0].name
    before = sha256_file(bucket / "model.onnx.data")
    make_precision(bucket, "fp16", **QUIET)
    assert sha256_file(bucket / "model.onnx.data") == before
    assert (bucket / "model.onnx.data").stat().st_nlink == 3
    _run(bucket, "model.fp16.onnx")
