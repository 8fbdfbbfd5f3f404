"""TensorRT engine building: one engine per bucket, from its native or plugin graph, with
a sidecar.

Attention route (``--attention``): "native" builds model[.P].native.onnx, whose dense sites
are standard ONNX Attention nodes that TensorRT >= 10.14 and TensorRT for RTX fuse into
their own IAttention kernels (no library of ours unless the bucket has sparse sites);
"plugin" builds model[.P].plugins.onnx with our plugins at every site, the only route of
TensorRT 10.3 (JetPack 6). "auto" takes native where the library parses Attention.

TensorRT 11 has no FP16/INT8 builder flags and no implicit calibration; TensorRT 10.3
(JetPack 6) has both but also strongly typed networks. Building strongly typed on both
makes one graph mean one thing everywhere: precision lives in the ONNX (FP16 casts,
INT8 Q/DQ), produced before the build by calib/ (quantize/convert the portable graph,
then surgery, so plugin sites keep their FP16/FP32 I/O and the quantizer never sees a
plugin op). This module only picks the graph for a precision and builds it. It needs only
runtime/ and TensorRT, so engines are built on the target (a Jetson).

Thin over pure functions: ``plan_build`` validates everything that can be checked without
TensorRT (it is what ``--dry-run`` prints), ``build_engines`` does the TensorRT work.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..layout import (
    ATTENTION_ROUTES,
    MANIFEST,
    PRECISIONS,
    ManifestError,
    atomic_write_bytes,
    bucket_folders,
    ENGINE_TARGETS,
    engine_filename,
    graph_for_route,
    graph_has_plugins,
    graph_records,
    load_manifest,
    load_precision_report,
    plugin_graph,
    precision_report,
    sha256_file,
    sidecar_path_for,
    verify_artifacts,
)
from .env import (
    GpuUnavailableError,
    TrtUnavailableError,
    import_tensorrt,
    make_logger,
    parse_version,
    require_gpu,
    version_label,
)
from .plugins import (
    LIB_NAME,
    PLUGIN_LIBRARY_ENV,
    PluginLoadError,
    load_plugin_library,
    resolve_plugin_library,
)
from .sidecar import EnvironmentInfo, make_sidecar, write_sidecar
from .weights import builder_flags, weights_record

__all__ = [
    "GRAPH_FOR_PRECISION",
    "ATTENTION_CHOICES",
    "NATIVE_MIN_TRT",
    "native_support",
    "choose_route",
    "allow_decomposed_attention",
    "CREATE_GRAPH_HINT",
    "PRECISIONS",
    "EngineBuildError",
    "BuildItem",
    "BuildPlan",
    "BuildResult",
    "parse_workspace",
    "plan_build",
    "format_plan",
    "build_engines",
]

# The graph each precision builds from; fp16/int8 are written by calib/ (quantization).
GRAPH_FOR_PRECISION = {p: plugin_graph(p) for p in PRECISIONS}
CREATE_GRAPH_HINT = {
    "fp32": "python cli.py export (it writes {graph})",
    "fp16": "the FP16 conversion in calib/ (e.g. `python cli.py quantize --fp16 --bucket "
            "{bucket}`), which writes {graph}",
    "int8": "INT8 quantization in calib/ (e.g. `python cli.py quantize --int8 --calib DIR "
            "--bucket {bucket}`), which writes {graph}",
}
# TensorRT 10.3's ONNX parser reads IR <= 10 and opsets it knows (<= 20).
TRT103_MAX_IR, TRT103_MAX_OPSET = 10, 20
# The first full TensorRT whose ONNX parser maps Attention (opset 23) to IAttention.
NATIVE_MIN_TRT = (10, 14)
ATTENTION_CHOICES = ("auto",) + ATTENTION_ROUTES


def native_support(target: str, version: str | None) -> tuple[bool, str]:
    """Whether the builder of `target` turns ONNX Attention into its fused IAttention
    layer, and why (the reason is printed by the plan)."""
    if target == "rtx":
        return True, "TensorRT for RTX parses ONNX Attention into IAttention"
    if version is None:
        return False, "TensorRT version unknown (not installed here)"
    v = parse_version(version)
    if v[:2] >= NATIVE_MIN_TRT:
        return True, f"TensorRT {version} parses ONNX Attention into IAttention"
    return False, (f"TensorRT {version} has no IAttention (needs "
                   f"{'.'.join(map(str, NATIVE_MIN_TRT))}+; JetPack 6 ships 10.3)")


def choose_route(attention: str, target: str, version: str | None,
                 has_native_graph: bool) -> tuple[str, str | None, str | None]:
    """(route, note, problem) for one bucket. auto: native where the library has
    IAttention and the bucket has a native graph, else the plugin route (said why)."""
    if attention not in ATTENTION_CHOICES:
        raise EngineBuildError(f"--attention must be one of {ATTENTION_CHOICES}, "
                               f"got {attention!r}")
    ok, why = native_support(target, version)
    if attention == "plugin":
        return "plugin", None, None
    if attention == "native":
        if not ok and version is not None:
            return "native", None, (f"--attention native: {why}; use --attention plugin")
        return "native", None if ok else f"{why}; the build needs TensorRT >= 10.14", None
    if ok and has_native_graph:
        return "native", f"attention auto -> native: {why}", None
    if ok:
        return "plugin", ("attention auto -> plugin: no native graph in the bucket (exported "
                          "before native attention; re-export to get one)"), None
    return "plugin", f"attention auto -> plugin: {why}", None


def _installed_tensorrt_version() -> str | None:
    """The full TensorRT's version from its package metadata (no import: cheap, and the
    plan must work where importing it fails)."""
    from importlib import metadata  # noqa: PLC0415

    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12_bindings",
                 "tensorrt_cu13_bindings"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def allow_decomposed_attention(trt, network) -> int:
    """Marks every IAttention of a parsed network decomposable; returns how many.

    The fused attention kernels cover FP16 / BF16 (and FP8) inputs; an FP32 attention,
    or a head size without a fused kernel on some target, would otherwise fail the build.
    Decomposable lets the builder fall back to GEMM + softmax + GEMM for those only: the
    FP16 builds still get fused kernels (tests/test_trt_rtx_build.py reads the tactic)."""
    kind = getattr(getattr(trt, "LayerType", None), "ATTENTION_INPUT", None)
    if kind is None:
        return 0
    n = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == kind:
            layer.__class__ = trt.IAttentionInputLayer  # get_layer returns the base class
            layer.attention.decomposable = True
            n += 1
    return n


class EngineBuildError(RuntimeError):
    pass


def parse_workspace(text: str | int | None) -> int | None:
    """'4G', '512M', '1.5GiB', '2048' (MiB) -> bytes; None/'' / 'auto' -> None (TensorRT
    default: the whole device memory)."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "auto")):
        return None
    if isinstance(text, int):
        return text << 20
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise EngineBuildError(f"--workspace expects a size such as 4G, 512M or 2048 (MiB), "
                               f"got {text!r}")
    value, unit = float(m.group(1)), m.group(2) or "m"
    size = int(value * {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit])
    if size <= 0:
        raise EngineBuildError(f"--workspace must be positive, got {text!r}")
    return size


