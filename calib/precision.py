"""make_precision: a bucket's portable FP32 graph -> FP16 or INT8 graph -> surgery ->
accuracy measured on held-out real clips -> precision_<mode>.json.

Order matters: convert/quantize the portable graph (standard ops + vggt_mv.fn functions),
then surgery, so the converters never see plugin ops and every attention site survives
(the surgery checks the count against the manifest).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from export.compare import (
    Profile,
    Tolerance,
    compare_outputs,
    evaluate,
    format_table,
    load_profiles,
    relative_errors,
)
from export.exporter import EXTERNAL_DATA_BYTES
from export.surgery import surgery
from export.validate import run_onnx
from plugins import contract
from runtime.layout import (
    EXTERNAL_DATA_SUFFIX,
    PORTABLE_GRAPH,
    Bucket,
    atomic_path,
    atomic_write_json,
    file_entry,
    graph_records,
    graph_has_plugins,
    load_manifest,
    native_graph,
    plugin_graph,
    portable_graph,
    precision_report,
    sha256_file,
    verify_artifacts,
)
from runtime.layout import _test_kill  # fault-injection hook (tests/test_faults.py)

from .graph_utils import DEFAULT_EXCLUDE
from .quantize import stack_batches

MODES = ("fp16", "int8")

class PrecisionError(RuntimeError):
    pass


def graph_names(mode: str) -> tuple[str, str, str]:
    """(portable, native, plugin) graph of a precision: the order quantize writes them."""
    return portable_graph(mode), native_graph(mode), plugin_graph(mode)


def _invalidate_previous(bucket: Path, mode: str, log: Callable[[str], None]) -> None:
    """The precision report is quantize's commit marker, written last: remove the old one
    before any graph is replaced, so a run killed midway leaves graphs that no report
    vouches for (refused on load: "re-run quantize") instead of new graphs beside the old
    report's figures. Scratch files of a killed run are removed here too."""
    rep = bucket / precision_report(mode)
    names = graph_names(mode)
    for p in sorted(bucket.iterdir()):
        if p.name.startswith(tuple(f".{n}." for n in names)) and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)
            log(f"removed {p.name}, left by an interrupted quantize")
    if rep.is_file():
        rep.unlink()
    elif any((bucket / n).is_file() for n in names):
        log(f"replacing {' and '.join(n for n in names if (bucket / n).is_file())}: they have "
            f"no {rep.name} (an interrupted quantize)")


def _feeds_from_set(images: np.ndarray, masks: np.ndarray | None, manifest: dict
                    ) -> list[dict[str, np.ndarray]]:
    want = manifest["inputs"]["images"]["shape"]
    feeds = []
    for k in range(images.shape[0]):
        img = images[k].astype(np.float32)
        if manifest["bucket"].get("single_view"):
            img = img[:, :, 0]
        if list(img.shape) != want:
            raise PrecisionError(f"calibration clips are {list(img.shape)} but bucket "
                                 f"{manifest['bucket']['name']} takes images {want}; build the "
                                 f"set with the bucket's T, N, height and width")
        f = {"images": img}
        if "ext_mask" in manifest["inputs"]:
            if masks is None:
                raise PrecisionError("bucket has an ext_mask input but the calibration set has "
                                     "no masks (build it with masks)")
            f["ext_mask"] = masks[k].astype(np.float32)
        feeds.append(f)
    return feeds


def _save(model: onnx.ModelProto, path: Path) -> None:
    # ByteSize() itself fails beyond protobuf's 2 GB limit: count tensor bytes instead.
    weights = sum(len(t.raw_data) or 4 * max(len(t.float_data), len(t.int32_data))
                  for t in model.graph.initializer)
    large = _has_external(model) or weights > EXTERNAL_DATA_BYTES
    with atomic_path(path) as tmp:
        if large:
            # external data is written next to tmp under the final name: only the graph moves
            onnx.save(model, str(tmp), save_as_external_data=True,
                      all_tensors_to_one_file=True, location=path.name + EXTERNAL_DATA_SUFFIX)
        else:
            onnx.save(model, str(tmp))


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v


