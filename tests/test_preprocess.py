"""runtime.preprocess on the real mv_scene frames (4 cameras x 16 time steps, 640x480)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from runtime import errors  # noqa: E402
from runtime.preprocess import (  # noqa: E402
    check_size_hw,
    discover_scene,
    load_clip,
    load_image,
    load_mask,
    map_pixels,
    plan_resize,
    pool_mask_to_patches,
    preprocess_mask,
    preprocess_rgb,
    target_size_for,
)

Image = pytest.importorskip("PIL.Image", reason="Pillow decodes the test frames")

SCENE = Path(os.environ.get("VGGT_MV_SCENE")
             or Path(__file__).resolve().parents[2] / "shared" / "data" / "mv_scene")
needs_scene = pytest.mark.skipif(
    not (SCENE / "images" / "time_00" / "view0.png").is_file(),
    reason=f"real multi-view frames not found at {SCENE} (set VGGT_MV_SCENE)")


def frame(t: int, v: int) -> Path:
    return SCENE / "images" / f"time_{t:02d}" / f"view{v}.png"


def mask_file(t: int, v: int) -> Path:
    return SCENE / "masks" / f"time_{t:02d}" / f"view{v}.png"


def reference_crop(path: Path, new_wh: tuple[int, int], top: int = 0, left: int = 0,
                   out_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Independent re-statement of VGGT's steps: PIL bicubic, /255, CHW, then crop."""
    im = Image.open(path).convert("RGB").resize(new_wh, Image.Resampling.BICUBIC)
    x = (np.asarray(im).astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)
    H, W = out_hw or (x.shape[1], x.shape[2])
    return x[:, top:top + H, left:left + W]


def make_scene(root: Path, times: list[int], views: list[int], names: dict | None = None) -> Path:
    """A scene of symlinks to the real frames (cheap), optionally under other time labels."""
    names = names or {}
    for t in times:
        label = names.get(t, f"time_{t:02d}")
        for sub, src in (("images", frame), ("masks", mask_file)):
            d = root / sub / label
            d.mkdir(parents=True, exist_ok=True)
            for v in views:
                (d / f"view{v}.png").symlink_to(src(t, v))
    return root


# ------------------------------------------------------------------------------- geometry
def test_crop_rule_sizes():
    assert target_size_for(480, 640) == (392, 518)
    # Portrait: height 686 after the width fit, centre-cropped to 518 (VGGT crops rows).
    assert target_size_for(640, 480) == (518, 518)
    plan = plan_resize((640, 480), (518, 518))
    assert plan.resize_hw == (686, 518) and plan.top == (686 - 518) // 2 and plan.left == 0
    assert target_size_for(720, 1280) == (294, 518)  # 291.375 -> 294
    with pytest.raises(ValueError):
        target_size_for(480, 640, mode="pad")


def test_size_must_be_multiple_of_14():
    assert check_size_hw((392, 518)) == (392, 518)
    for bad in [(390, 518), (392, 520), (0, 518), (-14, 14)]:
        with pytest.raises(errors.PatchMultipleError) as ei:
            check_size_hw(bad)
        assert isinstance(ei.value, ValueError)
        assert "multiples of the patch size 14" in str(ei.value)


def test_bucket_plans_cover_and_centre():
    # Wider-than-bucket: fit height, round width like VGGT, crop the width centrally.
    p = plan_resize((480, 640), (518, 518))
    assert p.resize_hw == (518, 686) and (p.top, p.left) == (0, 84)
    p = plan_resize((480, 640), (280, 518))
    assert p.resize_hw == (392, 518) and (p.top, p.left) == (56, 0)
    for src in [(480, 640), (640, 480), (720, 1280), (1080, 1920), (500, 333)]:
        for dst in [(392, 518), (518, 518), (280, 518), (70, 98), (224, 672), (518, 280)]:
            p = plan_resize(src, dst)
            assert p.resize_hw[0] >= dst[0] and p.resize_hw[1] >= dst[1], (src, dst, p)
            assert p.resize_hw[0] % 14 == 0 and p.resize_hw[1] % 14 == 0
            # Only one side is cropped, and the kept aspect error is below one patch.
            assert p.resize_hw[0] == dst[0] or p.resize_hw[1] == dst[1]
            aspect_err = abs(p.resize_hw[0] / p.resize_hw[1] - src[0] / src[1]) * max(p.resize_hw)
            assert aspect_err <= 7.0 * (1 + max(p.resize_hw) / min(p.resize_hw)), (src, dst, p)


