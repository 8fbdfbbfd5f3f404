"""`export-triton`: a Triton model repository from exported bucket folders.

Per bucket (model names from ``model_names``):

- ``vggt_mv_<bucket>``: Python backend running the toolkit's runtime (preprocess ->
  bucket session -> postprocess); clients send uint8 frames [T, N, H, W, C] and receive
  the raw outputs plus cameras, points, confidence mask and colours. Dynamic batching and
  instance groups come from ``RepositoryOptions``. Self-contained: runtime/ and the
  bucket files are copied into the model's version folder.
- ``vggt_mv_<bucket>_onnx``: onnxruntime backend on the portable graph (no plugin).
- ``vggt_mv_<bucket>_trt``: TensorRT backend on the bucket's engine; the plugin library
  is copied next to it and loaded by ``serve`` through the backend config (or LD_PRELOAD).
  Only written when the bucket holds an engine (engines are built on the target GPU).

Tensor names, shapes and dtypes come from the bucket manifest (runtime/layout.py). No
ensemble or router model: the client picks the bucket's model from ``serving.json``
(one look-up), while a router would add a BLS hop and a second copy of every frame.
The whole repository is written into a scratch folder and swapped in at the end.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from runtime.layout import (EXTERNAL_DATA_SUFFIX, MANIFEST, PORTABLE_GRAPH, PRECISIONS,
                            Bucket, ManifestError, atomic_directory, atomic_write_json,
                            atomic_write_text, bucket_folders, engine_filenames,
                            file_entry, graph_records, is_bucket, load_manifest,
                            replaceable_folder, sha256_file, sidecar_path_for,
                            verify_artifacts)
from runtime.errors import RuntimeDataError

from .pbtxt import ConfigError, Enum, to_pbtxt, triton_dtype

__all__ = ["RepositoryOptions", "RepositoryError", "export_repository", "model_names",
           "pipeline_config", "onnx_config", "tensorrt_config", "pipeline_outputs",
           "INDEX", "FRAMES_INPUT", "DERIVED_OUTPUTS", "TOOLKIT_DIR", "BUCKET_DIR"]

INDEX = "serving.json"            # repository index: bucket -> model names (client routing)
FRAMES_INPUT = "frames"           # the Python model's input: uint8 [T, N, H, W, C]
TOOLKIT_DIR = "runtime"           # runtime/ copied into <pipeline>/1/
BUCKET_DIR = "bucket"             # bucket files copied into <pipeline>/1/
PLUGIN_DIR = "plugins"            # <trt model>/plugins/libvggt_mv_plugins.so
ROOT = Path(__file__).resolve().parents[1]


class RepositoryError(ValueError):
    pass


@dataclass
class RepositoryOptions:
    max_batch_size: int = 4             # requests the dynamic batcher hands one execute()
    max_queue_delay_us: int = 2000      # how long it waits to fill a batch
    instances: int = 1                  # Python-model instances (processes)
    kind: str = "KIND_CPU"              # Python-model placement (KIND_GPU with backend trt)
    backend: str = "onnx"               # what the Python model runs: onnx or trt
    trt_instances: int = 1
    precision: str | None = None        # engine for the TensorRT model (default: best found)
    plugins: Path | None = None         # libvggt_mv_plugins.so for the TensorRT model
    include_onnx: bool = True
    include_trt: bool = True
    conf_percentile: float | None = 50.0
    threads: int | None = None          # onnxruntime intra-op threads per instance

    def check(self) -> "RepositoryOptions":
        problems = []
        if self.max_batch_size < 1:
            problems.append("--max-batch-size must be >= 1")
        if self.max_queue_delay_us < 0:
            problems.append("--max-queue-delay-us must be >= 0")
        if self.instances < 1 or self.trt_instances < 1:
            problems.append("instance counts must be >= 1")
        if self.kind not in ("KIND_CPU", "KIND_GPU", "KIND_AUTO"):
            problems.append(f"--kind must be KIND_CPU, KIND_GPU or KIND_AUTO, got {self.kind}")
        if self.backend not in ("onnx", "trt"):
            problems.append(f"--backend must be onnx or trt, got {self.backend}")
        if self.precision is not None and self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {PRECISIONS}")
        if self.plugins is not None and not Path(self.plugins).is_file():
            problems.append(f"plugin library {self.plugins} does not exist")
        elif self.plugins is not None:
            from runtime.trt.build import not_a_shared_library  # noqa: PLC0415

            why = not_a_shared_library(self.plugins)
            if why:
                problems.append(f"plugin library {self.plugins} {why} (from --plugins or "
                                f"$VGGT_MV_PLUGINS)")
        if problems:
            raise RepositoryError("; ".join(problems))
        return self


def model_names(bucket: Bucket) -> dict[str, str]:
    base = f"vggt_mv_{bucket.name}"
    return {"pipeline": base, "onnx": f"{base}_onnx", "trt": f"{base}_trt"}


# ----------------------------------------------------------------------- tensor specs
def _tensor(name: str, dtype: str, dims: Sequence[int]) -> dict[str, Any]:
    return {"name": name, "data_type": Enum(triton_dtype(dtype)), "dims": list(dims)}


def _graph_io(manifest: dict[str, Any]) -> tuple[list, list]:
    """The graph's own I/O, batch axis included (engines and graphs have a fixed batch,
    so these models use max_batch_size 0 and full shapes)."""
    ins = [_tensor(k, v["dtype"], v["shape"]) for k, v in manifest["inputs"].items()]
    outs = [_tensor(k, v["dtype"], v["shape"]) for k, v in manifest["outputs"].items()]
    return ins, outs


def points_source(manifest: dict[str, Any]) -> str:
    outs = manifest["outputs"]
    return "depth" if "depth" in outs and "pose_enc" in outs else "head"


# What the Python model adds to the raw outputs (runtime.Prediction's fields).
DERIVED_OUTPUTS = ("extrinsics", "intrinsics", "points", "confidence", "conf_mask", "colors")


def pipeline_outputs(manifest: dict[str, Any]) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, dims without the batch axis) of the Python model's outputs: the
    raw outputs (the manifest's batch-1 axis becomes Triton's batch axis) and what
    runtime.Predictor derives from them."""
    b = Bucket.from_dict(manifest["bucket"])
    T, N, H, W = b.T, b.N, b.H, b.W
    out = {k: (v["dtype"], list(v["shape"][1:])) for k, v in manifest["outputs"].items()}
    if "pose_enc" in manifest["outputs"]:
        out["extrinsics"] = ("float32", [T, N, 3, 4])
        out["intrinsics"] = ("float32", [T, N, 3, 3])
    out["points"] = ("float32", [T, N, H, W, 3])
    out["confidence"] = ("float32", [T, N, H, W])
    out["conf_mask"] = ("bool", [T, N, H, W])
    out["colors"] = ("uint8", [T, N, H, W, 3])
    return out