@dataclass
class BuildItem:
    bucket_dir: Path
    bucket_name: str
    bucket: dict[str, Any]
    precision: str
    onnx_path: Path
    engine_path: Path
    needs_plugins: bool
    route: str = "plugin"
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path_for(self.engine_path)


@dataclass
class BuildPlan:
    precision: str
    items: list[BuildItem]
    plugin_library: Path | None
    plugin_sha256: str | None
    workspace_bytes: int | None
    timing_cache: Path | None
    calib: Path | None
    options: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def all_problems(self) -> list[str]:
        return self.problems + [f"{i.bucket_name}: {p}" for i in self.items for p in i.problems]

    @property
    def ok(self) -> bool:
        return not self.all_problems

    def build_options(self) -> dict[str, Any]:
        return {"precision": self.precision, "strongly_typed": True,
                "workspace_bytes": self.workspace_bytes,
                "timing_cache": str(self.timing_cache) if self.timing_cache else None,
                "calib": str(self.calib) if self.calib else None, **self.options}


@dataclass
class BuildResult:
    item: BuildItem
    status: str            # "built", "failed"
    seconds: float = 0.0
    engine_bytes: int = 0
    message: str = ""


def plan_build(bucket_dirs: Iterable[str | Path], precision: str, calib: str | Path | None = None,
               plugins: str | Path | None = None, workspace: str | int | None = None,
               timing_cache: str | Path | None = None, *,
               options: dict[str, Any] | None = None) -> BuildPlan:
    """Everything ``build_engines`` will do, validated without TensorRT.

    bucket_dirs may hold bucket folders or roots containing them. Problems are collected,
    not raised, so a dry run lists all of them at once.
    """
    if precision not in PRECISIONS:
        raise EngineBuildError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    plan_problems: list[str] = []
    dirs = bucket_folders(list(bucket_dirs))
    if not dirs:
        plan_problems.append("no bucket folders given (--bucket DIR, or an export root)")
    ws = None
    try:
        ws = parse_workspace(workspace)
    except EngineBuildError as e:
        plan_problems.append(str(e))
    calib_path = Path(calib) if calib else None
    if calib_path is not None and not calib_path.exists():
        plan_problems.append(f"--calib {calib_path} does not exist")
    if calib_path is not None and precision != "int8":
        plan_problems.append("--calib only applies to --int8")

    options = dict(options or {})
    target = options.get("target", "trt")  # the engine file name follows it
    if target not in ENGINE_TARGETS:
        raise EngineBuildError(f"target must be one of {ENGINE_TARGETS}, got {target!r}")
    attention = options.setdefault("attention", "auto")
    version = None if target == "rtx" else _installed_tensorrt_version()
    items: list[BuildItem] = []
    for d in dirs:
        name = d.name
        route, note, problem = choose_route(
            attention, target, version, (d / graph_for_route(precision, "native")).is_file())
        graph = graph_for_route(precision, route)
        item = BuildItem(d, name, {}, precision, d / graph,
                         d / engine_filename(precision, target, route),
                         needs_plugins=True, route=route)
        items.append(item)
        if note:
            item.warnings.append(note)
        if problem:
            item.problems.append(problem)
        if not d.is_dir():
            item.problems.append(f"bucket folder {d} does not exist")
            continue
        try:
            manifest = load_manifest(d)
        except FileNotFoundError:
            item.problems.append(f"{d} has no {MANIFEST}: not an exported bucket "
                                 f"(run `python cli.py export`)")
            continue
        except ManifestError as e:  # corrupt or incomplete
            item.problems.append(str(e))
            continue
        item.manifest = manifest
        item.bucket = dict(manifest.get("bucket", {}))
        item.bucket_name = item.bucket.get("name", name)
        item.needs_plugins = graph_has_plugins(graph, manifest.get("attention_sites"))
        if not item.onnx_path.is_file():
            hint = CREATE_GRAPH_HINT[precision].format(bucket=d, graph=graph)
            if route == "native" and (d / graph_for_route(precision, "plugin")).is_file():
                hint = ("a re-export (`python cli.py export`, then quantize again for FP16 / "
                        "INT8): the bucket predates native attention; or use --attention plugin")
            item.problems.append(f"{graph} not found in {d}; create it with {hint}")
        else:
            item.problems += _graph_problems(d, manifest, graph, precision)
        if manifest.get("ir_version", 0) > TRT103_MAX_IR:
            item.warnings.append(f"ONNX IR version {manifest['ir_version']} > "
                                 f"{TRT103_MAX_IR}: TensorRT 10.3 (JetPack 6) cannot parse it")
        if manifest.get("opset", 0) > TRT103_MAX_OPSET:
            item.warnings.append(f"opset {manifest['opset']} > {TRT103_MAX_OPSET}: "
                                 f"TensorRT 10.3 (JetPack 6) may reject it")
        if item.engine_path.is_file():
            item.warnings.append(f"{item.engine_path.name} exists and will be replaced")

    lib, sha = None, None
    needs = any(i.needs_plugins for i in items)
    # A plugin-free build never looks for the library: found or not, it would not be used
    # (and its sha would tie the engine to a file it does not need). An explicit --plugins
    # is still checked, so a typo is not silently ignored.
    try:
        lib = resolve_plugin_library(plugins) if (needs or plugins) else None
    except FileNotFoundError as e:
        plan_problems.append(str(e))
    if lib is None and needs and not any("plugin library" in p for p in plan_problems):
        which = sorted({i.onnx_path.name for i in items if i.needs_plugins})
        native_hint = "" if all(i.route == "native" for i in items) else (
            "; or build the native graph with --attention native (TensorRT >= 10.14 / "
            "TensorRT for RTX), which needs no library for dense buckets")
        plan_problems.append(
            f"plugin library {LIB_NAME} not found: {', '.join(which)} hold "
            f"vggt_mv::Vggt*Attention nodes; build it (python plugins/build.py) and pass "
            f"--plugins PATH or set ${PLUGIN_LIBRARY_ENV}{native_hint}")
    if lib is not None:
        why = not_a_shared_library(lib)
        if why:
            plan_problems.append(f"plugin library {lib} {why}: build it with `python "
                                 f"plugins/build.py` and pass that file")
        else:
            sha = sha256_file(lib)
    cache = Path(timing_cache) if timing_cache else None
    if cache is not None and cache.exists() and not cache.is_file():
        plan_problems.append(f"--timing-cache {cache} is not a file")
    return BuildPlan(precision, items, lib, sha, ws, cache, calib_path, options,
                     plan_problems)


