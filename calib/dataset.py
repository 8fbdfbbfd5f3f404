"""INT8/FP8 calibration sets from real multi-view frames.

Clips are sliced from a scene indexed by runtime.preprocess.discover_scene and preprocessed
by the very same runtime code, so the activation ranges seen during calibration are the
ones the deployed engine sees.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.errors import CalibrationSetError, NotEnoughFramesError, RuntimeDataError
from runtime.layout import atomic_write
from runtime.preprocess import (
    PREPROCESS_RULE,
    SceneIndex,
    check_size_hw,
    discover_scene,
    load_clip,
)

__all__ = ["sample_clips", "split_clips", "split_indices", "build_calibration_set", "load_calibration_set",
           "FORMAT_VERSION"]

FORMAT_VERSION = 1
Clip = tuple[int, tuple[int, ...]]


def sample_clips(scene: SceneIndex, T: int, N: int, num_clips: int, stride: int | None = None,
                 seed: int = 0) -> list[Clip]:
    """Deterministic (t0, views) clips spread over the whole sequence.

    Start positions are evenly spaced from the first to the last possible t0 (or every
    ``stride`` steps from 0, wrapping around), so calibration sees the beginning, middle and
    end of the motion rather than num_clips neighbouring windows. When N is less than the
    number of cameras, each clip draws its own sorted view subset from a seeded generator so
    that all cameras get covered.
    """
    if T < 1 or N < 1 or num_clips < 1:
        raise RuntimeDataError(f"need T, N, num_clips >= 1; got T={T}, N={N}, "
                               f"num_clips={num_clips}")
    if T > scene.num_times:
        raise NotEnoughFramesError(f"scene {scene.root} has {scene.num_times} time steps, "
                                   f"clips need T={T}")
    if N > scene.num_views:
        raise NotEnoughFramesError(f"scene {scene.root} has {scene.num_views} views "
                                   f"{list(scene.views)}, clips need N={N}")
    last = scene.num_times - T
    if stride is None:
        starts = np.floor(np.linspace(0, last, num_clips) + 0.5).astype(int).tolist()
    else:
        if stride < 1:
            raise RuntimeDataError(f"stride must be >= 1, got {stride}")
        starts = [(k * stride) % (last + 1) for k in range(num_clips)]
    subsets = math.comb(scene.num_views, N)
    if num_clips > (last + 1) * subsets:
        # more would repeat clips, and a repeated clip can land on both sides of the
        # calibration / held-out split: the held-out accuracy would not be held out
        raise RuntimeDataError(
            f"scene {scene.root} holds only {(last + 1) * subsets} distinct clips of T={T}, "
            f"N={N} ({last + 1} start steps x {subsets} view subsets); ask for at most that "
            f"many (--clips)")
    rng = np.random.default_rng(seed)
    used: set[Clip] = set()
    clips: list[Clip] = []
    for t0 in starts:
        clip = _unused_clip(scene, int(t0), N, last, rng, used)
        used.add(clip)
        clips.append(clip)
    return clips


def _unused_clip(scene: SceneIndex, t0: int, N: int, last: int, rng: np.random.Generator,
                 used: set[Clip]) -> Clip:
    """A clip at t0 (else the nearest start with one left) that is not in ``used``: a
    seeded random view subset first, then every subset in order."""
    for shift in sorted(range(-last, last + 1), key=abs):
        t = t0 + shift
        if not 0 <= t <= last:
            continue
        if N == scene.num_views:
            candidates = [tuple(scene.views)]
        else:
            pick = rng.choice(scene.num_views, size=N, replace=False)
            first = tuple(scene.views[i] for i in sorted(pick.tolist()))
            candidates = [first] + list(itertools.combinations(scene.views, N))
        for views in candidates:
            clip = (t, tuple(int(v) for v in views))
            if clip not in used:
                return clip
    raise RuntimeDataError("no unused clip left")  # unreachable: counted above


def split_indices(clips: Sequence[Clip], holdout_fraction: float
                  ) -> tuple[list[int], list[int]]:
    """(calibration, held-out) indices into ``clips``: the held-out clips are the ones
    that start last.

    A temporal split rather than a random one: neighbouring windows share frames, so a
    random split would leak evaluation frames into calibration. Some overlap can remain at
    the boundary when clips overlap in time; the split never leaves either side empty
    (unless holdout_fraction is 0). The one split: calibrate and quantize both use it.
    """
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    order = sorted(range(len(clips)), key=lambda i: (clips[i][0], i))
    n_hold = int(np.floor(len(clips) * holdout_fraction + 0.5))
    if holdout_fraction > 0.0 and len(clips) >= 2:
        n_hold = min(max(n_hold, 1), len(clips) - 1)
    elif len(clips) < 2:
        n_hold = 0
    hold = set(order[len(order) - n_hold:]) if n_hold else set()
    return ([i for i in range(len(clips)) if i not in hold],
            [i for i in range(len(clips)) if i in hold])


def split_clips(clips: Sequence[Clip], holdout_fraction: float) -> tuple[list[Clip], list[Clip]]:
    """(calibration, held-out) clips; see split_indices."""
    calib, held = split_indices(clips, holdout_fraction)
    return [tuple(clips[i]) for i in calib], [tuple(clips[i]) for i in held]


def _sha256_files(paths: Sequence[str], root: Path) -> tuple[str, str]:
    # The list hash identifies which frames were used; the content hash catches frames that
    # were re-exported under the same names.
    listing = hashlib.sha256()
    content = hashlib.sha256()
    for p in paths:
        rel = Path(p).resolve().relative_to(root.resolve()).as_posix()
        listing.update(rel.encode() + b"\n")
        content.update(rel.encode() + b"\0" + hashlib.sha256(Path(p).read_bytes()).digest())
    return listing.hexdigest(), content.hexdigest()


def build_calibration_set(folder: str | Path, T: int, N: int, size_hw: Sequence[int],
                          num_clips: int, out_npz: str | Path, with_masks: bool = False,
                          dtype: str = "float16", stride: int | None = None, seed: int = 0,
                          clips: Sequence[Clip] | None = None) -> Path:
    """Write images [K, 1, T, N, 3, H, W] (+ masks [K, 1, T, N, H, W]) and metadata to npz.

    float16 halves the file at no cost for calibration (inputs are in [0, 1], step <= 2^-11).
    Pass ``clips`` (e.g. the calibration half of split_clips) to bypass sampling.
    """
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    out = Path(out_npz)
    if out.suffix != ".npz":
        raise ValueError(f"out_npz must end in .npz (numpy would append it), got {out}")
    H, W = check_size_hw(size_hw)
    scene = discover_scene(folder)
    chosen = list(clips) if clips is not None else sample_clips(scene, T, N, num_clips,
                                                                stride=stride, seed=seed)
    if not chosen:
        raise RuntimeDataError("no clips to write")
    K = len(chosen)
    images = np.empty((K, 1, T, N, 3, H, W), dtype=dtype)
    masks = np.empty((K, 1, T, N, H, W), dtype=dtype) if with_masks else None
    used: list[str] = []
    for k, (t0, views) in enumerate(chosen):
        clip = load_clip(scene, t0, T, N, (H, W), views=views, with_masks=with_masks)
        images[k] = clip["images"]
        used += [p for row in clip["frame_paths"] for p in row]
        if masks is not None:
            masks[k] = clip["ext_mask"]
            used += [p for row in clip["mask_paths"] for p in row]
    files_sha, content_sha = _sha256_files(used, scene.root)
    meta = {
        "format_version": FORMAT_VERSION,
        "source_folder": str(scene.root.resolve()),
        "T": T, "N": N, "size_hw": [H, W], "num_clips": K, "dtype": dtype,
        "with_masks": with_masks,
        "clips": [[int(t0), [int(v) for v in views]] for t0, views in chosen],
        "time_labels": [[int(t) for t in scene.times[t0:t0 + T]] for t0, _ in chosen],
        "preprocess_rule": PREPROCESS_RULE,
        "files_sha256": files_sha,
        "content_sha256": content_sha,
        "num_files": len(used),
        "sample": {"stride": stride, "seed": seed, "given_clips": clips is not None},
    }
    arrays: dict[str, np.ndarray] = {
        "images": images,
        "clip_t0": np.array([c[0] for c in chosen], dtype=np.int64),
        "clip_views": np.array([list(c[1]) for c in chosen], dtype=np.int64),
        # A unicode scalar, so that loading never needs allow_pickle.
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }
    if masks is not None:
        arrays["masks"] = masks
    with atomic_write(out) as f:
        np.savez(f, **arrays)
    return out


def load_calibration_set(npz: str | Path, T: int | None = None, N: int | None = None,
                         size_hw: Sequence[int] | None = None, require_masks: bool = False
                         ) -> dict[str, Any]:
    """Load and validate a calibration set; returns images, masks (or None), clips, meta.

    T / N / size_hw, when given, must match the set (an engine profile built for another
    shape would otherwise be calibrated on the wrong data without any error).
    """
    path = Path(npz)
    if not path.is_file():
        raise FileNotFoundError(f"calibration set not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:
        raise CalibrationSetError(f"cannot read calibration set {path}: {e}") from e
    for key in ("images", "meta", "clip_t0", "clip_views"):
        if key not in data:
            raise CalibrationSetError(f"{path} lacks '{key}' (not built by build_calibration_set?)")
    try:
        meta = json.loads(str(data["meta"]))
    except json.JSONDecodeError as e:
        raise CalibrationSetError(f"{path}: metadata is not valid JSON: {e}") from e
    images = data["images"]
    if images.ndim != 7 or images.shape[1] != 1 or images.shape[4] != 3:
        raise CalibrationSetError(f"{path}: images must be [K, 1, T, N, 3, H, W], got "
                                  f"{images.shape}")
    K, _, t_, n_, _, h_, w_ = images.shape
    if (t_, n_, [h_, w_], K) != (meta.get("T"), meta.get("N"), meta.get("size_hw"),
                                 meta.get("num_clips")):
        raise CalibrationSetError(f"{path}: images {images.shape} disagree with metadata T="
                                  f"{meta.get('T')} N={meta.get('N')} size={meta.get('size_hw')}"
                                  f" clips={meta.get('num_clips')}")
    want = {"T": T, "N": N}
    for name, val in want.items():
        if val is not None and meta[name] != val:
            raise CalibrationSetError(f"{path} was built with {name}={meta[name]}, "
                                      f"asked for {name}={val}")
    if size_hw is not None and [int(s) for s in size_hw] != [h_, w_]:
        raise CalibrationSetError(f"{path} holds {h_}x{w_} (HxW) frames, asked for "
                                  f"{int(size_hw[0])}x{int(size_hw[1])}")
    masks = data.get("masks")
    if masks is not None and masks.shape != (K, 1, t_, n_, h_, w_):
        raise CalibrationSetError(f"{path}: masks {masks.shape} do not match images "
                                  f"{images.shape}")
    if require_masks and masks is None:
        raise CalibrationSetError(f"{path} has no masks (built without with_masks=True)")
    if data["clip_t0"].shape != (K,) or data["clip_views"].shape != (K, n_):
        raise CalibrationSetError(f"{path}: clip tables do not match {K} clips of N={n_}")
    for name, arr in (("images", images), ("masks", masks)):
        if arr is None:
            continue
        if not np.isfinite(arr).all():
            raise CalibrationSetError(f"{path}: {name} contain NaN/Inf")
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise CalibrationSetError(f"{path}: {name} outside [0, 1]")
    clips = [(int(t0), tuple(int(v) for v in vs))
             for t0, vs in zip(data["clip_t0"], data["clip_views"])]
    return {"images": images, "masks": masks, "clips": clips, "meta": meta, "path": path}
