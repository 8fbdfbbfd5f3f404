"""Polygraphy runners for every backend of a bucket, behind one factory: PyTorch (the
reference) and the runtime sessions through one adapter."""
from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from export.compare import precision_of
from runtime.layout import ALL_GRAPHS, PRECISIONS, engine_filenames
from runtime.trt.env import unavailable_reason


def verify_recorded_checkpoints(manifest: dict[str, Any]) -> None:
    """The checkpoints `check` reloads for its PyTorch reference must be the files the
    bucket was exported from (sha256 recorded in the manifest): otherwise every graph would
    be blamed for the checkpoint's change. Raises RuntimeDataError naming the file."""
    from runtime.errors import RuntimeDataError
    from runtime.layout import sha256_file

    w = manifest.get("weights") or {}
    for s in w.get("sources") or [] if isinstance(w.get("sources"), list) else []:
        path, want = s.get("path"), s.get("sha256")
        if not path:
            continue
        if not Path(path).is_file():
            raise RuntimeDataError(
                f"the {s.get('slot', 'checkpoint')} this bucket was exported from, {path}, is "
                f"not found (paths are as given to export); put it back at that path, or "
                f"re-export with the checkpoint you have")
        if want and sha256_file(path) != want:
            raise RuntimeDataError(
                f"{path} is not the checkpoint this bucket was exported from (its sha256 "
                f"differs from the manifest's): the PyTorch reference would disagree with "
                f"correct graphs; restore that checkpoint, or re-export with this one")


class TorchRunner(BaseRunner):
    """The PyTorch model a bucket was exported from, rebuilt from its manifest: the
    config, and the same seed (random init) or the recorded checkpoints."""

    def __init__(self, manifest: dict[str, Any], name: str = "pytorch"):
        super().__init__(name=name, prefix="torch-runner")
        self.manifest = manifest
        self.model = None

    def activate_impl(self) -> None:
        import torch

        from vggt_mv.config import VGGTMVConfig
        from vggt_mv.models import VGGTMV

        w = self.manifest["weights"]
        torch.manual_seed(w.get("seed") or 0)
        self.model = VGGTMV(VGGTMVConfig.from_dict(self.manifest["model_config"])).eval()
        sources = {s.get("slot"): s.get("path") for s in w.get("sources", [])} \
            if isinstance(w.get("sources"), list) else {}
        if sources:
            from vggt_mv.weights import load_weights

            load_weights(self.model, checkpoint=sources.get("checkpoint"), pi3=sources.get("pi3"),
                         seed_checkpoint=sources.get("seed_checkpoint"))

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for name, spec in self.manifest["inputs"].items():
            meta.add(name, np.float32, spec["shape"])
        return meta

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(feed_dict[n], np.float32))
                for n in self.manifest["inputs"]]
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model(*args)
        self.inference_time = time.perf_counter() - t0
        return OrderedDict((k, out[k].float().numpy()) for k in self.manifest["outputs"])

    def deactivate_impl(self) -> None:
        self.model = None


class SessionRunner(BaseRunner):
    """Any runtime session (OnnxSession, TrtSession: the ``runtime.session.Session``
    protocol) as a Polygraphy runner, so `check` and `bench` measure exactly the code
    path `infer` deploys, sidecar checks included. The session is created on activate."""

    def __init__(self, make_session: Callable[[], Any], name: str):
        super().__init__(name=name, prefix="session-runner")
        self._make_session = make_session
        self.session: Any = None

    def activate_impl(self) -> None:
        self.session = self._make_session()

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for name, spec in self.session.inputs.items():
            meta.add(name, np.dtype(spec["dtype"]), list(spec["shape"]))
        return meta

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict:
        t0 = time.perf_counter()
        out = self.session.run(feed_dict)
        self.inference_time = time.perf_counter() - t0
        return OrderedDict((k, out[k]) for k in self.session.outputs)

    def deactivate_impl(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = None


def available_backends(folder: Path) -> list[tuple[str, str | None]]:
    """(backend name, reason it is skipped or None) for everything a bucket may hold."""
    out: list[tuple[str, str | None]] = [("pytorch", None)]
    for g in ALL_GRAPHS:
        mode = precision_of(g)
        hint = (f"python cli.py quantize --{mode} --bucket {folder}" if mode != "fp32"
                else "python cli.py export")
        out.append((f"onnxrt:{g}", None if (folder / g).is_file() else
                    f"{g} not in the bucket ({hint})"))
    engines = [n for p in PRECISIONS for n in engine_filenames(p) if (folder / n).is_file()]
    reason = unavailable_reason()
    if engines:
        out += [(f"tensorrt:{e}", reason) for e in engines]
    else:
        out.append(("tensorrt", reason or "no engine in the bucket (python cli.py build-engine)"))
    return out


def unknown_backends(found: list[tuple[str, str | None]], requested: list[str]) -> str | None:
    """The refusal for requested names that are no backend of this bucket (a misspelt
    graph would otherwise be silently left out of the comparison), or None."""
    known = {b for b, _ in found}
    unknown = [b for b in requested if b not in known]
    if not unknown:
        return None
    return f"unknown backend(s) {unknown}; this bucket has {sorted(known)}"


def verify_backend_files(folder: Path, manifest: dict[str, Any], backends: list[str]) -> None:
    """Every graph a comparison will load is checked against its recorded size and sha256
    up front: otherwise a corrupted graph is found only after the PyTorch reference has
    run (minutes on a real model), and the comparison dies half-way. Raises
    ArtifactIntegrityError naming the file and the remedy. Engines are checked by their
    sidecars when the session opens (they need TensorRT, which may be absent here)."""
    from runtime.layout import graph_records, verify_artifacts

    for b in backends:
        kind, _, target = b.partition(":")
        if kind == "onnxrt" and target:
            verify_artifacts(folder, graph_records(folder, manifest, target))


def make_runner(folder: Path, backend: str, manifest: dict[str, Any]) -> BaseRunner:
    """pytorch, onnxrt:<graph> (runtime.OnnxSession on the CPU) or tensorrt:<engine>
    (runtime.TrtSession)."""
    if backend == "pytorch":
        return TorchRunner(manifest)
    kind, _, target = backend.partition(":")
    if kind == "onnxrt":
        from runtime.session import OnnxSession

        return SessionRunner(lambda: OnnxSession(folder, graph=target, providers="cpu"),
                             name=backend)
    if kind == "tensorrt":
        from runtime.trt import session as trt_session

        precision = precision_of(target) if target else None
        library = "tensorrt_rtx" if target.endswith(".rtx.engine") else None
        route = None if not target else "native" if ".native." in target else "plugin"
        return SessionRunner(lambda: trt_session.TrtSession(folder, precision=precision,
                                                            tensorrt_library=library,
                                                            attention=route),
                             name=backend)
    raise ValueError(f"unknown backend {backend!r}")
