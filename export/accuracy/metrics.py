"""Error metrics between two backends' outputs: per tensor, and per 4D-vision task."""
from __future__ import annotations

import numpy as np


def tensor_metrics(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    r = np.asarray(ref, np.float64).ravel()
    g = np.asarray(got, np.float64).ravel()
    nonfinite = int((~np.isfinite(g)).sum())
    d = np.abs(np.nan_to_num(g, nan=np.inf) - r)
    rel = d / (np.abs(r) + 1e-6)
    denom = np.linalg.norm(r) * np.linalg.norm(np.nan_to_num(g))
    cos = float(np.dot(r, np.nan_to_num(g)) / denom) if denom > 0 else 1.0
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "p99_abs": float(np.percentile(d, 99)), "max_rel": float(rel.max()),
            "mean_rel": float(rel.mean()), "p99_rel": float(np.percentile(rel, 99)),
            "cosine": cos, "nonfinite": nonfinite}


def _unit(q: np.ndarray) -> np.ndarray:
    return q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)


def rotation_error_deg(pose_ref: np.ndarray, pose_got: np.ndarray) -> np.ndarray:
    """Angle between camera rotations from pose_enc quaternions (q and -q are the same)."""
    dot = np.abs(np.sum(_unit(pose_ref[..., 3:7].astype(np.float64))
                        * _unit(pose_got[..., 3:7].astype(np.float64)), axis=-1))
    return np.degrees(2.0 * np.arccos(np.clip(dot, 0.0, 1.0)))


def translation_error(pose_ref: np.ndarray, pose_got: np.ndarray) -> dict[str, float]:
    tr, tg = pose_ref[..., :3].astype(np.float64), pose_got[..., :3].astype(np.float64)
    err = np.linalg.norm(tr - tg, axis=-1)
    cosang = np.sum(_unit(tr) * _unit(tg), axis=-1)
    ang = np.degrees(np.arccos(np.clip(cosang, -1, 1)))
    return {"translation_abs_max": float(np.nan_to_num(err, nan=np.inf).max()),
            "translation_dir_deg_max": float(np.nan_to_num(ang, nan=180.0).max())}


def depth_metrics(d_ref: np.ndarray, d_got: np.ndarray) -> dict[str, float]:
    r = d_ref.astype(np.float64).ravel()
    g = np.nan_to_num(d_got.astype(np.float64).ravel(), nan=0.0, posinf=0.0)
    valid = r > 1e-6
    if not valid.any():
        return {"depth_absrel": float("nan"), "depth_delta125": float("nan")}
    r, g = r[valid], g[valid]
    ratio = np.maximum(g / r, r / np.maximum(g, 1e-12))
    return {"depth_absrel": float(np.mean(np.abs(g - r) / r)),
            "depth_delta125": float(np.mean(ratio < 1.25))}


def point_error(p_ref: np.ndarray, p_got: np.ndarray) -> dict[str, float]:
    e = np.linalg.norm(np.nan_to_num(p_got.astype(np.float64), nan=np.inf)
                       - p_ref.astype(np.float64), axis=-1)
    return {"points_l2_mean": float(e.mean()), "points_l2_max": float(e.max())}


def task_metrics(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    out: dict[str, float] = {}
    if "pose_enc" in ref and "pose_enc" in got:
        out["rotation_deg_max"] = float(np.nan_to_num(
            rotation_error_deg(ref["pose_enc"], got["pose_enc"]), nan=180.0).max())
        out.update(translation_error(ref["pose_enc"], got["pose_enc"]))
    if "depth" in ref and "depth" in got:
        out.update(depth_metrics(ref["depth"], got["depth"]))
    if "world_points" in ref and "world_points" in got:
        out.update(point_error(ref["world_points"], got["world_points"]))
    return out
