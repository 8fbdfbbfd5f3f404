"""The bucket folder: what a bucket is, what every artifact in it is called, how it is read
and how anything is written into it.

A bucket folder is the hand-off between the steps (export -> calib -> build-engine ->
runtime), so its shape lives here once and every step imports it: the names below are the
only place an artifact file name is spelled. Standard library only (runs on a Jetson
next to TensorRT, imported by export/ and calib/ as well).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping

from .errors import RuntimeDataError

__all__ = [
    "PRECISIONS", "MANIFEST", "PORTABLE_GRAPH", "PLUGIN_GRAPH", "BENCH", "CHECK_DIR",
    "TIMING_CACHE", "SIDECAR_SUFFIX", "EXTERNAL_DATA_SUFFIX",
    "portable_graph", "plugin_graph", "NATIVE_GRAPH", "native_graph", "ATTENTION_ROUTES",
    "graph_for_route", "route_of_graph", "graph_has_plugins", "ort_disabled_optimizers",
    "ENGINE_PATTERN", "ENGINE_TARGETS", "engine_filename", "engine_filenames", "sidecar_path_for",
    "precision_report", "ALL_GRAPHS",
    "Bucket", "BucketError", "ManifestError", "ManifestIO", "load_manifest", "is_bucket", "bucket_folders",
    "restore_hidden_bucket",
    "sha256_file", "sha256_bytes", "file_entry",
    "ArtifactIntegrityError", "verify_artifacts", "graph_records", "load_precision_report",
    "NO_VERIFY_ENV",
    "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
    "atomic_path", "atomic_directory", "recover_leftovers",
    "PathEscapeError", "inside",
]

# ------------------------------------------------------------------------- file names
PRECISIONS = ("fp32", "fp16", "int8")
MANIFEST = "manifest.json"
PORTABLE_GRAPH = "model.onnx"            # standard ops + vggt_mv.fn local functions
PLUGIN_GRAPH = "model.plugins.onnx"      # the same graph with TensorRT plugin nodes
NATIVE_GRAPH = "model.native.onnx"       # dense sites as ONNX Attention, sparse as plugins
EXTERNAL_DATA_SUFFIX = ".data"           # model.onnx.data, shared by both graphs when large
BENCH = "bench.json"
CHECK_DIR = "check"
TIMING_CACHE = "timing.cache"            # next to the bucket folders, shared by builds
SIDECAR_SUFFIX = ".json"                 # model.fp16.engine -> model.fp16.engine.json
ENGINE_PATTERN = "model.{precision}.engine"
# Engines by builder: "trt" (full TensorRT, on the device: servers, Jetsons) and "rtx"
# (TensorRT for RTX, ahead of time). Each library deserializes only its own engines, so
# both may sit in one bucket without replacing each other.
ENGINE_TARGETS = ("trt", "rtx")
RTX_ENGINE_PATTERN = "model.{precision}.rtx.engine"


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def portable_graph(precision: str = "fp32") -> str:
    """model.onnx (fp32), model.fp16.onnx, model.int8.onnx."""
    p = _check_precision(precision)
    return PORTABLE_GRAPH if p == "fp32" else f"model.{p}.onnx"


def plugin_graph(precision: str = "fp32") -> str:
    """model.plugins.onnx (fp32), model.fp16.plugins.onnx, model.int8.plugins.onnx: the
    graph build-engine builds each precision from."""
    p = _check_precision(precision)
    return PLUGIN_GRAPH if p == "fp32" else f"model.{p}.plugins.onnx"


def native_graph(precision: str = "fp32") -> str:
    """model.native.onnx (fp32), model.fp16.native.onnx, model.int8.native.onnx: every
    dense attention site one standard ONNX Attention node (export/native.py)."""
    p = _check_precision(precision)
    return NATIVE_GRAPH if p == "fp32" else f"model.{p}.native.onnx"


# How an engine serves its attention sites: "native" (TensorRT's own IAttention, from the
# native graph; sparse sites still plugins) or "plugin" (our plugins, from the plugin
# graph). Native first: it is what `--attention auto` prefers where the library has it.
ATTENTION_ROUTES = ("native", "plugin")


def graph_for_route(precision: str, route: str) -> str:
    if route not in ATTENTION_ROUTES:
        raise ValueError(f"attention route must be one of {ATTENTION_ROUTES}, got {route!r}")
    return native_graph(precision) if route == "native" else plugin_graph(precision)


def route_of_graph(graph: str) -> str | None:
    """"native" / "plugin" for the engine-building graphs, None for portable ones."""
    name = Path(graph).name
    if any(name == native_graph(p) for p in PRECISIONS):
        return "native"
    if any(name == plugin_graph(p) for p in PRECISIONS):
        return "plugin"
    return None


def graph_has_plugins(graph: str | Path, attention_sites: Mapping[str, int] | None) -> bool:
    """Whether a bucket graph holds plugin nodes, from its name and the manifest's site
    counts: plugin graphs always do (when the model has sites), native graphs only for
    sparse sites, portable graphs never."""
    route = route_of_graph(str(graph))
    sites = dict(attention_sites or {})
    if route == "plugin":
        return sum(sites.values()) > 0 if sites else True
    if route == "native":
        return sites.get("VggtSparseAttention", 0) > 0 if sites else True
    return False


def ort_disabled_optimizers(graph: str | Path) -> list[str]:
    """onnxruntime graph optimizers to switch off for a graph. The INT8 native graph:
    with it, onnxruntime 1.31 makes a QuantizeLinear (gemm_input_reshape_arg_q) whose
    INT8 output_dtype contradicts its UINT8 zero point and refuses its own rewrite
    ("output_dtype INT8 does not match y_zero_point type UINT8"); the portable and plugin
    INT8 graphs load with every optimizer."""
    return ["QDQPropagationTransformer"] if Path(graph).name == native_graph("int8") else []


# Every graph a bucket may hold, in the order reports list them.
ALL_GRAPHS = tuple(g for p in PRECISIONS
                   for g in (portable_graph(p), native_graph(p), plugin_graph(p)))


def engine_filename(precision: str, target: str = "trt", route: str = "plugin") -> str:
    """model.fp16.engine (full TensorRT) or model.fp16.rtx.engine (TensorRT for RTX); the
    native route adds .native (model.fp16.native.engine) so both routes' engines can sit
    in one bucket."""
    if target not in ENGINE_TARGETS:
        raise ValueError(f"engine target must be one of {ENGINE_TARGETS}, got {target!r}")
    if route not in ATTENTION_ROUTES:
        raise ValueError(f"attention route must be one of {ATTENTION_ROUTES}, got {route!r}")
    pattern = RTX_ENGINE_PATTERN if target == "rtx" else ENGINE_PATTERN
    name = pattern.format(precision=_check_precision(precision))
    if route == "native":
        name = name.replace(f"model.{precision}.", f"model.{precision}.native.", 1)
    return name


def engine_filenames(precision: str, target: str | None = None,
                     route: str | None = None) -> list[str]:
    """The engine names a bucket may hold for a precision: one target's, or (None) every
    target's, full TensorRT first; per target the native route first."""
    targets = ENGINE_TARGETS if target is None else (target,)
    routes = ATTENTION_ROUTES if route is None else (route,)
    return [engine_filename(precision, t, r) for t in targets for r in routes]


