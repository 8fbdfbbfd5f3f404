"""`infer --server`: send a clip's frames to the Python model of a Triton server (HTTP or
gRPC, tritonclient) and write the same files as local `infer` (runtime's writers).

The client picks the model itself: it asks the server for its ready models and takes
the vggt_mv Python model whose input is [T, N, ...] for the clip (or ``model``). That is
why the repository has no router model. One tritonclient client per thread: the HTTP
client is not safe to share between threads.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.errors import NotEnoughFramesError, RuntimeDataError, SizeMismatchError
from runtime.predictor import Prediction
from runtime.preprocess import decode_frame, discover_scene, select_views

from .repository import DERIVED_OUTPUTS

__all__ = ["ServingClientError", "RemoteClip", "TritonClient", "load_frames", "PROTOCOLS"]

PROTOCOLS = ("http", "grpc")


class ServingClientError(RuntimeError):
    """The server is unreachable, stopped answering, or refused the request."""


@dataclass
class RemoteClip:
    frames: np.ndarray                  # uint8 [T, N, H, W, C]
    times: list[int]
    views: list[int]
    frame_paths: list[list[str]]


def load_frames(folder: str | Path, T: int | None = None, N: int | None = None,
                t0: int = 0, views: Sequence[int] | None = None) -> RemoteClip:
    """Decode the clip's frames (the same selection rules as local infer) into one uint8
    array; preprocessing happens on the server."""
    scene = discover_scene(folder)
    if views is not None and N is None:
        N = len(views)
    T = scene.num_times - t0 if T is None else int(T)
    N = scene.num_views if N is None else int(N)
    if t0 < 0 or T < 1 or t0 + T > scene.num_times:
        raise NotEnoughFramesError(f"scene {scene.root} has {scene.num_times} time steps; "
                                   f"the clip t0={t0}, T={T} needs {t0 + T}")
    chosen = select_views(scene, N, views)
    times = scene.times[t0:t0 + T]
    paths = [[scene.frame_path(t, v) for v in chosen] for t in times]
    # local infer's decoder (16-bit PNGs scaled, not clipped to white)
    arrays = [decode_frame(p) for row in paths for p in row]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise SizeMismatchError(f"frames of one clip must share a size and mode; "
                                f"{scene.root} has {sorted(shapes)}")
    frames = np.stack(arrays).reshape((T, N) + arrays[0].shape)
    return RemoteClip(frames, [int(t) for t in times], [int(v) for v in chosen],
                      [[str(p) for p in row] for row in paths])


def _parse_url(url: str, protocol: str | None) -> tuple[str, str]:
    for scheme in PROTOCOLS:
        if url.startswith(scheme + "://"):
            return url[len(scheme) + 3:].rstrip("/"), protocol or scheme
    return url.rstrip("/"), protocol or "http"


class TritonClient:
    """One tritonclient connection (use one per thread)."""

    def __init__(self, url: str, protocol: str | None = None, timeout: float = 120.0):
        self.url, self.protocol = _parse_url(url, protocol)
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be http or grpc, got {self.protocol!r}")
        self.timeout = timeout
        try:
            if self.protocol == "http":
                import tritonclient.http as tc  # noqa: PLC0415 - optional dependency
            else:
                import tritonclient.grpc as tc  # noqa: PLC0415
            from tritonclient.utils import InferenceServerException  # noqa: PLC0415
        except ImportError as e:
            raise ServingClientError(
                f"tritonclient is not installed here ({e}); use the serving environment "
                f"(.venv-serving/bin/python cli.py infer --server ...) or "
                f"`pip install 'tritonclient[http,grpc]'`") from e
        self.tc, self.error_type = tc, InferenceServerException
        kw = ({"connection_timeout": timeout, "network_timeout": timeout}
              if self.protocol == "http" else {})
        self.client = tc.InferenceServerClient(self.url, **kw)
        # gRPC calls take their deadline per call (HTTP's is set on the client above).
        self._grpc = ({"as_json": True, "client_timeout": timeout}
                      if self.protocol == "grpc" else {})

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self.error_type as e:
            raise ServingClientError(f"{what} on {self.protocol}://{self.url} failed: "
                                     f"{e.message() if hasattr(e, 'message') else e}") from e
        except Exception as e:  # noqa: BLE001 - socket / gevent / grpc errors differ
            raise ServingClientError(f"{what} on {self.protocol}://{self.url} failed: "
                                     f"server unreachable or stopped "
                                     f"({type(e).__name__}: {e})") from e

    def _config(self, name: str) -> dict[str, Any]:
        cfg = self._call("model config", self.client.get_model_config, name, **self._grpc)
        return cfg["config"] if self.protocol == "grpc" else cfg

    def choose_model(self, T: int, N: int, model: str | None = None) -> tuple[str, dict]:
        """The ready Python model whose frames input is [T, N, ...] (or ``model``)."""
        if model:
            return model, self._config(model)
        index = self._call("repository index", self.client.get_model_repository_index,
                           **self._grpc)
        if isinstance(index, dict):
            index = index.get("models", [])
        seen = []
        for m in index:
            if m.get("state") != "READY":
                continue
            cfg = self._config(m["name"])
            if cfg.get("backend") != "python":
                continue
            dims = [int(d) for d in cfg["input"][0]["dims"]]
            seen.append(f"{m['name']} (T={dims[0]}, N={dims[1]})")
            if dims[:2] == [T, N]:
                return m["name"], cfg
        raise ServingClientError(f"no ready vggt_mv model for T={T}, N={N} on "
                                 f"{self.url}; ready: {', '.join(seen) or 'none'}")

    def infer_frames(self, model: str, frames: np.ndarray,
                     outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """frames uint8 [b, T, N, H, W, C] -> {output: [b, ...]}."""
        inp = self.tc.InferInput("frames", list(frames.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(frames, dtype=np.uint8))
        if self.protocol == "http":
            req = [self.tc.InferRequestedOutput(o, binary_data=True) for o in outputs]
            res = self._call("inference", self.client.infer, model, [inp], outputs=req)
        else:
            req = [self.tc.InferRequestedOutput(o) for o in outputs]
            res = self._call("inference", self.client.infer, model, [inp], outputs=req,
                             client_timeout=self.timeout)
        return {o: res.as_numpy(o) for o in outputs}

    def predict(self, clip: RemoteClip, model: str | None = None) -> Prediction:
        T, N = clip.frames.shape[:2]
        name, cfg = self.choose_model(T, N, model)
        outputs = [o["name"] for o in cfg["output"]]
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        t0 = time.perf_counter()
        got = self.infer_frames(name, clip.frames[None], outputs)
        seconds = time.perf_counter() - t0
        raw = {k: v for k, v in got.items() if k not in DERIVED_OUTPUTS}  # batch axis kept
        one = {k: v[0] for k, v in got.items()}
        missing = {"points", "confidence", "conf_mask", "colors"} - set(one)
        if missing:
            raise RuntimeDataError(f"model {name} did not return {sorted(missing)}; is it a "
                                   f"repository written by export-triton?")
        return Prediction(
            bucket=params.get("bucket", name), backend="triton", outputs=raw,
            backend_detail=f"triton {name} over {self.protocol}://{self.url}",
            colors=one["colors"], extrinsics=one.get("extrinsics"),
            intrinsics=one.get("intrinsics"),
            depth=one["depth"][..., 0] if "depth" in one else None,
            confidence=one["confidence"], points=one["points"],
            points_source=params.get("points_from", "depth"),
            conf_mask=one["conf_mask"].astype(bool), times=clip.times, views=clip.views,
            frame_paths=clip.frame_paths, timing={"inference": seconds},
            # the server preprocesses like local infer: cameras map back to the sent size
            src_hw=(int(clip.frames.shape[2]), int(clip.frames.shape[3])))

    def statistics(self, model: str) -> dict[str, Any]:
        return self._call("statistics", self.client.get_inference_statistics, model,
                          **self._grpc)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "TritonClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