# ---------------------------------------------------------------------- images (real)
@needs_scene
def test_640x480_to_518x392_exactly_like_vggt():
    x = load_image(frame(0, 0), target_size_for(480, 640))
    assert x.shape == (3, 392, 518) and x.dtype == np.float32
    assert np.array_equal(x, reference_crop(frame(0, 0), (518, 392)))
    assert 0.0 <= x.min() and x.max() <= 1.0


@needs_scene
def test_portrait_centre_crop_like_vggt(tmp_path):
    src = tmp_path / "portrait.png"
    Image.open(frame(3, 2)).transpose(Image.Transpose.ROTATE_90).save(src)
    x = load_image(src, target_size_for(640, 480))
    assert x.shape == (3, 518, 518)
    assert np.array_equal(x, reference_crop(src, (518, 686), top=84, out_hw=(518, 518)))


@needs_scene
@pytest.mark.parametrize("size_hw,resize_wh,top,left", [
    ((280, 518), (518, 392), 56, 0),
    ((518, 518), (686, 518), 0, 84),
    ((56, 98), (98, 70), 7, 0),
])
def test_bucket_resize_real(size_hw, resize_wh, top, left):
    x = load_image(frame(5, 1), size_hw)
    assert x.shape == (3,) + size_hw
    assert np.array_equal(x, reference_crop(frame(5, 1), resize_wh, top, left, size_hw))


@needs_scene
@pytest.mark.parametrize("size_hw", [(392, 518), (518, 518), (70, 98)])
def test_numpy_resampler_matches_pil(size_hw):
    rgb = np.asarray(Image.open(frame(2, 3)).convert("RGB"))
    a = preprocess_rgb(rgb, size_hw, use_pil=True)
    b = preprocess_rgb(rgb, size_hw, use_pil=False)
    assert a.shape == b.shape == (3,) + size_hw
    diff = np.abs(a - b) * 255.0
    assert diff.max() <= 1.0 + 1e-3 and diff.mean() < 0.05


def test_float_input_and_nonfinite():
    rgb = np.random.default_rng(0).random((48, 64, 3)).astype(np.float32)
    out = preprocess_rgb(rgb, (42, 56))
    assert out.shape == (3, 42, 56) and out.dtype == np.float32
    rgb[3, 4, 1] = np.nan
    with pytest.raises(errors.NonFiniteError):
        preprocess_rgb(rgb, (42, 56))
    with pytest.raises(errors.RuntimeDataError):
        preprocess_rgb(rgb * 0 + 2.0, (42, 56))


# ------------------------------------------------------------------------ masks (real)
@needs_scene
@pytest.mark.parametrize("size_hw", [(392, 518), (280, 518), (518, 518)])
def test_mask_lands_on_its_image_pixels(tmp_path, size_hw):
    """Paint the real SAM2-masked pixels magenta in a copy of the frame, preprocess both:
    the magenta pixels of the processed image must be the processed mask."""
    rgb = np.asarray(Image.open(frame(0, 1)).convert("RGB")).copy()
    m = np.asarray(Image.open(mask_file(0, 1))) > 127
    assert 0.05 < m.mean() < 0.5
    rgb[m] = (255, 0, 255)
    rgb[~m] = (rgb[~m] * 0.5).astype(np.uint8)  # keep the background away from magenta
    painted = tmp_path / "painted.png"
    Image.fromarray(rgb).save(painted)
    x = load_image(painted, size_hw)
    pm = load_mask(mask_file(0, 1), size_hw)
    magenta = (x[0] > 0.75) & (x[1] < 0.25) & (x[2] > 0.75)
    inter = np.logical_and(magenta, pm > 0.5).sum()
    union = np.logical_or(magenta, pm > 0.5).sum()
    assert inter / union > 0.95
    # Sub-pixel check: white-on-black version, intensity-weighted centroid (resampling keeps
    # mass, so it is unbiased) against the centroid of the nearest-resampled mask.
    binary = tmp_path / "binary.png"
    Image.fromarray(np.where(m[..., None], 255, 0).astype(np.uint8).repeat(3, -1)).save(binary)
    g = load_image(binary, size_hw)[1]
    yy, xx = np.mgrid[: size_hw[0], : size_hw[1]]
    ys, xs = np.nonzero(pm)
    assert abs((g * xx).sum() / g.sum() - xs.mean()) < 0.35
    assert abs((g * yy).sum() / g.sum() - ys.mean()) < 0.35
    # And both sit where map_pixels sends the source mask pixels that survive the crop.
    sy, sx = np.nonzero(m)
    uv = map_pixels(np.stack([sx, sy], -1), m.shape, size_hw)
    inside = ((uv[:, 0] > -0.5) & (uv[:, 0] < size_hw[1] - 0.5)
              & (uv[:, 1] > -0.5) & (uv[:, 1] < size_hw[0] - 0.5))
    assert abs(uv[inside, 0].mean() - xs.mean()) < 0.5
    assert abs(uv[inside, 1].mean() - ys.mean()) < 0.5


