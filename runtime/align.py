"""Similarity transforms (sim(3)) between point sets: how streaming windows are chained.

Each window of VGGT_MV predicts cameras and points in its own frame (its first time step's
view-0 camera) and its own scale. Two windows that share time steps predict the same
pixels twice, so the overlap gives dense 3D-3D correspondences; a weighted Umeyama fit
inside IRLS (Cauchy weights on residuals scaled by their median absolute deviation)
finds the rotation, translation and scale that map the new window onto the running world
frame while ignoring moving objects and bad depth. numpy only (it runs on a Jetson).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Sim3", "AlignResult", "umeyama", "align_robust", "sim3_from_camera"]


@dataclass(frozen=True)
class Sim3:
    """x_world = s R x + t."""

    s: float
    R: np.ndarray
    t: np.ndarray

    @staticmethod
    def identity() -> "Sim3":
        return Sim3(1.0, np.eye(3), np.zeros(3))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Points [..., 3] -> the target frame (float64 maths, input dtype out)."""
        y = self.s * (np.asarray(x, np.float64) @ self.R.T) + self.t
        return y.astype(np.result_type(x, np.float32), copy=False)

    def extrinsics(self, E: np.ndarray) -> np.ndarray:
        """Camera-from-source [..., 3, 4] -> camera-from-target, in target units.

        A camera's coordinates scale with the world: x_cam' = s x_cam, so with
        x = R^T (x' - t) / s:  R' = Rc R^T,  t' = s tc - Rc R^T t."""
        E = np.asarray(E, np.float64)
        Rc, tc = E[..., :3, :3], E[..., :3, 3]
        R2 = Rc @ self.R.T
        t2 = self.s * tc - (R2 @ self.t[:, None])[..., 0]
        return np.concatenate([R2, t2[..., None]], axis=-1)


@dataclass
class AlignResult:
    sim3: Sim3
    residual: float        # weighted RMS residual of the inliers / the points' RMS spread
    inlier_fraction: float
    points_used: int
    iterations: int


def umeyama(src: np.ndarray, dst: np.ndarray, w: np.ndarray | None = None) -> Sim3:
    """Weighted least-squares sim(3) with dst ~ s R src + t (Umeyama 1991, closed form).
    src, dst [M, 3]; w [M] non-negative, not all zero. ValueError when degenerate (fewer
    than 3 weighted points, all at one place, or all on one line)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(len(src)) if w is None else np.asarray(w, np.float64)
    wsum = w.sum()
    if len(src) < 3 or not wsum > 0:
        raise ValueError("umeyama needs at least 3 points with positive weight")
    w = w / wsum
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    var_s = float(w @ np.sum(xs * xs, axis=1))
    if not var_s > 0:
        raise ValueError("umeyama: the source points are all at one place")
    cov = (xd * w[:, None]).T @ xs
    U, D, Vt = np.linalg.svd(cov)
    if not D[1] > 1e-9 * D[0]:
        # Points on one line (or one point): the rotation about that line is undetermined
        # and the SVD would hand back an arbitrary one.
        raise ValueError("umeyama: the points are collinear; the rotation is undetermined")
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:  # a reflection is not a rotation
        S[2, 2] = -1.0
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / var_s)
    t = mu_d - s * R @ mu_s
    return Sim3(s, R, t)


def align_robust(src: np.ndarray, dst: np.ndarray, w: np.ndarray | None = None, *,
                 iterations: int = 10, cauchy_c: float = 2.0, inlier_k: float = 3.0,
                 tol: float = 1e-7) -> AlignResult:
    """Umeyama inside IRLS: residuals r_i = |s R src_i + t - dst_i| are scaled by
    1.4826 * MAD (a robust sigma) and reweighted by Cauchy's 1 / (1 + (r / c sigma)^2),
    which gives gross outliers (moving people, sky depth) almost no pull without a hard
    threshold. Returns the fit and its residual relative to the points' spread, so that
    "good" does not depend on the window's arbitrary scale."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w0 = np.ones(len(src)) if w is None else np.asarray(w, np.float64)
    keep = np.isfinite(src).all(1) & np.isfinite(dst).all(1) & np.isfinite(w0) & (w0 > 0)
    src, dst, w0 = src[keep], dst[keep], w0[keep]
    sim = umeyama(src, dst, w0)
    it = 0
    for it in range(1, iterations + 1):
        r = np.linalg.norm(sim.apply(src) - dst, axis=1)
        sigma = 1.4826 * np.median(np.abs(r - np.median(r))) + 1e-12
        sigma = max(sigma, 1e-9 * (np.median(np.linalg.norm(dst - dst.mean(0), axis=1)) + 1e-12))
        wr = w0 / (1.0 + (r / (cauchy_c * sigma)) ** 2)
        new = umeyama(src, dst, wr)
        step = abs(new.s - sim.s) + np.abs(new.R - sim.R).max() + np.abs(new.t - sim.t).max()
        sim = new
        if step < tol:
            break
    r = np.linalg.norm(sim.apply(src) - dst, axis=1)
    sigma = 1.4826 * np.median(np.abs(r - np.median(r))) + 1e-12
    inl = r <= np.median(r) + inlier_k * sigma
    spread = np.sqrt(np.average(np.sum((dst - np.average(dst, 0, w0)) ** 2, 1), weights=w0))
    rms = np.sqrt(np.average(r[inl] ** 2, weights=w0[inl])) if inl.any() else np.inf
    return AlignResult(sim, float(rms / max(spread, 1e-12)), float(inl.mean()), int(len(src)),
                       it)


def sim3_from_camera(E_src: np.ndarray, E_dst: np.ndarray, scale: float) -> Sim3:
    """The sim(3) under which one camera, known in both frames, agrees, at a given scale
    (the fallback when points cannot be aligned): E_dst (s R x + t) = s E_src x."""
    E_src = np.asarray(E_src, np.float64)
    E_dst = np.asarray(E_dst, np.float64)
    Rs, ts = E_src[:3, :3], E_src[:3, 3]
    Rd, td = E_dst[:3, :3], E_dst[:3, 3]
    R = Rd.T @ Rs
    t = Rd.T @ (scale * ts - td)
    return Sim3(float(scale), R, t)
