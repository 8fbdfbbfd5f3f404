"""The one comparison of a graph's outputs against a reference: tensor metrics, 4D-vision
task metrics and the per-precision tolerance profiles they are judged by.

Used by export validation (ONNX vs PyTorch), calib/precision.py (FP16 / INT8 vs FP32) and
`check` (every backend vs PyTorch), so a number means the same thing in all three.
numpy only. Tensor tolerances are elementwise |got - ref| <= atol + rtol |ref|; task
limits are what a 4D-vision user would notice.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["Tolerance", "Profile", "PROFILES", "precision_of", "load_profiles",
           "tensor_metrics", "task_metrics", "rotation_error_deg", "align_quaternion_sign",
           "Row", "compare_outputs", "format_table", "evaluate", "relative_errors"]


@dataclass(frozen=True)
class Tolerance:
    atol: float = 1e-3
    rtol: float = 1e-3


@dataclass
class Profile:
    name: str
    atol: float
    rtol: float
    max_rotation_deg: float
    max_translation_dir_deg: float
    max_depth_absrel: float
    min_depth_delta125: float
    per_output: dict[str, tuple[float, float]] = field(default_factory=dict)

    def tol(self, output: str) -> Tolerance:
        return Tolerance(*self.per_output.get(output, (self.atol, self.rtol)))

    def override(self, tol: Tolerance) -> "Profile":
        """The same profile with one tolerance for every output (export --atol/--rtol)."""
        return Profile(**{**asdict(self), "atol": tol.atol, "rtol": tol.rtol,
                          "per_output": {}})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Depth / confidences go through exp() and points through inv_log, which turn an absolute
# logit error into a relative one: those outputs get more rtol. The dynamic mask is a
# sigmoid in [0, 1], where an absolute tolerance is the meaningful one.
PROFILES = {
    "fp32": Profile("fp32", 1e-3, 1e-3, 0.05, 0.05, 1e-3, 0.999, per_output={
        "depth": (1e-3, 2e-3), "depth_conf": (1e-3, 2e-3), "world_points": (1e-3, 2e-3),
        "world_points_conf": (1e-3, 2e-3), "dynamic_mask": (1e-4, 1e-3)}),
    "fp16": Profile("fp16", 5e-2, 5e-2, 1.0, 1.0, 2e-2, 0.99,
                    per_output={"dynamic_mask": (2e-2, 5e-2)}),
    "int8": Profile("int8", 2e-1, 2e-1, 5.0, 5.0, 1e-1, 0.9,
                    per_output={"dynamic_mask": (1e-1, 2e-1)}),
}


def precision_of(name: str) -> str:
    """The precision a backend or graph name runs at (model.fp16.onnx -> fp16)."""
    for p in ("int8", "fp16"):
        if p in name:
            return p
    return "fp32"


def load_profiles(override: str | Path | None = None) -> dict[str, Profile]:
    """Defaults, optionally overridden by a JSON {"fp16": {"atol": ..., ...}, ...}."""
    from runtime.errors import RuntimeDataError

    profiles = {k: Profile(**v.to_dict()) for k, v in PROFILES.items()}
    if override:
        example = '{"fp16": {"atol": 0.1, "rtol": 0.1}}'
        try:
            data = json.loads(Path(override).read_text())
        except (OSError, ValueError) as e:
            raise RuntimeDataError(f"--profiles {override}: cannot read it as JSON ({e}); "
                                   f"expected e.g. {example}") from e
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise RuntimeDataError(f"--profiles {override}: expected an object of profiles, "
                                   f"e.g. {example}")
        strangers = sorted(set(data) - set(PROFILES))
        if strangers:
            # a misspelt precision would otherwise be ignored and the default judge the run
            raise RuntimeDataError(f"--profiles {override}: unknown precision(s) {strangers}; "
                                   f"profiles exist for {sorted(PROFILES)}")
        for name, fields in data.items():
            base = profiles[name].to_dict()
            unknown = sorted(set(fields) - set(base))
            if unknown:
                raise RuntimeDataError(f"--profiles {override}: profile {name!r} has unknown "
                                       f"field(s) {unknown}; known: {sorted(base)}")
            base.update(fields, name=name)
            profiles[name] = Profile(**base)
    return profiles


# --------------------------------------------------------------------- tensor metrics
def tensor_metrics(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    r = np.asarray(ref, np.float64).ravel()
    g = np.asarray(got, np.float64).ravel()
    nonfinite = int((~np.isfinite(g)).sum())
    if r.size == 0:
        return {"max_abs": 0.0, "mean_abs": 0.0, "p99_abs": 0.0, "max_rel": 0.0,
                "mean_rel": 0.0, "p99_rel": 0.0, "cosine": 1.0, "nonfinite": nonfinite}
    d = np.abs(np.nan_to_num(g, nan=np.inf) - r)
    rel = d / (np.abs(r) + 1e-6)
    denom = np.linalg.norm(r) * np.linalg.norm(np.nan_to_num(g))
    cos = float(np.dot(r, np.nan_to_num(g)) / denom) if denom > 0 else 1.0
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "p99_abs": float(np.percentile(d, 99)), "max_rel": float(rel.max()),
            "mean_rel": float(rel.mean()), "p99_rel": float(np.percentile(rel, 99)),
            "cosine": cos, "nonfinite": nonfinite}


def align_quaternion_sign(ref_pose: np.ndarray, got_pose: np.ndarray) -> np.ndarray:
    """q and -q are one rotation: a backend may legitimately return either, so the
    elementwise comparison must not count a sign flip as an error."""
    g = np.array(got_pose, copy=True)
    dot = np.sum(ref_pose[..., 3:7].astype(np.float64) * g[..., 3:7], axis=-1, keepdims=True)
    g[..., 3:7] = np.where(dot < 0, -g[..., 3:7], g[..., 3:7])
    return g


@dataclass
class Row:
    """One output compared: its metrics, the tolerance it was held to, the verdict."""

    output: str
    shape: tuple
    metrics: dict[str, float]
    atol: float
    rtol: float
    passed: bool
    problem: str = ""

    def __getattr__(self, name: str) -> Any:  # row.max_abs etc.
        metrics = self.__dict__.get("metrics", {})
        if name in metrics:
            return metrics[name]
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        d = {"output": self.output, "shape": list(self.shape), **self.metrics,
             "atol": self.atol, "rtol": self.rtol, "passed": self.passed}
        if self.problem:
            d["problem"] = self.problem
        return d


_INF_METRICS = {k: float("inf") for k in ("max_abs", "mean_abs", "p99_abs", "max_rel",
                                          "mean_rel", "p99_rel")}


def compare_outputs(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                    profile: Profile) -> list[Row]:
    """Every reference output against ``got`` under ``profile``'s tolerances."""
    rows = []
    for name, r in ref.items():
        tol = profile.tol(name)
        if name not in got:
            rows.append(Row(name, tuple(r.shape), {**_INF_METRICS, "cosine": 0.0,
                                                   "nonfinite": 0},
                            tol.atol, tol.rtol, False, "missing"))
            continue
        g = np.asarray(got[name])
        if g.shape != r.shape:
            rows.append(Row(name, tuple(g.shape), {**_INF_METRICS, "cosine": 0.0,
                                                   "nonfinite": 0},
                            tol.atol, tol.rtol, False, f"shape {g.shape} != {r.shape}"))
            continue
        if name == "pose_enc":
            g = align_quaternion_sign(r, g)
        m = tensor_metrics(r, g)
        r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
        ok = m["nonfinite"] == 0 and bool(np.all(np.abs(g64 - r64)
                                                 <= tol.atol + tol.rtol * np.abs(r64)))
        problem = "" if ok else ("NaN/Inf" if m["nonfinite"] else
                                 f"max abs {m['max_abs']:.3g} > atol {tol.atol} + rtol "
                                 f"{tol.rtol}")
        rows.append(Row(name, tuple(g.shape), m, tol.atol, tol.rtol, ok, problem))
    return rows


