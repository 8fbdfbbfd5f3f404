"""One interface over every backend: `Session` (protocol) and its onnxruntime implementation.

`OnnxSession` runs a bucket's ONNX graph in onnxruntime (CPU or CUDA execution provider).
For model.plugins.onnx the vggt_mv plugin ops are served by the CPU reference
implementations in plugins/reference (onnxruntime-extensions), so exactly the graph that
TensorRT builds from is exercised on machines without a GPU.

Thread safety: onnxruntime documents InferenceSession.run as safe to call concurrently,
and OnnxSession keeps no per-call state, so one OnnxSession may serve several threads.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .dispatch import check_feeds
from .errors import RuntimeDataError
from .graphs import MISSING_EXTENSIONS, have_reference_ops
from .interrupts import deferred
from .layout import (
    PLUGIN_GRAPH,
    PORTABLE_GRAPH,
    Bucket,
    ManifestIO,
    graph_has_plugins,
    graph_records,
    load_manifest,
    ort_disabled_optimizers,
    verify_artifacts,
)

__all__ = ["Session", "OnnxSession", "SessionError", "PLUGIN_GRAPH", "PORTABLE_GRAPH"]

_PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                     "tensorrt": "TensorrtExecutionProvider"}


class SessionError(RuntimeError):
    """A backend cannot be created for this bucket (missing graph, library, provider)."""


@runtime_checkable
class Session(Protocol):
    """What Predictor needs from a backend. ``run`` returns host numpy arrays the caller
    owns (never views of reusable buffers)."""

    @property
    def inputs(self) -> dict[str, dict[str, Any]]: ...

    @property
    def outputs(self) -> dict[str, dict[str, Any]]: ...

    @property
    def bucket(self) -> Bucket: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def _normalize_providers(providers: Sequence[str] | str) -> list[str]:
    if isinstance(providers, str):
        providers = [p for p in providers.split(",") if p]
    return [_PROVIDER_ALIASES.get(p.strip().lower(), p.strip()) for p in providers]


def _has_plugin_nodes(path: Path, manifest: Mapping[str, Any]) -> bool:
    # Decided from the name and the manifest's site counts (no onnx import).
    return graph_has_plugins(path.name, manifest.get("attention_sites"))


class ClosingSession:
    """Context-manager behaviour every session shares: ``with`` closes it."""

    def close(self) -> None:  # pragma: no cover - every session overrides it
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class OnnxSession(ClosingSession, ManifestIO):
    """A bucket graph in onnxruntime; see the module docstring for thread safety."""

    backend = "onnxruntime"

    def __init__(self, bucket_dir: str | Path, graph: str = PLUGIN_GRAPH,
                 providers: Sequence[str] | str = ("CPUExecutionProvider",),
                 threads: int | None = None):
        self.folder = Path(bucket_dir)
        self.manifest = load_manifest(self.folder)
        self._bucket = Bucket.from_dict(self.manifest["bucket"])
        self.path = self.folder / graph
        if not self.path.is_file():
            present = sorted(p.name for p in self.folder.glob("*.onnx"))
            raise SessionError(f"graph {graph} not found in {self.folder}; present: "
                               f"{present or 'none'}")
        # a bit-flipped graph or weights file would run and answer wrongly: refuse it
        verify_artifacts(self.folder, graph_records(self.folder, self.manifest, graph))
        try:
            import onnxruntime as ort  # noqa: PLC0415 - keep `import runtime` light
        except ImportError as e:
            raise SessionError("onnxruntime is not installed (pip install onnxruntime-gpu "
                               "or onnxruntime)") from e
        self.providers = _normalize_providers(providers)
        available = ort.get_available_providers()
        unknown = [p for p in self.providers if p not in available]
        if unknown:
            raise SessionError(f"execution provider(s) {unknown} not available in this "
                               f"onnxruntime build; available: {available}")
        self.uses_plugins = _has_plugin_nodes(self.path, self.manifest)
        if self.uses_plugins:
            if not have_reference_ops():
                raise SessionError(MISSING_EXTENSIONS.format(graph=graph)
                                   + f"; or run --graph {PORTABLE_GRAPH}")
            try:
                from plugins.reference.ort_ops import (  # noqa: PLC0415
                    session_options, session_source)
            except ImportError as e:
                raise SessionError(
                    f"{graph} holds vggt_mv plugin nodes; running it in onnxruntime needs "
                    f"the CPU reference ops (plugins/reference/ort_ops.py and "
                    f"onnxruntime-extensions): {e}. Or use graph='{PORTABLE_GRAPH}'") from e
            so = session_options()
            try:
                src = session_source(self.path, so)  # float16 plugin sites widened for the CPU
            except ImportError as e:  # a runtime-only install has no onnx to read graphs
                if ".fp16." in graph:
                    raise SessionError(
                        f"{graph}'s float16 plugin sites are widened to float32 for the CPU "
                        f"reference ops, which needs the onnx package ({e}): pip install "
                        f"onnx, or run graph='model.fp16.onnx'") from e
                src = str(self.path)  # FP32 / INT8 plugin sites take float32 as they are
        else:
            so = ort.SessionOptions()
            src = str(self.path)
        if threads:
            so.intra_op_num_threads = int(threads)
        disabled = ort_disabled_optimizers(self.path)
        t0 = time.perf_counter()
        try:
            self._sess = ort.InferenceSession(
                src, so, providers=self.providers,
                **({"disabled_optimizers": disabled} if disabled else {}))
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise SessionError(f"onnxruntime cannot load {self.path}: {e}") from e
        self.load_seconds = time.perf_counter() - t0
        # onnxruntime silently drops a provider it cannot initialise (e.g. CUDA without
        # a GPU or without cuDNN) and runs on the CPU; a 100x slowdown deserves a warning.
        self.dropped_providers = [p for p in self.providers
                                  if p not in self._sess.get_providers()]
        if self.dropped_providers:
            warnings.warn(f"onnxruntime could not use {self.dropped_providers} for "
                          f"{self.path.name} and runs on {self._sess.get_providers()}",
                          RuntimeWarning, stacklevel=2)
        got_in = [i.name for i in self._sess.get_inputs()]
        got_out = [o.name for o in self._sess.get_outputs()]
        if got_in != list(self.inputs) or set(got_out) != set(self.outputs):
            raise SessionError(f"{self.path} and its manifest.json disagree (graph inputs "
                               f"{got_in}, outputs {got_out}; manifest {list(self.inputs)}, "
                               f"{list(self.outputs)}); re-export the bucket")
        self._out_names = list(self.outputs)

    @property
    def bucket(self) -> Bucket:
        return self._bucket

    @property
    def active_providers(self) -> list[str]:
        return list(self._sess.get_providers()) if self._sess is not None else []

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._sess is None:
            raise SessionError("session is closed")
        arrays = check_feeds(self.inputs, feeds)
        # the CPU reference of a plugin op is Python called from onnxruntime's C++: a
        # signal raised inside it would abort the process instead of stopping the run
        with deferred():
            outs = self._sess.run(self._out_names, arrays)
        result = dict(zip(self._out_names, outs))
        for name, spec in self.outputs.items():
            if list(result[name].shape) != [int(d) for d in spec["shape"]]:
                raise RuntimeDataError(f"{name}: the graph returned {list(result[name].shape)}"
                                       f", the manifest says {spec['shape']}")
        return result

    def close(self) -> None:
        self._sess = None

    def __repr__(self) -> str:
        return (f"OnnxSession({self.folder.name}/{self.path.name}, "
                f"providers={self.providers})")
