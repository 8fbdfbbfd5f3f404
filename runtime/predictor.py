"""Predictor: folder of frames -> cameras, depth, points, written to disk.

    pred = Predictor("artifacts").predict("scene/", T=8, N=4)
    pred.write_outputs("out/")

Steps: scan exported buckets -> preprocess the clip (runtime/preprocess.py, the same code
calibration and validation use) -> pick the bucket (runtime/dispatch.py, optional
padding) -> run on TensorRT or onnxruntime -> trim padding -> post-process
(runtime/postprocess.py: pose encoding -> extrinsics/intrinsics, depth -> world points,
confidence filtering) -> write npz, PLY and PNGs (runtime/outputs.py, all atomic).

Thread safety: a Predictor caches one session per bucket; creating sessions is guarded by
a lock, and the sessions' own guarantees apply to ``predict`` (OnnxSession: concurrent;
TrtSession: serialised per bucket).
"""
from __future__ import annotations

import importlib.util
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .dispatch import BucketEntry, BucketIndex, Selection, pad_feeds, trim_outputs
from .errors import NotEnoughFramesError, RuntimeDataError
from .exports.cameras import CameraLog, frame_is_finite, frame_name, json_safe
from .exports.colmap import COLMAP_DIR, ColmapImage, export_points, write_colmap
from .exports.glb import GLB_NAME, write_glb
from .layout import _test_disk_full, atomic_directory, atomic_write_json, replaceable_folder
from .outputs import (
    atomic_write,
    colorize,
    confidence_png_name,
    depth_png_name,
    save_png,
    write_ply,
)
from .postprocess import confidence_mask, depth_to_world_points, pose_encoding_to_extri_intri
from .preprocess import (
    ResizePlan,
    discover_scene,
    intrinsics_to_source,
    load_clip,
    plan_resize,
    read_image,
)
from .graphs import choose_graph
from .health import OutputHealth, output_health, require_finite
from .session import Session

__all__ = ["Predictor", "Prediction", "BACKENDS", "NPZ_NAME", "PLY_NAME"]