@pytest.mark.parametrize("src_hw,size_hw", [((48, 64), (42, 56)), ((480, 640), (392, 518)),
                                             ((480, 640), (518, 518)), ((333, 500), (70, 98))])
def test_mask_nearest_matches_pil_nearest(src_hw, size_hw):
    # Includes exact ties (64 -> 56 hits integer source coordinates every 7 pixels).
    rng = np.random.default_rng(1)
    m = (rng.random(src_hw) > 0.5).astype(np.uint8) * 255
    out = preprocess_mask(m, size_hw)
    plan = plan_resize(m.shape, size_hw)
    ref = np.asarray(Image.fromarray(m).resize(plan.resize_hw[::-1], Image.Resampling.NEAREST))
    H, W = size_hw
    ref = ref[plan.top:plan.top + H, plan.left:plan.left + W] / 255.0
    assert np.array_equal(out, ref.astype(np.float32))


def test_pool_mask_to_patches():
    m = np.zeros((2, 3, 28, 42), np.float32)
    m[0, 1, :14, :14] = 1.0
    m[1, 2, 14:, 28:35] = 1.0  # half a patch
    p = pool_mask_to_patches(m)
    assert p.shape == (2, 3, 2, 3)
    assert p[0, 1, 0, 0] == 1.0 and p[1, 2, 1, 2] == 0.5 and p.sum() == 1.5
    with pytest.raises(errors.PatchMultipleError):
        pool_mask_to_patches(np.zeros((30, 42)))


# ------------------------------------------------------------------------ scenes / clips
@needs_scene
def test_discover_real_scene():
    s = discover_scene(SCENE)
    assert s.num_times == 16 and s.num_views == 4
    assert s.times == tuple(range(16)) and s.views == (0, 1, 2, 3)
    assert s.frame_path(7, 2) == frame(7, 2) and s.mask_path(7, 2) == mask_file(7, 2)
    K, E = s.camera(0, 0)
    assert K.shape == (3, 3) and E.shape == (3, 4)


@needs_scene
def test_time_steps_sorted_numerically(tmp_path):
    root = make_scene(tmp_path / "s", [1, 2, 3], [0, 1],
                      names={1: "time_10", 2: "time_2", 3: "time_9"})
    s = discover_scene(root)
    assert s.times == (2, 9, 10)
    clip = load_clip(root, 0, 3, 2, (70, 98))
    assert clip["times"] == [2, 9, 10]
    assert clip["frame_paths"][0][0].endswith("time_2/view0.png")


@needs_scene
def test_load_clip_real_with_masks():
    c = load_clip(SCENE, 3, 2, 4, (392, 518), with_masks=True)
    assert c["images"].shape == (1, 2, 4, 3, 392, 518) and c["images"].dtype == np.float32
    assert c["ext_mask"].shape == (1, 2, 4, 392, 518)
    assert c["src_hw"] == (480, 640) and c["times"] == [3, 4] and c["views"] == [0, 1, 2, 3]
    assert c["frame_paths"][1][2] == str(frame(4, 2))
    assert np.array_equal(c["images"][0, 1, 2], load_image(frame(4, 2), (392, 518)))
    assert np.array_equal(c["ext_mask"][0, 0, 1], load_mask(mask_file(3, 1), (392, 518)))
    assert set(np.unique(c["ext_mask"])) <= {0.0, 1.0} and c["ext_mask"].mean() > 0.01
    sel = load_clip(SCENE, 0, 1, 2, (70, 98), views=[3, 1])
    assert sel["views"] == [3, 1]
    assert np.array_equal(sel["images"][0, 0, 0], load_image(frame(0, 3), (70, 98)))
    pooled = pool_mask_to_patches(c["ext_mask"])
    assert pooled.shape == (1, 2, 4, 28, 37)


