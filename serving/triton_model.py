"""Triton Python-backend model: frames -> VGGT_MV runtime -> poses, depth, points.

export-triton copies this file to <repo>/vggt_mv_<bucket>/1/model.py, next to a copy of
runtime/ and the bucket folder (bucket/), so the repository runs without the toolkit's
checkout. It runs inside Triton's Python-backend stub, whose interpreter sees neither
PYTHONPATH nor the caller's working directory: the model's own folder (and the
"extra_sys_path" parameter) are put on sys.path here.

One execute() receives every request the dynamic batcher grouped; each request holds
``frames`` uint8 [b, T, N, H, W, C] and is answered on its own, so one bad request fails
alone with an error that names the problem.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


REPO = HERE.parents[1]  # <repo>/<model>/1/model.py


def _extend_sys_path(extra: str) -> None:
    """The model's folder, then the config's extra paths, each inside the repository:
    a config must not make the server import code from elsewhere."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from runtime.layout import inside  # noqa: PLC0415 - the copy beside this file

    for p in [s for s in extra.split(os.pathsep) if s]:
        p = str(inside(REPO, p, source=HERE.parent / "config.pbtxt",
                       key="parameters.extra_sys_path"))
        if p not in sys.path:
            sys.path.insert(0, p)


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        _extend_sys_path(params.get("extra_sys_path", ""))
        import numpy as np  # noqa: PLC0415 - after sys.path is set
        import triton_python_backend_utils as pb_utils  # noqa: PLC0415

        from runtime.layout import inside  # noqa: PLC0415
        from runtime.predictor import Predictor  # noqa: PLC0415
        from runtime.preprocess import preprocess_rgb  # noqa: PLC0415

        self.np, self.pb, self.preprocess_rgb = np, pb_utils, preprocess_rgb
        pct = params.get("conf_percentile", "50")
        threads = params.get("threads") or None
        backend = params.get("backend", "onnx")
        plugins = params.get("plugins") or None
        self.predictor = Predictor(
            HERE / "bucket", backend=backend, graph="model.onnx",
            plugin_lib=inside(HERE, plugins, source=HERE.parent / "config.pbtxt",
                              key="parameters.plugins") if plugins else None,
            precision=params.get("precision") or None,
            threads=int(threads) if threads else None,
            conf_percentile=None if pct == "none" else float(pct),
            points_from=params.get("points_from", "auto"))
        entry = next(iter(self.predictor.index))
        self.spec = entry.spec
        self.outputs = [o["name"] for o in cfg["output"]]
        self.dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"])
                       for o in cfg["output"]}
        # Load the session now so the first request does not pay for it.
        self.predictor.session(entry)

    def _one_clip(self, frames):
        np = self.np
        T, N = frames.shape[:2]
        H, W = self.spec.H, self.spec.W
        images = np.empty((T, N, 3, H, W), np.float32)
        for t in range(T):
            for n in range(N):
                images[t, n] = self.preprocess_rgb(frames[t, n], (H, W))
        pred = self.predictor.predict_arrays(images)
        out = {k: v[0] for k, v in pred.outputs.items()}  # batch axis added back below
        if pred.extrinsics is not None:
            out["extrinsics"], out["intrinsics"] = pred.extrinsics, pred.intrinsics
        out["points"] = pred.points
        out["confidence"] = pred.confidence
        out["conf_mask"] = pred.conf_mask
        out["colors"] = pred.colors
        return out

    def _respond(self, request):
        np, pb = self.np, self.pb
        frames = pb.get_input_tensor_by_name(request, "frames").as_numpy()
        if frames.ndim != 6 or frames.shape[-1] not in (3, 4):
            raise ValueError(f"frames must be uint8 [batch, T, N, height, width, 3 or 4], "
                             f"got {list(frames.shape)}")
        clips = [self._one_clip(frames[i]) for i in range(frames.shape[0])]
        tensors = []
        for name in self.outputs:
            arr = np.stack([c[name] for c in clips]).astype(self.dtypes[name], copy=False)
            tensors.append(pb.Tensor(name, np.ascontiguousarray(arr)))
        return pb.InferenceResponse(output_tensors=tensors)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._respond(request))
            except Exception as e:  # noqa: BLE001 - reported to that request's client
                responses.append(self.pb.InferenceResponse(
                    error=self.pb.TritonError(f"vggt_mv {self.spec.name}: "
                                              f"{type(e).__name__}: {e}")))
        return responses

    def finalize(self):
        self.predictor.close()
