"""Polygraphy runners for every backend of a bucket, behind one factory."""
from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata


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


def available_backends(folder: Path) -> list[tuple[str, str | None]]:
    """(backend name, reason it is skipped or None) for everything a bucket may hold."""
    out: list[tuple[str, str | None]] = [("pytorch", None)]
    for g in ("model.onnx", "model.plugins.onnx", "model.fp16.onnx", "model.fp16.plugins.onnx",
              "model.int8.onnx", "model.int8.plugins.onnx"):
        mode = next((m for m in ("fp16", "int8") if f".{m}." in g), None)
        hint = f"python cli.py quantize --{mode} --bucket {folder}" if mode else \
            "python cli.py export"
        out.append((f"onnxrt:{g}", None if (folder / g).is_file() else
                    f"{g} not in the bucket ({hint})"))
    engines = sorted(folder.glob("model.*.engine"))
    reason = _trt_unavailable()
    if engines:
        out += [(f"tensorrt:{e.name}", reason) for e in engines]
    else:
        out.append(("tensorrt", reason or "no engine in the bucket (python cli.py build-engine)"))
    return out


def _trt_unavailable() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (and needs an NVIDIA GPU)"
    from runtime.sidecar import detect_gpu

    return None if detect_gpu() else "no NVIDIA GPU visible"


def make_runner(folder: Path, backend: str, manifest: dict[str, Any]) -> BaseRunner:
    if backend == "pytorch":
        return TorchRunner(manifest)
    kind, _, target = backend.partition(":")
    path = folder / target
    if kind == "onnxrt":
        if target.endswith("plugins.onnx"):
            from plugins.reference.ort_ops import polygraphy_runner

            return polygraphy_runner(path, name=backend)
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

        return OnnxrtRunner(SessionFromOnnx(str(path), providers=["cpu"]), name=backend)
    if kind == "tensorrt":
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        import plugins

        plugins.load()
        return TrtRunner(EngineFromBytes(path.read_bytes()), name=backend)
    raise ValueError(f"unknown backend {backend!r}")