def _graph_problems(folder: Path, manifest: dict, graph: str, precision: str) -> list[str]:
    """The graph is what its manifest / precision report recorded (size, sha256), the
    report is not stale, and an INT8 graph's calibration set, where it is still on disk, is
    the one it was calibrated on."""
    try:
        verify_artifacts(folder, graph_records(folder, manifest, graph))
        if precision != "int8":
            return []
        calib = load_precision_report(folder, manifest, precision).get("calibration") or {}
    except ManifestError as e:  # ArtifactIntegrityError included
        return [str(e)]
    path, sha = calib.get("calibration_set"), calib.get("sha256")
    if path and sha and Path(path).is_file() and sha256_file(path) != sha:
        return [f"calibration set {path} changed since {graph} was calibrated on it (sha256 "
                f"differs from {precision_report(precision)}): re-run `python cli.py quantize "
                f"--int8 --bucket {folder}` to calibrate on it, or restore the original"]
    return []


# platform.machine() -> (ELF class, e_machine) a library must have to be loadable here.
_ELF_TARGETS = {"x86_64": (2, 62, "x86-64"), "amd64": (2, 62, "x86-64"),
                "aarch64": (2, 183, "AArch64"), "arm64": (2, 183, "AArch64"),
                "ppc64le": (2, 21, "PowerPC64"), "i686": (1, 3, "x86"),
                "armv7l": (1, 40, "ARM")}
