"""calib.dataset: clip sampling, held-out split, calibration npz from the real mv_scene."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from calib import (
    build_calibration_set,
    load_calibration_set,
    sample_clips,
    split_clips,
)
from runtime import errors
from runtime.preprocess import PREPROCESS_RULE, discover_scene, load_clip

pytest.importorskip("PIL.Image", reason="Pillow decodes the calibration frames")

SCENE = Path(os.environ.get("VGGT_MV_SCENE")
             or Path(__file__).resolve().parents[2] / "shared" / "data" / "mv_scene")
needs_scene = pytest.mark.skipif(
    not (SCENE / "images" / "time_00" / "view0.png").is_file(),
    reason=f"real multi-view frames not found at {SCENE} (set VGGT_MV_SCENE)")

SIZE = (70, 98)  # small bucket keeps the test fast; 480x640 -> 70x98 is the crop rule at 98


@pytest.fixture(scope="module")
def scene():
    if not (SCENE / "images" / "time_00" / "view0.png").is_file():
        pytest.skip(f"real multi-view frames not found at {SCENE} (set VGGT_MV_SCENE)")
    return discover_scene(SCENE)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not (SCENE / "images" / "time_00" / "view0.png").is_file():
        pytest.skip(f"real multi-view frames not found at {SCENE} (set VGGT_MV_SCENE)")
    out = tmp_path_factory.mktemp("calib") / "calib_T2_N2.npz"
    return build_calibration_set(SCENE, T=2, N=2, size_hw=SIZE, num_clips=4, out_npz=out,
                                 with_masks=True)


# ------------------------------------------------------------------------------- sampling
def test_sample_clips_spread_and_deterministic(scene):
    clips = sample_clips(scene, T=2, N=2, num_clips=5)
    assert clips == sample_clips(scene, T=2, N=2, num_clips=5)  # same seed, same clips
    starts = [t0 for t0, _ in clips]
    assert starts[0] == 0 and starts[-1] == 14 and starts == sorted(starts)
    assert len(set(starts)) == 5
    for _, views in clips:
        assert len(views) == 2 and list(views) == sorted(set(views))
        assert set(views) <= {0, 1, 2, 3}
    many = sample_clips(scene, T=2, N=2, num_clips=12)
    assert set().union(*[set(v) for _, v in many]) == {0, 1, 2, 3}
    assert sample_clips(scene, 2, 2, 12, seed=1) != many
    full = sample_clips(scene, T=8, N=4, num_clips=3)
    assert full == [(0, (0, 1, 2, 3)), (4, (0, 1, 2, 3)), (8, (0, 1, 2, 3))]
    strided = sample_clips(scene, T=4, N=4, num_clips=5, stride=5)
    assert [t0 for t0, _ in strided] == [0, 5, 10, 2, 7]  # wraps within 0..12


def test_sample_clips_errors(scene):
    with pytest.raises(errors.NotEnoughFramesError, match="16 time steps"):
        sample_clips(scene, T=17, N=2, num_clips=1)
    with pytest.raises(errors.NotEnoughFramesError, match="4 views"):
        sample_clips(scene, T=2, N=5, num_clips=1)
    with pytest.raises(ValueError):
        sample_clips(scene, T=2, N=2, num_clips=0)


def test_split_clips_is_temporal_and_never_empty():
    clips = [(t, (0, 1)) for t in (6, 0, 12, 3, 9)]
    calib, held = split_clips(clips, 0.4)
    assert held == [(12, (0, 1)), (9, (0, 1))] and len(calib) == 3
    assert max(t for t, _ in calib) < min(t for t, _ in held)
    calib, held = split_clips(clips[:2], 0.01)
    assert len(calib) == 1 and len(held) == 1  # a positive fraction holds out at least one
    calib, held = split_clips(clips, 0.0)
    assert held == [] and calib == clips
    calib, held = split_clips(clips[:1], 0.5)
    assert calib == clips[:1] and held == []
    with pytest.raises(ValueError):
        split_clips(clips, 1.0)


# ------------------------------------------------------------------------------ build/load
@needs_scene
def test_calibration_set_built_and_reloaded(built):
    assert built.is_file()
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # no temp leftovers
    d = load_calibration_set(built, T=2, N=2, size_hw=SIZE, require_masks=True)
    assert d["images"].shape == (4, 1, 2, 2, 3) + SIZE and d["images"].dtype == np.float16
    assert d["masks"].shape == (4, 1, 2, 2) + SIZE
    meta = d["meta"]
    assert meta["source_folder"] == str(SCENE.resolve())
    assert meta["preprocess_rule"] == PREPROCESS_RULE and meta["size_hw"] == list(SIZE)
    assert len(meta["files_sha256"]) == 64 and meta["num_files"] == 4 * 2 * 2 * 2
    assert d["clips"] == sample_clips(discover_scene(SCENE), 2, 2, 4)
    assert [c[0] for c in d["clips"]] == [0, 5, 9, 14]
    # Same pixels as the runtime produces (up to float16 rounding).
    for k, (t0, views) in enumerate(d["clips"]):
        ref = load_clip(SCENE, t0, 2, 2, SIZE, views=views, with_masks=True)
        assert np.abs(d["images"][k].astype(np.float32) - ref["images"]).max() <= 2 ** -11
        assert np.array_equal(d["masks"][k].astype(np.float32), ref["ext_mask"])


@needs_scene
def test_calibration_set_is_reproducible_float32_and_given_clips(built, tmp_path):
    again = build_calibration_set(SCENE, T=2, N=2, size_hw=SIZE, num_clips=4,
                                  out_npz=tmp_path / "again.npz", with_masks=True)
    a, b = load_calibration_set(built), load_calibration_set(again)
    assert a["meta"]["files_sha256"] == b["meta"]["files_sha256"]
    assert a["meta"]["content_sha256"] == b["meta"]["content_sha256"]
    assert np.array_equal(a["images"], b["images"])
    calib, held = split_clips(a["clips"], 0.25)
    out = build_calibration_set(SCENE, T=2, N=2, size_hw=SIZE, num_clips=0, clips=held,
                                out_npz=tmp_path / "held.npz", dtype="float32")
    h = load_calibration_set(out)
    assert h["clips"] == held and h["images"].dtype == np.float32 and h["masks"] is None
    assert h["meta"]["files_sha256"] != a["meta"]["files_sha256"]
    with pytest.raises(errors.CalibrationSetError, match="no masks"):
        load_calibration_set(out, require_masks=True)


@needs_scene
def test_calibration_set_mismatch_errors(built, tmp_path):
    with pytest.raises(errors.CalibrationSetError, match="T=2, asked for T=8"):
        load_calibration_set(built, T=8)
    with pytest.raises(errors.CalibrationSetError, match="N=2, asked for N=4"):
        load_calibration_set(built, N=4)
    with pytest.raises(errors.CalibrationSetError, match="70x98.*392x518"):
        load_calibration_set(built, size_hw=(392, 518))
    with pytest.raises(FileNotFoundError):
        load_calibration_set(tmp_path / "absent.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(errors.CalibrationSetError, match="cannot read"):
        load_calibration_set(junk)
    # Consistent-looking arrays whose metadata disagrees with them.
    with np.load(built) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["T"] = 3
    arrays["meta"] = np.array(json.dumps(meta))
    forged = tmp_path / "forged.npz"
    np.savez(forged, **arrays)
    with pytest.raises(errors.CalibrationSetError, match="disagree with metadata"):
        load_calibration_set(forged)
    arrays["meta"] = np.array(json.dumps({**meta, "T": 2}))
    arrays["images"] = arrays["images"] * 2
    np.savez(forged, **arrays)
    with pytest.raises(errors.CalibrationSetError, match=r"outside \[0, 1\]"):
        load_calibration_set(forged)


@needs_scene
def test_build_errors_leave_no_file(tmp_path):
    out = tmp_path / "c.npz"
    with pytest.raises(errors.PatchMultipleError):
        build_calibration_set(SCENE, 2, 2, (70, 100), 2, out)
    with pytest.raises(errors.NotEnoughFramesError):
        build_calibration_set(SCENE, 20, 2, SIZE, 2, out)
    with pytest.raises(errors.SceneNotFoundError):
        build_calibration_set(tmp_path / "nowhere", 2, 2, SIZE, 2, out)
    with pytest.raises(ValueError, match=".npz"):
        build_calibration_set(SCENE, 2, 2, SIZE, 1, tmp_path / "c.bin")
    assert list(tmp_path.iterdir()) == []