# ------------------------------------------------------------------------------- errors
def test_missing_folder(tmp_path):
    with pytest.raises(errors.SceneNotFoundError) as ei:
        load_clip(tmp_path / "nope", 0, 1, 1, (70, 98))
    assert isinstance(ei.value, FileNotFoundError) and "nope" in str(ei.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.SceneNotFoundError, match="no frames under .*time_TT.*per camera"):
        discover_scene(tmp_path / "empty")


@needs_scene
def test_not_enough_time_steps_or_views():
    with pytest.raises(errors.NotEnoughFramesError, match="has 16 time steps.*needs 18"):
        load_clip(SCENE, 10, 8, 4, (70, 98))
    with pytest.raises(errors.NotEnoughFramesError, match="has 4 views.*N=5"):
        load_clip(SCENE, 0, 2, 5, (70, 98))
    with pytest.raises(errors.NotEnoughFramesError, match=r"views \[7\] do not exist"):
        load_clip(SCENE, 0, 1, 2, (70, 98), views=[0, 7])


@needs_scene
def test_missing_view_in_one_time_step(tmp_path):
    root = make_scene(tmp_path / "s", [0, 1, 2], [0, 1, 2])
    (root / "images" / "time_01" / "view1.png").unlink()
    s = discover_scene(root)
    assert s.views == (0, 1, 2)
    load_clip(root, 0, 1, 3, (70, 98))  # time_00 is complete
    with pytest.raises(errors.MissingFrameError, match="time step 1, view 1"):
        load_clip(root, 0, 3, 3, (70, 98))
    (root / "masks" / "time_02" / "view0.png").unlink()
    load_clip(root, 2, 1, 3, (70, 98))  # masks not requested
    with pytest.raises(errors.MissingFrameError, match="no mask for time step 2, view 0"):
        load_clip(root, 2, 1, 3, (70, 98), with_masks=True)