def sidecar_path_for(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def precision_report(mode: str) -> str:
    """precision_fp16.json / precision_int8.json written by calib/precision.py."""
    return f"precision_{_check_precision(mode)}.json"


# ---------------------------------------------------------------------------- bucket
class BucketError(RuntimeDataError):
    pass


@dataclass(frozen=True)
class Bucket:
    """One fixed (T, N, H, W) shape: TensorRT plugins and sparse patterns are specialised
    to it, so every shape a user runs is its own bucket folder named ``name``."""

    T: int
    N: int
    H: int = 518
    W: int = 518
    batch: int = 1
    single_view: bool = False
    ext_mask: bool = False

    @property
    def name(self) -> str:
        base = f"S{self.T}" if self.single_view else f"T{self.T}_N{self.N}"
        extra = "_mask" if self.ext_mask else ""
        batch = f"_B{self.batch}" if self.batch != 1 else ""
        return f"{base}_{self.H}x{self.W}{batch}{extra}"

    @property
    def views(self) -> int:
        return 1 if self.single_view else self.N

    @property
    def images_shape(self) -> tuple[int, ...]:
        if self.single_view:
            return (self.batch, self.T, 3, self.H, self.W)
        return (self.batch, self.T, self.N, 3, self.H, self.W)

    @property
    def mask_shape(self) -> tuple[int, ...]:
        s = self.images_shape
        return s[:-3] + s[-2:]

    def validate(self, patch_size: int = 14) -> "Bucket":
        problems = []
        if self.T < 1 or self.N < 1 or self.batch < 1:
            problems.append(f"T, N and batch must be >= 1 (got T={self.T}, N={self.N}, "
                            f"batch={self.batch})")
        if self.single_view and self.N != 1:
            problems.append("the single-view layout has N = 1")
        if (self.H % patch_size or self.W % patch_size or self.H < patch_size
                or self.W < patch_size):
            problems.append(f"height and width must be positive multiples of {patch_size} "
                            f"(got {self.H}x{self.W}; nearest: "
                            f"{max(1, round(self.H / patch_size)) * patch_size}x"
                            f"{max(1, round(self.W / patch_size)) * patch_size})")
        if problems:
            raise BucketError(f"invalid bucket {self.name}: " + "; ".join(problems))
        return self

    def describe(self) -> str:
        layout = f"S={self.T} single-view" if self.single_view else f"T={self.T}, N={self.N}"
        extra = ", ext_mask" if self.ext_mask else ""
        batch = f", batch {self.batch}" if self.batch != 1 else ""
        return f"{self.name} ({layout}, {self.H}x{self.W}{batch}{extra})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Bucket":
        """From a manifest's or sidecar's "bucket" (its "name" is derived, not read)."""
        try:
            return cls(int(d["T"]), int(d["N"]), int(d["H"]), int(d["W"]),
                       int(d.get("batch", 1)), bool(d.get("single_view", False)),
                       bool(d.get("ext_mask", False)))
        except (KeyError, TypeError, ValueError) as e:
            raise BucketError(f"not a bucket description: {dict(d)!r} ({e})") from e


# -------------------------------------------------------------------------- manifest
class ManifestError(RuntimeDataError):
    """manifest.json is unreadable or lacks what every step relies on."""


_MANIFEST_KEYS = ("bucket", "inputs", "outputs")


class ManifestIO:
    """The I/O of anything that holds a bucket's ``manifest`` (a dispatch entry, an
    onnxruntime session): names -> {shape, dtype}, in graph order."""

    manifest: dict[str, Any]

    @property
    def inputs(self) -> dict[str, dict[str, Any]]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> dict[str, dict[str, Any]]:
        return self.manifest["outputs"]


def is_bucket(folder: str | Path) -> bool:
    folder = Path(folder)
    if not folder.exists():
        restore_hidden_bucket(folder)
    return (folder / MANIFEST).is_file()


def restore_hidden_bucket(folder: str | Path) -> None:
    """A kill between the two renames of a bucket swap leaves the good bucket hidden as
    ``.NAME.old-PID`` and NAME missing, so every reader would say "no exported buckets":
    each one that looks for NAME puts it back first (or, when it cannot, names it)."""
    import logging  # noqa: PLC0415

    folder = Path(folder)
    if folder.exists() or not folder.parent.is_dir():
        return
    hidden: list[Path] = []
    try:
        hidden = [p for p in folder.parent.iterdir()
                  if p.name.startswith(f".{folder.name}.old-") and (p / MANIFEST).is_file()]
        if hidden:
            recover_leftovers(folder)
    except OSError as e:  # a read-only parent: the bucket stays hidden, so say where
        logging.getLogger("vggt_mv").warning(
            f"{hidden[0] if hidden else folder.parent} holds the bucket {folder.name} "
            f"hidden by an interrupted export, which could not be restored ({e}); rename "
            f"it back to {folder}")


def load_manifest(folder: str | Path) -> dict[str, Any]:
    """A bucket folder's manifest.json, checked for the keys every step reads."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        restore_hidden_bucket(folder)
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an exported bucket (no {MANIFEST}); run "
                                f"`python cli.py export` first")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path} is corrupt ({e}); re-export the bucket") from e
    if not isinstance(m, dict):
        raise ManifestError(f"{path} is not a JSON object; re-export the bucket")
    for key in _MANIFEST_KEYS:
        if key not in m:
            raise ManifestError(f"{path} has no {key!r}; re-export the bucket with "
                                f"`python cli.py export`")
    _check_manifest_agrees(path, m)
    return m


def _check_manifest_agrees(path: Path, m: Mapping[str, Any]) -> None:
    """The bucket a manifest describes and the input shapes it records (the graph's) are
    written together by export: when they disagree the file was edited, and every error
    downstream would blame the user's clip instead (and advise --pad, which fails alike)."""
    images = (m.get("inputs") or {}).get("images") if isinstance(m.get("inputs"), dict) else None
    if not isinstance(images, dict) or "shape" not in images:
        return
    try:
        want = list(Bucket.from_dict(m["bucket"]).images_shape)
        got = [int(d) for d in images["shape"]]
    except (BucketError, TypeError, ValueError) as e:
        raise ManifestError(f"{path} is inconsistent: its bucket or input shape cannot be read "
                            f"({e}); it was edited by hand: re-export the bucket") from e
    if got != want:
        raise ManifestError(
            f"{path} is inconsistent: its bucket {m['bucket']} means images {want}, but its "
            f"inputs record {got} (the graph's shape); it was edited by hand: restore it or "
            f"re-export the bucket")


def bucket_folders(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Bucket folders in the order given: a bucket folder stays itself, a folder of bucket
    folders becomes them (sorted). A missing path, or a folder without buckets, is kept
    as it is so the caller can name it in its error."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if is_bucket(p) or not p.is_dir():
            out.append(p)
            continue
        for hidden in p.iterdir():
            if hidden.name.startswith(".") and ".old-" in hidden.name:
                restore_hidden_bucket(p / hidden.name[1:].rsplit(".old-", 1)[0])
        # Skip the scratch folders export leaves while it runs (.T2_..partial-xxx).
        subs = sorted(d for d in p.iterdir()
                      if d.is_dir() and not d.name.startswith(".") and is_bucket(d))
        out += subs or [p]
    return out


# ------------------------------------------------------------- paths read from files
class PathEscapeError(RuntimeDataError):
    """A path read from a file (manifest, sidecar, serving.json, config.pbtxt) leads out
    of the folder that file describes."""


def inside(folder: str | Path, value: Any, *, source: str | Path, key: str) -> Path:
    """``folder / value`` when it stays inside ``folder`` once symlinks and ``..`` are
    resolved; otherwise PathEscapeError naming the file, the key and the path.

    Every path the runtime and serving code takes from a file it did not write itself goes
    through here: a repository or bucket edited by someone else must not make a step
    read, hash or load (dlopen) a file from anywhere on the machine."""
    root = Path(folder).resolve()
    text = str(value) if value is not None else ""
    if not text or "\x00" in text:
        raise PathEscapeError(f"{source}: {key} = {value!r} is not a path; re-create the file "
                              f"with the command that writes it")
    target = (root / text).resolve()
    if target != root and root not in target.parents:
        raise PathEscapeError(
            f"{source}: {key} = {text!r} resolves to {target}, outside {root}; paths in this "
            f"file must stay inside its folder (refused: it could make this step read or "
            f"load a file from anywhere). Re-create the file with the command that writes it")
    return target


# ------------------------------------------------------------------------ fingerprints
def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Streaming digest: weights and engines are GBs and are never read whole."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_entry(path: Path, root: Path) -> dict[str, Any]:
    return {"name": str(path.relative_to(root)), "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


# ------------------------------------------------------------------ integrity on load
NO_VERIFY_ENV = "VGGT_MV_NO_VERIFY"  # "1": sizes only, no hashing (huge files, trusted disk)


class ArtifactIntegrityError(ManifestError):
    """An artifact differs from what its manifest recorded (truncated, bit-flipped,
    replaced)."""


def _verdict_cache() -> Path:
    base = os.environ.get("VGGT_MV_CACHE") or os.environ.get("XDG_CACHE_HOME") or \
        str(Path.home() / ".cache")
    return Path(base) / "vggt_mv" / "verified.json"


def _load_verdicts() -> dict[str, Any]:
    try:
        data = json.loads(_verdict_cache().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def verify_artifacts(folder: str | Path, entries: Iterable[Mapping[str, Any]], *,
                     hashes: bool | None = None, remedy: str = "re-export the bucket "
                     "(python cli.py export ...)", record: str | Path | None = None) -> None:
    """Every recorded file (``{"name", "bytes", "sha256"}``) must be present with its size
    (checked on every load: cheap) and its sha256 (checked the first time a file is seen;
    the verdict is cached by inode, size and mtime so a 5 GB file is not re-hashed on every
    call). ``hashes=False`` or ${NO_VERIFY_ENV}=1 skips the hashing, never the sizes.
    Raises ArtifactIntegrityError naming the file and the remedy; ``record`` is the file
    the entries come from (default: the folder's manifest.json)."""
    folder = Path(folder)
    record = Path(record) if record is not None else folder / MANIFEST
    if hashes is None:
        hashes = os.environ.get(NO_VERIFY_ENV, "") not in ("1", "true", "yes")
    verdicts = _load_verdicts() if hashes else {}
    changed = False
    for e in entries:
        inside(folder, e.get("name"), source=record, key="files[].name")
        path = folder / str(e["name"])
        if not path.is_file():
            raise ArtifactIntegrityError(f"{path} is missing but {record} records it; "
                                         f"{remedy}")
        st = path.stat()
        if "bytes" in e and st.st_size != int(e["bytes"]):
            raise ArtifactIntegrityError(
                f"{path} is {st.st_size:,} bytes but {record.name} records {int(e['bytes']):,}: "
                f"truncated or replaced; {remedy}")
        if not hashes or not e.get("sha256"):
            continue
        # by inode: a weights file hard-linked into every bucket is hashed once for all
        key = f"{st.st_dev}:{st.st_ino}"
        seen = verdicts.get(key)
        if seen == [st.st_size, st.st_mtime_ns, e["sha256"]]:
            continue
        if sha256_file(path) != e["sha256"]:
            raise ArtifactIntegrityError(
                f"{path} does not match the sha256 {record.name} records (corrupted on disk or "
                f"in transfer); {remedy}. (${NO_VERIFY_ENV}=1 skips this check)")
        verdicts[key] = [st.st_size, st.st_mtime_ns, e["sha256"]]
        changed = True
    if changed:
        try:
            atomic_write_json(_verdict_cache(), verdicts)
        except OSError:
            pass  # a read-only home only costs a re-hash next time


def graph_records(folder: str | Path, manifest: Mapping[str, Any], graph: str
                  ) -> list[Mapping[str, Any]]:
    """The recorded files a graph needs: its own entry and the external-data files beside
    it, from the manifest (export) or the precision report that wrote it (quantize).

    A quantized graph is vouched for only by its precision report, written last by
    quantize: a graph without one (quantize killed, report deleted) or with a report made
    from another model.onnx (the bucket re-exported since) raises ArtifactIntegrityError,
    since its accuracy figures and calibration no longer describe it."""
    folder = Path(folder)
    files = list(manifest.get("files") or [])
    if any(e.get("name") == graph for e in files):
        # the weights every bucket of the export shares are recorded once, apart
        shared = manifest.get("shared_weights")
        return _with_data(files + ([shared] if shared else []), graph)
    for mode in ("fp16", "int8"):
        if graph not in (portable_graph(mode), plugin_graph(mode), native_graph(mode)):
            continue
        record = load_precision_report(folder, manifest, mode)
        return _with_data(record.get("files") or [], graph)
    return []


def _with_data(files: list[Mapping[str, Any]], graph: str) -> list[Mapping[str, Any]]:
    return [e for e in files if e.get("name") == graph
            or str(e.get("name", "")).endswith(EXTERNAL_DATA_SUFFIX)]


def load_precision_report(folder: str | Path, manifest: Mapping[str, Any], mode: str
                          ) -> dict[str, Any]:
    """precision_<mode>.json, checked against the bucket it sits in: present, readable,
    made from this bucket's model.onnx (sha256 of its source against the manifest's)."""
    folder = Path(folder)
    rep = folder / precision_report(mode)
    rerun = f"re-run `python cli.py quantize --{mode} --bucket {folder}`"
    if not rep.is_file():
        raise ArtifactIntegrityError(
            f"{folder / portable_graph(mode)} has no {rep.name} (quantize was interrupted, or "
            f"the report was removed), so nothing vouches for its graphs; {rerun}")
    try:
        record = json.loads(rep.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactIntegrityError(f"{rep} is unreadable ({e}); {rerun}") from e
    src = (record.get("source") or {}).get("sha256")
    ours = next((e.get("sha256") for e in manifest.get("files") or []
                 if e.get("name") == PORTABLE_GRAPH), None)
    if src and ours and src != ours:
        raise ArtifactIntegrityError(
            f"{rep} was made from another {PORTABLE_GRAPH} (the bucket was re-exported "
            f"since): its {mode} graphs and accuracy figures are stale; {rerun}")
    return record


# ---------------------------------------------------------------------- atomic writes
def replaceable_folder(out: str | Path, *, marker: str | None, keep: Iterable[str | Path] = (),
                       overwrite: bool = False, option: str = "--out",
                       what: str = "output") -> Path:
    """Refuses an output folder that a run would replace whole (atomic_directory) when
    that would delete what is not its own: a folder that is, or holds, something the run
    reads (``keep``: the bucket, the input; ``--out .`` with --overwrite would delete them),
    or a non-empty folder that is not an earlier output (``marker`` is the file every
    output of this kind holds) unless ``overwrite``. Returns ``out`` as a Path."""
    out = Path(out)
    where = out.resolve()
    for k in keep:
        k = Path(k)
        kr = k.resolve()
        if where == kr or where in kr.parents:
            raise RuntimeDataError(f"{option} {out} is or holds {k}, which this run reads; the "
                                   f"{what} folder is replaced whole, so give one of its own")
    if out.exists() and not out.is_dir():
        raise RuntimeDataError(f"{option} {out} is a file; give a folder")
    if out.is_dir() and not overwrite and any(out.iterdir()) and \
            not (marker and (out / marker).is_file()):
        raise RuntimeDataError(f"{option} {out} holds files that are not an earlier {what}; "
                               f"choose an empty or new folder (an earlier {what} is replaced "
                               f"whole)")
    return out


def output_file(path: str | Path, own: str, option: str = "--out") -> Path:
    """A file path a command may write its one output to (``own``: its default name, e.g.
    ``calib.npz``): never a folder, and never another artifact of a bucket (its manifest,
    graphs, weights, engines, sidecars, precision reports, calibration set, bench figures),
    which `--out B/model.onnx` would otherwise replace with an npz or a JSON."""
    p = Path(path)
    if p.is_dir():
        raise RuntimeDataError(f"{option} {p} is a folder; give a file path (e.g. {p / own})")
    folder = p.parent
    if p.name != own and (folder / MANIFEST).is_file():
        theirs = p.name == MANIFEST or p.suffix in (".onnx", ".engine", ".npz") \
            or p.name.endswith((".onnx.data", ".engine.json")) \
            or p.name.startswith("precision_") or p.name == BENCH
        if not theirs:  # a damaged manifest is for the reader that needs it to say
            with contextlib.suppress(RuntimeDataError, OSError, AttributeError, TypeError):
                files = load_manifest(folder).get("files") or []
                theirs = p.name in {str(e.get("name")) for e in files}
        if theirs:
            raise RuntimeDataError(f"{option} {p} is an artifact of the bucket {folder}; writing "
                                   f"there would replace it: give another file (default: "
                                   f"{folder / own})")
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # Persist the rename itself; not every platform allows opening a directory.
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` for writers that want a file name (onnx.save);
    on success it is renamed over ``path``, on any exception removed. Same directory
    because os.replace is only atomic within one file system."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; artifacts are shared like any other file (follow umask).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """An open temporary file next to ``path``; on success fsynced and renamed over it.
    On any exception ``path`` is left as it was (absent, or its previous content)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _test_kill(point: str) -> None:
    """Fault-injection hook of tests/test_faults.py: die like kill -9 at a named point."""
    if os.environ.get("VGGT_MV_TEST_KILL_AT") == point:
        os._exit(137)


def _test_disk_full(point: str, path: str | Path) -> None:
    """Fault-injection hook of tests/test_faults.py: a write at a named point fails as on
    a full disk (ENOSPC), which a small test machine cannot reach for real."""
    if os.environ.get("VGGT_MV_TEST_DISK_FULL_AT") == point:
        import errno  # noqa: PLC0415

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


_SCRATCH = re.compile(r"^\.(.+)\.(partial|old)-\d+(-.*)?$")


def public_path(path: str | Path) -> Path:
    """The path a user knows for one inside our scratch space: ``out/.run.partial-41-x/
    depth/d.png`` is ``out/run`` (the folder they asked for, which appears only at the
    end); other paths are returned as they are."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        m = _SCRATCH.match(part)
        if m:
            return Path(*parts[:i], m.group(1))
    return Path(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def recover_leftovers(final: str | Path, log: bool = True) -> list[str]:
    """What a killed run (kill -9, power loss) left next to ``final``: a scratch folder
    ``.NAME.partial-PID-*`` is removed, and a previous good folder ``.NAME.old-PID``
    hidden between the two renames of a swap is put back when ``final`` is missing
    (else removed). Only leftovers of processes that are gone are touched. Returns what
    was done (also logged as warnings, unless ``log`` is False: the caller says it)."""
    import logging  # noqa: PLC0415
    import re  # noqa: PLC0415

    final = Path(final)
    done: list[str] = []
    if not final.parent.is_dir():
        return done
    pat = re.compile(rf"^\.{re.escape(final.name)}\.(partial|old)-(\d+)(-.*)?$")
    for p in sorted(final.parent.iterdir()):
        m = pat.match(p.name)
        if not m or _pid_alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not final.exists():
            os.replace(p, final)
            done.append(f"restored {final} from {p.name}, left by an interrupted run")
        else:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p}, left by an interrupted run")
    for msg in done if log else ():
        logging.getLogger("vggt_mv").warning(msg)
    return done


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """A scratch directory next to ``final``; on success it replaces ``final`` whole.

    On any exception (KeyboardInterrupt included) the scratch directory is removed, so an
    interrupted step never leaves a half-written bucket, and a previous good one at
    ``final`` stays untouched.
    """
    final = Path(final)
    if final.is_symlink():
        # `--out latest` where latest -> run_07: the user means the folder the link names;
        # swapping the link itself would leave it hidden as .latest.old-PID (rmtree refuses
        # links) and turn `latest` into a plain folder
        final = Path(os.path.realpath(final))
    if final.exists() and not final.is_dir():
        # a folder never replaces a file: it may be the user's, and is not ours to delete
        raise RuntimeDataError(f"{final} is a file; give a folder path (or remove the file)")
    # the folders this run creates above ``final`` go again if it fails (an interrupted
    # `export --out new/` must not leave an empty new/ behind); rmdir spares any that
    # something else filled meanwhile
    created = [d for d in (final.parent, *final.parent.parents) if not d.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_leftovers(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-",
                                dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        yield tmp
        _test_kill("in-scratch")
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
            _test_kill("between-renames")
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    _fsync_dir(final.parent)
