"""Fault sweep (issue #13): tries faults a new user would hit, beyond the ones
tests/test_faults.py pins down, against the tiny preset and real frames, and prints one
row per fault: exit code, the first line of the message, leftovers, and a verdict.

Verdicts: "refused" (non-zero exit, a message, no traceback, nothing left behind), "ok"
(exit 0 and the expected files: the fault is one the tool absorbs), "BAD" (anything else:
a traceback, exit 0 where it should refuse, or leftovers). Exit 1 when any row is BAD.

    python scripts/fault_sweep.py [--keep DIR] [--json out.json]

It exports one tiny bucket first (about 30 s), then runs each fault in its own process.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT.parent / "shared" / "data" / "mv_scene"
TINY = ["--preset", "tiny", "--T", "2", "--N", "2", "--height", "42", "--width", "56"]
BASE: list[Path] = []  # the exported tiny bucket's root, set by main()


@dataclass
class Fault:
    name: str
    args: Callable[[Path], list[str]]          # CLI arguments, given the work folder
    setup: Callable[[Path], None] = lambda w: None
    expect: str = "refuse"                      # "refuse" or "ok"
    out: str | None = "out"                     # folder that must not exist after a refusal
    env: dict = field(default_factory=dict)
    signal_after: float | None = None           # send SIGTERM this many seconds in
    skip: Callable[[], str | None] = lambda: None  # a reason this fault cannot happen here
    says: str | None = None                     # the message must say this (not just exit)
    check: Callable[[Path], bool] = lambda w: True  # more to hold for the verdict
    ok_file: str = "out/run.json"               # what an "ok" run must have written
    scratch: bool = False                       # $TMPDIR inside the work folder, checked empty


def copy_scene(w: Path, name: str = "scene") -> Path:
    dst = w / name
    if not dst.exists():
        shutil.copytree(SCENE, dst)
    return dst


def copy_bucket(w: Path) -> Path:
    dst = w / "bucket" / "T2_N2_42x56"
    if not dst.exists():
        shutil.copytree(BASE[0] / "T2_N2_42x56", dst)
    return dst


def frame(w: Path, t: int = 0, v: int = 0) -> Path:
    return copy_scene(w) / "images" / f"time_{t:02d}" / f"view{v}.png"


def infer(w: Path, *extra: str, scene: str = "scene") -> list[str]:
    return ["infer", "--onnx", str(w / "bucket"), "--graph", "model.onnx", "--input",
            str(w / scene), "--T", "2", "--N", "2", "--out", str(w / "out"), *extra]


def _rewrite_png(p: Path, convert: Callable[[Image.Image], Image.Image]) -> None:
    convert(Image.open(p).convert("RGB")).save(p)


def _edit_manifest(w: Path, edit: Callable[[dict], None]) -> None:
    m = copy_bucket(w) / "manifest.json"
    d = json.loads(m.read_text())
    edit(d)
    m.write_text(json.dumps(d))


class _Evil:  # pickled into a checkpoint: unpickling it would run a shell command
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _evil_checkpoint(w: Path) -> None:
    import pickle

    (w / "evil.pt").write_bytes(pickle.dumps({"model": _Evil()}))


def make_repo(w: Path) -> Path:
    """A model repository of the tiny bucket, written by export-triton itself."""
    repo = w / "repo"
    if not repo.exists():
        subprocess.run([sys.executable, str(ROOT / "cli.py"), "export-triton", "--bucket",
                        str(copy_bucket(w)), "--out", str(repo), "--no-trt-model"],
                       check=True, capture_output=True)
    return repo


def _edit_index(w: Path, edit: Callable[[dict], None]) -> None:
    p = make_repo(w) / "serving.json"
    d = json.loads(p.read_text())
    edit(d)
    p.write_text(json.dumps(d))


def _garble_config(w: Path) -> None:
    cfg = next(make_repo(w).glob("*_onnx/config.pbtxt"))
    cfg.write_text(cfg.read_text().replace("TYPE_FP32", "TYPE_F32", 1))


def _flip_repo_graph(w: Path) -> None:
    g = next(make_repo(w).glob("*_onnx/1/model.onnx"))
    data = bytearray(g.read_bytes())
    data[len(data) // 2] ^= 0x10
    g.write_bytes(bytes(data))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def stream(w: Path, *extra: str, scene: str = "scene") -> list[str]:
    return ["infer", "--stream", "--onnx", str(w / "bucket"), "--graph", "model.onnx",
            "--input", str(w / scene), "--N", "2", "--window", "2", "--out", str(w / "out"),
            *extra]


def _gapped_scene(w: Path) -> None:
    for d in (copy_scene(w) / "images").glob("time_*"):
        if int(d.name[5:]) not in (0, 1, 5, 6, 10, 11):
            shutil.rmtree(d)


def _earlier_output(d: Path) -> None:
    d.mkdir()
    (d / "run.json").write_text("{}")  # what marks a folder as an earlier infer output
    (d / "old.txt").write_text("from the earlier run")


def _system_library() -> Path | None:
    import ctypes.util  # noqa: PLC0415

    name = ctypes.util.find_library("z")
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
              "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/lib"):
        if name and (Path(d) / name).is_file():
            return Path(d) / name
    return None


def _copy_a_system_library(dst: Path) -> None:
    shutil.copy(_system_library(), dst)


def _flip_middle(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))


def view_videos(w: Path, name: str = "videos", frames: int = 8, lengths=None, fps=10,
                suffix: str = ".avi", fourcc: str = "MJPG", views=(0, 1),
                size=(112, 84)) -> Path:
    """view0.avi, view1.avi from the real scene's frames (MJPG in AVI, small)."""
    import cv2

    d = w / name
    d.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(views):
        n = lengths[i] if lengths else frames
        vw = cv2.VideoWriter(str(d / f"view{v}{suffix}"), cv2.VideoWriter_fourcc(*fourcc),
                             fps, size)
        for t in range(n):
            im = cv2.imread(str(SCENE / "images" / f"time_{t:02d}" / f"view{v}.png"))
            vw.write(cv2.resize(im, size, interpolation=cv2.INTER_AREA))
        vw.release()
    return d