BACKENDS = ("auto", "onnx", "trt")
NPZ_NAME = "predictions.npz"
PLY_NAME = "points.ply"
RUN_JSON = "run.json"
@dataclass
class Prediction:
    """Results for one clip, time-major [T, N, ...] with the batch axis removed."""

    bucket: str
    backend: str
    outputs: dict[str, np.ndarray]          # raw model outputs (padding trimmed, batch kept)
    colors: np.ndarray                      # uint8 [T, N, H, W, 3], the model's input pixels
    extrinsics: np.ndarray | None           # [T, N, 3, 4] camera-from-world (OpenCV)
    intrinsics: np.ndarray | None           # [T, N, 3, 3]
    depth: np.ndarray | None                # [T, N, H, W]
    confidence: np.ndarray                  # [T, N, H, W], the one used for filtering
    points: np.ndarray                      # [T, N, H, W, 3] world points
    points_source: str                      # "depth" (depth + cameras) or "head"
    conf_mask: np.ndarray                   # bool [T, N, H, W]
    times: list[int]
    views: list[int]
    frame_paths: list[list[str]] = field(default_factory=list)
    pad: tuple[int, int] = (0, 0)           # (time steps, views) appended and trimmed
    timing: dict[str, float] = field(default_factory=dict)
    feeds: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # model inputs
    notes: list[str] = field(default_factory=list)  # warnings about the results
    backend_detail: str = ""
    src_hw: tuple[int, int] | None = None   # input frames' size (one per clip); None: model's
    image_root: str = ""                    # folder the frame paths are relative to
    health: OutputHealth | None = None      # NaN / Inf counts of the raw outputs

    @property
    def model_hw(self) -> tuple[int, int]:
        return int(self.colors.shape[2]), int(self.colors.shape[3])

    @property
    def resize_plan(self) -> ResizePlan:
        """How every input frame was resized and cropped into the model's grid."""
        return plan_resize(self.src_hw or self.model_hw, self.model_hw)

    def source_intrinsics(self) -> np.ndarray | None:
        """[T, N, 3, 3] intrinsics in the input frames' own pixels (OpenCV convention)."""
        if self.intrinsics is None:
            return None
        with np.errstate(invalid="ignore"):
            return intrinsics_to_source(self.intrinsics, self.src_hw or self.model_hw,
                                        self.model_hw)

    def placeable(self) -> np.ndarray:
        """bool [T, N]: frames with a finite pose and finite, positive focal lengths."""
        if self.extrinsics is None:  # no camera head: points come from the point head
            return np.ones((self.T, self.N), bool)
        return np.array([[frame_is_finite(self.extrinsics[i, j], self.intrinsics[i, j])
                          for j in range(self.N)] for i in range(self.T)], dtype=bool)

    @property
    def T(self) -> int:
        return self.colors.shape[0]

    @property
    def N(self) -> int:
        return self.colors.shape[1]

    def npz_arrays(self) -> dict[str, np.ndarray]:
        arrays = dict(self.outputs)
        derived = {"colors": self.colors, "conf_mask": self.conf_mask,
                   "times": np.asarray(self.times), "views": np.asarray(self.views),
                   "frame_paths": np.asarray(self.frame_paths, dtype=str)}
        if self.extrinsics is not None:
            derived["extrinsics"] = self.extrinsics
            derived["intrinsics"] = self.intrinsics
            derived["intrinsics_input"] = self.source_intrinsics()  # input frames' pixels
        if self.points_source == "depth":
            derived["world_points_from_depth"] = self.points
        clash = set(arrays) & set(derived)
        if clash:
            raise RuntimeDataError(f"model outputs {sorted(clash)} clash with derived npz keys")
        arrays.update(derived)
        return arrays

    def write_outputs(self, out_dir: str | Path, cmap: str = "turbo",
                      conf_cmap: str = "viridis", compress: bool = False,
                      extra_json: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """predictions.npz, points.ply (colored, confidence-filtered), depth/ and
        confidence/ PNGs per (time step, view), run.json. Every file is written atomically.
        ``extra_json`` {file name: data}: JSON files that appear in the folder together with
        the outputs (batch's done marker: present exactly when everything else is).
        Returns {"npz", "ply", "depth_png": [...], "confidence_png": [...], "run_json",
        "points"} with paths and the PLY vertex count."""
        final = replaceable_folder(out_dir, marker=RUN_JSON, what="infer output")
        # Written into a scratch folder that replaces the output whole: a re-used folder
        # never mixes this clip's frames with an earlier clip's (t05 beside old t00).
        with atomic_directory(final) as tmp:
            _test_disk_full("outputs", tmp / NPZ_NAME)
            written = self._write(tmp, cmap, conf_cmap, compress)
            for name, data in (extra_json or {}).items():
                atomic_write_json(tmp / name, data)

        def moved(v: Any) -> Any:
            if isinstance(v, Path):
                return final / v.relative_to(tmp)
            return [moved(x) for x in v] if isinstance(v, list) else v

        return {k: moved(v) for k, v in written.items()}

    def _write(self, out: Path, cmap: str, conf_cmap: str, compress: bool) -> dict[str, Any]:
        t0 = time.perf_counter()
        written: dict[str, Any] = {"depth_png": [], "confidence_png": []}
        npz = out / NPZ_NAME
        with atomic_write(npz) as f:
            (np.savez_compressed if compress else np.savez)(f, **self.npz_arrays())
        written["npz"] = npz
        placed = self.placeable()
        bad = [[t, v] for i, t in enumerate(self.times) for j, v in enumerate(self.views)
               if not placed[i, j]]
        if bad:
            self._note(
                f"{len(bad)} of {self.T * self.N} frames have a camera that is not finite and "
                f"are left out of {PLY_NAME}, {COLMAP_DIR}/ and {GLB_NAME} (flagged "
                f"\"finite\": false in cameras.jsonl): (t, view) "
                + ", ".join(f"({t}, {v})" for t, v in bad[:8]) + (" ..." if len(bad) > 8 else ""))
        keep = (self.conf_mask & np.isfinite(self.points).all(axis=-1)
                & placed[:, :, None, None])
        ply = out / PLY_NAME
        pts, cols = self.points[keep].reshape(-1, 3), self.colors[keep].reshape(-1, 3)
        written["points"] = write_ply(ply, pts, cols)
        written["ply"] = ply
        exports = self._write_exports(out, placed, *export_points(pts, cols))
        written.update(exports.pop("paths"))
        # Depth maps share one colour scale across the clip so they can be compared.
        depth = self.depth if self.depth is not None else np.linalg.norm(self.points, axis=-1)
        finite = depth[np.isfinite(depth)]
        lo, hi = ((float(np.percentile(finite, 2)), float(np.percentile(finite, 98)))
                  if finite.size else (0.0, 1.0))
        cfin = self.confidence[np.isfinite(self.confidence)]
        clo, chi = ((float(np.percentile(cfin, 2)), float(np.percentile(cfin, 98)))
                    if cfin.size else (0.0, 1.0))
        for i, t in enumerate(self.times):
            for j, v in enumerate(self.views):
                p = out / depth_png_name(t, v)
                save_png(p, colorize(depth[i, j], cmap, lo, hi))
                written["depth_png"].append(p)
                p = out / confidence_png_name(t, v)
                save_png(p, colorize(self.confidence[i, j], conf_cmap, clo, chi))
                written["confidence_png"].append(p)
        self.timing["write"] = time.perf_counter() - t0
        info = {"bucket": self.bucket, "backend": self.backend,
                "backend_detail": self.backend_detail, "T": self.T, "N": self.N,
                "times": self.times, "views": self.views, "pad": list(self.pad),
                "points_source": self.points_source, "ply_points": written["points"],
                "notes": self.notes, **self._geometry_info(), "nonfinite_frames": len(bad),
                "nonfinite_examples": bad[:8],
                "nonfinite_outputs": self.health.to_json() if self.health else None,
                **exports,
                "depth_range_png": [lo, hi], "confidence_range_png": [clo, chi],
                "timing_s": {k: round(v, 4) for k, v in self.timing.items()},
                "npz_keys": sorted(self.npz_arrays())}
        run_json = out / RUN_JSON
        with atomic_write(run_json, "w") as f:
            json.dump(json_safe(info), f, indent=2, allow_nan=False)
            f.write("\n")
        written["run_json"] = run_json
        return written

    def _note(self, text: str) -> None:
        if text not in self.notes:  # outputs may be written more than once
            self.notes.append(text)

    def _geometry_info(self) -> dict[str, Any]:
        """The resize / crop applied to every input frame, for run.json: a model pixel
        (u, v) is input pixel ((u + 0.5 + left) / sx - 0.5, (v + 0.5 + top) / sy - 0.5)."""
        plan = self.resize_plan
        return {"input_size": {"width": plan.src_hw[1], "height": plan.src_hw[0]},
                "model_size": {"width": plan.out_hw[1], "height": plan.out_hw[0]},
                "preprocess": {"resized_to": {"width": plan.resize_hw[1],
                                              "height": plan.resize_hw[0]},
                               "crop_left": plan.left, "crop_top": plan.top,
                               "scale_x": plan.scale_xy[0], "scale_y": plan.scale_xy[1]},
                "intrinsics_pixels": "cameras.jsonl and sparse/ intrinsics are in the input "
                                     "frames' pixels; model_intrinsic in the depth maps'"}

    def _write_exports(self, out: Path, placed: np.ndarray, pts: np.ndarray,
                       cols: np.ndarray) -> dict[str, Any]:
        """cameras.jsonl, TUM trajectories, the COLMAP model and scene.glb."""
        if self.extrinsics is None:
            return {"paths": {}, "colmap": None, "glb": None}
        K_src = self.source_intrinsics()
        h, w = self.src_hw or self.model_hw
        log = CameraLog(out, self.views)
        images: list[ColmapImage] = []
        try:
            for i, t in enumerate(self.times):
                for j, v in enumerate(self.views):
                    path = self.frame_paths[i][j] if self.frame_paths else None
                    name = frame_name(t, v, path, self.image_root)
                    log.add(t, v, self.extrinsics[i, j], K_src[i, j], w, h,
                            self.intrinsics[i, j], image=name)
                    if placed[i, j]:
                        images.append(ColmapImage(name, self.extrinsics[i, j], K_src[i, j],
                                                  w, h))
        finally:
            log.close()
        paths: dict[str, Any] = {"cameras_jsonl": out / "cameras.jsonl",
                                 "colmap": out / COLMAP_DIR}
        colmap = write_colmap(out / COLMAP_DIR, images, pts, cols)
        try:
            glb = write_glb(out / GLB_NAME, images, pts, cols)
            paths["glb"] = out / GLB_NAME
        except (ImportError, RuntimeDataError) as e:
            self._note(f"{e}; {GLB_NAME} not written")
            glb = None
        return {"paths": paths, "colmap": colmap, "glb": glb}


def _labels(name: str, given: Sequence[int] | None, count: int, holds: str) -> list[int]:
    """``times`` / ``views`` of predict_arrays: one distinct integer label per time step /
    view of the images, checked before anything runs. A short list would write files for
    part of the clip while the npz holds all of it; a repeated label would make two
    frames' files overwrite each other."""
    if given is None:
        return list(range(count))
    shown = list(given) if isinstance(given, (list, tuple, range, np.ndarray)) else given
    try:
        labels = [int(x) for x in given]
        bad = any(int(x) != x or x < 0 for x in given)
    except (TypeError, ValueError):
        bad = True
    if bad:
        raise ValueError(f"{name}={shown!r} must be non-negative integer labels")
    if len(labels) != count:
        raise ValueError(f"{name}={labels} has {len(labels)} entries but {holds}: give one "
                         f"label each")
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"{name}={labels} repeats {dup}; {holds}, and each needs its own "
                         f"label (their output files would overwrite each other)")
    return labels