@needs_scene
def test_corrupt_png_names_the_file(tmp_path):
    root = make_scene(tmp_path / "s", [0, 1], [0, 1])
    bad = root / "images" / "time_01" / "view1.png"
    good_bytes = frame(1, 1).read_bytes()
    bad.unlink()
    bad.write_bytes(good_bytes[: len(good_bytes) // 3])  # truncated mid-IDAT
    with pytest.raises(errors.ImageReadError) as ei:
        load_clip(root, 0, 2, 2, (70, 98))
    assert str(bad) in str(ei.value) and isinstance(ei.value, ValueError)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(errors.ImageReadError, match="junk.png"):
        load_image(junk, (70, 98))
    with pytest.raises(errors.MissingFrameError):
        load_image(tmp_path / "absent.png", (70, 98))


@needs_scene
def test_mismatched_sizes_in_clip(tmp_path):
    root = make_scene(tmp_path / "s", [0, 1], [0, 1])
    odd = root / "images" / "time_01" / "view0.png"
    odd.unlink()
    Image.open(frame(1, 0)).resize((320, 240)).save(odd)
    with pytest.raises(errors.SizeMismatchError) as ei:
        load_clip(root, 0, 2, 2, (70, 98))
    msg = str(ei.value)
    assert str(odd) in msg and "320x240" in msg and "640x480" in msg
    load_clip(root, 1, 1, 1, (70, 98))  # alone, the small frame is fine
    odd_mask = root / "masks" / "time_00" / "view1.png"
    odd_mask.unlink()
    Image.open(mask_file(0, 1)).resize((320, 240)).save(odd_mask)
    with pytest.raises(errors.SizeMismatchError, match="mask"):
        load_clip(root, 0, 1, 2, (70, 98), with_masks=True)


@needs_scene
def test_wrong_multiple_of_14_for_clip():
    with pytest.raises(errors.PatchMultipleError, match="392x520"):
        load_clip(SCENE, 0, 1, 1, (392, 520))
    with pytest.raises(errors.PatchMultipleError):
        load_image(frame(0, 0), (100, 98))


def test_error_hierarchy():
    for cls in (errors.NotEnoughFramesError, errors.ImageReadError, errors.SizeMismatchError,
                errors.PatchMultipleError, errors.NonFiniteError, errors.CalibrationSetError):
        assert issubclass(cls, ValueError)
    for cls in (errors.SceneNotFoundError, errors.MissingFrameError):
        assert issubclass(cls, FileNotFoundError)


def test_runtime_does_not_import_torch_or_onnx():
    """The Jetson image has numpy + tensorrt only: scan imports of every runtime module."""
    import ast

    for py in sorted((REPO / "runtime").rglob("*.py")):
        tree = ast.parse(py.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in {"torch", "onnx", "torchvision"}, \
                    f"{py.name} imports {n}"



def test_runtime_works_without_pil_and_torch():
    """On a bare device: modules import, arrays preprocess, decoding says what is missing."""
    import subprocess

    code = (
        "import sys; sys.modules.update({'PIL': None, 'torch': None, 'onnx': None})\n"
        "import numpy as np\n"
        "from runtime import preprocess, postprocess, outputs\n"
        "x = preprocess.preprocess_rgb(np.zeros((48, 64, 3), np.uint8), (42, 56))\n"
        "m = preprocess.preprocess_mask(np.full((48, 64), 255, np.uint8), (42, 56))\n"
        "assert x.shape == (3, 42, 56) and m.min() == 1.0\n"
        "try:\n"
        "    preprocess.load_image('a.png', (42, 56))\n"
        "except ImportError as e:\n"
        "    assert 'Pillow' in str(e)\n"
        "else:\n"
        "    raise SystemExit('load_image without PIL did not raise')\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# ------------------------------------------------------------------ other input layouts
def _camera_folders(root: Path, counts: dict[str, int]) -> Path:
    for v, (cam, n) in enumerate(counts.items()):
        (root / cam).mkdir(parents=True)
        for i in range(n):  # 9.png, 10.png, ...: a plain string sort would put 10 first
            os.link(frame(i, v), root / cam / f"{9 + i}.png")
    return root


@needs_scene
def test_one_folder_per_camera(tmp_path):
    root = _camera_folders(tmp_path / "rig", {"cam10": 3, "cam2": 3})
    s = discover_scene(root)
    assert s.layout == "cameras" and s.views == (0, 1) and s.times == (0, 1, 2)
    assert s.view_names == {0: "cam2", 1: "cam10"}  # natural order of the folder names
    assert [s.frame_path(t, 0).name for t in s.times] == ["9.png", "10.png", "11.png"]
    clip = load_clip(root, 1, 2, 2, (70, 98))  # cam2 holds real view 1, cam10 view 0
    assert np.array_equal(clip["images"][0, 0, 0], load_image(frame(1, 1), (70, 98)))
    assert np.array_equal(clip["images"][0, 1, 1], load_image(frame(2, 0), (70, 98)))
    uneven = _camera_folders(tmp_path / "uneven", {"left": 3, "right": 2})
    with pytest.raises(errors.NotEnoughFramesError, match=r"left/ 3, right/ 2"):
        discover_scene(uneven)


@needs_scene
def test_flat_folder_is_one_view(tmp_path):
    flat = tmp_path / "scene" / "images"  # VGGT's own convention: scene/images/*.png
    flat.mkdir(parents=True)
    for t in (0, 1, 2):
        os.link(frame(t, 0), flat / f"frame{t * 5}.png")
    s = discover_scene(tmp_path / "scene")
    assert s.layout == "flat" and s.views == (0,) and s.num_times == 3
    assert s.frame_path(2, 0).name == "frame10.png"
    (flat / "cam0").mkdir()
    os.link(frame(0, 1), flat / "cam0" / "0.png")
    with pytest.raises(errors.RuntimeDataError, match="both images .* and camera folders"):
        discover_scene(tmp_path / "scene")