def _params(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in d.items()
            if v is not None]


def pipeline_config(manifest: dict[str, Any], opts: RepositoryOptions,
                    extra_sys_path: str = "", plugins: str = "") -> str:
    b = Bucket.from_dict(manifest["bucket"])
    if b.batch != 1 or b.single_view or b.ext_mask:
        raise RepositoryError(f"bucket {b.name}: the Python model serves multi-view, batch-1 "
                              f"buckets without ext_mask (use its _onnx / _trt model)")
    outs = pipeline_outputs(manifest)
    cfg = {
        "name": model_names(b)["pipeline"], "backend": "python",
        "max_batch_size": opts.max_batch_size,
        # Source frames of any size and RGB/RGBA: the model resizes them like local infer.
        "input": [_tensor(FRAMES_INPUT, "uint8", [b.T, b.N, -1, -1, -1])],
        "output": [_tensor(k, dt, dims) for k, (dt, dims) in outs.items()],
        "dynamic_batching": {"max_queue_delay_microseconds": opts.max_queue_delay_us},
        "instance_group": [{"kind": Enum(opts.kind), "count": opts.instances}],
        "parameters": _params({
            "bucket": b.name, "backend": opts.backend,
            "precision": opts.precision or "",
            "points_from": points_source(manifest),
            "conf_percentile": "none" if opts.conf_percentile is None
            else opts.conf_percentile,
            "threads": opts.threads or "",
            "plugins": plugins,           # plugin library for backend trt, relative path
            # PYTHONPATH does not reach the Python-backend stub: model.py adds these.
            "extra_sys_path": extra_sys_path,
        }),
    }
    return to_pbtxt(cfg)


