"""runtime.postprocess / runtime.outputs, checked against the real mv_scene cameras.

Extrinsics convention of mv_scene (cameras/time_TT/extrinsics_viewV.npy, undocumented
upstream): **camera-from-world, OpenCV** -- X_cam = R X_world + t, centre C = -R^T t --
i.e. the same convention as VGGT, usable without inversion. Evidence (time_00):

1. A static object seen by all four cameras (the yellow mustard bottle on the table, found
   by colour outside the SAM2 dynamic masks) triangulates, under camera-from-world, to one
   point that reprojects within ~4.5 px of the bottle in all four views, with positive
   depth (3.9-6.7 m) in each. Read as world-from-camera, the best triangulation is off by
   120-420 px in every view. (test_extrinsics_are_camera_from_world)
2. Under camera-from-world the world origin projects inside or just below the image in all
   four cameras at depths 3.6-6.9 m (the rig looks at a common workspace around the
   origin); under world-from-camera it lands thousands of pixels outside two of them.
3. Under camera-from-world the optical axes of the four cameras pass within 0.3-1.2 m of one
   common point 4.9-5.4 m in front of every camera; the other reading gives 0.5-1.8 m at
   only 2-3 m depth. (1. is the decisive, pixel-level check; 2. and 3. are consistent.)
The rig is static: every time step stores identical cameras.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from runtime import errors
from runtime.outputs import atomic_write, colorize, read_ply, save_png, write_ply
from runtime.postprocess import (
    assert_finite,
    camera_centers,
    camera_to_world,
    closed_form_inverse_se3,
    confidence_mask,
    depth_to_camera_points,
    depth_to_world_points,
    extri_intri_to_pose_encoding,
    mat_to_quat,
    pose_encoding_to_extri_intri,
    project_points,
    quat_to_mat,
    unproject_pixels,
    world_to_camera,
)
from runtime.preprocess import map_pixels, target_size_for, transform_intrinsics

SCENE = Path(os.environ.get("VGGT_MV_SCENE")
             or Path(__file__).resolve().parents[2] / "shared" / "data" / "mv_scene")
needs_scene = pytest.mark.skipif(
    not (SCENE / "cameras" / "time_00" / "extrinsics_view0.npy").is_file(),
    reason=f"real multi-view cameras not found at {SCENE} (set VGGT_MV_SCENE)")


def real_cameras(t: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(K [4,3,3], E [4,3,4]) float64 of the four cameras at time step t, as stored."""
    d = SCENE / "cameras" / f"time_{t:02d}"
    K = np.stack([np.load(d / f"intrinsics_view{v}.npy") for v in range(4)]).astype(np.float64)
    E = np.stack([np.load(d / f"extrinsics_view{v}.npy") for v in range(4)]).astype(np.float64)
    return K, E


def random_rotations(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    q = rng.normal(size=shape + (4,))
    return quat_to_mat(q / np.linalg.norm(q, axis=-1, keepdims=True))


# ------------------------------------------------------------------------------ rotations
def test_quaternion_round_trip_and_known_values():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, 5, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q = np.where(q[..., 3:] < 0, -q, q)
    R = quat_to_mat(q)
    assert np.allclose(R @ np.swapaxes(R, -1, -2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0)
    assert np.allclose(mat_to_quat(R), q, atol=1e-12)
    a = 0.3  # rotation about z: XYZW = (0, 0, sin(a/2), cos(a/2)), scalar last
    Rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    assert np.allclose(mat_to_quat(Rz), [0, 0, np.sin(a / 2), np.cos(a / 2)])
    assert np.allclose(quat_to_mat(np.array([0, 0, np.sin(a / 2), np.cos(a / 2)])), Rz)
    # 180-degree turns (trace = -1) take the non-w pivots; non-unit input is normalised.
    for R180 in (np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])):
        assert np.allclose(quat_to_mat(mat_to_quat(R180)), R180)
    assert np.allclose(quat_to_mat(np.array([0, 0, 0, 3.0])), np.eye(3))
    assert quat_to_mat(q.astype(np.float32)).dtype == np.float32
    assert mat_to_quat(R.astype(np.float32)).dtype == np.float32


