import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def scene_dir() -> Path:
    env = os.environ.get("VGGT_MV_SCENE")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "mv_scene"


def ref_dir() -> Path:
    return ROOT.parent / "shared" / "ref"


@pytest.fixture(scope="session")
def mv_scene() -> Path:
    d = scene_dir()
    if not (d / "images").is_dir():
        pytest.skip(f"real multi-view scene not found at {d} (set VGGT_MV_SCENE)")
    return d


@pytest.fixture(scope="session")
def state_dict_refs() -> Path:
    d = ref_dir() / "state_dicts"
    if not d.is_dir():
        pytest.skip(f"reference state-dict manifests not found at {d}")
    return d


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Integrity verdicts and the TensorRT-for-RTX link go to a per-run cache, not ~/.cache
    (child processes inherit it through the environment)."""
    old = os.environ.get("VGGT_MV_CACHE")
    os.environ["VGGT_MV_CACHE"] = str(tmp_path_factory.mktemp("vggt_mv_cache"))
    yield
    if old is None:
        os.environ.pop("VGGT_MV_CACHE", None)
    else:
        os.environ["VGGT_MV_CACHE"] = old


def stand_in_shared_library(path: Path) -> Path:
    """A file the build plan accepts as a plugin library (an ELF header of type ET_DYN for
    this machine's CPU) but nobody can load: plan tests hash it, never dlopen it."""
    import platform

    from runtime.trt.build import _ELF_TARGETS

    cls, machine, _ = _ELF_TARGETS.get(platform.machine().lower(), (2, 62, ""))
    header = (b"\x7fELF" + bytes([cls]) + b"\x01\x01" + bytes(9) + (3).to_bytes(2, "little")
              + machine.to_bytes(2, "little"))
    # the strings the plan looks for in a real libvggt_mv_plugins.so (creator names and
    # namespace, the registry's entry point)
    names = b"\0VggtBiasedAttention\0VggtSparseAttention\0vggt_mv\0getCreators\0"
    path.write_bytes(header + b" stand-in: hashed by the plan, never loaded" + names)
    return path


def with_field_of_view(model, per_iteration: float = 0.25):
    """Random weights make the camera head's ReLU'd field of view 0 (infinite focal lengths),
    and frames without finite cameras are left out of the point cloud, COLMAP and GLB. The
    FoV rows of its last layer become a constant (per refinement iteration: 4 iterations
    give 1 rad), so a tiny random model still places its frames."""
    import torch

    fc2 = model.camera_head.pose_branch.fc2
    with torch.no_grad():
        fc2.weight[7:9] = 0.0
        fc2.bias[7:9] = per_iteration
    return model


def export_tiny(root: Path, bucket=None, **kw):
    """The tiny preset (seed 0, random weights) exported at one bucket (default
    T2_N2_42x56) into ``root``, quietly unless ``log`` is given: the bucket most test
    modules share. Returns export's BucketResult."""
    import torch

    from export.buckets import Bucket
    from export.exporter import export_bucket
    from vggt_mv.config import tiny_config
    from vggt_mv.models import VGGTMV

    torch.manual_seed(0)
    kw.setdefault("log", lambda s: None)
    return export_bucket(VGGTMV(tiny_config()).eval(), bucket or Bucket(2, 2, 42, 56), root,
                         **kw)


def write_view_videos(scene: Path, out: Path, views=2, frames=6, lengths=None,
                      size=(112, 84), suffix=".avi", fourcc="MJPG", fps=10) -> Path:
    """view0.avi, view1.avi, ... in ``out`` from the real frames of ``scene`` (time_TT/
    viewV.png), ``frames`` each (``lengths``: one count per view), resized to ``size``
    (width, height; None: as they are). MJPG in AVI decodes wherever OpenCV does; mp4v in
    .mp4 needs OpenCV's FFmpeg."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless) not installed")
    out.mkdir(parents=True, exist_ok=True)
    for v in range(views):
        n = lengths[v] if lengths else frames
        imgs = [cv2.imread(str(scene / "images" / f"time_{t:02d}" / f"view{v}.png"))
                for t in range(n)]
        if size is not None:
            imgs = [cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in imgs]
        h, w = imgs[0].shape[:2]
        vw = cv2.VideoWriter(str(out / f"view{v}{suffix}"), cv2.VideoWriter_fourcc(*fourcc),
                             fps, (w, h))
        assert vw.isOpened(), f"OpenCV cannot write {fourcc} into {suffix}"
        for im in imgs:
            vw.write(im)
        vw.release()
    return out


def cut_file(path: Path, fraction: float) -> Path:
    """Keep the first ``fraction`` of a file's bytes: a copy interrupted part-way."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path
