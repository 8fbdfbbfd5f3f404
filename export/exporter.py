"""export_bucket: trace VGGT_MV at one fixed bucket into model.onnx + model.plugins.onnx.

Flow (each step writes into a scratch folder that replaces the bucket folder only when
everything succeeded):
  torch.onnx.export (dynamo) -> raw graph with one contract node per attention site
  -> portable.to_portable -> model.onnx (standard ops + vggt_mv.fn local functions)
  -> surgery.surgery      -> model.plugins.onnx (TensorRT plugin nodes)
  -> surgery.surgery(route="native") -> model.native.onnx (dense sites as ONNX Attention)
  -> onnx.checker on each -> manifest.json
Weights above ~2 GB go to one external file, model.onnx.data, that all graphs share,
written in one canonical layout so every bucket of the model holds the same file: one
copy on disk, hard-linked into each bucket (export/shared_weights.py).
"""
from __future__ import annotations

import contextlib
import io
import logging
import platform
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from torch import nn

from plugins import contract

from runtime.layout import (
    BENCH,
    CHECK_DIR,
    EXTERNAL_DATA_SUFFIX,
    MANIFEST,
    NATIVE_GRAPH,
    PLUGIN_GRAPH,
    PORTABLE_GRAPH,
    PRECISIONS,
    Bucket,
    _test_disk_full,
    atomic_directory,
    atomic_write_json,
    engine_filenames,
    file_entry,
    load_manifest,  # noqa: F401 - re-exported for export callers
    native_graph,
    plugin_graph,
    portable_graph,
    precision_report,
    sidecar_path_for,
)

from .portable import to_portable
from .shared_weights import link_into_store, prune_store, weight_hashes, write_canonical
from .surgery import surgery

MANIFEST_VERSION = 1
EXTERNAL_DATA_BYTES = 1_800_000_000
MIN_OPSET = 18  # torch.onnx's dynamo exporter writes opset 18 and later only
ONNX_IR_VERSION = 10  # onnxruntime 1.31 reads <= 13; TensorRT 10.3's parser <= 10


class ExportError(RuntimeError):
    pass


def output_names(model: nn.Module, bucket: Bucket) -> list[str]:
    cfg = model.config
    names = []
    if cfg.heads.camera:
        names.append("pose_enc")
    if cfg.heads.depth:
        names += ["depth", "depth_conf"]
    if cfg.heads.point:
        names += ["world_points", "world_points_conf"]
    if cfg.mask_head or bucket.ext_mask:
        names.append("dynamic_mask")
    return names


def input_names(bucket: Bucket) -> list[str]:
    return ["images", "ext_mask"] if bucket.ext_mask else ["images"]