def _cut(p: Path, fraction: float = 0.45) -> None:
    p.write_bytes(p.read_bytes()[:int(len(p.read_bytes()) * fraction)])


def _damage_frame(p: Path, k: int = 5) -> None:
    """300 random bytes a third into MJPEG frame k: it still decodes, the damage hidden."""
    data = bytearray(p.read_bytes())
    soi = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    at = soi[k] + (soi[k + 1] - soi[k]) // 3
    data[at:at + 300] = np.random.default_rng(0).integers(0, 256, 300, np.uint8).tobytes()
    p.write_bytes(bytes(data))


def calibrate_videos(w: Path, *extra: str) -> list[str]:
    return ["calibrate", "--bucket", str(w / "bucket" / "T2_N2_42x56"), "--input",
            str(w / "videos"), "--clips", "2", "--out", str(w / "out" / "c.npz"), *extra]


def _no_cv2() -> str | None:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return "OpenCV is not installed (the video extra)"
    return None


FAULTS = [
    # bucket folders
    Fault("manifest.json deleted", lambda w: infer(w),
          lambda w: (copy_scene(w), (copy_bucket(w) / "manifest.json").unlink())),
    Fault("manifest.json not JSON", lambda w: infer(w),
          lambda w: (copy_scene(w), (copy_bucket(w) / "manifest.json").write_text("{oops"))),
    Fault("manifest bucket T edited to 3", lambda w: infer(w, "--pad"),
          lambda w: (copy_scene(w), _edit_manifest(w, lambda d: d["bucket"].update(T=3)))),
    Fault("manifest inputs shape edited", lambda w: infer(w),
          lambda w: (copy_scene(w), _edit_manifest(
              w, lambda d: d["inputs"]["images"]["shape"].__setitem__(-1, 70)))),
    Fault("graph replaced by the other graph", lambda w: infer(w),
          lambda w: (copy_scene(w), shutil.copy(copy_bucket(w) / "model.plugins.onnx",
                                                copy_bucket(w) / "model.onnx"))),
    Fault("graph deleted", lambda w: infer(w),
          lambda w: (copy_scene(w), (copy_bucket(w) / "model.onnx").unlink())),
    Fault("bucket folder is empty", lambda w: infer(w),
          lambda w: (copy_scene(w), (w / "bucket").mkdir())),
    # frames
    Fault("--T beyond the frames", lambda w: infer(w)[:-6] + ["--T", "40", "--N", "2",
                                                             "--out", str(w / "out")],
          lambda w: (copy_scene(w), copy_bucket(w))),
    Fault("--views out of range", lambda w: infer(w, "--views", "0,9"),
          lambda w: (copy_scene(w), copy_bucket(w))),
    Fault("--views not numbers", lambda w: infer(w, "--views", "a,b"),
          lambda w: (copy_scene(w), copy_bucket(w))),
    Fault("truncated PNG", lambda w: infer(w),
          lambda w: (copy_bucket(w), frame(w).write_bytes(frame(w).read_bytes()[:200]))),
    Fault("text file named view0.png", lambda w: infer(w),
          lambda w: (copy_bucket(w), frame(w).write_text("not an image"))),
    Fault("empty PNG file", lambda w: infer(w),
          lambda w: (copy_bucket(w), frame(w).write_bytes(b""))),
    Fault("a view missing at one time step", lambda w: infer(w),
          lambda w: (copy_bucket(w), frame(w, 1, 1).unlink())),
    Fault("greyscale 8-bit PNG", lambda w: infer(w), expect="ok",
          setup=lambda w: (copy_bucket(w), _rewrite_png(frame(w), lambda i: i.convert("L")))),
    Fault("RGBA PNG", lambda w: infer(w), expect="ok",
          setup=lambda w: (copy_bucket(w), _rewrite_png(frame(w), lambda i: i.convert("RGBA")))),
    Fault("palette PNG", lambda w: infer(w), expect="ok",
          setup=lambda w: (copy_bucket(w), _rewrite_png(frame(w), lambda i: i.convert("P")))),
    Fault("one view at another resolution", lambda w: infer(w),
          setup=lambda w: (copy_bucket(w), _rewrite_png(
              frame(w, 0, 1), lambda i: i.resize((i.width // 2, i.height // 2))))),
    Fault("frames as JPEG", lambda w: infer(w), expect="ok",
          setup=lambda w: (copy_bucket(w), [
              (Image.open(p).convert("RGB").save(p.with_suffix(".jpg")), p.unlink())
              for p in sorted((copy_scene(w) / "images").glob("time_*/view*.png"))])),
    Fault("--input is a file", lambda w: infer(w, scene="scene/images/time_00/view0.png"),
          lambda w: (copy_scene(w), copy_bucket(w))),
    # infer options
    Fault("--conf-percentile 150", lambda w: infer(w, "--conf-percentile", "150"),
          lambda w: (copy_scene(w), copy_bucket(w))),
    Fault("--points-from nonsense", lambda w: infer(w, "--points-from", "nonsense"),
          lambda w: (copy_scene(w), copy_bucket(w))),
    Fault("--graph that is not in the bucket", lambda w: infer(w)[:4] + [
        "model.int8.onnx"] + infer(w)[5:], lambda w: (copy_scene(w), copy_bucket(w))),
    Fault("--provider nonsense", lambda w: infer(w, "--provider", "tpu"),
          lambda w: (copy_scene(w), copy_bucket(w))),
    Fault("--stream --window 0", lambda w: infer(w, "--stream", "--window", "0")[:2] + [
        str(w / "bucket"), "--input", str(w / "scene"), "--N", "2", "--stream", "--window", "0",
        "--out", str(w / "out")], lambda w: (copy_scene(w), copy_bucket(w))),
    Fault("--out under a read-only folder", lambda w: infer(w)[:-1] + [str(w / "ro" / "out")],
          lambda w: (copy_scene(w), copy_bucket(w), (w / "ro").mkdir(),
                     os.chmod(w / "ro", 0o555)), out="ro/out",
          skip=lambda: "running as root: permissions do not apply" if os.geteuid() == 0
          else None),
    # the tiny infer takes under a second: --repeats keeps it running when the signal comes
    Fault("SIGTERM during infer", lambda w: infer(w, "--repeats", "2000"), signal_after=1.5,
          setup=lambda w: (copy_scene(w), copy_bucket(w)),
          says="interrupted by SIGTERM during `infer`"),
    Fault("$VGGT_MV_PLUGINS names a missing file",
          lambda w: ["build-engine", "--fp16", "--dry-run", "--bucket", str(w / "bucket")],
          lambda w: copy_bucket(w), env={"VGGT_MV_PLUGINS": "/nonexistent/lib.so"}, out=None),
    # export / model
    Fault("export --T 0", lambda w: ["export", *TINY[:2], "--T", "0", "--N", "2",
                                     "--out", str(w / "out")]),
    Fault("export --height 0", lambda w: ["export", *TINY[:6], "--height", "0", "--width",
                                          "56", "--out", str(w / "out")]),
    Fault("export --opset 5", lambda w: ["export", *TINY, "--opset", "5", "--no-validate",
                                         "--out", str(w / "out")]),
    Fault("export -o no_such_key=1", lambda w: ["export", *TINY, "-o", "no_such_key=1",
                                                "--out", str(w / "out")]),
    Fault("export --checkpoint missing file", lambda w: ["export", *TINY, "--checkpoint",
                                                         str(w / "nope.pt"), "--out",
                                                         str(w / "out")]),
    Fault("export --checkpoint a text file", lambda w: ["export", *TINY, "--checkpoint",
                                                        str(w / "ck.pt"), "--out",
                                                        str(w / "out")],
          lambda w: (w / "ck.pt").write_text("hello")),
    Fault("export --checkpoint with a pickled shell command",
          lambda w: ["export", *TINY, "--checkpoint", str(w / "evil.pt"), "--out",
                     str(w / "out")], _evil_checkpoint),
    Fault("inspect-checkpoint on a directory", lambda w: ["inspect-checkpoint", str(w)], out=None),
    Fault("model-info --N -1", lambda w: ["model-info", "--T", "2", "--N", "-1"], out=None),
    # later steps
    Fault("calibrate --clips 0", lambda w: ["calibrate", "--bucket", str(w / "bucket" /
                                             "T2_N2_42x56"), "--input", str(SCENE), "--clips",
                                            "0", "--out", str(w / "out" / "c.npz")],
          lambda w: copy_bucket(w)),
    Fault("calibrate from a scene with too few views",
          lambda w: ["calibrate", "--bucket", str(w / "bucket" / "T2_N2_42x56"), "--input",
                     str(w / "scene"), "--out", str(w / "out" / "c.npz")],
          lambda w: (copy_bucket(w), [shutil.rmtree(p) if p.is_dir() else p.unlink()
                                      for p in (copy_scene(w) / "images").glob("time_*/view[123].png")])),
    Fault("quantize --int8 without a calibration set",
          lambda w: ["quantize", "--int8", "--bucket", str(w / "bucket" / "T2_N2_42x56")],
          lambda w: copy_bucket(w), out=None),
    Fault("build-engine with no precision flag",
          lambda w: ["build-engine", "--dry-run", "--bucket", str(w / "bucket")],
          lambda w: copy_bucket(w), out=None),
    Fault("build-engine --workspace abc",
          lambda w: ["build-engine", "--fp32", "--dry-run", "--workspace", "abc", "--bucket",
                     str(w / "bucket")], lambda w: copy_bucket(w), out=None),
    Fault("check --bucket that is a file", lambda w: ["check", "--bucket", str(w / "f")],
          lambda w: (w / "f").write_text("x"), out=None),
    Fault("bench --backend nonsense",
          lambda w: ["bench", "--bucket", str(w / "bucket" / "T2_N2_42x56"), "--backend",
                     "nonsense", "--repeats", "1"], lambda w: copy_bucket(w), out=None),
    Fault("export-triton from a non-bucket",
          lambda w: ["export-triton", "--bucket", str(w), "--out", str(w / "out")]),
    Fault("quantize --fp16 on a truncated model.onnx",
          lambda w: ["quantize", "--fp16", "--bucket", str(w / "bucket" / "T2_N2_42x56")],
          lambda w: (copy_bucket(w) / "model.onnx").write_bytes(
              (copy_bucket(w) / "model.onnx").read_bytes()[:5000]), out=None),
    Fault("check --profiles that is not JSON",
          lambda w: ["check", "--bucket", str(w / "bucket" / "T2_N2_42x56"), "--profiles",
                     str(w / "p.json"), "--out", str(w / "out")],
          lambda w: (copy_bucket(w), (w / "p.json").write_text("{fp16: loose}"))),
    Fault("export --T 4,x", lambda w: ["export", *TINY[:2], "--T", "4,x", "--N", "2",
                                       "--out", str(w / "out")]),
    Fault("infer --t0 -1", lambda w: infer(w, "--t0", "-1"),
          lambda w: (copy_scene(w), copy_bucket(w))),
    Fault("infer --engine without TensorRT's runtime or a GPU",
          lambda w: ["infer", "--engine", str(w / "bucket"), "--input", str(SCENE), "--T", "2",
                     "--N", "2", "--out", str(w / "out")], lambda w: copy_bucket(w)),
    Fault("export-triton --out that is a file",
          lambda w: ["export-triton", "--bucket", str(w / "bucket"), "--out", str(w / "f"),
                     "--no-trt-model"],
          lambda w: (copy_bucket(w), (w / "f").write_text("x")), out=None),
    Fault("serve --repo that does not exist",
          lambda w: ["serve", "--repo", str(w / "nope"), "--timeout", "20"], out=None),
    Fault("calibrate --clips beyond the sequence",
          lambda w: ["calibrate", "--bucket", str(w / "bucket" / "T2_N2_42x56"), "--input",
                     str(SCENE), "--clips", "500", "--out", str(w / "out" / "c.npz")],
          lambda w: copy_bucket(w)),
    # issue #21: serving, streaming
    Fault("serve: serving.json trt_plugins outside the repository",
          lambda w: ["serve", "--repo", str(w / "repo"), "--timeout", "20"],
          lambda w: _edit_index(w, lambda d: d["buckets"][0].update(
              trt_plugins="../" * 40 + "tmp/x.so")), out=None),
    Fault("serve: serving.json model name ../../etc",
          lambda w: ["serve", "--repo", str(w / "repo"), "--timeout", "20"],
          lambda w: _edit_index(w, lambda d: d["buckets"][0].update(pipeline="../../etc")),
          out=None),
    Fault("serve: a garbled config.pbtxt",
          lambda w: ["serve", "--repo", str(w / "repo"), "--timeout", "20"], _garble_config,
          out=None),
    Fault("serve: a repository graph edited in place",
          lambda w: ["serve", "--repo", str(w / "repo"), "--timeout", "20"], _flip_repo_graph,
          out=None),
    Fault("serve: a folder that is not a repository",
          lambda w: ["serve", "--repo", str(w), "--timeout", "20"], out=None),
    Fault("export-triton with $VGGT_MV_PLUGINS a text file",
          lambda w: ["export-triton", "--bucket", str(w / "bucket"), "--out", str(w / "out")],
          lambda w: (copy_bucket(w), (w / "lib.so").write_text("text")),
          env={"VGGT_MV_PLUGINS": "lib.so"}),
    Fault("infer --stream beside a killed stream's .partial-PID folder", lambda w: stream(w),
          lambda w: (copy_scene(w), copy_bucket(w),
                     (w / f".out.partial-{_dead_pid()}" / "depth").mkdir(parents=True)),
          expect="ok"),
    Fault("infer --stream on time_00,01,05,06,10,11", lambda w: stream(w),
          lambda w: (copy_bucket(w), _gapped_scene(w)), expect="ok"),
    # issue #21, this round: signals, links, full disks, libraries and graphs not ours
    Fault("SIGTERM during export", lambda w: ["export", *TINY, "--out", str(w / "out")],
          signal_after=6.0, says="interrupted by SIGTERM during `export`"),
    Fault("SIGTERM during infer --stream (plugin graph)",
          lambda w: ["infer", "--onnx", str(w / "bucket"), "--graph", "model.plugins.onnx",
                     "--input", str(w / "scene"), "--N", "2", "--stream", "--loops", "400",
                     "--out", str(w / "out")],
          lambda w: (copy_scene(w), copy_bucket(w)), signal_after=6.0,
          says="interrupted by SIGTERM during `infer`"),
    Fault("--out is a link to an earlier output", lambda w: infer(w, "--overwrite"),
          lambda w: (copy_scene(w), copy_bucket(w), _earlier_output(w / "run_07"),
                     (w / "out").symlink_to("run_07")), expect="ok",
          check=lambda w: (w / "out").is_symlink() and not (w / "run_07" / "old.txt").exists()
          and not list(w.glob(".out.old-*"))),
    Fault("infer --out on a full disk", lambda w: infer(w),
          lambda w: (copy_scene(w), copy_bucket(w)), env={"VGGT_MV_TEST_DISK_FULL_AT": "outputs"},
          says="disk full writing"),
    Fault("build-engine --dry-run with a library that is not ours (libz)",
          lambda w: ["build-engine", "--fp16", "--dry-run", "--bucket", str(w / "bucket"),
                     "--plugins", str(w / "libz.so")],
          lambda w: (copy_bucket(w), _copy_a_system_library(w / "libz.so")), out=None,
          says="holds no vggt_mv plugin creators",
          skip=lambda: None if _system_library() else "no libz found to stand in"),
    Fault("check on a bit-flipped graph",
          lambda w: ["check", "--bucket", str(w / "bucket" / "T2_N2_42x56"), "--backend",
                     "onnxrt:model.onnx", "--out", str(w / "out")],
          lambda w: _flip_middle(copy_bucket(w) / "model.onnx"), says="does not match the sha256"),
    Fault("check --backend tensorrt without TensorRT's runtime",
          lambda w: ["check", "--bucket", str(w / "bucket" / "T2_N2_42x56"), "--backend",
                     "tensorrt", "--out", str(w / "out")], lambda w: copy_bucket(w),
          says="cannot run"),
    # issue #21: view videos (infer --stream and calibrate share one reader and rule)
    Fault("view videos: infer --stream, view1.avi cut at 45%", lambda w: stream(
        w, scene="videos"), lambda w: (copy_bucket(w), _cut(view_videos(w) / "view1.avi")),
        skip=_no_cv2),
    Fault("view videos: infer --stream --shortest, view1.avi cut at 45%", lambda w: stream(
        w, "--shortest", scene="videos"), expect="ok", skip=_no_cv2,
        setup=lambda w: (copy_bucket(w), _cut(view_videos(w) / "view1.avi"))),
    Fault("view videos: calibrate, view1.avi cut at 45%", calibrate_videos,
          lambda w: (copy_bucket(w), _cut(view_videos(w) / "view1.avi")), skip=_no_cv2,
          scratch=True),
    Fault("view videos: infer --stream, a truncated view0.mp4", lambda w: stream(
        w, scene="videos"), lambda w: (copy_bucket(w), _cut(view_videos(
            w, suffix=".mp4", fourcc="mp4v") / "view0.mp4")), skip=_no_cv2),
    Fault("view videos: infer --stream, 8 and 5 frames", lambda w: stream(w, scene="videos"),
          lambda w: (copy_bucket(w), view_videos(w, lengths=[8, 5])), skip=_no_cv2),
    Fault("view videos: calibrate, 8 and 5 frames", calibrate_videos,
          lambda w: (copy_bucket(w), view_videos(w, lengths=[8, 5])), skip=_no_cv2,
          scratch=True),
    Fault("view videos: calibrate, view0.mkv beside view0.avi", calibrate_videos,
          lambda w: (copy_bucket(w), view_videos(w), view_videos(w, views=(0,),
                                                                 suffix=".mkv")),
          skip=_no_cv2, scratch=True),
    Fault("view videos: infer --stream, view0.mkv beside view0.avi",
          lambda w: stream(w, scene="videos"),
          lambda w: (copy_bucket(w), view_videos(w), view_videos(w, views=(0,),
                                                                 suffix=".mkv")),
          skip=_no_cv2),
    Fault("view videos: infer --stream, 30 and 10 fps", lambda w: stream(w, scene="videos"),
          lambda w: (copy_bucket(w), view_videos(w), view_videos(w, views=(0,), fps=30)),
          skip=_no_cv2),
    Fault("view videos: calibrate, frame sizes 112x84 and 224x168", calibrate_videos,
          lambda w: (copy_bucket(w), view_videos(w, size=(224, 168)),
                     view_videos(w, views=(0,))), skip=_no_cv2, scratch=True),
    Fault("view videos: calibrate --out outside the bucket", calibrate_videos,
          lambda w: (copy_bucket(w), view_videos(w)), expect="ok", ok_file="out/c.npz",
          skip=_no_cv2, scratch=True),
    Fault("view videos: infer --stream, frame 5 of view1.avi damaged in place",
          lambda w: stream(w, scene="videos"),
          lambda w: (copy_bucket(w), _damage_frame(view_videos(w) / "view1.avi")),
          skip=_no_cv2),
    Fault("view videos: calibrate, frame 5 of view1.avi damaged in place", calibrate_videos,
          lambda w: (copy_bucket(w), _damage_frame(view_videos(w) / "view1.avi")),
          skip=_no_cv2, scratch=True),
    Fault("view videos: infer without --stream", lambda w: infer(w, scene="videos"),
          lambda w: (copy_bucket(w), view_videos(w)), skip=_no_cv2),
    Fault("bench --out the bucket's own model.onnx",
          lambda w: ["bench", "--bucket", str(w / "bucket" / "T2_N2_42x56"), "--repeats", "1",
                     "--out", str(w / "bucket" / "T2_N2_42x56" / "model.onnx")],
          lambda w: copy_bucket(w), out=None, says="is an artifact of the bucket",
          check=lambda w: (w / "bucket" / "T2_N2_42x56" / "model.onnx").read_bytes()[:1] != b"{"),
    Fault("check --out the bucket itself",
          lambda w: ["check", "--bucket", str(w / "bucket" / "T2_N2_42x56"), "--out",
                     str(w / "bucket" / "T2_N2_42x56")], lambda w: copy_bucket(w), out=None,
          says="which this run reads", check=lambda w: (w / "bucket" / "T2_N2_42x56" /
                                                 "manifest.json").is_file()),
    Fault("export-triton --out the bucket's folder",
          lambda w: ["export-triton", "--bucket", str(w / "bucket"), "--out", str(w / "bucket"),
                     "--no-trt-model"], lambda w: copy_bucket(w), out=None,
          says="which this run reads",
          check=lambda w: (w / "bucket" / "T2_N2_42x56" / "manifest.json").is_file()),
    Fault("export-triton --out a folder of the user's",
          lambda w: ["export-triton", "--bucket", str(w / "bucket"), "--out", str(w / "photos"),
                     "--no-trt-model"],
          lambda w: (copy_bucket(w), (w / "photos").mkdir(), (w / "photos" / "a.jpg").write_text("x")),
          out=None, says="not an earlier repository",
          check=lambda w: (w / "photos" / "a.jpg").is_file()),
    Fault("infer --stream --out . --overwrite (the folder holding the input)",
          lambda w: stream(w)[:-1] + [str(w), "--overwrite"],
          lambda w: (copy_scene(w), copy_bucket(w)), out=None, says="which this run reads",
          check=lambda w: (w / "scene" / "images").is_dir()),
    Fault("infer --server with an ftp:// URL",
          lambda w: ["infer", "--server", "ftp://127.0.0.1:1", "--input", str(SCENE), "--out",
                     str(w / "out")]),
]


def run_fault(f: Fault, work: Path) -> dict:
    why = f.skip()
    if why:
        return {"fault": f.name, "exit": None, "verdict": "skipped", "message": why,
                "leftovers": [], "seconds": 0.0}
    w = work / f.name.replace(" ", "_").replace("/", "_")[:60]
    w.mkdir(parents=True)
    f.setup(w)
    env = dict(os.environ, **f.env)
    if f.scratch:  # a scratch folder the step must remove, success or not
        (w / "tmp").mkdir()
        env["TMPDIR"] = str(w / "tmp")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *f.args(w)], cwd=w,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if f.signal_after is not None:
        time.sleep(f.signal_after)
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    text = (err or "") + (out or "")
    lines = [ln for ln in (err or out or "").splitlines() if ln.strip()
             and not ln.startswith(("warning: no checkpoint", "built "))]
    first = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
    stray = [p.name for p in w.rglob(".*partial-*")] + [p.name for p in w.rglob("*.tmp")]
    # calibrate's frames of view videos belong in no bucket, and its scratch is removed
    stray += [str(p.relative_to(w)) for p in w.rglob("calib_frames")]
    if f.scratch:
        stray += [str(p.relative_to(w)) for p in (w / "tmp").iterdir()]
    leftovers = ([f.out] if f.out and (w / f.out).exists() else []) + stray
    pwned = (w / "PWNED").exists()
    if f.expect == "ok":
        good = (proc.returncode == 0 and "Traceback" not in text and not stray
                and (w / f.ok_file).is_file())
        verdict = "ok" if good else "BAD"
    else:
        good = proc.returncode not in (0, None) and "Traceback" not in text and not leftovers
        verdict = "refused" if good else "BAD"
    if verdict != "BAD" and ((f.says and f.says not in text) or not f.check(w)):
        verdict = "BAD"  # a refusal that does not say why, or a result that is not right
    if pwned:
        verdict = "BAD (pickle executed)"
    if os.path.isdir(w / "ro"):
        os.chmod(w / "ro", 0o755)
    return {"fault": f.name, "exit": proc.returncode, "verdict": verdict,
            "message": first.strip()[:160], "leftovers": leftovers,
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="write the rows as JSON here")
    ap.add_argument("-k", default="", help="only faults whose name contains this")
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="fault_sweep_"))
    work.mkdir(parents=True, exist_ok=True)
    base = work / "base"
    BASE.append(base)
    if not (base / "T2_N2_42x56" / "manifest.json").is_file():
        r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "export", *TINY,
                            "--no-validate", "--out", str(base)], capture_output=True, text=True)
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            return 2
    rows = []
    chosen = [f for f in FAULTS if a.k in f.name]
    for i, f in enumerate(chosen, 1):
        row = run_fault(f, work / "runs")
        rows.append(row)
        print(f"[{i:2d}/{len(chosen)}] {row['verdict']:<8} exit {row['exit']!s:>4}  "
              f"{f.name}: {row['message']}", flush=True)
    bad = [r for r in rows if r["verdict"].startswith("BAD")]
    print(f"\n{len(rows)} faults: {sum(r['verdict'] == 'refused' for r in rows)} refused "
          f"clearly, {sum(r['verdict'] == 'ok' for r in rows)} absorbed (right result), "
          f"{len(bad)} BAD, {sum(r['verdict'] == 'skipped' for r in rows)} skipped")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
