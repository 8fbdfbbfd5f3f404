"""Long videos at fixed memory: sliding windows of T time steps chained into one world frame.

An engine runs a fixed (T, N) bucket; a capture rig streams for minutes. Windows of T
steps that overlap by K steps are run one after another, and each window's cameras and
points (in its own frame: its first step's view-0 camera, its own scale) are mapped into
the running world frame (the first window's) by a sim(3) fitted on the K shared time
steps' point maps (runtime/align.py: confidence-weighted, IRLS-robust Umeyama). When that
fit cannot be trusted (too few confident shared points, or a residual beyond the bound)
the window is chained through its first shared camera at the previous scale instead,
marked ``fallback`` and warned about: never a silent jump.

Memory is constant: the last window's shared steps, the current window, and a merged
point cloud of bounded size (runtime/pointcloud.py). Everything else goes to disk as it
comes: depth PNGs per (t, view), ``cameras.jsonl`` (world extrinsics / intrinsics per
(t, view)), one TUM trajectory per view, and at the end ``points.ply``, ``windows.json``
(residual, inliers, scale, status per window), a COLMAP model (``sparse/``) and
``scene.glb`` of the cameras and the cloud (runtime/exports), and ``run.json``.
Intrinsics in cameras.jsonl and sparse/ are in the input frames' own pixels.

    with Predictor("artifacts", backend="onnx") as p:
        with StreamingPredictor(p, window=4, overlap=1, out_dir="out/") as s:
            s.run_folder("scene/")        # or s.push([frame_view0, frame_view1, ...]) per step
        summary = s.summary               # close() ran on leaving the block

An exception inside the block (or a stream that is dropped unclosed) removes the hidden
partial folder; the output folder is locked for the whole run (runtime/locks.py), so a
second stream into it is refused naming the first one's PID.

Trajectories are written in the TUM format (``timestamp tx ty tz qx qy qz qw``, the
camera's pose in the world): one line per pose with its own timestamp, so time steps,
multiple views and gaps stay explicit, and the usual evaluation tools (evo, the TUM
scripts) read it as it is; KITTI's format has no timestamps and assumes one camera.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import weakref
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .align import AlignResult, Sim3, align_robust, sim3_from_camera
from .errors import RuntimeDataError
from .exports.cameras import CAMERAS_JSONL, CameraLog, frame_name, json_safe, read_cameras
from .exports.cameras import tum_line  # noqa: F401 - re-exported: its home moved to exports
from .exports.colmap import COLMAP_DIR, ColmapImage, export_points, write_colmap
from .exports.glb import GLB_NAME, write_glb
from .layout import atomic_write, recover_leftovers
from .locks import OutputLock
from .colour_range import RobustRange
from .outputs import colorize, depth_png_name, save_png, write_ply
from .pointcloud import VoxelCloud
from .preprocess import decode_frame, discover_scene, intrinsics_to_source, preprocess_rgb
from .video import find_view_videos, is_video_input

__all__ = ["WindowReport", "WorldChainer", "StreamWriter", "StreamingPredictor",
           "check_window_overlap", "tum_line"]

MAX_ALIGN_POINTS = 20_000  # a subsample fits the same sim(3) and keeps each fit ~10 ms


def check_window_overlap(window: int, overlap: int) -> None:
    if window < 2:
        raise RuntimeDataError(f"--window must be at least 2 time steps, got {window}")
    if overlap < 1:
        raise RuntimeDataError(f"--overlap must be at least 1: windows are chained through the "
                               f"time steps they share (got {overlap})")
    if overlap >= window:
        raise RuntimeDataError(f"--overlap {overlap} must be smaller than --window {window}: "
                               f"each window must add at least one new time step")


@dataclass
class WindowReport:
    index: int
    times: list[int]
    new_times: list[int]
    status: str                 # "first", "aligned" or "fallback"
    scale: float                # window units -> world units
    residual: float | None = None
    inlier_fraction: float | None = None
    points_used: int = 0
    reason: str = ""
    seconds: float = 0.0


@dataclass
class ChainedWindow:
    report: WindowReport
    sim3: Sim3
    extrinsics: np.ndarray      # [T, N, 3, 4] camera-from-world, world units
    points: np.ndarray          # [T, N, H, W, 3] world
    depth_scale: float


@dataclass
class WorldChainer:
    """The chaining maths, independent of any session: feed each window's predictions in
    its own frame, get them back in the world frame. Keeps only the previous window."""

    min_points: int = 200
    # inlier RMS residual / the shared points' RMS spread: per-pixel depth noise of a few
    # percent gives ~0.05-0.1; beyond 0.2 the shared steps do not describe one scene
    max_residual: float = 0.2
    seed: int = 0
    _prev: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    _scale: float = 1.0
    _prev_sim: Sim3 = field(default_factory=Sim3.identity)
    _count: int = 0
    _last_time: int | None = None

    def add(self, times: Sequence[int], extrinsics: np.ndarray, points: np.ndarray,
            weights: np.ndarray) -> ChainedWindow:
        """times [T] (global, increasing); extrinsics [T, N, 3, 4] camera-from-window;
        points [T, N, H, W, 3] in the window frame; weights [T, N, H, W] (0 = not
        confident)."""
        times = [int(t) for t in times]
        if any(b <= a for a, b in zip(times, times[1:])):
            raise RuntimeDataError(f"window times must increase, got {times}")
        shared = [t for t in times if t in self._prev]
        report = WindowReport(self._count, times, [], "first", 1.0)
        if self._count == 0:
            sim = Sim3.identity()
        elif not shared:
            raise RuntimeDataError(f"window {self._count} (times {times[0]}..{times[-1]}) "
                                   f"shares no time step with the previous one")
        else:
            sim = self._align(times, shared, extrinsics, points, weights, report)
        world_E = sim.extrinsics(extrinsics)
        world_P = sim.apply(points)
        self._scale = sim.s
        self._prev_sim = sim
        report.scale = float(sim.s)
        last = self._last_time if self._last_time is not None else -(1 << 62)
        report.new_times = [t for t in times if t > last]
        self._prev = {t: (world_P[i], np.asarray(weights[i]), world_E[i])
                      for i, t in enumerate(times)}
        self._last_time = times[-1]
        self._count += 1
        return ChainedWindow(report, sim, world_E, world_P, float(sim.s))

    def _align(self, times, shared, extrinsics, points, weights, report) -> Sim3:
        idx = [times.index(t) for t in shared]
        src = points[idx].reshape(-1, 3)
        dst = np.concatenate([self._prev[t][0].reshape(-1, 3) for t in shared])
        w_new = np.asarray(weights)[idx].reshape(-1)
        w_old = np.concatenate([self._prev[t][1].reshape(-1) for t in shared])
        w = np.minimum(w_new, w_old)
        ok = (w > 0) & np.isfinite(src).all(1) & np.isfinite(dst).all(1)
        sel = np.flatnonzero(ok)
        if len(sel) > MAX_ALIGN_POINTS:
            sel = np.sort(np.random.default_rng(self.seed + self._count).choice(
                sel, MAX_ALIGN_POINTS, replace=False))
        report.points_used = int(len(sel))
        fit: AlignResult | None = None
        if len(sel) >= self.min_points:
            try:
                fit = align_robust(src[sel], dst[sel], w[sel])
            except ValueError as e:  # degenerate: all points at one place
                report.reason = f"alignment failed: {e}"
        else:
            report.reason = (f"only {len(sel)} confident points shared with the previous "
                             f"window (need {self.min_points})")
        if fit is not None:
            report.residual, report.inlier_fraction = fit.residual, fit.inlier_fraction
            if fit.residual <= self.max_residual and _finite_sim3(fit.sim3):
                report.status = "aligned"
                return fit.sim3
            report.reason = (f"alignment residual {fit.residual:.3g} of the scene's spread is "
                             f"beyond the bound {self.max_residual:g}")
        # Fallback: chain through a camera both windows saw (the first shared time step's
        # view 0 when its pose is finite in both, else the next one) at the previous scale.
        report.status = "fallback"
        for t in shared:
            for j in range(extrinsics.shape[1]):
                mine, theirs = extrinsics[times.index(t), j], self._prev[t][2][j]
                if np.isfinite(mine).all() and np.isfinite(theirs).all():
                    sim = sim3_from_camera(mine, theirs, self._scale)
                    if _finite_sim3(sim):
                        report.reason += f" (chained through t {t}, view index {j})"
                        return sim
        # No shared camera either: keep the previous window's transform rather than emit
        # NaN; the window is marked and its poses are only as good as that guess.
        report.reason += ("; no shared camera is finite in both windows either: the "
                          "previous window's transform is kept")
        return self._prev_sim


def _finite_sim3(sim: Sim3) -> bool:
    return bool(np.isfinite(sim.s) and sim.s > 0 and np.isfinite(sim.R).all()
                and np.isfinite(sim.t).all())


class StreamWriter:
    """Writes a stream's outputs as they come, into a hidden folder renamed to ``out_dir``
    at the end (an interrupted run leaves no half-written output folder)."""

    @staticmethod
    def check_out(out_dir: str | Path, overwrite: bool, fps: float) -> None:
        """Refuses, before any work, an output that is a file or a non-empty folder (the
        run would replace it) unless ``overwrite``, and a non-positive fps."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise RuntimeDataError(f"--out {out} is a file; give a folder")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise RuntimeDataError(f"--out {out} is not empty; choose a new folder or "
                                   f"pass --overwrite to replace it")
        if not fps > 0:
            raise RuntimeDataError(f"--fps must be positive, got {fps}")

    def __init__(self, out_dir: str | Path, views: Sequence[int], *, fps: float = 1.0,
                 overwrite: bool = False, depth_pngs: bool = True):
        self.check_out(out_dir, overwrite, fps)
        self.out = Path(out_dir)
        self.tmp = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        (self.tmp / "depth").mkdir(parents=True)
        self.views, self.fps, self.depth_pngs = list(views), float(fps), depth_pngs
        self.overwrite = overwrite
        self._log = CameraLog(self.tmp, self.views, self.fps)
        self.warn: Callable[[str], None] = print
        # One JSON record per window, appended as windows run and turned into
        # windows.json at the end: nothing per window stays in memory.
        self._win = open(self.tmp / ".windows.jsonl", "w")
        # A writer dropped without finish() or abort() (a stream never closed, an
        # exception the caller swallowed) takes its partial folder with it.
        self._finalizer = weakref.finalize(self, _remove_partial, self.tmp,
                                           [self._log, self._win])
        self.frames = 0
        self.windows = 0
        # One colour scale for every depth PNG of the stream (world units), like infer's
        # per-clip scale: updated by every step as windows arrive, and applied at the end
        # to the maps kept meanwhile (float16 on disk, removed) so that a scene receding
        # after the first steps does not turn the later PNGs into one flat colour.
        self._depth_scale = RobustRange()
        self._depth_maps: list[tuple[str, Path]] = []
        self.depth_range: tuple[float, float] | None = None

    def write_window(self, record: dict[str, Any]) -> None:
        if self._depth_scale.seen:  # how the stream's depth colour range evolves
            record = {**record, "depth_range_so_far": list(self._depth_scale.range())}
        self._win.write(json.dumps(record, default=float) + "\n")
        self._win.flush()
        self.windows += 1

    def write_step(self, t: int, extrinsics: np.ndarray, intrinsics: np.ndarray | None,
                   depth: np.ndarray | None, src_hw: Sequence[tuple[int, int]] | None = None,
                   paths: Sequence[str | None] | None = None,
                   image_root: str | Path | None = None,
                   model_hw: tuple[int, int] | None = None) -> list[bool]:
        """extrinsics [N, 3, 4] (world), intrinsics [N, 3, 3] on the model's grid
        (``model_hw``), depth [N, H, W] (world units); src_hw the input frames' (h, w),
        paths their files (named relative to ``image_root``). Returns per view whether its
        camera is finite (placeable in the cloud, COLMAP and GLB)."""
        if model_hw is None and depth is not None:
            model_hw = tuple(depth.shape[-2:])
        placed = []
        for j, v in enumerate(self.views):
            K_model = None if intrinsics is None else intrinsics[j]
            h, w = src_hw[j] if src_hw else (model_hw or (0, 0))
            K = K_model
            if K_model is not None and src_hw and model_hw is not None:
                with np.errstate(invalid="ignore"):
                    K = intrinsics_to_source(K_model, (h, w), model_hw)
            name = frame_name(t, v, paths[j] if paths else None, image_root)
            placed.append(self._log.add(t, v, extrinsics[j], K, w, h, K_model, image=name))
            if depth is not None and self.depth_pngs:
                self._depth_scale.add(depth[j])
                raw = self.tmp / ".depth_maps" / f"{len(self._depth_maps)}.npy"
                raw.parent.mkdir(exist_ok=True)
                with np.errstate(over="ignore"):  # beyond float16: inf, drawn black
                    np.save(raw, np.asarray(depth[j], np.float16))
                self._depth_maps.append((depth_png_name(t, v), raw))
            self.frames += 1
        self._log.flush()
        return placed

    def finish(self, cloud: VoxelCloud, run: dict[str, Any]) -> dict[str, Any]:
        self._close_files()
        pts, cols = cloud.points()
        n = write_ply(self.tmp / "points.ply", pts, cols)
        self._windows_json()
        exports = self._write_exports(*export_points(pts, cols))
        self._write_depth_pngs()
        run = {**run, "depth_range_png": self.depth_range,
               "depth_range_rule": "2nd-98th percentile of a uniform sample of every finite "
                                   "depth of the stream", **exports}
        with atomic_write(self.tmp / "run.json", "w") as f:
            json.dump(json_safe(run), f, indent=2, allow_nan=False)
            f.write("\n")
        # Checked again here, not only at the start: something may have written the
        # output meanwhile (another command; streams are kept out by the lock).
        if self.out.is_dir() and any(self.out.iterdir()) and not self.overwrite:
            raise RuntimeDataError(f"--out {self.out} was filled by someone else while this "
                                   f"stream ran; nothing of this run was kept: run it again "
                                   f"into a new folder, or with --overwrite")
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            self.out.rename(old)
            self.tmp.rename(self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.out)
        self._finalizer.detach()
        return {"out": str(self.out), "points": n, "frames": self.frames}

    def _write_depth_pngs(self) -> None:
        if not self._depth_maps:
            return
        self.depth_range = self._depth_scale.range()
        for name, raw in self._depth_maps:
            save_png(self.tmp / name, colorize(np.load(raw).astype(np.float32), "turbo",
                                               *self.depth_range))
            raw.unlink()
        (self.tmp / ".depth_maps").rmdir()

    def _write_exports(self, pts: np.ndarray, cols: np.ndarray) -> dict[str, Any]:
        """COLMAP model and scene.glb from cameras.jsonl read back at the end: the frames'
        cameras never stay in memory while the stream runs."""
        images, seen = [], set()
        for rec in read_cameras(self.tmp / CAMERAS_JSONL):
            if rec["finite"]:
                # --loops replays the same files at later t: COLMAP needs unique names
                name = rec["image"] if rec["image"] not in seen else frame_name(rec["t"],
                                                                                rec["view"])
                seen.add(name)
                images.append(ColmapImage(name, np.array(rec["extrinsic"]),
                                          np.array(rec["intrinsic"]), rec["width"],
                                          rec["height"]))
        info: dict[str, Any] = {"nonfinite_frames": self._log.nonfinite,
                                "nonfinite_examples": self._log.nonfinite_examples}
        if self._log.nonfinite:
            self.warn(f"{self._log.nonfinite} of {self._log.frames} frames have a camera that "
                      f"is not finite and are left out of points.ply, {COLMAP_DIR}/ and "
                      f"{GLB_NAME} (flagged \"finite\": false in cameras.jsonl), e.g. (t, "
                      f"view) {', '.join(map(str, self._log.nonfinite_examples))}")
        info["colmap"] = write_colmap(self.tmp / COLMAP_DIR, images, pts, cols)
        try:
            info["glb"] = write_glb(self.tmp / GLB_NAME, images, pts, cols)
        except (ImportError, RuntimeDataError) as e:
            self.warn(f"{e}; {GLB_NAME} not written")
            info["glb"] = None
        return info

    def _windows_json(self) -> None:
        """.windows.jsonl -> windows.json (a JSON list), copied line by line."""
        src = self.tmp / ".windows.jsonl"
        with open(src) as f, atomic_write(self.tmp / "windows.json", "w") as out:
            out.write("[")
            for i, line in enumerate(f):
                out.write(("," if i else "") + "\n  " + line.rstrip("\n"))
            out.write("\n]\n")
        src.unlink()

    def _close_files(self) -> None:
        self._log.close()
        self._win.close()

    def abort(self) -> None:
        self._finalizer()  # closes the files and removes the partial folder, once