_ELF_MACHINES = {3: "x86", 40: "ARM", 21: "PowerPC64", 62: "x86-64", 183: "AArch64",
                 243: "RISC-V"}


def not_a_shared_library(path: str | Path) -> str | None:
    """Why ``path`` cannot be a plugin library for this machine (None when it looks like
    one): a text file, a static archive or a library built for another CPU given by
    mistake would only fail deep inside TensorRT ("was it built for this TensorRT?")."""
    import platform  # noqa: PLC0415

    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if head[:4] != b"\x7fELF" or len(head) < 20:
        return "is not a shared library (no ELF header)"
    order = "little" if head[5:6] == b"\x01" else "big"
    if int.from_bytes(head[16:18], order) != 3:  # e_type ET_DYN
        return "is an ELF file but not a shared library (e_type is not ET_DYN)"
    want = _ELF_TARGETS.get(platform.machine().lower())
    if want is None:  # a CPU this table does not know: leave the verdict to the loader
        return None
    cls, machine = head[4], int.from_bytes(head[18:20], order)
    if (cls, machine) != want[:2]:
        bits = {1: "32-bit", 2: "64-bit"}.get(cls, f"ELF class {cls}")
        name = _ELF_MACHINES.get(machine, f"e_machine {machine}")
        return (f"is a {bits} {name} library, but this machine runs "
                f"{'64' if want[0] == 2 else '32'}-bit {want[2]}: build it here "
                f"(python plugins/build.py) or give the library built for this machine")
    return _lacks_creators(path)