class ExportWrapper(nn.Module):
    """Fixed input/output signature: tensors only, outputs users consume, in order."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, images: torch.Tensor, ext_mask: torch.Tensor | None = None):
        out = self.model(images, ext_mask)
        return tuple(out[n] for n in self.names)


def example_inputs(bucket: Bucket, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {"images": rng.random(bucket.images_shape, dtype=np.float32)}
    if bucket.ext_mask:
        feeds["ext_mask"] = (rng.random(bucket.mask_shape) > 0.7).astype(np.float32)
    return feeds


def torch_outputs(model: nn.Module, bucket: Bucket, feeds: dict[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
    names = output_names(model, bucket)
    args = [torch.from_numpy(feeds[n]) for n in input_names(bucket)]
    with torch.no_grad():
        outs = ExportWrapper(model, names).eval()(*args)
    return {n: o.float().numpy() for n, o in zip(names, outs)}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@dataclass
class BucketResult:
    bucket: Bucket
    folder: Path
    manifest: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)


def export_bucket(model: nn.Module, bucket: Bucket, out_root: str | Path, *,
                  opset: int = 20, weights: dict[str, Any] | None = None,
                  log: Callable[[str], None] = print,
                  step: Callable[[str], None] | None = None,
                  validate_fn: Callable[[Path, dict], dict] | None = None,
                  known_weights: set[str] | None = None) -> BucketResult:
    """Exports one bucket into out_root/<bucket.name>/ atomically and returns its result.

    validate_fn(folder, manifest) runs inside the scratch folder before it is published,
    so a bucket that fails validation is never written (it raises). ``known_weights``
    (shared_weights.weight_hashes of the model) saves re-hashing the weights per bucket.
    """
    bucket.validate(model.config.patch_size)
    model.eval()
    model.prepare(bucket.H, bucket.W)
    step = step or (lambda s: None)
    names_in, names_out = input_names(bucket), output_names(model, bucket)
    sites = model.attention_sites(bucket.images_shape, with_ext_mask=bucket.ext_mask)
    expected = {contract.BIASED_OP: sites["biased_attention"],
                contract.SPARSE_OP: sites["sparse_attention"]}
    final = Path(out_root) / bucket.name
    timings: dict[str, float] = {}
    large = _param_bytes(model) > EXTERNAL_DATA_BYTES

    with atomic_directory(final) as tmp:
        t0 = time.perf_counter()
        step("trace + export (torch.onnx, dynamo)")
        feeds = example_inputs(bucket)
        args = tuple(torch.from_numpy(feeds[n]) for n in names_in)
        wrapper = ExportWrapper(model, names_out).eval()
        from .onnx_ops import translation_table

        sink = io.StringIO()
        # The exporter narrates every pass on stdout and warns about optional packages
        # (torchvision) we do not use; keep the user's terminal for our own progress.
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with torch.no_grad(), contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            prog = torch.onnx.export(
                wrapper, args, dynamo=True, opset_version=opset, optimize=True,
                input_names=names_in, output_names=names_out,
                custom_translation_table=translation_table(), verbose=False)
        raw_path = tmp / PORTABLE_GRAPH
        _test_disk_full("export-graph", raw_path)
        prog.save(str(raw_path), external_data=large)
        del prog
        timings["export"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        step("portable graph (model.onnx)")
        m = onnx.load(str(raw_path), load_external_data=False)
        m.ir_version = ONNX_IR_VERSION
        got = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
        if got != opset:  # torch.onnx falls back to its own opset when it cannot convert
            raise ExportError(f"asked for opset {opset}, torch.onnx wrote opset {got}; choose "
                              f"--opset between {MIN_OPSET} and {onnx.defs.onnx_opset_version()}")
        raw_sites = {op: [n.name for n in m.graph.node if n.op_type == op]
                     for op in contract.op_names()}
        m, counts = to_portable(m)
        if counts != expected:
            raise ExportError(f"exporter produced {counts} attention nodes, the model reports "
                              f"{expected}; an attention call escaped the custom ops")
        onnx.save(m, str(raw_path))
        _check(m, raw_path, large)

        step("graph surgery (model.plugins.onnx)")
        pm, report = surgery(m, expected, raw_sites)
        plug_path = tmp / PLUGIN_GRAPH
        onnx.save(pm, str(plug_path))
        _check(pm, plug_path, large)

        step("native attention (model.native.onnx)")
        nm, native_report = surgery(m, expected, raw_sites, route="native")
        native_path = tmp / NATIVE_GRAPH
        onnx.save(nm, str(native_path))
        _check(nm, native_path, large)
        del nm
        timings["surgery"] = time.perf_counter() - t0
        shared = None
        if large:
            step("shared weights (canonical model.onnx.data)")
            t0 = time.perf_counter()
            layout = write_canonical(tmp, (PORTABLE_GRAPH, PLUGIN_GRAPH, NATIVE_GRAPH),
                                     known_weights if known_weights is not None
                                     else weight_hashes(model))
            for g in (PORTABLE_GRAPH, PLUGIN_GRAPH, NATIVE_GRAPH):  # while the file has one link:
                _check(None, tmp / g, large)           # onnx's checker refuses several
            shared = layout.record()
            shared["store"] = link_into_store(tmp, layout, Path(out_root), log)
            timings["share_weights"] = time.perf_counter() - t0

        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "toolkit_version": _toolkit_version(),
            "bucket": bucket.to_dict(),
            "inputs": {n: {"shape": list(feeds[n].shape), "dtype": "float32"} for n in names_in},
            "outputs": {n: {"shape": list(o.shape), "dtype": "float32"}
                        for n, o in zip(names_out, _output_shapes(model, bucket, names_out))},
            "model_config": model.config.to_dict(),
            "weights": weights or {"source": "random init", "seed": None},
            "opset": opset,
            "ir_version": ONNX_IR_VERSION,
            "exporter": {"torch": torch.__version__, "onnx": onnx.__version__,
                         "dynamo": True, "python": platform.python_version()},
            "attention_sites": expected,
            "surgery": report.to_dict(),
            "native_surgery": native_report.to_dict(),
            "plugins": {op: {"plugin_version": contract.plugin_version(op),
                             "plugin_namespace": contract.PLUGIN_NAMESPACE,
                             "onnx_domain": contract.ONNX_DOMAIN}
                        for op in contract.op_names()},
            "contract_version": contract.CONTRACT_VERSION,
            "external_data": PORTABLE_GRAPH + EXTERNAL_DATA_SUFFIX if large else None,
            # recorded once here, not in "files": the same file is every bucket's
            "shared_weights": shared,
        }
        if validate_fn is not None:
            step("validate (onnxruntime vs PyTorch)")
            t0 = time.perf_counter()
            manifest["validation"] = validate_fn(tmp, manifest)
            timings["validate"] = time.perf_counter() - t0
        manifest["files"] = [file_entry(p, tmp) for p in sorted(tmp.iterdir())
                             if p.is_file() and not (shared and p.name == shared["name"])]
        manifest["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        manifest["seconds"] = {k: round(v, 2) for k, v in timings.items()}
        atomic_write_json(tmp / MANIFEST, manifest)
        _carry_over(final, tmp, log)
    prune_store(Path(out_root))  # the replaced bucket's weights, when nothing links them now
    return BucketResult(bucket, final, manifest, timings, manifest.get("validation", {}))


# What a re-export does with the files of the bucket it replaces. Everything made from the
# previous graphs is stale once they change, so it goes: quantized graphs and their
# precision reports, engines and sidecars, bench / check results. Whatever export and
# those steps do not make (notes, calibration sets, which depend only on the bucket's
# shape and frames) is copied into the new bucket. Both lists are printed.
# The names come from runtime/layout.py, the one home of a bucket's file names.
_EXPORT_OWN = {PORTABLE_GRAPH, PLUGIN_GRAPH, NATIVE_GRAPH, PORTABLE_GRAPH + EXTERNAL_DATA_SUFFIX,
               MANIFEST}
_MADE_FROM_GRAPHS = (
    {g for p in ("fp16", "int8") for g in (portable_graph(p), plugin_graph(p), native_graph(p),
                                            portable_graph(p) + EXTERNAL_DATA_SUFFIX)}
    | {precision_report(p) for p in ("fp16", "int8")}
    | {n for p in PRECISIONS for e in engine_filenames(p) for n in (e, sidecar_path_for(e).name)}
    | {BENCH, CHECK_DIR})


def _carry_over(old: Path, new: Path, log: Callable[[str], None]) -> None:
    import shutil

    if not old.is_dir():
        return
    dropped, kept = [], []
    for p in sorted(old.iterdir()):
        if p.name in _EXPORT_OWN or (new / p.name).exists():
            continue
        if p.name in _MADE_FROM_GRAPHS or p.name.startswith("."):  # hidden: scratch files
            dropped.append(p.name)
        elif p.is_dir():
            shutil.copytree(p, new / p.name, symlinks=True)
            kept.append(p.name + "/")
        else:
            shutil.copy2(p, new / p.name, follow_symlinks=False)
            kept.append(p.name)
    dropped = [d for d in dropped if not d.startswith(".")]  # scratch files: just gone
    if dropped:
        log(f"warning: re-export of {old.name} removes what was made from its previous "
            f"graphs (stale now): {', '.join(dropped)}; re-run quantize / build-engine "
            f"for them")
    if kept:
        log(f"re-export of {old.name} keeps files it does not make: {', '.join(kept)}")


def _check(m: onnx.ModelProto | None, path: Path, large: bool) -> None:
    try:
        if large:
            onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(m)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejected {path.name}: {e}") from e


def _output_shapes(model: nn.Module, bucket: Bucket, names: list[str]):
    with torch.device("meta"):
        from vggt_mv.models.vggt_mv import VGGTMV

        twin = VGGTMV(model.config)
        args = [torch.empty(bucket.images_shape)]
        if bucket.ext_mask:
            args.append(torch.empty(bucket.mask_shape))
        with torch.no_grad():
            outs = ExportWrapper(twin, names)(*args)
    return outs


def _toolkit_version() -> str:
    import vggt_mv

    return vggt_mv.__version__
