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

from export.artifacts import file_entry, sha256_file, write_json_atomic
from export.exporter import EXTERNAL_DATA_BYTES, load_manifest
from export.surgery import surgery
from export.validate import Tolerance, compare_outputs, format_table, run_onnx
from plugins import contract

from .graph_utils import DEFAULT_EXCLUDE
from .quantize import stack_batches

MODES = ("fp16", "int8")

# Against the FP32 graph on real frames. Depth / confidences pass through exp(), points
# through inv_log: relative error is the meaningful scale there.
TOLERANCES = {
    "fp16": {"pose_enc": Tolerance(5e-2, 5e-2), "depth": Tolerance(5e-2, 5e-2),
             "depth_conf": Tolerance(5e-2, 5e-2), "world_points": Tolerance(5e-2, 5e-2),
             "world_points_conf": Tolerance(5e-2, 5e-2), "dynamic_mask": Tolerance(2e-2, 5e-2)},
    "int8": {"pose_enc": Tolerance(2e-1, 2e-1), "depth": Tolerance(2e-1, 2e-1),
             "depth_conf": Tolerance(2e-1, 2e-1), "world_points": Tolerance(2e-1, 2e-1),
             "world_points_conf": Tolerance(2e-1, 2e-1), "dynamic_mask": Tolerance(1e-1, 2e-1)},
}


class PrecisionError(RuntimeError):
    pass


