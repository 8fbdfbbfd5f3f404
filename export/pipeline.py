"""The `export` command's job, as a function: model + buckets -> validated artifacts.

Kept out of cli.py so tests and other tools (calibration, checks) call the same code.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .buckets import Bucket
from .compare import PROFILES, Tolerance, compare_outputs, format_table
from .validate import run_onnx
from runtime.graphs import (  # noqa: F401 - AVAILABLE_MEMORY_ENV, available_memory_bytes: export's API
    AVAILABLE_MEMORY_ENV,
    DENSE_FRACTION,
    available_memory_bytes,
    dense_logits_bytes,
)
from runtime.layout import graph_has_plugins


class ValidationError(RuntimeError):
    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


@dataclass
class ExportOptions:
    opset: int = 20
    validate: bool = True
    inputs: str = "random"          # "random" or a folder laid out like mv_scene
    seed: int = 0
    tolerance: Tolerance | None = None
    graphs: tuple[str, ...] = ("model.onnx", "model.native.onnx", "model.plugins.onnx")
    threads: int | None = None
    extra_manifest: dict[str, Any] = field(default_factory=dict)


def validation_feeds(bucket: Bucket, inputs: str, seed: int = 0) -> tuple[dict, str]:
    """Real frames from a folder when given (first T time steps, first N views), else
    seeded uniform noise; returns (feeds, description)."""
    if inputs in ("", "random", None):
        from .exporter import example_inputs

        return example_inputs(bucket, seed), f"random uniform [0, 1), seed {seed}"
    from runtime.preprocess import load_clip

    clip = load_clip(inputs, 0, bucket.T, 1 if bucket.single_view else bucket.N,
                     (bucket.H, bucket.W), with_masks=bucket.ext_mask)
    images = np.ascontiguousarray(clip["images"], dtype=np.float32)
    feeds = {"images": images[:, :, 0] if bucket.single_view else images}
    if bucket.ext_mask:
        m = np.ascontiguousarray(clip["ext_mask"], dtype=np.float32)
        feeds["ext_mask"] = m[:, :, 0] if bucket.single_view else m
    return feeds, f"real frames from {inputs} (t 0..{bucket.T - 1})"


def dense_attention_bytes(config, bucket: Bucket) -> int:
    """Largest logits tensor the portable graph materializes (runtime.graphs holds the one
    formula: infer's default graph choice applies the same bound)."""
    return dense_logits_bytes(config.to_dict(), bucket)


# model.onnx's dense attention is validated only while its logits take at most this share
# of the available memory (the tiled plugin graph is validated either way).
DENSE_SKIP_FRACTION = DENSE_FRACTION


def dense_validation_fits(config, bucket: Bucket, available: int) -> bool:
    return dense_attention_bytes(config, bucket) <= DENSE_SKIP_FRACTION * available


def make_validator(model, bucket: Bucket, opts: ExportOptions,
                   log: Callable[[str], None],
                   feeds_desc: tuple[dict, str] | None = None) -> Callable[[Path, dict], dict]:
    """The validation step of one bucket; ``feeds_desc`` are its inputs when already read
    (export_buckets reads --input before tracing, so a bad folder fails in seconds)."""
    from .exporter import torch_outputs

    def validate(folder: Path, manifest: dict) -> dict:
        feeds, desc = feeds_desc or validation_feeds(bucket, opts.inputs, opts.seed)
        t0 = time.perf_counter()
        ref = torch_outputs(model, bucket, feeds)
        report: dict[str, Any] = {"inputs": desc, "torch_seconds": time.perf_counter() - t0,
                                  "graphs": {}}
        failed = []
        for g in opts.graphs:
            # onnxruntime's CPU Attention kernel builds the L x S logits too
            if g in ("model.onnx", "model.native.onnx"):
                need, have = dense_attention_bytes(model.config, bucket), available_memory_bytes()
                if not dense_validation_fits(model.config, bucket, have):
                    msg = (f"skipped: its dense attention needs ~{need / 2**30:.0f} GiB per node, "
                           f"{have / 2**30:.0f} GiB available; model.plugins.onnx (tiled CPU "
                           f"reference) is validated instead, and model.onnx can be validated "
                           f"at a smaller bucket with the same weights")
                    log(f"{bucket.name}: {g} validation {msg}")
                    report["graphs"][g] = {"skipped": msg}
                    continue
            t0 = time.perf_counter()
            got = run_onnx(folder / g, feeds,
                           plugins=graph_has_plugins(g, manifest.get("attention_sites")),
                           threads=opts.threads)
            secs = time.perf_counter() - t0
            profile = PROFILES["fp32"] if opts.tolerance is None else \
                PROFILES["fp32"].override(opts.tolerance)
            rows = compare_outputs(ref, got, profile)
            log(format_table(rows, f"{bucket.name}: {g} (onnxruntime CPU) vs PyTorch, {desc}"))
            report["graphs"][g] = {"seconds": round(secs, 2),
                                   "rows": [r.to_dict() for r in rows],
                                   "passed": all(r.passed for r in rows)}
            if not all(r.passed for r in rows):
                failed.append(g)
        report["passed"] = not failed
        if failed:
            raise ValidationError(f"{bucket.name}: {', '.join(failed)} outside tolerance "
                                  f"(see the table above); nothing was written", report)
        return report

    return validate


def read_validation_inputs(buckets: list[Bucket], opts: ExportOptions
                           ) -> dict[str, tuple[dict, str]]:
    """Every bucket's validation inputs, read up front (before the model is built or
    traced): a missing, short or unreadable --input folder is reported in seconds, not
    after minutes of export."""
    if not opts.validate:
        return {}
    return {b.name: validation_feeds(b, opts.inputs, opts.seed) for b in buckets}


def export_buckets(model, buckets: list[Bucket], out_root: Path, opts: ExportOptions,
                   weights: dict[str, Any], log: Callable[[str], None] = print,
                   rule: Callable[[str], None] | None = None,
                   feeds: dict[str, tuple[dict, str]] | None = None) -> list:
    """The `export` command's loop: every bucket exported (and validated) atomically, with a
    progress bar per bucket's steps. Stops at the first bucket that fails (ValidationError,
    ExportError, ...): the buckets before it are complete, nothing of it is written."""
    from tqdm import tqdm

    from . import exporter
    from .exporter import export_bucket
    from .shared_weights import weight_hashes

    inputs = feeds if feeds is not None else read_validation_inputs(buckets, opts)
    # read at call time: tests lower the threshold to share a tiny model's weights
    large = exporter._param_bytes(model) > exporter.EXTERNAL_DATA_BYTES
    known = weight_hashes(model) if large else None
    results = []
    bar = tqdm(buckets, desc="buckets", unit="bucket", disable=len(buckets) < 2)
    for bucket in bar:
        (rule or log)(bucket.name)
        steps = tqdm(total=4 + int(opts.validate) + int(large), desc=bucket.name, unit="step",
                     leave=False)
        started: list[str] = []

        def step(name: str) -> None:
            # Called when a step begins: the previous one is complete.
            if started:
                steps.update(1)
            started.append(name)
            steps.set_postfix_str(name)

        try:
            res = export_bucket(model, bucket, out_root, opset=opts.opset, weights=weights,
                                step=step, log=log, known_weights=known,
                                validate_fn=make_validator(model, bucket, opts, log,
                                                           inputs[bucket.name])
                                if opts.validate else None)
        finally:
            steps.update(steps.total - steps.n)
            steps.close()
        results.append(res)
    return results
