"""Engines without their weights, and engines that stream them.

- ``build-engine --strip-weights``: the plan is built with STRIP_PLAN (no weights in it)
  and REFIT_IDENTICAL (the builder may optimize for exactly these weights, since the
  refit will bring the same ones). The sidecar records which weights file the engine
  needs and its sha256; ``TrtSession`` checks that sha256 before TensorRT sees anything,
  then refits from the bucket's ONNX through TensorRT's ONNX parser refitter.
- ``build-engine --weight-streaming``: WEIGHT_STREAMING, so a session can keep part of
  the weights in host memory under a GPU budget (``TrtSession(weight_streaming_budget=)``,
  ``infer --weight-budget``), refused below the engine's minimum.

Standard library only at import; TensorRT is passed in by the callers.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from ..layout import (
    EXTERNAL_DATA_SUFFIX,
    ArtifactIntegrityError,
    graph_records,
    load_manifest,
    sha256_file,
    verify_artifacts,
)

__all__ = ["WeightsError", "builder_flags", "weights_record", "check_refit_weights",
           "refit_engine", "apply_weight_budget", "AUTO_BUDGET"]

STRIP_FLAGS = ("STRIP_PLAN", "REFIT_IDENTICAL")
STREAMING_FLAG = "WEIGHT_STREAMING"
AUTO_BUDGET = -1  # TensorRT's own choice (get_weight_streaming_automatic_budget)


class WeightsError(RuntimeError):
    """The weights an engine needs are not the ones at hand, or a budget cannot hold them."""


def builder_flags(options: Mapping[str, Any]) -> list[str]:
    """The BuilderFlag names the weight options of a build ask for, for both TensorRT
    libraries (full TensorRT and TensorRT for RTX spell them alike)."""
    flags = list(STRIP_FLAGS) if options.get("strip_weights") else []
    if options.get("weight_streaming"):
        flags.append(STREAMING_FLAG)
    return flags


def weights_record(folder: str | Path, graph: str, graph_sha256: str,
                   options: Mapping[str, Any]) -> dict[str, Any]:
    """The sidecar's "weights": whether the plan holds them and, when it does not, the
    file a refit reads them from with its sha256 (the graph itself when its weights are
    embedded). The sha256 comes from the manifest's records (no hashing here)."""
    stripped = bool(options.get("strip_weights"))
    rec: dict[str, Any] = {"stripped": stripped, "streaming": bool(options.get(
        "weight_streaming")), "refit_from": graph if stripped else None}
    if not stripped:
        return rec
    folder = Path(folder)
    data = [e for e in graph_records(folder, load_manifest(folder), graph)
            if str(e.get("name", "")).endswith(EXTERNAL_DATA_SUFFIX)]
    if data:
        rec["file"], rec["sha256"] = str(data[0]["name"]), data[0].get("sha256") or \
            sha256_file(folder / str(data[0]["name"]))
    else:
        rec["file"], rec["sha256"] = graph, graph_sha256
    return rec


def check_refit_weights(folder: str | Path, sidecar: Mapping[str, Any]) -> Path | None:
    """For a stripped engine, the graph to refit it from, after checking that the weights
    beside it are the ones the engine was built for (sha256 against the sidecar); None
    for an engine that carries its weights. Raises WeightsError naming both sha256."""
    rec = sidecar.get("weights") or {}
    if not rec.get("stripped"):
        return None
    folder = Path(folder)
    graph, file, want = folder / str(rec["refit_from"]), folder / str(rec["file"]), rec["sha256"]
    engine = sidecar.get("engine", "the engine")
    for p in (graph, file):
        if not p.is_file():
            raise WeightsError(f"{engine} was built without weights (--strip-weights) and is "
                               f"refitted from {p.name}, which is not in {folder}; copy the "
                               f"bucket's {rec['refit_from']} and {rec['file']} next to it")
    try:  # cached by inode: a 5 GB file is hashed once, not on every load
        verify_artifacts(folder, [{"name": str(rec["file"]), "sha256": want}], hashes=True)
    except ArtifactIntegrityError:
        got = sha256_file(file)
        raise WeightsError(
            f"refusing to refit {engine}: it was built for weights sha256 {want}, but "
            f"{file} has sha256 {got} (weights of another export, or re-exported since); "
            f"restore the weights it was built from or rebuild it with `python cli.py "
            f"build-engine --strip-weights --bucket {folder}`") from None
    return graph


def refit_engine(trt: Any, engine: Any, logger: Any, graph: Path) -> float:
    """Fills a stripped engine's weights from ``graph`` (and its external data) with the
    ONNX parser refitter; returns the seconds it took."""
    t0 = time.perf_counter()
    refitter = trt.Refitter(engine, logger)
    parser = trt.OnnxParserRefitter(refitter, logger)
    if not parser.refit_from_file(str(graph)):
        errs = [str(parser.get_error(i)) for i in range(getattr(parser, "num_errors", 0))]
        raise WeightsError(f"TensorRT's ONNX refitter could not read the weights of {graph}: "
                           + ("; ".join(errs) or "see the TensorRT log"))
    if not refitter.refit_cuda_engine():
        missing = list(refitter.get_missing_weights()) if hasattr(
            refitter, "get_missing_weights") else []
        raise WeightsError(f"TensorRT could not refit the engine from {graph}"
                           + (f"; missing weights: {missing[:5]}" if missing else ""))
    return time.perf_counter() - t0


def apply_weight_budget(engine: Any, budget: int | None, engine_name: str) -> int | None:
    """Sets the engine's GPU weight budget in bytes (AUTO_BUDGET: TensorRT's automatic
    one) before a context is created; returns the budget set, None when none asked."""
    if budget is None:
        return None
    streamable = int(getattr(engine, "streamable_weights_size", 0) or 0)
    if streamable <= 0:
        raise WeightsError(f"{engine_name} cannot stream weights: it was built without "
                           f"WEIGHT_STREAMING; rebuild it with `python cli.py build-engine "
                           f"--weight-streaming`")
    if budget == AUTO_BUDGET:
        budget = int(engine.get_weight_streaming_automatic_budget())
    minimum = int(engine.minimum_weight_streaming_budget)
    if budget < minimum:
        raise WeightsError(f"weight budget {budget:,} bytes is below the minimum "
                           f"{minimum:,} bytes TensorRT reports for {engine_name}; give at "
                           f"least {minimum:,} (--weight-budget {-(-minimum // (1 << 20))}M)")
    engine.weight_streaming_budget_v2 = int(budget)
    return int(budget)
