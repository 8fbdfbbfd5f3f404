"""Camera and geometry post-processing for VGGT_MV outputs, numpy only.

Conventions (the same as facebookresearch/vggt):
- extrinsic [R|t] is camera-from-world, OpenCV axes (x right, y down, z forward):
  X_cam = R @ X_world + t; the camera centre is C = -R^T t.
- pose encoding "absT_quaR_FoV" [..., 9] = t (3), quaternion XYZW scalar-last (4),
  fov_h, fov_w (radians); fx = (W/2)/tan(fov_w/2), fy = (H/2)/tan(fov_h/2), principal
  point at (W/2, H/2).
- pixel (u, v) = (column, row) with integer coordinates at pixel centres and no half-pixel
  shift when unprojecting, as in upstream VGGT's depth_to_cam_coords_points (the model was
  trained that way; facebookresearch/vggt#354 discusses it).

Every function broadcasts over leading dimensions and keeps float32 inputs in float32
(float64 stays float64); the maths that loses precision is done in float64 internally.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from .errors import NonFiniteError, RuntimeDataError

__all__ = [
    "quat_to_mat",
    "mat_to_quat",
    "pose_encoding_to_extri_intri",
    "extri_intri_to_pose_encoding",
    "closed_form_inverse_se3",
    "camera_centers",
    "depth_to_camera_points",
    "camera_to_world",
    "world_to_camera",
    "unproject_pixels",
    "depth_to_world_points",
    "project_points",
    "confidence_mask",
    "assert_finite",
]


def _float_dtype(*arrays: np.ndarray) -> np.dtype:
    dt = np.result_type(*[np.asarray(a).dtype for a in arrays])
    return np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)


def _check_tail(a: np.ndarray, tail: tuple[int, ...], name: str) -> None:
    if a.shape[a.ndim - len(tail):] != tail or a.ndim < len(tail):
        raise RuntimeDataError(f"{name} must have shape [..., {', '.join(map(str, tail))}], "
                               f"got {a.shape}")


# ------------------------------------------------------------------------------ rotations
def quat_to_mat(quat: np.ndarray) -> np.ndarray:
    """Quaternions XYZW [..., 4] (need not be unit) -> rotation matrices [..., 3, 3]."""
    q = np.asarray(quat)
    _check_tail(q, (4,), "quat")
    out_dt = _float_dtype(q)
    q = q.astype(np.float64)
    x, y, z, w = np.moveaxis(q, -1, 0)
    # Dividing by |q|^2 instead of normalising first makes non-unit network outputs valid.
    s = 2.0 / np.sum(q * q, axis=-1)
    R = np.stack([
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    ], axis=-1)
    return R.reshape(q.shape[:-1] + (3, 3)).astype(out_dt)


def mat_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> unit quaternions XYZW [..., 4] with w >= 0."""
    M = np.asarray(R)
    _check_tail(M, (3, 3), "R")
    out_dt = _float_dtype(M)
    M = M.astype(np.float64)
    m00, m01, m02 = M[..., 0, 0], M[..., 0, 1], M[..., 0, 2]
    m10, m11, m12 = M[..., 1, 0], M[..., 1, 1], M[..., 1, 2]
    m20, m21, m22 = M[..., 2, 0], M[..., 2, 1], M[..., 2, 2]
    # 4 * (w^2, x^2, y^2, z^2); the largest gives the best-conditioned division (Shepperd).
    sq = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22,
                   1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=-1)
    best = np.argmax(sq, axis=-1)
    root = np.sqrt(np.maximum(np.take_along_axis(sq, best[..., None], -1)[..., 0], 1e-300))
    cand = np.stack([  # rows: candidate (w, x, y, z) * 4*component, per choice of pivot
        np.stack([sq[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
        np.stack([m21 - m12, sq[..., 1], m10 + m01, m02 + m20], -1),
        np.stack([m02 - m20, m10 + m01, sq[..., 2], m12 + m21], -1),
        np.stack([m10 - m01, m20 + m02, m21 + m12, sq[..., 3]], -1),
    ], axis=-2)
    wxyz = np.take_along_axis(cand, best[..., None, None], -2)[..., 0, :] / (2.0 * root[..., None])
    q = wxyz[..., [1, 2, 3, 0]]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    # q and -q are the same rotation; pick w >= 0 so encodings are unique (as VGGT does).
    q = np.where(q[..., 3:4] < 0, -q, q)
    return q.astype(out_dt)


# --------------------------------------------------------------------- pose encoding
def pose_encoding_to_extri_intri(pose_enc: np.ndarray, image_hw: Sequence[int]
                                 ) -> tuple[np.ndarray, np.ndarray]:
    """pose_enc [..., 9] ("absT_quaR_FoV") -> (extrinsics [..., 3, 4], intrinsics [..., 3, 3])."""
    p = np.asarray(pose_enc)
    _check_tail(p, (9,), "pose_enc")
    dt = _float_dtype(p)
    H, W = float(image_hw[0]), float(image_hw[1])
    p64 = p.astype(np.float64)
    R = quat_to_mat(p64[..., 3:7])
    extr = np.concatenate([R, p64[..., :3, None]], axis=-1)
    intr = np.zeros(p.shape[:-1] + (3, 3), dtype=np.float64)
    intr[..., 0, 0] = (W / 2.0) / np.tan(p64[..., 8] / 2.0)
    intr[..., 1, 1] = (H / 2.0) / np.tan(p64[..., 7] / 2.0)
    intr[..., 0, 2] = W / 2.0
    intr[..., 1, 2] = H / 2.0
    intr[..., 2, 2] = 1.0
    return extr.astype(dt), intr.astype(dt)


def extri_intri_to_pose_encoding(extrinsics: np.ndarray, intrinsics: np.ndarray,
                                 image_hw: Sequence[int]) -> np.ndarray:
    """(extrinsics [..., 3, 4], intrinsics [..., 3, 3]) -> pose_enc [..., 9].

    The principal point is not encoded (VGGT assumes the image centre), so a round trip
    only preserves K when its principal point is at (W/2, H/2).
    """
    E, K = np.asarray(extrinsics), np.asarray(intrinsics)
    if E.shape[-2:] != (4, 4):
        _check_tail(E, (3, 4), "extrinsics")
    _check_tail(K, (3, 3), "intrinsics")
    dt = _float_dtype(E, K)
    H, W = float(image_hw[0]), float(image_hw[1])
    E64, K64 = E.astype(np.float64), K.astype(np.float64)
    quat = mat_to_quat(E64[..., :3, :3])
    fov_h = 2.0 * np.arctan((H / 2.0) / K64[..., 1, 1])
    fov_w = 2.0 * np.arctan((W / 2.0) / K64[..., 0, 0])
    lead = np.broadcast_shapes(E.shape[:-2], K.shape[:-2])
    parts = [np.broadcast_to(E64[..., :3, 3], lead + (3,)), np.broadcast_to(quat, lead + (4,)),
             np.broadcast_to(fov_h, lead)[..., None], np.broadcast_to(fov_w, lead)[..., None]]
    return np.concatenate(parts, axis=-1).astype(dt)


# ----------------------------------------------------------------------- rigid transforms
def closed_form_inverse_se3(se3: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms [..., 3, 4] or [..., 4, 4] via [R^T | -R^T t].

    Unlike VGGT (always 4x4) the output keeps the input's trailing shape, so the inverse of
    a 3x4 camera-from-world extrinsic is directly the 3x4 world-from-camera pose.
    """
    T = np.asarray(se3)
    if T.ndim < 2 or T.shape[-2:] not in ((3, 4), (4, 4)):
        raise RuntimeDataError(f"se3 must have shape [..., 3, 4] or [..., 4, 4], got {T.shape}")
    dt = _float_dtype(T)
    R = T[..., :3, :3].astype(np.float64)
    t = T[..., :3, 3].astype(np.float64)
    Rt = np.swapaxes(R, -1, -2)
    out = np.zeros(T.shape, dtype=np.float64)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    if T.shape[-2] == 4:
        out[..., 3, 3] = 1.0
    return out.astype(dt)


def camera_centers(extrinsics: np.ndarray) -> np.ndarray:
    """Camera centres in world coordinates [..., 3] from camera-from-world [..., 3, 4]."""
    return closed_form_inverse_se3(np.asarray(extrinsics))[..., :3, 3]


def _expand_for_points(mat: np.ndarray, points: np.ndarray, name: str) -> np.ndarray:
    # Leading dims of the matrix are the leading dims of the points; whatever point dims
    # remain (M, or H, W) get singleton axes so one camera applies to all its points.
    lead = mat.ndim - 2
    extra = points.ndim - 1 - lead
    if extra < 0:
        raise RuntimeDataError(f"{name} has more leading dims {mat.shape[:-2]} than the points "
                               f"{points.shape[:-1]}")
    return mat.reshape(mat.shape[:-2] + (1,) * extra + mat.shape[-2:])


def camera_to_world(points_cam: np.ndarray, extrinsic: np.ndarray) -> np.ndarray:
    """Camera-frame points [..., *P, 3] -> world, with camera-from-world [..., 3, 4]."""
    P, E = np.asarray(points_cam), np.asarray(extrinsic)
    _check_tail(P, (3,), "points_cam")
    dt = _float_dtype(P, E)
    E = _expand_for_points(E.astype(np.float64), P, "extrinsic")
    R, t = E[..., :3, :3], E[..., :3, 3]
    # X_w = R^T (X_c - t); einsum with R (not R^T) on the left index does the transpose.
    return np.einsum("...ji,...j->...i", R, P.astype(np.float64) - t).astype(dt)


def world_to_camera(points_world: np.ndarray, extrinsic: np.ndarray) -> np.ndarray:
    """World points [..., *P, 3] -> camera frame, with camera-from-world [..., 3, 4]."""
    P, E = np.asarray(points_world), np.asarray(extrinsic)
    _check_tail(P, (3,), "points_world")
    dt = _float_dtype(P, E)
    E = _expand_for_points(E.astype(np.float64), P, "extrinsic")
    return (np.einsum("...ij,...j->...i", E[..., :3, :3], P.astype(np.float64))
            + E[..., :3, 3]).astype(dt)


# ----------------------------------------------------------------------- depth / points
def depth_to_camera_points(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Depth [..., H, W] (or [..., H, W, 1]) and K [..., 3, 3] -> camera points [..., H, W, 3]."""
    D, K = np.asarray(depth), np.asarray(K)
    _check_tail(K, (3, 3), "K")
    if D.ndim >= 3 and D.shape[-1] == 1:
        D = D[..., 0]
    if D.ndim < 2:
        raise RuntimeDataError(f"depth must be [..., H, W], got {D.shape}")
    if K.ndim - 2 > D.ndim - 2:
        raise RuntimeDataError(f"K leading dims {K.shape[:-2]} exceed depth's {D.shape[:-2]}")
    dt = _float_dtype(D, K)
    H, W = D.shape[-2:]
    K64 = K.astype(np.float64)[..., None, None, :, :]
    fx, fy = K64[..., 0, 0], K64[..., 1, 1]
    cx, cy, skew = K64[..., 0, 2], K64[..., 1, 2], K64[..., 0, 1]
    v, u = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64),
                       indexing="ij")
    d = D.astype(np.float64)
    y = (v - cy) / fy
    # Skew is zero for VGGT outputs; honouring it keeps real calibrations exact too.
    x = (u - cx - skew * y) / fx
    return np.stack(np.broadcast_arrays(x * d, y * d, d), axis=-1).astype(dt)


def unproject_pixels(uv: np.ndarray, depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixels uv [..., *P, 2] with depths [..., *P] -> camera points [..., *P, 3]."""
    uv, d, K = np.asarray(uv), np.asarray(depth), np.asarray(K)
    _check_tail(uv, (2,), "uv")
    _check_tail(K, (3, 3), "K")
    dt = _float_dtype(uv, d, K)
    K64 = _expand_for_points(K.astype(np.float64), uv, "K")
    y = (uv[..., 1] - K64[..., 1, 2]) / K64[..., 1, 1]
    x = (uv[..., 0] - K64[..., 0, 2] - K64[..., 0, 1] * y) / K64[..., 0, 0]
    d = d.astype(np.float64)
    return np.stack(np.broadcast_arrays(x * d, y * d, d), axis=-1).astype(dt)


def depth_to_world_points(depth: np.ndarray, extrinsics: np.ndarray,
                          intrinsics: np.ndarray) -> np.ndarray:
    """Depth [..., H, W(, 1)] -> world point map [..., H, W, 3] (camera-from-world extrinsics)."""
    return camera_to_world(depth_to_camera_points(depth, intrinsics), extrinsics)


def project_points(points_world: np.ndarray, extrinsic: np.ndarray, K: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """World points [..., *P, 3] -> (uv [..., *P, 2] pixels, z [..., *P] camera depth).

    Points with z <= 0 are behind the camera; their uv is returned as computed (inf/nan at
    z == 0) so that callers decide, typically via ``z > 0``.
    """
    Pw, K = np.asarray(points_world), np.asarray(K)
    _check_tail(K, (3, 3), "K")
    dt = _float_dtype(Pw, extrinsic, K)
    Pc = world_to_camera(Pw.astype(np.float64), np.asarray(extrinsic, dtype=np.float64))
    K64 = _expand_for_points(K.astype(np.float64), Pw, "K")
    proj = np.einsum("...ij,...j->...i", K64, Pc)
    z = Pc[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = proj[..., :2] / proj[..., 2:3]
    return uv.astype(dt), z.astype(dt)


def confidence_mask(conf: np.ndarray, percentile: float | None = None,
                    threshold: float | None = None, per_frame: bool = False,
                    min_conf: float = 1e-5) -> np.ndarray:
    """Boolean mask of confident pixels.

    ``percentile`` keeps values at or above that percentile (VGGT's demo filter, e.g. 50
    drops the lowest half), computed over the whole array or, with ``per_frame``, over the
    last two (H, W) dims; ``threshold`` keeps conf >= threshold. Both may be combined.
    NaN never passes, and conf <= ``min_conf`` never passes (VGGT's 1e-5 floor).
    """
    c = np.asarray(conf)
    if percentile is None and threshold is None:
        raise ValueError("give percentile and/or threshold")
    if percentile is not None and not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    keep = np.isfinite(c) & (c > min_conf)
    if threshold is not None:
        keep &= c >= threshold
    if percentile is not None:
        if per_frame:
            if c.ndim < 2:
                raise RuntimeDataError(f"per_frame needs [..., H, W], got {c.shape}")
            flat = np.where(np.isfinite(c), c, np.nan).reshape(c.shape[:-2] + (-1,))
            with warnings.catch_warnings():
                # An all-NaN frame yields a NaN cut, which then keeps nothing: intended.
                warnings.simplefilter("ignore", RuntimeWarning)
                cut = np.nanpercentile(flat, percentile, axis=-1)[..., None, None]
        else:
            finite = c[np.isfinite(c)]
            if finite.size == 0:
                return np.zeros(c.shape, dtype=bool)
            cut = np.percentile(finite, percentile)
        keep &= c >= cut
    return keep


def assert_finite(name: str, array: np.ndarray) -> np.ndarray:
    """Raise NonFiniteError naming ``name`` if the engine output holds NaN/Inf."""
    a = np.asarray(array)
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise NonFiniteError(f"{name} has {bad} non-finite values of {a.size}")
    return a