def format_table(rows: list[Row], title: str = "") -> str:
    head = (f"{'output':<20} {'shape':<26} {'max abs':>10} {'max rel':>10} {'mean abs':>10} "
            f"{'atol/rtol':>13}  result")
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for r in rows:
        res = "PASS" if r.passed else ("FAIL (NaN/Inf)" if r.nonfinite else "FAIL")
        lines.append(f"{r.output:<20} {str(list(r.shape)):<26} {r.max_abs:>10.2e} "
                     f"{r.max_rel:>10.2e} {r.mean_abs:>10.2e} "
                     f"{f'{r.atol:.0e}/{r.rtol:.0e}':>13}  {res}")
    return "\n".join(lines)


# ----------------------------------------------------------------------- task metrics
def _unit(q: np.ndarray) -> np.ndarray:
    return q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)


def rotation_error_deg(pose_ref: np.ndarray, pose_got: np.ndarray) -> np.ndarray:
    """Angle between camera rotations from pose_enc quaternions (q and -q are the same)."""
    dot = np.abs(np.sum(_unit(pose_ref[..., 3:7].astype(np.float64))
                        * _unit(pose_got[..., 3:7].astype(np.float64)), axis=-1))
    return np.degrees(2.0 * np.arccos(np.clip(dot, 0.0, 1.0)))


