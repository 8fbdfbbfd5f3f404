"""Engine sidecar: what a TensorRT engine was built for, and whether this machine matches.

A serialized TensorRT engine only runs on the TensorRT version that built it, on the GPU
architecture it was tuned for, with the exact plugin implementation it was built against.
None of that is checked by TensorRT in a way a user can act on (a version mismatch is a
deserialization failure, a changed plugin library silently computes something else), so
every engine gets a JSON sidecar recording it, and ``check_sidecar`` turns each mismatch
into a sentence that says what to do.

Pure Python: the GPU/TensorRT probes (env.py) import their libraries only when called.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from ..layout import (
    MANIFEST,
    PRECISIONS,
    SIDECAR_SUFFIX,
    ManifestError,
    atomic_write_json,
    graph_records,
    load_manifest,
    sha256_file,
    sidecar_path_for,
)
from .env import detect_gpu, parse_version, tensorrt_version

__all__ = [
    "SIDECAR_VERSION",
    "SIDECAR_SUFFIX",
    "PRECISIONS",
    "SidecarError",
    "SidecarMismatchError",
    "EnvironmentInfo",
    "sidecar_path_for",
    "make_sidecar",
    "validate_sidecar",
    "check_sidecar",
    "read_sidecar",
    "write_sidecar",
    "stale_source_problems",
    "sha256_file",
]

SIDECAR_VERSION = 1
_REQUIRED = ("sidecar_version", "engine", "tensorrt_version", "gpu", "plugins", "bucket",
             "precision", "source_onnx", "build_options", "inputs", "outputs")


class SidecarError(RuntimeError):
    """The sidecar is missing, unreadable or malformed."""


class SidecarMismatchError(SidecarError):
    """The engine was built for another TensorRT, GPU or plugin library than this one."""

    def __init__(self, engine: str | Path, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"refusing to load {engine}: it was built for a different "
                         f"environment:\n{lines}")


# ------------------------------------------------------------------------ environment
@dataclass
class EnvironmentInfo:
    """What the engine will meet on this machine (or met on the build machine)."""

    tensorrt_version: str | None
    gpu_name: str | None
    compute_capability: str | None
    plugin_sha256: str | None = None
    plugin_library: str | None = None
    contract_version: str | None = None

    @classmethod
    def detect(cls, plugin_library: str | Path | None = None, device: int = 0,
               contract_version: str | None = None) -> "EnvironmentInfo":
        """Probe TensorRT, the GPU and the plugin library; missing pieces stay None."""
        trt_version = tensorrt_version()
        gpu = detect_gpu(device)
        sha = None
        if plugin_library is not None and Path(plugin_library).is_file():
            sha = sha256_file(plugin_library)
        return cls(trt_version, gpu.name if gpu else None,
                   gpu.compute_capability if gpu else None, sha,
                   str(plugin_library) if plugin_library else None, contract_version)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- schema
def make_sidecar(*, engine_file: str, engine_sha256: str, env: EnvironmentInfo,
                 bucket: Mapping[str, Any], precision: str, source_onnx: str,
                 source_onnx_sha256: str, build_options: Mapping[str, Any],
                 inputs: Mapping[str, Any], outputs: Mapping[str, Any],
                 plugin_library: str | None = None, contract_version: str | None = None,
                 build_seconds: float | None = None, extra: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    side = {
        "sidecar_version": SIDECAR_VERSION,
        "engine": engine_file,
        "engine_sha256": engine_sha256,
        "tensorrt_version": env.tensorrt_version,
        "gpu": {"name": env.gpu_name, "compute_capability": env.compute_capability},
        "plugins": None if env.plugin_sha256 is None and plugin_library is None else
        {"library": Path(plugin_library).name if plugin_library else None,
         "sha256": env.plugin_sha256},
        "contract_version": contract_version,
        "bucket": dict(bucket),
        "precision": precision,
        "source_onnx": {"name": source_onnx, "sha256": source_onnx_sha256},
        "build_options": dict(build_options),
        "inputs": dict(inputs),
        "outputs": dict(outputs),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_host": platform.node(),
        "build_seconds": None if build_seconds is None else round(build_seconds, 2),
    }
    if extra:
        side.update(extra)
    return side


def engine_needs_plugins(sidecar: Mapping[str, Any]) -> bool:
    """Whether an engine was built with our plugin library (a native engine of a dense
    bucket was not: it runs where the library does not exist)."""
    plug = sidecar.get("plugins")
    if plug and not isinstance(plug, Mapping):
        return True  # a hand-edited record: the safe side is to load the library
    return bool(plug and (plug.get("sha256") or plug.get("library")))


def attention_route(sidecar: Mapping[str, Any]) -> str:
    """The engine's attention route; sidecars from before native attention are plugin."""
    return str((sidecar.get("build_options") or {}).get("attention") or "plugin")