def _remove_partial(tmp: Path, files: list[Any]) -> None:
    for f in files:
        f.close()
    shutil.rmtree(tmp, ignore_errors=True)


def _release(lock: OutputLock) -> None:
    lock.release()


class StreamingPredictor:
    """Feeds windows of ``window`` time steps (``overlap`` shared with the previous one) to a
    runtime Predictor (TensorRT or onnxruntime) and chains them into one world frame."""

    def __init__(self, predictor: Any, window: int, overlap: int, out_dir: str | Path, *,
                 N: int | None = None, views: Sequence[int] | None = None,
                 voxel: float | None = None, max_points: int = 500_000,
                 fps: float | None = None, shortest: bool = False,
                 min_points: int = 200, max_residual: float = 0.2, overwrite: bool = False,
                 depth_pngs: bool = True, log: Callable[[str], None] = print,
                 warn: Callable[[str], None] | None = None):
        check_window_overlap(window, overlap)
        # fps None: the videos' frame rate when the input is videos, else 1 (t / 1 = t).
        StreamWriter.check_out(out_dir, overwrite, 1.0 if fps is None else fps)
        # Held until close() or abort(): a second stream into this output is refused now,
        # not overwritten at its end. Then the partial folders of killed runs go.
        self._lock = OutputLock(out_dir, "stream run").acquire()
        self._lock_finalizer = weakref.finalize(self, _release, self._lock)
        for msg in recover_leftovers(out_dir, log=False):
            (warn or log)(msg)
        self.p, self.window, self.overlap = predictor, int(window), int(overlap)
        self.N, self.views = N, list(views) if views is not None else None
        self.out_dir, self.fps, self.overwrite = Path(out_dir), fps, overwrite
        # View videos of unequal length (or one cut short): refused unless this is set,
        # then every view stops at the shortest complete one (runtime/video.py's rule).
        self.shortest = shortest
        self.voxel, self.max_points, self.depth_pngs = voxel, max_points, depth_pngs
        self.chainer = WorldChainer(min_points=min_points, max_residual=max_residual)
        self.log, self.warn = log, warn or log
        # (t, preprocessed frames [N, 3, H, W], input sizes [(h, w)] * N, image names)
        self._buf: deque[tuple[int, np.ndarray, list[tuple[int, int]], list[str | None]]] = (
            deque(maxlen=self.window))
        self._image_root: Path | None = None  # names frames relative to it (run_folder)
        self._since = 0             # new steps buffered since the last window ran
        self._next_t = 0
        self._size: tuple[int, int] | None = None
        self._writer: StreamWriter | None = None
        self._cloud: VoxelCloud | None = None
        # Counts only: per-window records go to disk (windows.json), so a stream of any
        # length keeps the same memory. ``last_report`` is the newest window's.
        self.counts = {"first": 0, "aligned": 0, "fallback": 0}
        self.windows_run = 0
        self.windows_submitted = 0
        # Windows handed to a parallel predictor (runtime/batch: ``submit_window`` /
        # ``result`` / ``max_pending``) and not chained yet, oldest first: they are
        # inferred anywhere, in any order, but chained here, in time order.
        self._pending: deque[tuple[list[int], Any, float, dict]] = deque()
        self.last_report: WindowReport | None = None
        self._t_start = time.perf_counter()
        self._ran_last = False
        self._failed: BaseException | None = None
        self.summary: dict[str, Any] | None = None

    def __enter__(self) -> "StreamingPredictor":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """On an exception: abort (the partial folder is removed, the output untouched).
        Otherwise close() if the block did not (the result lands in ``summary``)."""
        if exc_type is not None:
            self.abort()
        elif self.summary is None and self._lock.held:
            self.close()

    # ------------------------------------------------------------------ input
    def _bucket_size(self, n_views: int, aspect: float) -> tuple[int, int]:
        sel = self.p.select(self.window, n_views, aspect=aspect)
        return sel.entry.spec.H, sel.entry.spec.W

    def push(self, frames: Sequence[Any], t: int | None = None) -> WindowReport | None:
        """One time step: N frames (paths, PIL images or uint8 [H, W, 3] arrays), one per
        view. Runs a window whenever enough new steps have arrived; returns its report."""
        if self._failed is not None or not self._lock.held:
            raise RuntimeDataError("this stream was aborted or closed (an earlier push or "
                                   "close failed); start a new StreamingPredictor")
        if not len(frames):
            raise RuntimeDataError("push() needs one frame per view, got none")
        if self.views is None:
            self.views = list(range(len(frames)))
        if len(frames) != len(self.views):
            raise RuntimeDataError(f"push() got {len(frames)} frames; this stream has "
                                   f"{len(self.views)} views")
        ims = [decode_frame(f) if isinstance(f, (str, Path)) else f for f in frames]
        if self._size is None:
            if isinstance(ims[0], np.ndarray):
                h, w = ims[0].shape[:2]
            else:  # PIL: size is (width, height)
                w, h = ims[0].size
            self._size = self._bucket_size(len(ims), w / h)
        step = np.stack([preprocess_rgb(im, self._size) for im in ims])  # [N, 3, H, W]
        sizes = [(im.shape[0], im.shape[1]) if isinstance(im, np.ndarray)
                 else (im.size[1], im.size[0]) for im in ims]
        names = [str(f) if isinstance(f, (str, Path)) else None for f in frames]
        t = self._next_t if t is None else int(t)
        if self._buf and t <= self._buf[-1][0]:
            raise RuntimeDataError(f"time steps must increase: got {t} after {self._buf[-1][0]}")
        self._next_t = t + 1
        self._buf.append((t, step, sizes, names))
        self._since += 1
        self._ran_last = False
        first_window = not self.windows_submitted
        if len(self._buf) == self.window and (first_window or
                                              self._since >= self.window - self.overlap):
            try:
                return self._run_window()
            except BaseException as e:
                # A window failed half-way (inference, alignment, writing): what was
                # written no longer adds up to a stream, so none of it is kept.
                self._failed = e
                self.abort()
                raise
        return None

    def run_folder(self, folder: str | Path, loops: int = 1) -> None:
        """Every time step of a time_TT/viewV folder, in order; ``loops`` > 1 replays it
        (benchmarks: constant memory over many windows)."""
        scene = discover_scene(folder)
        self._image_root = scene.image_root
        views = self.views if self.views is not None else list(scene.views)[: self.N or None]
        self.views = views
        times = list(scene.times)
        steps = {b - a for a, b in zip(times, times[1:])}
        if len(steps) > 1:
            self.warn(f"the time steps of {scene.root} are not evenly spaced (time_ labels "
                      f"{_label_list(times)}): outputs keep these labels (cameras.jsonl t, "
                      f"TUM timestamps t / fps, depth names), and windows span the gaps as if "
                      f"the steps were adjacent")
        span = times[-1] - times[0] + 1 if times else 0
        for loop in range(loops):
            for tl in times:  # the folder's own labels: time_05 stays t = 5
                self.push([scene.frame_path(tl, v) for v in views], t=tl + loop * span)

    def run_videos(self, folder: str | Path, loops: int = 1) -> None:
        """One synchronized video per view (view0.mp4, view1.avi, ...), decoded one time
        step at a time (runtime/video.py): memory does not depend on the videos' length.
        The TUM timestamps use the videos' frame rate unless ``fps`` was given. Videos
        of unequal length, cut short or decoding a bad frame raise VideoError (the stream
        aborts, nothing is written) unless ``shortest``, see runtime/video.py."""
        from .video import ViewVideos  # noqa: PLC0415 - OpenCV only for video input

        views = self.views
        if views is None and self.N is not None:
            views = sorted(find_view_videos(folder))[: self.N]
        with ViewVideos(folder, views, shortest=self.shortest) as vids:
            self.views = vids.views
            if self.fps is None and vids.fps and self._writer is None:
                self.fps = vids.fps
            for loop in range(loops):
                if loop:
                    vids.rewind()
                for frames in vids:
                    self.push(frames)
                for note in vids.notes:  # what --shortest left out
                    self.warn(note)

    def run_input(self, path: str | Path, loops: int = 1) -> None:
        """A time_TT/viewV frame folder or a folder of view videos, whichever ``path`` is."""
        if is_video_input(path):  # refuses a folder holding both kinds
            self.run_videos(path, loops)
        else:
            self.run_folder(path, loops)

    # ------------------------------------------------------------------ windows
    def _run_window(self) -> WindowReport | None:
        t0 = time.perf_counter()
        times = [b[0] for b in self._buf]
        images = np.stack([b[1] for b in self._buf])[None]  # [1, T, N, 3, H, W]
        meta = {b[0]: (b[2], b[3]) for b in self._buf}
        self.windows_submitted += 1
        self._since = 0
        self._ran_last = True
        submit = getattr(self.p, "submit_window", None)
        if submit is None:  # a local Predictor: infer and chain now
            return self._chain(times, self.p.predict_arrays(images, times=times,
                                                            views=self.views), t0, meta)
        self._pending.append((times, submit(images, times, self.views), t0, meta))
        rep = None
        while len(self._pending) > self.p.max_pending:  # bounded: constant memory
            rep = self._chain_oldest()
        return rep

    def _chain_oldest(self) -> WindowReport:
        times, handle, t0, meta = self._pending.popleft()
        return self._chain(times, self.p.result(handle), t0, meta)

    def _chain(self, times: list[int], pred: Any, t0: float, meta: dict) -> WindowReport:
        """Alignment and writing, always on this (the driver's) side and in time order:
        each window is fitted to the previous one's world points."""
        if pred.extrinsics is None:
            raise RuntimeDataError(f"bucket {pred.bucket} has no camera head: streaming "
                                   f"needs poses to chain windows")
        weights = np.where(pred.conf_mask, pred.confidence, 0.0).astype(np.float32)
        win = self.chainer.add(times, pred.extrinsics, pred.points, weights)
        rep = win.report
        if self._writer is None:
            self._writer = StreamWriter(self.out_dir, self.views, fps=self.fps or 1.0,
                                        overwrite=self.overwrite, depth_pngs=self.depth_pngs)
            self._writer.warn = self.warn
        if self._cloud is None:
            self._cloud = VoxelCloud(self.voxel or _default_voxel(win.points, weights),
                                     self.max_points)
        new = set(rep.new_times)
        for i, t in enumerate(times):
            if t not in new:
                continue
            depth = None if pred.depth is None else pred.depth[i] * win.depth_scale
            placed = self._writer.write_step(
                t, win.extrinsics[i], None if pred.intrinsics is None else pred.intrinsics[i],
                depth, *meta[t], image_root=self._image_root,
                model_hw=tuple(pred.colors.shape[2:4]))
            # A frame without a finite camera would put its points on a line: left out.
            m = (weights[i] > 0) & np.asarray(placed)[:, None, None]
            self._cloud.add(win.points[i][m], pred.colors[i][m], weights[i][m])
        rep.seconds = time.perf_counter() - t0
        self._writer.write_window(asdict(rep))
        self.windows_run += 1
        self.counts[rep.status] += 1
        self.last_report = rep
        msg = (f"window {rep.index}: t {times[0]}..{times[-1]} ({len(rep.new_times)} new), "
               f"{rep.status}, scale {rep.scale:.4g}"
               + (f", residual {rep.residual:.3g}" if rep.residual is not None else "")
               + f", {len(self._cloud):,} cloud points, {rep.seconds:.1f} s")
        self.log(msg)
        if rep.status == "fallback":
            self.warn(f"window {rep.index} (t {times[0]}..{times[-1]}) not aligned: "
                      f"{rep.reason}; chained through a shared camera at the previous scale "
                      f"instead (marked fallback in windows.json)")
        return rep

    def close(self) -> dict[str, Any]:
        """Runs a last window over the newest steps if some are not covered yet, writes the
        cloud, windows.json and run.json, and moves the output folder into place."""
        if self._failed is not None or not self._lock.held:
            raise RuntimeDataError("this stream was aborted or already closed; start a new "
                                   "StreamingPredictor")
        try:
            if not self.windows_submitted and len(self._buf) < self.window:
                raise RuntimeDataError(f"the stream ended after {len(self._buf)} time steps; "
                                       f"a window needs {self.window}")
            if not self._ran_last and self._since:
                self._run_window()
            while self._pending:
                self._chain_oldest()
            elapsed = time.perf_counter() - self._t_start
            counts = dict(self.counts)
            run = {"window": self.window, "overlap": self.overlap, "views": self.views,
                   "windows": self.windows_run, **counts, "seconds": round(elapsed, 3),
                   "windows_per_minute": round(60 * self.windows_run / max(elapsed, 1e-9), 2),
                   "voxel": self._cloud.voxel if self._cloud else None,
                   "cloud_coarsened": self._cloud.coarsened if self._cloud else 0}
            out = self._writer.finish(self._cloud, run)
        except BaseException as e:
            self._failed = e
            self.abort()
            raise
        self._lock_finalizer()
        self.summary = {**run, **out}
        return self.summary

    def abort(self) -> None:
        """Drop everything of this run (the partial folder; the output stays as it was)
        and release the output's lock. Safe to call more than once."""
        self._pending.clear()
        if self._writer is not None:
            self._writer.abort()
        self._lock_finalizer()


def _label_list(times: Sequence[int], most: int = 12) -> str:
    shown = ", ".join(str(t) for t in times[:most])
    return shown + (f", ... ({len(times)} steps)" if len(times) > most else "")


def _default_voxel(points: np.ndarray, weights: np.ndarray) -> float:
    """1/200 of the first window's confident points' RMS spread (world units)."""
    p = points[weights > 0].reshape(-1, 3)
    p = p[np.isfinite(p).all(1)]
    if len(p) < 2:
        return 1e-2
    spread = float(np.sqrt(np.mean(np.sum((p - p.mean(0)) ** 2, 1))))
    return max(spread / 200.0, 1e-6)


def iter_windows(total: int, window: int, overlap: int) -> Iterable[list[int]]:
    """The time steps of each window a stream of ``total`` steps runs (for planning)."""
    check_window_overlap(window, overlap)
    if total < window:
        return
    start = 0
    while True:
        yield list(range(start, start + window))
        if start + window >= total:
            return
        start = min(start + window - overlap, total - window)