def _translation_error(pose_ref: np.ndarray, pose_got: np.ndarray) -> dict[str, float]:
    tr, tg = pose_ref[..., :3].astype(np.float64), pose_got[..., :3].astype(np.float64)
    err = np.linalg.norm(tr - tg, axis=-1)
    cosang = np.sum(_unit(tr) * _unit(tg), axis=-1)
    ang = np.degrees(np.arccos(np.clip(cosang, -1, 1)))
    return {"translation_abs_max": float(np.nan_to_num(err, nan=np.inf).max()),
            "translation_dir_deg_max": float(np.nan_to_num(ang, nan=180.0).max())}


def _depth_metrics(d_ref: np.ndarray, d_got: np.ndarray) -> dict[str, float]:
    r = d_ref.astype(np.float64).ravel()
    g = np.nan_to_num(d_got.astype(np.float64).ravel(), nan=0.0, posinf=0.0)
    valid = r > 1e-6
    if not valid.any():
        return {"depth_absrel": float("nan"), "depth_delta125": float("nan")}
    r, g = r[valid], g[valid]
    ratio = np.maximum(g / r, r / np.maximum(g, 1e-12))
    return {"depth_absrel": float(np.mean(np.abs(g - r) / r)),
            "depth_delta125": float(np.mean(ratio < 1.25))}


def _point_error(p_ref: np.ndarray, p_got: np.ndarray) -> dict[str, float]:
    e = np.linalg.norm(np.nan_to_num(p_got.astype(np.float64), nan=np.inf)
                       - p_ref.astype(np.float64), axis=-1)
    return {"points_l2_mean": float(e.mean()), "points_l2_max": float(e.max())}


def task_metrics(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]
                 ) -> dict[str, float]:
    out: dict[str, float] = {}
    if "pose_enc" in ref and "pose_enc" in got:
        out["rotation_deg_max"] = float(np.nan_to_num(
            rotation_error_deg(ref["pose_enc"], got["pose_enc"]), nan=180.0).max())
        out.update(_translation_error(ref["pose_enc"], got["pose_enc"]))
    if "depth" in ref and "depth" in got:
        out.update(_depth_metrics(ref["depth"], got["depth"]))
    if "world_points" in ref and "world_points" in got:
        out.update(_point_error(ref["world_points"], got["world_points"]))
    return out


def evaluate(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], profile: Profile
             ) -> dict[str, Any]:
    """Tensor rows, task metrics and the verdict of one backend against the reference."""
    rows = compare_outputs(ref, got, profile)
    failures = [f"{r.output}: {r.problem}" for r in rows if not r.passed]
    task = task_metrics(ref, got)
    limits = [("rotation_deg_max", profile.max_rotation_deg, "<="),
              ("translation_dir_deg_max", profile.max_translation_dir_deg, "<="),
              ("depth_absrel", profile.max_depth_absrel, "<="),
              ("depth_delta125", profile.min_depth_delta125, ">=")]
    for key, lim, op in limits:
        if key in task:
            v = task[key]
            if not np.isfinite(v) or (v > lim if op == "<=" else v < lim):
                failures.append(f"{key} = {v:.4g} (limit {op} {lim})")
    return {"profile": profile.name,
            "tensors": [r.to_dict() for r in rows if not r.problem.startswith(("missing",
                                                                              "shape"))],
            "task": task, "failures": failures, "passed": not failures}


def relative_errors(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]
                    ) -> dict[str, Any]:
    """Scale-free errors per output: ||got - ref|| / ||ref||, and for the geometric
    outputs the quantities users look at (pose_enc split into translation / rotation /
    field of view; depth as median and 95th percentile |d - d_ref| / d_ref)."""
    out: dict[str, Any] = {}
    for k, r in ref.items():
        r64, g64 = r.astype(np.float64), got[k].astype(np.float64)
        out[k] = {"rel_l2": float(np.linalg.norm(g64 - r64) / max(np.linalg.norm(r64), 1e-12))}
    if "pose_enc" in ref:
        r, g = ref["pose_enc"].astype(np.float64), got["pose_enc"].astype(np.float64)
        for part, sl in (("translation", slice(0, 3)), ("quaternion", slice(3, 7)),
                         ("fov", slice(7, 9))):
            d = np.linalg.norm(g[..., sl] - r[..., sl], axis=-1)
            n = np.linalg.norm(r[..., sl], axis=-1)
            out["pose_enc"][f"{part}_rel_max"] = float((d / np.maximum(n, 1e-6)).max())
    if "depth" in ref:
        r, g = ref["depth"].astype(np.float64), got["depth"].astype(np.float64)
        rel = np.abs(g - r) / np.maximum(np.abs(r), 1e-6)
        out["depth"]["rel_median"] = float(np.median(rel))
        out["depth"]["rel_p95"] = float(np.percentile(rel, 95))
    return out