def validate_sidecar(side: Any) -> list[str]:
    """Structural problems of a sidecar dict (empty list = well formed)."""
    if not isinstance(side, Mapping):
        return [f"sidecar must be a JSON object, got {type(side).__name__}"]
    problems = [f"missing key {k!r}" for k in _REQUIRED if k not in side]
    if problems:
        return problems
    if side["sidecar_version"] != SIDECAR_VERSION:
        problems.append(f"sidecar_version {side['sidecar_version']} is not supported "
                        f"(this runtime reads {SIDECAR_VERSION}); rebuild the engine")
    if side["precision"] not in PRECISIONS:
        problems.append(f"unknown precision {side['precision']!r}")
    gpu = side["gpu"]
    if not isinstance(gpu, Mapping) or "compute_capability" not in gpu or "name" not in gpu:
        problems.append("gpu must hold name and compute_capability")
    plug = side["plugins"]
    if plug is not None and (not isinstance(plug, Mapping) or "sha256" not in plug):
        problems.append("plugins must be null or hold sha256")
    for key in ("inputs", "outputs"):
        io = side[key]
        if not isinstance(io, Mapping) or not all(
                isinstance(v, Mapping) and "shape" in v and "dtype" in v for v in io.values()):
            problems.append(f"{key} must map tensor names to {{shape, dtype}}")
    return problems