# -------------------------------------------------------------------------- pose encoding
def test_pose_encoding_round_trip_random():
    rng = np.random.default_rng(1)
    enc = np.concatenate([
        rng.normal(size=(2, 8, 3)),
        (q := rng.normal(size=(2, 8, 4))) / np.linalg.norm(q, axis=-1, keepdims=True),
        rng.uniform(0.3, 2.0, size=(2, 8, 2)),
    ], -1)
    enc[..., 3:7] = np.where(enc[..., 6:7] < 0, -enc[..., 3:7], enc[..., 3:7])
    E, K = pose_encoding_to_extri_intri(enc, (392, 518))
    assert E.shape == (2, 8, 3, 4) and K.shape == (2, 8, 3, 3)
    assert np.allclose(K[..., 0, 2], 259.0) and np.allclose(K[..., 1, 2], 196.0)
    back = extri_intri_to_pose_encoding(E, K, (392, 518))
    assert np.allclose(back, enc, atol=1e-10)
    E32, K32 = pose_encoding_to_extri_intri(enc.astype(np.float32), (392, 518))
    assert E32.dtype == K32.dtype == np.float32
    assert np.allclose(extri_intri_to_pose_encoding(E32, K32, (392, 518)), enc, atol=2e-5)


def test_fov_to_focal_formula():
    enc = np.zeros(9)
    enc[6] = 1.0
    enc[7], enc[8] = np.pi / 2, 2 * np.arctan(0.5)  # 90 deg vertical: fy = H/2
    _, K = pose_encoding_to_extri_intri(enc, (392, 518))
    assert np.isclose(K[1, 1], 196.0) and np.isclose(K[0, 0], 518.0)
    assert np.allclose(K[2], [0, 0, 1]) and K[0, 1] == 0


def test_matches_the_model_side_torch_encoding():
    """The engine's pose_enc is decoded here; it must agree with the model's own helpers."""
    torch = pytest.importorskip("torch")
    pe = pytest.importorskip("vggt_mv.heads.pose_encoding")
    rng = np.random.default_rng(7)
    enc = np.concatenate([rng.normal(size=(3, 4, 7)), rng.uniform(0.4, 1.8, (3, 4, 2))], -1)
    E, K = pose_encoding_to_extri_intri(enc, (392, 518))
    Et, Kt = pe.pose_encoding_to_extri_intri(torch.from_numpy(enc), (392, 518))
    assert np.allclose(E, Et.numpy(), atol=1e-10) and np.allclose(K, Kt.numpy(), atol=1e-8)
    back = extri_intri_to_pose_encoding(E, K, (392, 518))
    back_t = pe.extri_intri_to_pose_encoding(Et, Kt, (392, 518)).numpy()
    assert np.allclose(back, back_t, atol=1e-5)


@needs_scene
def test_pose_encoding_round_trip_real_cameras():
    K, E = real_cameras()
    size = target_size_for(480, 640)
    Kp = transform_intrinsics(K, (480, 640), size)
    enc = extri_intri_to_pose_encoding(E[None], Kp[None], size)
    assert enc.shape == (1, 4, 9)
    assert np.all(enc[..., 6] >= 0) and np.allclose(np.linalg.norm(enc[..., 3:7], axis=-1), 1)
    E2, K2 = pose_encoding_to_extri_intri(enc, size)
    assert np.allclose(E2[0], E, atol=1e-6)
    assert np.allclose(K2[0, :, 0, 0], Kp[:, 0, 0]) and np.allclose(K2[0, :, 1, 1], Kp[:, 1, 1])
    # The encoding drops the principal point: it comes back at the image centre.
    assert np.allclose(K2[0, :, :2, 2], [259.0, 196.0])


# --------------------------------------------------------------- extrinsics convention
def _yellow_blob_centre(t: int, v: int) -> np.ndarray:
    Image = pytest.importorskip("PIL.Image")
    hsv = np.asarray(Image.open(SCENE / "images" / f"time_{t:02d}" / f"view{v}.png")
                     .convert("HSV")).astype(int)
    dyn = np.asarray(Image.open(SCENE / "masks" / f"time_{t:02d}" / f"view{v}.png")) > 127
    h, s, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sel = (s > 130) & (val > 130) & (h > 25) & (h < 45) & ~dyn
    assert sel.sum() > 500, f"mustard bottle not found in view {v}"
    ys, xs = np.nonzero(sel)
    return np.array([np.median(xs), np.median(ys)], dtype=np.float64)