def _lacks_creators(path: str | Path) -> str | None:
    """A library for this CPU that is not ours (another project's plugins, libc) loads
    fine and registers nothing, and the build then fails on the first plugin node. Our
    library holds each creator's name and namespace as C strings and exports getCreators
    (what TensorRT's registry calls): looked for in the bytes, no loader involved."""
    from plugins import contract  # noqa: PLC0415 - stdlib-only contract accessors

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    wanted = [*contract.op_names(), contract.PLUGIN_NAMESPACE]
    missing = [n for n in wanted if n.encode() + b"\0" not in data]
    if b"getCreators\0" not in data:
        missing.append("getCreators")
    if not missing:
        return None
    return (f"holds no vggt_mv plugin creators (missing: {', '.join(missing)}): it is not "
            f"libvggt_mv_plugins.so, or an old build of it")


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "TensorRT default (device memory)"
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def format_plan(plan: BuildPlan) -> str:
    lines = [f"TensorRT engine build plan: {plan.precision}, {len(plan.items)} bucket(s), "
             f"strongly typed (precision from the ONNX graph)"]
    lines.append(f"  plugin library : {plan.plugin_library or 'none'}"
                 + (f" (sha256 {plan.plugin_sha256[:16]}...)" if plan.plugin_sha256 else ""))
    lines.append(f"  workspace      : {_fmt_bytes(plan.workspace_bytes)}")
    cache = plan.timing_cache
    lines.append(f"  timing cache   : {cache or 'none'}"
                 + ("" if cache is None else " (reused)" if cache.exists() else " (created)"))
    if plan.calib:
        lines.append(f"  calibration    : {plan.calib}")
    for k, v in plan.options.items():
        lines.append(f"  {k:<15}: {v}")
    for it in plan.items:
        status = "OK" if not it.problems else "BLOCKED"
        lines.append(f"  [{status}] {it.bucket_name}: {it.onnx_path} -> {it.engine_path.name}"
                     f" (+ {it.sidecar_path.name}), attention {it.route}"
                     + ("" if it.needs_plugins else ", no plugin library needed"))
        lines += [f"      problem: {p}" for p in it.problems]
        lines += [f"      note: {w}" for w in it.warnings]
    lines += [f"  problem: {p}" for p in plan.problems]
    lines.append("plan is valid" if plan.ok else
                 f"plan has {len(plan.all_problems)} problem(s); nothing will be built")
    return "\n".join(lines)


# ------------------------------------------------------------------------- TensorRT
def _require_tensorrt():
    try:
        return import_tensorrt(allow_lean=False, need_builder=True)
    except TrtUnavailableError as e:
        raise EngineBuildError(str(e)) from e


def _make_progress_monitor(trt, bar_factory: Callable[[str, int], Any] | None):
    """IProgressMonitor driving one progress bar per TensorRT build phase."""
    if bar_factory is None or not hasattr(trt, "IProgressMonitor"):
        return None

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, Any] = {}

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:  # noqa: ANN001
            indent = "  " if parent_phase else ""
            self.bars[phase_name] = bar_factory(indent + phase_name, int(num_steps))

        def step_complete(self, phase_name, step) -> bool:  # noqa: ANN001
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.update(1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name) -> None:  # noqa: ANN001
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return _Monitor()


def _io_of(trt, network) -> tuple[dict, dict]:
    import numpy as np  # noqa: PLC0415

    def spec(t):
        return {"shape": [int(d) for d in t.shape],
                "dtype": np.dtype(trt.nptype(t.dtype)).name}

    ins = {network.get_input(i).name: spec(network.get_input(i))
           for i in range(network.num_inputs)}
    outs = {network.get_output(i).name: spec(network.get_output(i))
            for i in range(network.num_outputs)}
    return ins, outs