def read_sidecar(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SidecarError(f"engine sidecar {p} not found: every engine needs the JSON "
                           f"written next to it by `python cli.py build-engine`; rebuild the "
                           f"engine rather than writing one by hand")
    try:
        side = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SidecarError(f"engine sidecar {p} is corrupt ({e}); rebuild the engine") from e
    problems = validate_sidecar(side)
    if problems:
        raise SidecarError(f"engine sidecar {p} is malformed: " + "; ".join(problems))
    return side


def stale_source_problems(bucket_dir: str | Path, sidecar: Mapping[str, Any]) -> list[str]:
    """Whether the engine was built from the graph the bucket holds now: the sidecar's
    source sha256 against the manifest's (or precision report's) record of that graph, so
    no hashing. A bucket re-exported or re-quantized since the build makes the engine
    stale; it would run, and answer for the old graph. A folder without a manifest or a
    record of that graph (engines shipped without their graphs) has nothing to compare
    with; the engine's own sha256 is still checked against its sidecar."""
    folder = Path(bucket_dir)
    if not (folder / MANIFEST).is_file():
        return []
    src = sidecar.get("source_onnx") or {}
    name, want = src.get("name"), src.get("sha256")
    try:
        rec = next((e for e in graph_records(folder, load_manifest(folder), str(name))
                    if e.get("name") == name), None)
    except ManifestError:  # no trustworthy record of that graph here: nothing to compare
        return []
    if rec is None or not want or not rec.get("sha256") or rec["sha256"] == want:
        return []
    return [f"the engine was built from another {name} than the one in {folder} (the bucket "
            f"was re-exported or re-quantized since): it is stale; rebuild it with `python "
            f"cli.py build-engine --{sidecar.get('precision', 'fp16')} --bucket {folder}`"]


def write_sidecar(path: str | Path, side: Mapping[str, Any]) -> Path:
    problems = validate_sidecar(side)
    if problems:
        raise SidecarError("refusing to write a malformed sidecar: " + "; ".join(problems))
    return atomic_write_json(path, side)


# ---------------------------------------------------------------------------- checks
def _trt_compatible(built: str, here: str, version_compatible: bool) -> bool:
    b, h = parse_version(built), parse_version(here)
    if version_compatible:
        # NVIDIA documents version-compatible plans as running on the same or any later
        # runtime (8.6 -> 10, 10 -> 11), never an older one.
        return bool(b and h) and h[:3] >= b[:3]
    # Plain engines: TensorRT documents that they only load on the exact version built.
    return b[:3] == h[:3]


def _cc_tuple(cc: str | None) -> tuple[int, ...]:
    return parse_version(cc or "")


def check_sidecar(sidecar: Mapping[str, Any], env: EnvironmentInfo, *,
                  allow_gpu_model_mismatch: bool = False) -> list[str]:
    """Every reason this engine must not run here, each phrased as what to do about it.

    Compute capability must match (TensorRT kernels are compiled per SM architecture)
    unless the engine was built hardware-compatible ("ampere_plus": any sm_80+). A
    different GPU model with the same compute capability (e.g. Orin AGX vs Orin NX) loads
    but was timed on other hardware, so it is refused unless ``allow_gpu_model_mismatch``.
    """
    problems = validate_sidecar(sidecar)
    if problems:
        return [f"sidecar malformed: {p}" for p in problems]
    opts = sidecar.get("build_options") or {}
    built_trt = sidecar["tensorrt_version"]
    if env.tensorrt_version is None:
        problems.append("TensorRT is not installed here (pip install tensorrt, or on JetPack 6 "
                        "the python3-libnvinfer package); the engine needs TensorRT "
                        f"{built_trt}")
    elif str(built_trt).endswith("-rtx") != env.tensorrt_version.endswith("-rtx"):
        # Each library deserializes only its own engines; the remedy is the other library.
        built_lib, here_lib = (("TensorRT for RTX", "full TensorRT")
                               if str(built_trt).endswith("-rtx") else
                               ("full TensorRT", "TensorRT for RTX"))
        problems.append(f"engine built with {built_lib} {built_trt}, this session uses "
                        f"{here_lib} {env.tensorrt_version}: run it with "
                        f"{'tensorrt_rtx' if built_lib.endswith('RTX') else 'tensorrt'} "
                        f"(tensorrt_library= / $VGGT_MV_TENSORRT), or rebuild it with "
                        f"`python cli.py build-engine --target "
                        f"{'trt' if built_lib.endswith('RTX') else 'rtx'}`")
    elif not _trt_compatible(str(built_trt), env.tensorrt_version,
                             bool(opts.get("version_compatible"))):
        problems.append(f"TensorRT version mismatch: engine built with {built_trt}, this "
                        f"machine has {env.tensorrt_version}; rebuild it here with "
                        f"`python cli.py build-engine` (engines do not move between "
                        f"TensorRT versions)")
    gpu = sidecar["gpu"]
    built_cc, built_name = gpu.get("compute_capability"), gpu.get("name")
    if env.compute_capability is None:
        problems.append(f"no CUDA GPU found here; the engine was built for {built_name} "
                        f"(compute capability {built_cc})")
    else:
        hw = str(opts.get("hardware_compatibility") or "none").lower()
        if opts.get("target") == "rtx":  # ahead of time for a list of compute capabilities
            hw = "rtx"
            cc_ok = any(_cc_tuple(env.compute_capability) == _cc_tuple(c)
                        for c in str(built_cc).split(","))
        elif hw in ("ampere_plus", "ampere+"):
            cc_ok = (_cc_tuple(env.compute_capability) >= (8, 0) and
                     _cc_tuple(built_cc) >= (8, 0))
        else:
            cc_ok = _cc_tuple(env.compute_capability) == _cc_tuple(built_cc)
        if not cc_ok:
            problems.append(f"GPU architecture mismatch: engine built for compute capability "
                            f"{built_cc} ({built_name}), this GPU is {env.gpu_name} "
                            f"(compute capability {env.compute_capability}); rebuild the "
                            f"engine on this device")
        elif (built_name and env.gpu_name and built_name != env.gpu_name
              and not allow_gpu_model_mismatch and hw == "none"):
            problems.append(f"GPU model mismatch: engine built and timed on {built_name}, "
                            f"this GPU is {env.gpu_name} (same compute capability "
                            f"{built_cc}); rebuild it here for correct tactics, or pass "
                            f"allow_gpu_model_mismatch=True to run it anyway")
    plug = sidecar["plugins"]
    if plug is not None and plug.get("sha256"):
        lib = plug.get("library") or "libvggt_mv_plugins.so"
        if env.plugin_sha256 is None:
            problems.append(f"the engine uses the plugin library {lib} (sha256 "
                            f"{plug['sha256'][:12]}...) but none is loaded: pass "
                            f"plugin_lib= / --plugins with that library")
        elif env.plugin_sha256 != plug["sha256"]:
            problems.append(f"plugin library mismatch: engine built with {lib} sha256 "
                            f"{plug['sha256'][:12]}..., loaded {env.plugin_library or 'library'}"
                            f" has sha256 {env.plugin_sha256[:12]}...; load the library the "
                            f"engine was built with, or rebuild the engine with "
                            f"`python cli.py build-engine --plugins "
                            f"{env.plugin_library or 'LIB'}`")
    side_cv, env_cv = sidecar.get("contract_version"), env.contract_version
    if side_cv and env_cv and parse_version(side_cv)[:1] != parse_version(env_cv)[:1]:
        problems.append(f"plugin contract mismatch: engine built against contract "
                        f"{side_cv}, this runtime implements {env_cv}; re-export and rebuild")
    return problems