class Predictor:
    """Exported buckets under ``root`` + a backend -> ``Prediction`` for a clip.

    ``graph`` (onnx backend): the ONNX file each bucket runs; None picks the fastest one
    that fits this machine's memory (runtime/graphs.py: model.onnx, else
    model.plugins.onnx with a note in ``Prediction.notes``)."""

    def __init__(self, root: str | Path | Iterable[str | Path], backend: str = "auto", *,
                 graph: str | None = None, precision: str | None = None,
                 providers: Sequence[str] | str = ("CPUExecutionProvider",),
                 plugin_lib: str | Path | None = None, use_cuda_graph: bool = False,
                 allow_pad: bool = False, threads: int | None = None,
                 conf_percentile: float | None = 50.0, conf_threshold: float | None = None,
                 points_from: str = "auto", attention: str | None = None,
                 weight_budget: int | None = None, allow_nonfinite: bool = False):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if points_from not in ("auto", "depth", "head"):
            raise ValueError(f"points_from must be auto, depth or head, got {points_from!r}")
        self.index = BucketIndex.scan(root)
        self.backend = self._resolve_backend(backend)
        self.graph, self.precision, self.providers = graph, precision, providers
        self.plugin_lib, self.use_cuda_graph, self.threads = plugin_lib, use_cuda_graph, threads
        self.allow_pad = allow_pad
        self.conf_percentile, self.conf_threshold = conf_percentile, conf_threshold
        self.points_from = points_from
        self.attention = attention  # engine route for the trt backend; None: native first
        self.weight_budget = weight_budget  # TrtSession(weight_streaming_budget=)
        self.allow_nonfinite = allow_nonfinite  # keep NaN/Inf-ridden results (flagged)
        self._sessions: dict[str, Session] = {}
        self.graph_notices: dict[str, str] = {}  # bucket -> why it runs the slower graph
        self._lock = threading.Lock()

    def _resolve_backend(self, backend: str) -> str:
        if backend != "auto":
            return backend
        has_engine = any(e.engines for e in self.index)
        has_trt = importlib.util.find_spec("tensorrt") is not None
        return "trt" if has_engine and has_trt else "onnx"

    @property
    def _require(self) -> str:
        if self.backend == "onnx":
            return "onnx"
        return self.precision or "engine"

    def session(self, entry: BucketEntry) -> Session:
        with self._lock:
            sess = self._sessions.get(entry.name)
            if sess is None:
                if self.backend == "trt":
                    from .trt.session import TrtSession  # noqa: PLC0415

                    sess = TrtSession(entry.folder, plugin_lib=self.plugin_lib,
                                      use_cuda_graph=self.use_cuda_graph,
                                      precision=self.precision, attention=self.attention,
                                      weight_streaming_budget=self.weight_budget)
                else:
                    from .layout import load_manifest  # noqa: PLC0415
                    from .session import OnnxSession  # noqa: PLC0415

                    # None: the fastest graph the bucket can run here (runtime/graphs.py)
                    choice = choose_graph(entry.folder, load_manifest(entry.folder),
                                          self.graph)
                    if choice.notice:
                        self.graph_notices[entry.name] = choice.notice
                    sess = OnnxSession(entry.folder, graph=choice.graph,
                                       providers=self.providers, threads=self.threads)
                self._sessions[entry.name] = sess
            return sess

    def select(self, T: int, N: int, H: int | None = None, W: int | None = None,
               ext_mask: bool | None = None, aspect: float | None = None) -> Selection:
        return self.index.select(T, N, H, W, allow_pad=self.allow_pad, ext_mask=ext_mask,
                                 aspect=aspect, require=self._require)

    # ------------------------------------------------------------------------ predict
    def predict(self, folder: str | Path, T: int | None = None, N: int | None = None,
                t0: int = 0, views: Sequence[int] | None = None, H: int | None = None,
                W: int | None = None, ext_mask: bool | None = None) -> Prediction:
        """Run the clip time steps t0..t0+T-1 x N views of a time_TT/viewV folder.

        T / N default to every time step from t0 / every view in the folder.
        """
        timing: dict[str, float] = {}
        tp = time.perf_counter()
        scene = discover_scene(folder)
        if views is not None:
            N = len(views) if N is None else N
        T = scene.num_times - t0 if T is None else int(T)
        N = scene.num_views if N is None else int(N)
        first_view = views[0] if views else scene.views[0]
        # Count problems are the user's clip, not a missing bucket: report them first.
        if t0 < 0 or t0 + T > scene.num_times or T < 1:
            raise NotEnoughFramesError(
                f"scene {scene.root} has {scene.num_times} time steps; the clip t0={t0}, "
                f"T={T} needs {t0 + T}")
        if N > scene.num_views or N < 1:
            raise NotEnoughFramesError(
                f"scene {scene.root} has {scene.num_views} views {list(scene.views)}, the "
                f"clip asks for N={N}")
        im = read_image(scene.frame_path(scene.times[t0], first_view))
        sel = self.select(T, N, H, W, ext_mask=ext_mask, aspect=im.size[0] / im.size[1])
        spec = sel.entry.spec
        clip = load_clip(scene, t0, T, N, (spec.H, spec.W), views=views,
                         with_masks=spec.ext_mask)
        timing["preprocess"] = time.perf_counter() - tp
        feeds = {"images": clip["images"]}
        if spec.ext_mask:
            feeds["ext_mask"] = clip["ext_mask"]
        times = [int(t) for t in clip["times"]]
        pred = self._predict(sel, feeds, times, [int(v) for v in clip["views"]],
                             clip["frame_paths"], timing)
        pred.src_hw = tuple(int(x) for x in clip["src_hw"])
        pred.image_root = str(scene.image_root)
        every = scene.times
        if T > 1 and len({b - a for a, b in zip(every, every[1:])}) > 1:
            pred.notes.append(f"the time steps of {scene.root} are not evenly spaced; this "
                              f"clip's time_ labels are {times} and outputs keep them, but "
                              f"the model saw the frames as consecutive steps")
        return pred

    def predict_arrays(self, images: np.ndarray, ext_mask: np.ndarray | None = None,
                       times: Sequence[int] | None = None,
                       views: Sequence[int] | None = None) -> Prediction:
        """Already preprocessed frames, float32 [T, N, 3, H, W] or [1, T, N, 3, H, W] in
        [0, 1] (see runtime.preprocess.preprocess_rgb), e.g. from a camera pipeline.

        Accepted: float16 / float32 / float64, finite, within [0, 1]. Anything else is
        refused (uint8 frames or 0..255 floats would otherwise run and answer wrongly):
        convert with ``preprocess_rgb`` or ``frames / 255.0`` first."""
        a = np.asarray(images)
        if not np.issubdtype(a.dtype, np.floating):
            raise RuntimeDataError(
                f"images must be floating point in [0, 1], got dtype {a.dtype}; "
                f"preprocess frames with runtime.preprocess.preprocess_rgb (uint8 frames: "
                f"divide by 255)")
        if a.size and not np.isfinite(a).all():
            raise RuntimeDataError("images contain NaN or Inf")
        if a.size and (a.min() < 0.0 or a.max() > 1.0):
            raise RuntimeDataError(
                f"images must be in [0, 1], got range [{float(a.min()):.3g}, "
                f"{float(a.max()):.3g}]; 0..255 values must be divided by 255 first")
        if a.ndim == 5:
            a = a[None]
        if a.ndim != 6 or a.shape[0] != 1 or a.shape[3] != 3:
            raise RuntimeDataError(f"images must be [T, N, 3, H, W] or [1, T, N, 3, H, W], "
                                   f"got {list(np.shape(images))}")
        _, T, N, _, H, W = a.shape
        sel = self.select(T, N, H, W, ext_mask=ext_mask is not None)
        spec = sel.entry.spec
        times_l = _labels("times", times, T, f"the images hold T={T} time steps (bucket "
                          f"{spec.name}: T={spec.T})")
        views_l = _labels("views", views, N, f"the images hold N={N} views (bucket "
                          f"{spec.name}: N={spec.N})")
        feeds = {"images": a}
        if sel.entry.spec.ext_mask:
            if ext_mask is None:
                raise RuntimeDataError(f"bucket {sel.entry.name} needs ext_mask [T, N, H, W]")
            m = np.asarray(ext_mask)
            feeds["ext_mask"] = m[None] if m.ndim == 4 else m
        return self._predict(sel, feeds, times_l, views_l, [], {})

    def run_selection(self, sel: Selection, feeds: Mapping[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
        """Pad to the bucket, run, trim: the raw outputs for sel.T x sel.N frames."""
        spec = sel.entry.spec
        if spec.batch != 1:
            raise RuntimeDataError(f"bucket {spec.name} has batch {spec.batch}; Predictor "
                                   f"runs one clip at a time (use a session directly)")
        if spec.single_view:
            # Single-view buckets take [B, S, ...]: the N = 1 axis is dropped.
            feeds = {k: v[:, :, 0] for k, v in feeds.items()}
        sess = self.session(sel.entry)
        feeds = pad_feeds(feeds, sel)
        feeds = {k: v.astype(sess.inputs[k]["dtype"], copy=False) for k, v in feeds.items()}
        outs = trim_outputs(sess.run(feeds), sel)
        if spec.single_view:
            outs = {k: v[:, :, None] for k, v in outs.items()}
        return outs

    def _predict(self, sel: Selection, feeds: dict[str, np.ndarray], times: list[int],
                 views: list[int], frame_paths: list[list[str]],
                 timing: dict[str, float]) -> Prediction:
        tl = time.perf_counter()
        fresh = sel.entry.name not in self._sessions
        sess = self.session(sel.entry)
        if fresh:  # keep one-off engine/graph loading out of the inference time
            timing["session_load"] = time.perf_counter() - tl
            if getattr(sess, "refit_seconds", None) is not None:  # part of session_load
                timing["refit"] = sess.refit_seconds
        ti = time.perf_counter()
        outs = self.run_selection(sel, feeds)
        timing["inference"] = time.perf_counter() - ti
        health = output_health(outs, times, views)
        # checked whatever the verification mode: corruption can outlive the hash check
        health_note = require_finite(health, self.allow_nonfinite)
        tpp = time.perf_counter()
        spec = sel.entry.spec
        images = feeds["images"][0]  # [T, N, 3, H, W]
        colors = np.clip(np.floor(images.transpose(0, 1, 3, 4, 2) * 255.0 + 0.5), 0, 255
                         ).astype(np.uint8)
        per = {k: v[0] for k, v in outs.items()}  # drop batch
        extr = intr = None
        notes: list[str] = [health_note] if health_note else []
        if "pose_enc" in per:
            # A zero field of view (seen with untrained weights) gives infinite focal
            # lengths; say so once instead of numpy's divide-by-zero warnings.
            with np.errstate(divide="ignore", invalid="ignore"):
                extr, intr = pose_encoding_to_extri_intri(per["pose_enc"], (spec.H, spec.W))
            bad = int((~np.isfinite(intr).all(axis=(-2, -1))).sum())
            if bad:
                notes.append(f"{bad} of {intr.shape[0] * intr.shape[1]} frames have a "
                             f"degenerate field of view in pose_enc (untrained weights?); "
                             f"their intrinsics are not finite")
        depth = per["depth"][..., 0] if "depth" in per else None
        source = self.points_from
        if source == "auto":
            source = "depth" if depth is not None and extr is not None else "head"
        if source == "depth":
            if depth is None or extr is None:
                raise RuntimeDataError("points_from='depth' needs the depth and camera heads")
            with np.errstate(divide="ignore", invalid="ignore"):
                points = depth_to_world_points(depth, extr, intr)
            conf = per.get("depth_conf")
        else:
            if "world_points" not in per:
                raise RuntimeDataError("points_from='head' needs the point head output")
            points = per["world_points"]
            conf = per.get("world_points_conf")
        if conf is None:
            conf = np.ones(points.shape[:-1], np.float32)
        if self.conf_percentile is None and self.conf_threshold is None:
            mask = np.isfinite(conf)
        else:
            mask = confidence_mask(conf, percentile=self.conf_percentile,
                                   threshold=self.conf_threshold)
        timing["postprocess"] = time.perf_counter() - tpp
        if self.backend == "trt":
            detail = f"TensorRT {getattr(sess, 'precision', '')} engine"
        else:
            provs = getattr(sess, "active_providers", [])
            graph = getattr(getattr(sess, "path", None), "name", self.graph)
            detail = f"onnxruntime {graph} [{', '.join(provs)}]"
            if sel.entry.name in self.graph_notices:
                notes.append(self.graph_notices[sel.entry.name])
        return Prediction(bucket=sel.entry.name, backend=self.backend, outputs=outs,
                          backend_detail=detail,
                          colors=colors, extrinsics=extr, intrinsics=intr, depth=depth,
                          confidence=conf, points=points, points_source=source,
                          conf_mask=mask, times=times, views=views, frame_paths=frame_paths,
                          pad=(sel.pad_T, sel.pad_N), timing=timing, feeds=feeds,
                          notes=notes, health=health)

    def close(self) -> None:
        with self._lock:
            for s in self._sessions.values():
                s.close()
            self._sessions.clear()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