def onnx_config(manifest: dict[str, Any]) -> str:
    b = Bucket.from_dict(manifest["bucket"])
    ins, outs = _graph_io(manifest)
    return to_pbtxt({"name": model_names(b)["onnx"], "platform": "onnxruntime_onnx",
                     "max_batch_size": 0, "default_model_filename": PORTABLE_GRAPH,
                     "input": ins, "output": outs,
                     "instance_group": [{"kind": Enum("KIND_AUTO"), "count": 1}]})


def tensorrt_config(manifest: dict[str, Any], opts: RepositoryOptions) -> str:
    b = Bucket.from_dict(manifest["bucket"])
    ins, outs = _graph_io(manifest)
    return to_pbtxt({"name": model_names(b)["trt"], "platform": "tensorrt_plan",
                     "max_batch_size": 0, "default_model_filename": "model.plan",
                     "input": ins, "output": outs,
                     "instance_group": [{"kind": Enum("KIND_GPU"),
                                         "count": opts.trt_instances}]})


# ----------------------------------------------------------------------------- writer
_FICLONE = 0x40049409  # linux/fs.h: share the source's blocks copy-on-write


def _place(src: Path, dst: Path) -> None:
    """A copy of its own (never a hard link: editing the repository's file in place would
    change the bucket's). A copy-on-write clone where the file system has them (btrfs,
    XFS: instant, no extra space for GB engines), else a plain copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # noqa: PLC0415 - POSIX only

        with open(src, "rb") as fi, open(dst, "wb") as fo:
            fcntl.ioctl(fo.fileno(), _FICLONE, fi.fileno())
        shutil.copystat(src, dst)
    except (OSError, ImportError):
        shutil.copy2(src, dst)


def _check_plugin_matches_engine(engine: Path, plugin: Path) -> None:
    """The library must be the one the engine was built against (its sidecar's sha256):
    another build would load and compute something else inside the server."""
    side = sidecar_path_for(engine)
    if not side.is_file():
        return
    try:
        record = json.loads(side.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("plugins") or {}, dict):
            raise ValueError("not a sidecar object")
        want = (record.get("plugins") or {}).get("sha256")
    except (OSError, ValueError) as e:
        raise RepositoryError(f"engine sidecar {side} is unreadable ({e}); rebuild the "
                              f"engine with `python cli.py build-engine`") from e
    if want and sha256_file(plugin) != want:
        raise RepositoryError(f"plugin library {plugin} is not the one {engine.name} was "
                              f"built with ({side.name} records sha256 {want[:12]}...); give "
                              f"that library with --plugins, or rebuild the engine with this "
                              f"one")


def _copy_toolkit(dst: Path) -> None:
    shutil.copytree(ROOT / "runtime", dst / TOOLKIT_DIR,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"))


def _pick_engine(folder: Path, precision: str | None) -> Path | None:
    """Full TensorRT's engine (Triton's TensorRT backend), native attention first."""
    order = [precision] if precision else ["fp16", "int8", "fp32"]
    for p in order:
        for name in engine_filenames(p, "trt"):
            if (folder / name).is_file():
                return folder / name
    return None


def _needs_plugins(engine: Path) -> bool:
    """From the engine's sidecar: a native engine of a dense bucket needs no library.
    Without a readable sidecar, assume it does (the safe side: the server loads it)."""
    from runtime.trt.sidecar import engine_needs_plugins  # noqa: PLC0415

    try:
        side = json.loads(sidecar_path_for(engine).read_text())
    except (OSError, ValueError):
        return True
    return engine_needs_plugins(side) if isinstance(side, dict) else True


def _bucket_files(folder: Path, graph: str) -> list[Path]:
    files = [folder / MANIFEST, folder / graph]
    data = folder / (graph + EXTERNAL_DATA_SUFFIX)
    return files + ([data] if data.is_file() else [])


def _readme(entries: list[dict[str, Any]], opts: RepositoryOptions) -> str:
    lines = ["# Triton model repository (written by `python cli.py export-triton`)", "",
             "Start it with `python cli.py serve --repo THIS_FOLDER`, or with any",
             "tritonserver: `tritonserver --model-repository THIS_FOLDER`.", "",
             "| bucket | Python model (frames -> poses, depth, points) | onnxruntime | TensorRT |",
             "| --- | --- | --- | --- |"]
    for e in entries:
        lines.append(f"| {e['bucket']} | {e['pipeline']} | {e.get('onnx') or '-'} | "
                     f"{e.get('trt') or 'not written: ' + e.get('trt_skipped', '')} |")
    lines += [
        "", "## The plugin library (TensorRT models)", "",
        "The engines contain vggt_mv plugin layers, so `libvggt_mv_plugins.so` must be",
        "loaded into tritonserver before the engines are deserialized. It is copied to",
        f"`<model>_trt/{PLUGIN_DIR}/`. Either (Triton's TensorRT backend documents both):", "",
        "- backend config: `tritonserver --model-repository REPO "
        "--backend-config=tensorrt,plugins=/abs/path/libvggt_mv_plugins.so` (several",
        "  libraries separated by `;`); `python cli.py serve` passes this itself; or",
        "- `LD_PRELOAD=/abs/path/libvggt_mv_plugins.so tritonserver --model-repository REPO`.",
        "", "Engines only run on the GPU model and TensorRT version they were built with:",
        "build them with the TensorRT release inside your Triton release (`build-engine`",
        "on that machine); the `.engine.json` sidecar records what an engine needs.", "",
        "## Python model", "",
        f"Input `{FRAMES_INPUT}`: uint8 [batch, T, N, height, width, 3 or 4] (decoded",
        "frames of any size; resized and cropped as local `infer` does). Outputs: the",
        "model's raw outputs plus `extrinsics`, `intrinsics`, `points`, `confidence`,",
        "`conf_mask`, `colors`. Dynamic batching: max_batch_size "
        f"{opts.max_batch_size}, queue delay {opts.max_queue_delay_us} us; "
        f"{opts.instances} instance(s), {opts.kind}. It needs numpy<2 in the server's",
        "Python environment (see the toolkit README, Serving).", ""]
    return "\n".join(lines)


def export_repository(buckets: Iterable[str | Path], out: str | Path,
                      opts: RepositoryOptions | None = None,
                      log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Write the repository at ``out`` (replacing a previous one only on success).
    Returns the index written to ``serving.json``."""
    opts = (opts or RepositoryOptions()).check()
    folders = bucket_folders(list(buckets))
    if not folders:
        raise RepositoryError("give at least one --bucket")
    manifests: list[tuple[Path, dict[str, Any]]] = []
    for f in folders:
        if not is_bucket(f):
            raise RepositoryError(f"{f} is not an exported bucket (no {MANIFEST}); run "
                                  f"`python cli.py export` first")
        m = load_manifest(f)
        if not (f / PORTABLE_GRAPH).is_file():
            raise RepositoryError(f"{f} has no {PORTABLE_GRAPH}; re-export the bucket")
        try:  # a damaged graph is named here, not by the server's model loader later
            verify_artifacts(f, graph_records(f, m, PORTABLE_GRAPH))
        except ManifestError as e:
            raise RepositoryError(str(e)) from e
        manifests.append((f, m))
    names = [Bucket.from_dict(m["bucket"]).name for _, m in manifests]
    if len(set(names)) != len(names):
        raise RepositoryError(f"the same bucket given twice: {names}")
    plugin = Path(opts.plugins).resolve() if opts.plugins else None
    try:  # replaced whole: never a bucket it reads, nor a folder of the user's
        replaceable_folder(out, marker="serving.json", keep=folders, what="repository")
    except RuntimeDataError as e:
        raise RepositoryError(str(e)) from e

    entries: list[dict[str, Any]] = []
    with atomic_directory(out) as tmp:
        for folder, m in manifests:
            b = Bucket.from_dict(m["bucket"])
            mn = model_names(b)
            entry: dict[str, Any] = {"bucket": b.name, "bucket_spec": b.to_dict(),
                                     "pipeline": mn["pipeline"],
                                     "points_from": points_source(m),
                                     "outputs": {k: {"dtype": dt, "dims": d} for k, (dt, d)
                                                 in pipeline_outputs(m).items()},
                                     # what serve checks beyond the manifest's graphs
                                     "files": []}
            # Python model: runtime/ + bucket files + model.py, self-contained.
            version = tmp / mn["pipeline"] / "1"
            version.mkdir(parents=True)
            _copy_toolkit(version)
            shutil.copy2(Path(__file__).with_name("triton_model.py"), version / "model.py")
            engine = _pick_engine(folder, opts.precision) if opts.backend == "trt" else None
            if opts.backend == "trt" and engine is None:
                raise RepositoryError(f"--backend trt: {folder} has no engine; run `python "
                                      f"cli.py build-engine` on the serving GPU first")
            for src in _bucket_files(folder, PORTABLE_GRAPH):
                _place(src, version / BUCKET_DIR / src.name)
            plugin_param = ""
            if engine is not None:
                _place(engine, version / BUCKET_DIR / engine.name)
                placed = [version / BUCKET_DIR / engine.name]
                side = sidecar_path_for(engine)
                if side.is_file():
                    _place(side, version / BUCKET_DIR / side.name)
                    placed.append(version / BUCKET_DIR / side.name)
                if plugin is not None and _needs_plugins(engine):
                    _check_plugin_matches_engine(engine, plugin)
                    # TrtSession loads it from here (relative to model.py's folder).
                    _place(plugin, version / PLUGIN_DIR / plugin.name)
                    placed.append(version / PLUGIN_DIR / plugin.name)
                    plugin_param = f"{PLUGIN_DIR}/{plugin.name}"
                entry["files"] += [file_entry(f, tmp) for f in placed]
            atomic_write_text(tmp / mn["pipeline"] / "config.pbtxt",
                              pipeline_config(m, opts, plugins=plugin_param))
            log(f"{mn['pipeline']}: Python backend ({opts.backend}), max batch "
                f"{opts.max_batch_size}, {opts.instances} x {opts.kind}")
            if opts.include_onnx:
                v = tmp / mn["onnx"] / "1"
                for src in _bucket_files(folder, PORTABLE_GRAPH)[1:]:
                    _place(src, v / src.name)
                atomic_write_text(tmp / mn["onnx"] / "config.pbtxt", onnx_config(m))
                entry["onnx"] = mn["onnx"]
                log(f"{mn['onnx']}: onnxruntime, {PORTABLE_GRAPH}")
            if opts.include_trt:
                eng = _pick_engine(folder, opts.precision)
                if eng is None:
                    entry["trt_skipped"] = ("no engine in the bucket (run `python cli.py "
                                            "build-engine` on the serving GPU, then "
                                            "export-triton again)")
                    log(f"{mn['trt']}: skipped, {entry['trt_skipped']}")
                else:
                    _place(eng, tmp / mn["trt"] / "1" / "model.plan")
                    atomic_write_text(tmp / mn["trt"] / "config.pbtxt",
                                      tensorrt_config(m, opts))
                    entry["trt"] = mn["trt"]
                    entry["trt_engine"] = eng.name
                    # serve checks the repository's copies against these (serving/verify)
                    entry["files"].append(file_entry(tmp / mn["trt"] / "1" / "model.plan", tmp))
                    if plugin is not None and _needs_plugins(eng):
                        _check_plugin_matches_engine(eng, plugin)
                        _place(plugin, tmp / mn["trt"] / PLUGIN_DIR / plugin.name)
                        entry["trt_plugins"] = f"{mn['trt']}/{PLUGIN_DIR}/{plugin.name}"
                        entry["files"].append(file_entry(tmp / entry["trt_plugins"], tmp))
                    else:
                        entry["trt_plugins"] = None
                    log(f"{mn['trt']}: TensorRT, {eng.name}"
                        + (", no plugin library needed (native attention)"
                           if not _needs_plugins(eng) else
                           f", plugins {plugin.name}" if plugin else
                           ", no plugin library given (--plugins)"))
            entries.append(entry)
        index = {"format": 1, "buckets": entries,
                 "options": {k: (str(v) if isinstance(v, Path) else v)
                             for k, v in asdict(opts).items()}}
        atomic_write_json(tmp / INDEX, index)
        atomic_write_text(tmp / "README.md", _readme(entries, opts))
    return index


def load_index(repo: str | Path) -> dict[str, Any]:
    path = Path(repo) / INDEX
    if not path.is_file():
        raise RepositoryError(f"{repo} is not a repository written by export-triton (no "
                              f"{INDEX}); run `python cli.py export-triton` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RepositoryError(f"{path} is corrupt ({e}); export the repository again") from e


__all__ += ["load_index", "points_source", "ConfigError"]