def build_engines(plan: BuildPlan, *, log: Callable[[str], None] = print,
                  bar_factory: Callable[[str, int], Any] | None = None,
                  builder_optimization_level: int | None = None,
                  device: int = 0) -> list[BuildResult]:
    """Build every engine of a valid plan. Raises EngineBuildError naming what is missing
    (TensorRT, a GPU, an invalid plan) before any work starts; a bucket whose build fails
    is reported in its BuildResult and the others still build."""
    if not plan.ok:
        raise EngineBuildError("the build plan is invalid:\n  - "
                               + "\n  - ".join(plan.all_problems))
    if plan.options.get("target") == "rtx":
        return _build_engines_rtx(plan, log)
    trt = _require_tensorrt()
    try:
        gpu = require_gpu(device)
    except GpuUnavailableError as e:
        raise EngineBuildError(f"no GPU to build on: {e}. TensorRT tunes engines on the GPU "
                               f"that will run them; build on the target (e.g. the Jetson)"
                               ) from e
    messages: list[str] = []
    logger = make_logger(trt, messages)
    if hasattr(trt, "init_libnvinfer_plugins"):
        trt.init_libnvinfer_plugins(logger, "")
    if plan.plugin_library is not None:
        try:
            load_plugin_library(trt, plan.plugin_library)
        except PluginLoadError as e:
            raise EngineBuildError(f"{e}: {'; '.join(messages[-5:])}") from e
    label = version_label(trt)
    if builder_optimization_level is None:
        builder_optimization_level = plan.options.get("builder_optimization_level")
    cache_bytes = plan.timing_cache.read_bytes() if (
        plan.timing_cache and plan.timing_cache.is_file()) else b""
    results = []
    for item in plan.items:
        t0 = time.perf_counter()
        messages.clear()
        try:
            serialized, inputs, outputs, cache_bytes = _build_one(
                trt, logger, messages, item, plan, cache_bytes, bar_factory,
                builder_optimization_level)
        except EngineBuildError as e:
            results.append(BuildResult(item, "failed", time.perf_counter() - t0, 0, str(e)))
            log(f"{item.bucket_name}: FAILED: {e}")
            continue
        atomic_write_bytes(item.engine_path, serialized)
        secs = time.perf_counter() - t0
        contract_version = item.manifest.get("contract_version")
        opts = {**plan.build_options(), "attention": item.route,
                "builder_optimization_level": builder_optimization_level}
        source_sha = sha256_file(item.onnx_path)
        side = make_sidecar(
            engine_file=item.engine_path.name, engine_sha256=sha256_file(item.engine_path),
            env=_item_env(plan, item, label, gpu.name, gpu.compute_capability),
            bucket=item.bucket, precision=item.precision,
            source_onnx=item.onnx_path.name, source_onnx_sha256=source_sha,
            build_options=opts, inputs=inputs, outputs=outputs,
            plugin_library=_item_library(plan, item),
            contract_version=contract_version, build_seconds=secs,
            extra={"weights": weights_record(item.bucket_dir, item.onnx_path.name, source_sha,
                                             plan.options)})
        write_sidecar(item.sidecar_path, side)
        if plan.timing_cache is not None and cache_bytes:
            atomic_write_bytes(plan.timing_cache, cache_bytes)
        results.append(BuildResult(item, "built", secs, item.engine_path.stat().st_size))
        log(f"{item.bucket_name}: built {item.engine_path} in {secs:.1f} s")
    return results


def _item_library(plan: BuildPlan, item: BuildItem) -> str | None:
    """The plugin library an engine depends on: none for a plugin-free (native) engine,
    so loading it never asks for a library it does not use."""
    return str(plan.plugin_library) if plan.plugin_library and item.needs_plugins else None


def _item_env(plan: BuildPlan, item: BuildItem, version: str, gpu: str, cc: str
              ) -> EnvironmentInfo:
    lib = _item_library(plan, item)
    return EnvironmentInfo(version, gpu, cc, plan.plugin_sha256 if lib else None, lib)


def _build_one(trt, logger, messages, item: BuildItem, plan: BuildPlan, cache_bytes: bytes,
               bar_factory, opt_level: int | None):
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    else:
        raise EngineBuildError(f"TensorRT {trt.__version__} lacks strongly typed networks")
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external weights (model.onnx.data) relative to the graph.
    if not parser.parse_from_file(str(item.onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        hint = ""
        if any("plugin" in e.lower() or "Vggt" in e for e in errs):
            hint = (f" (plugin creators missing? the library {plan.plugin_library} must "
                    f"register vggt_mv::VggtBiasedAttention/VggtSparseAttention version 1)")
        raise EngineBuildError(f"ONNX parser rejected {item.onnx_path.name}: "
                               + "; ".join(errs or messages[-5:]) + hint)
    if item.route == "native":
        allow_decomposed_attention(trt, network)
    config = builder.create_builder_config()
    if plan.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    if opt_level is not None:
        config.builder_optimization_level = int(opt_level)
    if plan.options.get("version_compatible"):
        # Runs on later TensorRT releases and on the lean runtime;
        # the plugin library is still loaded by the runtime (IPluginV3, dynamic creators).
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    for name in builder_flags(plan.options):  # --strip-weights, --weight-streaming
        config.set_flag(getattr(trt.BuilderFlag, name))
    cache = config.create_timing_cache(cache_bytes)
    # ignore_mismatch=False: a cache from another GPU/TensorRT is rejected, not misused.
    config.set_timing_cache(cache, False)
    monitor = _make_progress_monitor(trt, bar_factory)
    if monitor is not None:
        config.progress_monitor = monitor
    inputs, outputs = _io_of(trt, network)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT build failed: " + ("; ".join(messages[-8:])
                                                             or "no message from TensorRT"))
    new_cache = bytes(config.get_timing_cache().serialize())
    return bytes(serialized), inputs, outputs, new_cache