def _triangulate(P: np.ndarray, uv: np.ndarray) -> np.ndarray:
    A = np.concatenate([uv[:, :1] * P[:, 2] - P[:, 0], uv[:, 1:] * P[:, 2] - P[:, 1]])
    X = np.linalg.svd(A)[2][-1]
    return X[:3] / X[3]


def _reprojection(K: np.ndarray, E: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = _triangulate(K @ E, uv)
    proj, z = project_points(X[None, None], E, K)  # one point, seen by every camera
    return np.linalg.norm(proj[:, 0] - uv, axis=-1), z[:, 0]


@needs_scene
@pytest.mark.parametrize("t", [0, 15])
def test_extrinsics_are_camera_from_world(t):
    K, E = real_cameras(t)
    R = E[:, :, :3]
    assert np.allclose(R @ np.swapaxes(R, -1, -2), np.eye(3), atol=1e-5)
    assert np.allclose(np.linalg.det(R), 1.0, atol=1e-5)
    uv = np.stack([_yellow_blob_centre(t, v) for v in range(4)])
    err_c2w_read, z = _reprojection(K, E, uv)            # as camera-from-world
    err_w2c_read, _ = _reprojection(K, closed_form_inverse_se3(E), uv)  # as world-from-camera
    assert np.all(z > 1.0), z
    assert err_c2w_read.max() < 20.0, err_c2w_read
    assert err_w2c_read.min() > 60.0, err_w2c_read
    # The rig is static across the sequence.
    assert np.allclose(real_cameras(t)[1], real_cameras(0)[1])


@needs_scene
def test_world_origin_is_in_front_of_every_camera():
    K, E = real_cameras()
    uv, z = project_points(np.zeros((1, 1, 3)), E, K)
    assert np.all(z[:, 0] > 3.0)
    assert np.all((uv[:, 0, 0] > 0) & (uv[:, 0, 0] < 640) & (uv[:, 0, 1] > 0)
                  & (uv[:, 0, 1] < 560)), uv


# -------------------------------------------------------- projection with the real rig
@needs_scene
def test_view0_to_view1_round_trip_real_cameras():
    K, E = real_cameras()
    rng = np.random.default_rng(2)
    v, u = np.mgrid[0:480:12, 0:640:16].astype(np.float64)
    uv0 = np.stack([u, v], -1).reshape(-1, 2)
    depth = rng.uniform(2.0, 9.0, size=len(uv0))
    # Through the dense-map path too: a synthetic depth map for view 0.
    dmap = np.full((480, 640), np.nan)
    dmap[v.astype(int), u.astype(int)] = depth.reshape(v.shape)
    Xmap = depth_to_world_points(dmap, E[0], K[0])
    X = camera_to_world(unproject_pixels(uv0, depth, K[0]), E[0])
    assert np.allclose(Xmap[v.astype(int), u.astype(int)].reshape(-1, 3), X, atol=1e-9)

    uv1, z1 = project_points(X, E[1], K[1])
    ok = z1 > 0
    assert ok.mean() > 0.9
    X_back = camera_to_world(unproject_pixels(uv1[ok], z1[ok], K[1]), E[1])
    uv0_back, z0_back = project_points(X_back, E[0], K[0])
    assert np.abs(uv0_back - uv0[ok]).max() < 1e-3
    assert np.allclose(z0_back, depth[ok], atol=1e-6)

    # Relation to the real camera centres: a view-0 pixel at depth d is at distance
    # d * |K0^-1 (u, v, 1)| from C0, and, as d varies, its images in view 1 lie on a line
    # through the epipole (the image of C0 in view 1).
    C = camera_centers(E)
    ray = np.linalg.norm(unproject_pixels(uv0, np.ones(len(uv0)), K[0]), axis=-1)
    assert np.allclose(np.linalg.norm(X - C[0], axis=-1), depth * ray)
    assert np.allclose(world_to_camera(C, E), 0, atol=1e-5)  # camera i maps C_i to 0
    epi, _ = project_points(C[0][None], E[1], K[1])
    for i in rng.choice(np.nonzero(ok)[0], 10, replace=False):
        far, _ = project_points(camera_to_world(
            unproject_pixels(uv0[i], depth[i] * 3.0, K[0]), E[0]), E[1], K[1])
        d1, d2 = uv1[i] - epi[0], far - epi[0]
        assert abs(d1[0] * d2[1] - d1[1] * d2[0]) / (np.linalg.norm(d1) * np.linalg.norm(d2)) < 1e-9
    # The relative pose view0 -> view1 carries the real baseline |C1 - C0|.
    T01 = np.eye(4)
    T01[:3] = E[1] @ closed_form_inverse_se3(np.vstack([E[0], [0, 0, 0, 1]]))
    assert np.isclose(np.linalg.norm(camera_centers(T01[:3])), np.linalg.norm(C[1] - C[0]))


@needs_scene
def test_intrinsics_follow_the_preprocessing_geometry():
    K, E = real_cameras()
    size = (280, 518)  # a bucket with a height crop
    Kp = transform_intrinsics(K, (480, 640), size)
    X = np.random.default_rng(3).uniform(-1, 1, size=(50, 3)) + np.array([0.5, -1.0, 1.5])
    uv, _ = project_points(X[None], E, K)
    uvp, _ = project_points(X[None], E, Kp)
    assert uv.shape == (4, 50, 2)
    assert np.allclose(uvp, map_pixels(uv, (480, 640), size), atol=1e-6)


# ------------------------------------------------------------------ depth / point maps
def test_depth_to_camera_points_convention_and_batching():
    rng = np.random.default_rng(4)
    K = np.array([[300.0, 0, 48.0], [0, 310.0, 35.0], [0, 0, 1]])
    d = rng.uniform(1, 5, size=(2, 3, 70, 98))
    P = depth_to_camera_points(d, K)
    assert P.shape == (2, 3, 70, 98, 3)
    # VGGT: integer pixel centres, no half-pixel shift.
    assert np.isclose(P[1, 2, 10, 20, 0], (20 - 48.0) * d[1, 2, 10, 20] / 300.0)
    assert np.isclose(P[1, 2, 10, 20, 1], (10 - 35.0) * d[1, 2, 10, 20] / 310.0)
    assert np.array_equal(P[..., 2], d)
    assert depth_to_camera_points(d[..., None], K).shape == P.shape
    Es = np.concatenate([random_rotations(rng, (2, 3)), rng.normal(size=(2, 3, 3, 1))], -1)
    Ks = np.broadcast_to(K, (2, 3, 3, 3)).copy()
    Ks[..., 0, 0] += rng.uniform(0, 50, size=(2, 3))
    W = depth_to_world_points(d, Es, Ks)
    for b in range(2):
        for s in range(3):
            ref = camera_to_world(depth_to_camera_points(d[b, s], Ks[b, s]), Es[b, s])
            assert np.allclose(W[b, s], ref)
            uv, z = project_points(W[b, s], Es[b, s], Ks[b, s])
            assert np.allclose(z, d[b, s])
            assert np.allclose(uv[40, 60], [60, 40])
    W32 = depth_to_world_points(d.astype(np.float32), Es.astype(np.float32),
                                Ks.astype(np.float32))
    assert W32.dtype == np.float32 and np.allclose(W32, W, atol=1e-4)
    assert depth_to_world_points(d, Es, Ks).dtype == np.float64


def test_closed_form_inverse_se3():
    rng = np.random.default_rng(5)
    E = np.concatenate([random_rotations(rng, (4, 2)), rng.normal(size=(4, 2, 3, 1))], -1)
    inv = closed_form_inverse_se3(E)
    assert inv.shape == (4, 2, 3, 4)
    full = np.concatenate([E, np.broadcast_to([0, 0, 0, 1.0], (4, 2, 1, 4))], -2)
    inv4 = closed_form_inverse_se3(full)
    assert inv4.shape == (4, 2, 4, 4)
    assert np.allclose(inv4 @ full, np.eye(4)) and np.allclose(inv4[..., :3, :], inv)
    assert np.allclose(np.linalg.inv(full), inv4)
    with pytest.raises(errors.RuntimeDataError):
        closed_form_inverse_se3(np.zeros((3, 3)))


def test_confidence_mask():
    conf = np.arange(1, 201, dtype=np.float32).reshape(2, 10, 10)
    conf[0, 0, 0] = np.nan
    keep = confidence_mask(conf, percentile=50)
    assert keep.dtype == bool and 99 <= keep.sum() <= 101 and not keep[0, 0, 0]
    assert confidence_mask(conf, threshold=150.5).sum() == 50
    both = confidence_mask(conf, percentile=50, threshold=190.5)
    assert both.sum() == 10
    per = confidence_mask(conf, percentile=50, per_frame=True)
    assert 48 <= per[0].sum() <= 51 and 49 <= per[1].sum() <= 51
    assert not confidence_mask(np.zeros((4, 4)), threshold=0.0).any()  # VGGT's 1e-5 floor
    with pytest.raises(ValueError):
        confidence_mask(conf)


def test_assert_finite():
    assert_finite("depth", np.ones(3))
    with pytest.raises(errors.NonFiniteError, match="depth has 1 non-finite"):
        assert_finite("depth", np.array([1.0, np.inf]))


# -------------------------------------------------------------------------------- outputs
@needs_scene
def test_ply_written_and_reread(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    K, E = real_cameras()
    rgb = np.asarray(Image.open(SCENE / "images" / "time_00" / "view0.png").convert("RGB"))
    depth = np.full((480, 640), 4.0)
    depth[::7, ::5] = np.nan  # invalid pixels must not reach the file
    pts = depth_to_world_points(depth, E[0], K[0]).reshape(-1, 3)
    cols = rgb.reshape(-1, 3)
    path = tmp_path / "cloud.ply"
    n = write_ply(path, pts, cols)
    ok = np.isfinite(pts).all(1)
    assert n == ok.sum() < len(pts)
    back = read_ply(path)
    assert list(back) == ["x", "y", "z", "red", "green", "blue"]
    assert np.allclose(np.stack([back["x"], back["y"], back["z"]], -1), pts[ok], atol=1e-5)
    assert np.array_equal(np.stack([back["red"], back["green"], back["blue"]], -1), cols[ok])
    raw = path.read_bytes()
    assert raw.startswith(b"ply\nformat binary_little_endian 1.0\n")
    assert len(raw) - (raw.index(b"end_header\n") + 11) == n * 15
    write_ply(tmp_path / "plain.ply", pts[:10])
    assert list(read_ply(tmp_path / "plain.ply")) == ["x", "y", "z"]
    with pytest.raises(errors.RuntimeDataError):
        write_ply(tmp_path / "bad.ply", pts[:10], cols[:9])
    assert not (tmp_path / "bad.ply").exists()


def test_atomic_write_leaves_nothing_on_exception(tmp_path):
    target = tmp_path / "out" / "result.bin"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half of it")
            raise RuntimeError("disk full, say")
    assert list(target.parent.iterdir()) == []
    with atomic_write(target) as f:
        f.write(b"complete")
    assert target.read_bytes() == b"complete"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as f:
            f.write(b"partial")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"complete"
    assert [p.name for p in target.parent.iterdir()] == ["result.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_colorize_and_save_png(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 256), (4, 1))
    ramp[0, 0] = np.nan
    for cmap in ("turbo", "viridis"):
        img = colorize(ramp, cmap, vmin=0, vmax=1)
        assert img.shape == (4, 256, 3) and img.dtype == np.uint8
        assert (img[0, 0] == 0).all()
    t = colorize(ramp, "turbo", 0, 1).astype(int)
    lo, mid, hi = t[1, 40], t[1, 128], t[1, 215]
    assert lo[2] > lo[0] and mid[1] > max(mid[0], mid[2]) and hi[0] > hi[2]
    vir = colorize(ramp, "viridis", 0, 1).astype(int)
    assert vir[1, 1][2] > vir[1, 1][1] and vir[1, 255][0] > 200 and vir[1, 255][2] < 80
    luminance = vir[1] @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luminance[1:]) > -1.0)  # viridis brightens monotonically
    assert (colorize(ramp * 10, "turbo", vmin=0, vmax=1)[1, 30:] == t[1, 255]).all()
    auto = colorize(np.random.default_rng(6).normal(size=(8, 8)))
    assert auto.shape == (8, 8, 3)
    with pytest.raises(ValueError):
        colorize(ramp, "jet")
    Image = pytest.importorskip("PIL.Image")
    for arr in (t.astype(np.uint8), t[..., 0].astype(np.uint8),
                np.dstack([t, np.full((4, 256), 128)]).astype(np.uint8)):
        p = tmp_path / f"x{arr.ndim}{arr.shape[-1]}.png"
        save_png(p, arr)
        assert np.array_equal(np.asarray(Image.open(p)), arr)
    with pytest.raises(errors.RuntimeDataError):
        save_png(tmp_path / "f.png", np.zeros((4, 4, 3), np.float32))
    assert not (tmp_path / "f.png").exists()