def _has_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def make_precision(bucket_dir: str | Path, mode: str, calib_npz: str | Path | None = None,
                   holdout_fraction: float = 0.34, exclude=DEFAULT_EXCLUDE,
                   tolerances: dict[str, Tolerance] | None = None,
                   log: Callable[[str], None] = print, backend: str = "auto",
                   method: str = "entropy", profiles_json: str | Path | None = None
                   ) -> dict[str, Any]:
    """Writes model.<mode>.onnx, model.<mode>.native.onnx, model.<mode>.plugins.onnx and
    precision_<mode>.json.

    The `holdout_fraction` of the calibration set's clips that start last (at least one;
    calib.dataset.split_indices) never reach the calibrator; accuracy vs the FP32 model.onnx is measured on them. `backend` and
    `method` apply to INT8 (quantize.BACKENDS / CALIBRATION_METHODS). The verdict is
    `check`'s: the precision's profile (overridable by ``profiles_json``, as check
    --profiles) with its tensor tolerances and task limits.
    """
    if mode not in MODES:
        raise PrecisionError(f"mode must be one of {MODES}")
    bucket = Path(bucket_dir)
    load_profiles(profiles_json)  # a bad --profiles file fails before any work
    manifest = load_manifest(bucket)
    src = bucket / PORTABLE_GRAPH
    # a truncated / bit-flipped model.onnx is named here, not by protobuf's DecodeError
    verify_artifacts(bucket, graph_records(bucket, manifest, PORTABLE_GRAPH))
    t0 = time.perf_counter()
    clips_info: dict[str, Any] = {}
    calib_feeds: list[dict] = []
    eval_feeds: list[dict] = []
    if calib_npz is not None:
        from .dataset import load_calibration_set, split_indices

        b = manifest["bucket"]
        from runtime.errors import CalibrationSetError

        try:
            data = load_calibration_set(calib_npz, T=b["T"],
                                        N=1 if b.get("single_view") else b["N"],
                                        size_hw=(b["H"], b["W"]),
                                        require_masks=bool(b.get("ext_mask")))
        except CalibrationSetError as e:
            raise PrecisionError(f"calibration set does not fit bucket {b['name']}: {e}; "
                                 f"rebuild it: python cli.py calibrate --bucket {bucket}") from e
        feeds = _feeds_from_set(data["images"], data.get("masks"), manifest)
        calib_idx, held_idx = split_indices(data["clips"], holdout_fraction)
        calib_feeds = [feeds[i] for i in calib_idx]
        eval_feeds = [feeds[i] for i in held_idx]
        clips_info = {"calibration_set": str(calib_npz), "sha256": sha256_file(calib_npz),
                      "calibration_clips": len(calib_feeds), "held_out_clips": len(eval_feeds),
                      # (first time step, views) of each clip, as sampled by calib/dataset.py
                      "calibration_clip_ids": [list(map(_plain, data["clips"][i]))
                                               for i in calib_idx],
                      "held_out_clip_ids": [list(map(_plain, data["clips"][i]))
                                            for i in held_idx],
                      "content_sha256": data["meta"].get("content_sha256")}
    if mode == "int8" and not calib_feeds:
        raise PrecisionError("INT8 needs a calibration set: python cli.py calibrate --bucket "
                             f"{bucket} --input ../shared/data/mv_scene")
    if not eval_feeds:
        from export.exporter import example_inputs

        eval_feeds = [example_inputs(Bucket.from_dict(manifest["bucket"]), seed=1)]
        clips_info.setdefault("evaluation", "seeded random inputs (no calibration set given)")

    large = _has_external(onnx.load(str(src), load_external_data=False))
    _invalidate_previous(bucket, mode, log)
    if mode == "fp16":
        from .fp16 import convert_fp16

        from export.shared_weights import load_model  # reads the hard-linked shared file

        model, conv = convert_fp16(load_model(src), exclude)
    else:
        from .quantize import quantize_int8

        log(f"calibrating INT8 ({backend}) on {len(calib_feeds)} real clips")
        model, conv = quantize_int8(src, calib_feeds, exclude, backend=backend, method=method,
                                    large=large, log=log)
    portable_name, native_name, plugin_name = graph_names(mode)
    _save(model, bucket / portable_name)
    del model
    sites = {contract.BIASED_OP: manifest["attention_sites"][contract.BIASED_OP],
             contract.SPARSE_OP: manifest["attention_sites"][contract.SPARSE_OP]}
    converted = onnx.load(str(bucket / portable_name), load_external_data=False)
    reports = {}
    # Both routes from the one converted graph: the same FP16 casts / INT8 Q/DQ in each.
    # Same folder as the portable graph: their external-data references stay valid.
    for name, route in ((native_name, "native"), (plugin_name, "plugin")):
        out, reports[route] = surgery(converted, sites, route=route)
        with atomic_path(bucket / name) as tmp_graph:
            onnx.save(out, str(tmp_graph))
        del out
    del converted
    _test_kill("quantize-graphs-written")

    # Against the FP32 graph on real frames: the same per-precision profile `check` uses.
    base = load_profiles(profiles_json)[mode]
    profile = Profile(**{**base.to_dict(), "per_output": {
        **base.per_output, **{k: (v.atol, v.rtol) for k, v in (tolerances or {}).items()}}})
    refs = [run_onnx(src, f, plugins=False) for f in eval_feeds]
    results: dict[str, Any] = {}
    passed = True
    for graph in (portable_name, native_name, plugin_name):
        plugins = graph_has_plugins(graph, manifest["attention_sites"])
        gots = [run_onnx(bucket / graph, f, plugins=plugins) for f in eval_feeds]
        ref, got = stack_batches(refs), stack_batches(gots)
        rows = compare_outputs(ref, got, profile)
        log(format_table(rows, f"{bucket.name}: {graph} vs FP32 model.onnx "
                               f"({len(eval_feeds)} held-out input(s))"))
        # One verdict with `check`: tensor tolerances and the task limits (rotation,
        # translation direction, depth AbsRel / delta1.25) per held-out clip, a failure
        # on any clip failing the graph.
        per_clip = [evaluate(r, g, profile) for r, g in zip(refs, gots)]
        failures = sorted({f for e in per_clip for f in e["failures"]})
        for f in failures:
            log(f"  FAIL {graph}: {f}")
        results[graph] = {"rows": [r.to_dict() for r in rows],
                          "relative": relative_errors(ref, got),
                          "task": [e["task"] for e in per_clip], "failures": failures,
                          "passed": not failures}
        passed &= results[graph]["passed"]
    record = {
        "mode": mode, "bucket": manifest["bucket"], "source": file_entry(src, bucket),
        "files": [file_entry(bucket / g, bucket)
                  for g in (portable_name, native_name, plugin_name,
                            portable_name + EXTERNAL_DATA_SUFFIX)
                  if (bucket / g).is_file()],
        "conversion": conv, "excluded_patterns": list(exclude), "calibration": clips_info,
        "tolerances": {k: [profile.tol(k).atol, profile.tol(k).rtol] for k in refs[0]},
        "surgery": reports["plugin"].to_dict(),
        "native_surgery": reports["native"].to_dict(), "accuracy_vs_fp32": results, "passed": passed,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(bucket / precision_report(mode), record)
    return record