# --------------------------------------------------------------- TensorRT for RTX (AOT)
RTX_GPU_NAME = "any GPU of the listed compute capabilities (TensorRT for RTX, ahead of time)"


def _build_engines_rtx(plan: BuildPlan, log: Callable[[str], None]) -> list[BuildResult]:
    """Ahead-of-time builds with TensorRT for RTX: no GPU is needed, the targets are the
    plan's compute capabilities. Each graph is parsed and built in a child process
    (runtime/trt/rtx_worker.py) whose LD_LIBRARY_PATH holds libtensorrt_rtx.so."""
    import json  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from . import rtx  # noqa: PLC0415

    try:
        env_vars = rtx.subprocess_env()
    except rtx.TrtRtxUnavailable as e:
        raise EngineBuildError(str(e)) from e
    caps = list(plan.options["compute_capabilities"])
    worker = Path(__file__).with_name("rtx_worker.py")
    results, version = [], None
    for item in plan.items:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=".rtx-", dir=item.bucket_dir) as tmp:
            spec = {"graph": str(item.onnx_path), "engine": str(Path(tmp) / "engine"),
                    "capabilities": caps, "workspace_bytes": plan.workspace_bytes,
                    "flags": builder_flags(plan.options),
                    "plugin_library": _item_library(plan, item),
                    "native": item.route == "native"}
            (Path(tmp) / "spec.json").write_text(json.dumps(spec))
            out_file = Path(tmp) / "out.json"
            proc = subprocess.run([sys.executable, str(worker), str(Path(tmp) / "spec.json"),
                                   str(out_file)], env=env_vars, capture_output=True, text=True)
            out = json.loads(out_file.read_text()) if out_file.is_file() else {
                "ok": False, "error": f"the TensorRT for RTX build process died (exit "
                f"{proc.returncode}): {(proc.stderr or proc.stdout).strip()[-400:]}"}
            if not out["ok"] and spec["flags"] and "CUDA_SUCCESS" in out["error"]:
                # measured with TensorRT for RTX 1.7: any refit flag makes its graph
                # compiler JIT kernels, which needs a CUDA driver even ahead of time
                out["error"] += (f"; TensorRT for RTX needs a CUDA GPU to build "
                                 f"{', '.join(spec['flags'])} plans (--strip-weights / "
                                 f"--weight-streaming): build them on a machine with a GPU, "
                                 f"or without those options here")
            if not out["ok"]:
                results.append(BuildResult(item, "failed", time.perf_counter() - t0, 0,
                                           out["error"]))
                log(f"{item.bucket_name}: FAILED: {out['error']}")
                continue
            os.replace(spec["engine"], item.engine_path)
        version = f"{out['version']}-rtx"
        secs = time.perf_counter() - t0
        env = _item_env(plan, item, version, RTX_GPU_NAME, ",".join(caps))
        opts = {**plan.build_options(), "attention": item.route}
        if item.route == "native":
            opts["attention_layers"] = out.get("attention_layers", 0)
        source_sha = sha256_file(item.onnx_path)
        side = make_sidecar(
            engine_file=item.engine_path.name, engine_sha256=sha256_file(item.engine_path),
            env=env, bucket=item.bucket, precision=item.precision,
            source_onnx=item.onnx_path.name, source_onnx_sha256=source_sha,
            build_options=opts, inputs=out["inputs"], outputs=out["outputs"],
            plugin_library=_item_library(plan, item),
            contract_version=item.manifest.get("contract_version"), build_seconds=secs,
            extra={"weights": weights_record(item.bucket_dir, item.onnx_path.name, source_sha,
                                             plan.options)})
        write_sidecar(item.sidecar_path, side)
        results.append(BuildResult(item, "built", secs, item.engine_path.stat().st_size))
        log(f"{item.bucket_name}: built {item.engine_path} for SM {', '.join(caps)} "
            f"in {secs:.1f} s (TensorRT for RTX {out['version']}, attention {item.route})")
    return results