def graph_names(mode: str) -> tuple[str, str]:
    return f"model.{mode}.onnx", f"model.{mode}.plugins.onnx"


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
    tmp = path.with_name(f".{path.name}.partial")
    # ByteSize() itself fails beyond protobuf's 2 GB limit: count tensor bytes instead.
    weights = sum(len(t.raw_data) or 4 * max(len(t.float_data), len(t.int32_data))
                  for t in model.graph.initializer)
    large = _has_external(model) or weights > EXTERNAL_DATA_BYTES
    if large:
        onnx.save(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data")
        # external data was written next to tmp under the final name: only the graph moves
    else:
        onnx.save(model, str(tmp))
    tmp.replace(path)


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v


def relative_errors(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, Any]:
    """Scale-free errors per output: ||got - ref|| / ||ref||, and for the geometric
    outputs the quantities users look at (pose_enc split into translation / rotation /
    field of view; depth as median and 95th percentile |d - d_ref| / d_ref)."""
    out: dict[str, Any] = {}
    for k, r in ref.items():
        r64, g64 = r.astype(np.float64), got[k].astype(np.float64)
        out[k] = {"rel_l2": float(np.linalg.norm(g64 - r64) / max(np.linalg.norm(r64), 1e-12))}
    if "pose_enc" in ref:
        r, g = ref["pose_enc"].astype(np.float64), got["pose_enc"].astype(np.float64)
        for part, sl in (("translation", slice(0, 3)), ("quaternion", slice(3, 7)),
                         ("fov", slice(7, 9))):
            d = np.linalg.norm(g[..., sl] - r[..., sl], axis=-1)
            n = np.linalg.norm(r[..., sl], axis=-1)
            out["pose_enc"][f"{part}_rel_max"] = float((d / np.maximum(n, 1e-6)).max())
    if "depth" in ref:
        r, g = ref["depth"].astype(np.float64), got["depth"].astype(np.float64)
        rel = np.abs(g - r) / np.maximum(np.abs(r), 1e-6)
        out["depth"]["rel_median"] = float(np.median(rel))
        out["depth"]["rel_p95"] = float(np.percentile(rel, 95))
    return out


def _has_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def make_precision(bucket_dir: str | Path, mode: str, calib_npz: str | Path | None = None,
                   holdout_fraction: float = 0.34, exclude=DEFAULT_EXCLUDE,
                   tolerances: dict[str, Tolerance] | None = None,
                   log: Callable[[str], None] = print, backend: str = "auto",
                   method: str = "entropy") -> dict[str, Any]:
    """Writes model.<mode>.onnx, model.<mode>.plugins.onnx and precision_<mode>.json.

    The last `holdout_fraction` of the calibration set's clips (at least one) never reach
    the calibrator; accuracy vs the FP32 model.onnx is measured on them. `backend` and
    `method` apply to INT8 (quantize.BACKENDS / CALIBRATION_METHODS).
    """
    if mode not in MODES:
        raise PrecisionError(f"mode must be one of {MODES}")
    bucket = Path(bucket_dir)
    manifest = load_manifest(bucket)
    src = bucket / "model.onnx"
    t0 = time.perf_counter()
    clips_info: dict[str, Any] = {}
    calib_feeds: list[dict] = []
    eval_feeds: list[dict] = []
    if calib_npz is not None:
        from .dataset import load_calibration_set

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
        n_hold = max(1, int(round(len(feeds) * holdout_fraction))) if len(feeds) > 1 else 0
        calib_feeds, eval_feeds = feeds[:len(feeds) - n_hold], feeds[len(feeds) - n_hold:]
        clips_info = {"calibration_set": str(calib_npz), "sha256": sha256_file(calib_npz),
                      "calibration_clips": len(calib_feeds), "held_out_clips": len(eval_feeds),
                      # (first time step, views) of each clip, as sampled by calib/dataset.py
                      "calibration_clip_ids": [list(map(_plain, c)) for c in
                                               data["clips"][:len(calib_feeds)]],
                      "held_out_clip_ids": [list(map(_plain, c)) for c in
                                            data["clips"][len(calib_feeds):]],
                      "content_sha256": data["meta"].get("content_sha256")}
    if mode == "int8" and not calib_feeds:
        raise PrecisionError("INT8 needs a calibration set: python cli.py calibrate "
                             f"{bucket} --scene ../shared/data/mv_scene")
    if not eval_feeds:
        from export.exporter import example_inputs
        from export.buckets import Bucket

        eval_feeds = [example_inputs(Bucket.from_dict(manifest["bucket"]), seed=1)]
        clips_info.setdefault("evaluation", "seeded random inputs (no calibration set given)")

    large = _has_external(onnx.load(str(src), load_external_data=False))
    if mode == "fp16":
        from .fp16 import convert_fp16

        model, conv = convert_fp16(onnx.load(str(src), load_external_data=True), exclude)
    else:
        from .quantize import quantize_int8

        log(f"calibrating INT8 ({backend}) on {len(calib_feeds)} real clips")
        model, conv = quantize_int8(src, calib_feeds, exclude, backend=backend, method=method,
                                    large=large, log=log)
    portable_name, plugin_name = graph_names(mode)
    _save(model, bucket / portable_name)
    plug, report = surgery(onnx.load(str(bucket / portable_name), load_external_data=False),
                           {contract.BIASED_OP: manifest["attention_sites"][contract.BIASED_OP],
                            contract.SPARSE_OP: manifest["attention_sites"][contract.SPARSE_OP]})
    # Same folder as the portable graph: its external-data references stay valid.
    tmp_plug = bucket / f".{plugin_name}.partial"
    onnx.save(plug, str(tmp_plug))
    tmp_plug.replace(bucket / plugin_name)

    tol = {**TOLERANCES[mode], **(tolerances or {})}
    refs = [run_onnx(src, f, plugins=False) for f in eval_feeds]
    results: dict[str, Any] = {}
    passed = True
    for graph, plugins in ((portable_name, False), (plugin_name, True)):
        gots = [run_onnx(bucket / graph, f, plugins=plugins) for f in eval_feeds]
        ref, got = stack_batches(refs), stack_batches(gots)
        rows = compare_outputs(ref, got, tol)
        log(format_table(rows, f"{bucket.name}: {graph} vs FP32 model.onnx "
                               f"({len(eval_feeds)} held-out input(s))"))
        results[graph] = {"rows": [r.to_dict() for r in rows],
                          "relative": relative_errors(ref, got),
                          "passed": all(r.passed for r in rows)}
        passed &= results[graph]["passed"]
    record = {
        "mode": mode, "bucket": manifest["bucket"], "source": file_entry(src, bucket),
        "files": [file_entry(bucket / g, bucket) for g in (portable_name, plugin_name)],
        "conversion": conv, "excluded_patterns": list(exclude), "calibration": clips_info,
        "tolerances": {k: [v.atol, v.rtol] for k, v in tol.items()},
        "surgery": report.to_dict(), "accuracy_vs_fp32": results, "passed": passed,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(bucket / f"precision_{mode}.json", record)
    return record
