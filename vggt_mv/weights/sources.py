"""Reading checkpoint files without trusting them, and telling what kind of model they hold.

Every failure to read a file surfaces as a CheckpointError naming the file: the export CLI
prints its message as is, so a raw torch / safetensors traceback would be the only thing a
user sees about a bad download.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]

# What the loader accepts for one source: a file path, an in-memory state dict (optionally
# wrapped as {'model': ...}), or an opened source. The class is defined below.
CheckpointLike = Union[str, "os.PathLike[str]", Mapping[str, Any], "CheckpointSource"]

# Known model families. The loader decides which stage a file may serve from this.
KINDS = {
    "page4d": "PAGE-4D (VGGT-1B + aggregator.spatial_mask_head)",
    "vggt": "VGGT-1B (aggregator.* without a mask head)",
    "vggt_mv": "VGGT_MV (VGGT names plus VGGT_MV-only modules)",
    "pi3": "Pi3 (encoder.* / decoder.*)",
    "seed": "seed prototype vggt_t_mv (time_blocks / view_blocks / pose_time_blocks ...)",
    "unknown": "unrecognized tensor names",
}

# safetensors dtype codes -> torch dtype names, so both formats report alike.
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}

# DDP / torch.compile wrappers prepend these to every name.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(Exception):
    """A checkpoint file could not be read safely; the message names the file and why."""

    def __init__(self, path: Any, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        where = f"checkpoint {self.path}" if self.path else "checkpoint"
        super().__init__(f"{where}: {problem}")


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Streaming digest: checkpoints are several GB and must never be read whole."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


class CheckpointSource:
    """Names, shapes and (lazily) values of the tensors of one checkpoint."""

    format = "abstract"
    has_data = True

    def __init__(self, path: PathLike | None):
        self.path = str(path) if path is not None else None
        self.notes: list[str] = []
        self._sha: str | None = None
        self._kind: str | None = None

    # --- to implement
    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, name: str) -> str:
        raise NotImplementedError

    def _read(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    # --- shared
    def get(self, name: str) -> torch.Tensor:
        try:
            return self._read(name)
        except CheckpointError:
            raise
        except KeyError:
            raise CheckpointError(self.path, f"has no tensor named {name!r}") from None
        except Exception as e:  # lazy reads hit truncation only here
            raise CheckpointError(self.path, f"reading tensor {name!r} failed "
                                             f"({type(e).__name__}: {_first_line(e)})") from None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: self.shape(n) for n in self.names()}

    @property
    def kind(self) -> str:
        if self._kind is None:
            self._kind = detect_kind(self.names())
        return self._kind

    def sha256(self) -> str | None:
        if self._sha is None and self.path is not None and os.path.isfile(self.path):
            self._sha = sha256_file(self.path)
        return self._sha

    def num_params(self) -> int:
        total = 0
        for n in self.names():
            k = 1
            for d in self.shape(n):
                k *= d
            total += k
        return total

    def close(self) -> None:
        pass

    def __enter__(self) -> "CheckpointSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path or '(memory)'} {len(self.names())} tensors>"


class TensorDictSource(CheckpointSource):
    """A torch.load result, or an in-memory state dict."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], path: PathLike | None = None,
                 fmt: str = "memory"):
        super().__init__(path)
        self.format = fmt
        self._t = dict(tensors)

    def names(self) -> list[str]:
        return list(self._t)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t[name].shape)

    def dtype(self, name: str) -> str:
        return _dtype_name(self._t[name].dtype)

    def _read(self, name: str) -> torch.Tensor:
        return self._t[name]


class SafetensorsSource(CheckpointSource):
    """Lazy: only the header is parsed up front; each tensor is read when copied."""

    format = "safetensors"

    def __init__(self, path: PathLike):
        super().__init__(path)
        from safetensors import safe_open

        try:
            self._f = safe_open(str(path), framework="pt", device="cpu")
            keys = list(self._f.keys())
            info = {}
            for k in keys:
                sl = self._f.get_slice(k)
                info[k] = (tuple(sl.get_shape()), _ST_DTYPES.get(sl.get_dtype(), sl.get_dtype()))
        except Exception as e:
            raise CheckpointError(path, "not a valid safetensors file "
                                        f"({_first_line(e)})") from None
        if not keys:
            raise CheckpointError(path, "safetensors file holds no tensors")
        stripped = _strip_wrappers({k: k for k in keys}, self.notes)
        # our name -> the name stored in the file (differs once a wrapper prefix is gone)
        self._stored = stripped
        self._info = {ours: info[stored] for ours, stored in stripped.items()}

    def names(self) -> list[str]:
        return list(self._info)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info[name][0]

    def dtype(self, name: str) -> str:
        return self._info[name][1]

    def _read(self, name: str) -> torch.Tensor:
        if self._f is None:
            raise CheckpointError(self.path, "was already closed")
        return self._f.get_tensor(self._stored[name])

    def close(self) -> None:
        self._f = None


class ManifestSource(CheckpointSource):
    """Names and shapes only (../shared/ref/state_dicts/*.json): plans a load on the meta
    device at full size without a multi-GB file."""

    format = "manifest"
    has_data = False

    def __init__(self, shapes: Mapping[str, Iterable[int]], path: PathLike | None = None,
                 dtype: str = "float32"):
        super().__init__(path)
        self._s = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
        self._dtype = dtype

    @classmethod
    def from_json(cls, path: PathLike) -> "ManifestSource":
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
            tensors = d["tensors"]
            if not isinstance(tensors, dict) or not tensors:
                raise ValueError("'tensors' is empty or not an object")
        except FileNotFoundError:
            raise CheckpointError(path, "no such file") from None
        except Exception as e:
            raise CheckpointError(path, f"not a state-dict manifest ({_first_line(e)}); expected "
                                        "JSON {\"tensors\": {name: shape}}") from None
        return cls(tensors, path)

    def names(self) -> list[str]:
        return list(self._s)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._s[name]

    def dtype(self, name: str) -> str:
        return self._dtype

    def sha256(self) -> str | None:
        # The digest of a manifest would be mistaken for the digest of real weights.
        return None

    def _read(self, name: str) -> torch.Tensor:
        raise CheckpointError(self.path, "is a names/shapes manifest and holds no values "
                                         "(use it with a model on the meta device)")


# ---------------------------------------------------------------------------- opening
def _first_line(e: BaseException) -> str:
    s = str(e).strip() or type(e).__name__
    return s.splitlines()[0][:300]


def _strip_wrappers(d: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    for p in _WRAPPER_PREFIXES:
        if d and all(k.startswith(p) for k in d):
            d = {k[len(p):]: v for k, v in d.items()}
            notes.append(f"stripped the {p!r} prefix from every name")
    return d


def _unwrap(obj: Any, path: PathLike, notes: list[str]) -> dict[str, torch.Tensor]:
    """Training checkpoints nest the state dict under 'model' / 'state_dict'."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                others = sorted(str(k) for k in obj if k != key)
                notes.append(f"state dict taken from [{key!r}]"
                             + (f" (also present: {', '.join(others[:8])})" if others else ""))
                obj = inner
                break
        else:
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"not a state dict: the file holds a {type(obj).__name__}, "
                                    "expected {name: tensor} or {'model'|'state_dict': ...}")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    dropped = len(obj) - len(tensors)
    if not tensors:
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointError(path, f"contains no tensors (top-level keys: {keys or 'none'})")
    if dropped:
        notes.append(f"ignored {dropped} non-tensor entries")
    return _strip_wrappers(tensors, notes)


def _torch_load(path: Path) -> TensorDictSource:
    with open(path, "rb") as f:
        head = f.read(8)
    is_zip = head[:4] == b"PK\x03\x04"
    if not is_zip and head[:1] != b"\x80":
        raise CheckpointError(path, "not a PyTorch checkpoint: neither a zip archive nor a "
                                    f"pickle (first bytes {head.hex()})")
    try:
        # mmap keeps a 5 GB checkpoint out of RAM until each tensor is copied; the legacy
        # (non-zip) format cannot be mapped.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        msg = str(e)
        glob = re.search(r"GLOBAL ([\w.]+)", msg)
        if glob:
            raise CheckpointError(
                path, f"refused: the pickle references the Python object {glob.group(1)}, which "
                      "is not a tensor or a plain container. Arbitrary pickles are refused on "
                      "purpose (unpickling them can run code). If the file comes from a source "
                      "you trust, re-save just its state dict with torch.save(sd, ...) or as "
                      "safetensors.") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", msg)
        raise CheckpointError(
            path, "refused by the safe (weights_only) unpickler: "
                  f"{detail.group(1).strip() if detail else _first_line(e)}. Either the file is "
                  "corrupt / not a checkpoint, or it is a pickle using constructs the safe "
                  "loader does not accept; arbitrary pickles are refused on purpose.") from None
    except EOFError:
        raise CheckpointError(path, "truncated: the pickle ends early") from None
    except (RuntimeError, OSError, ValueError, KeyError, IndexError, struct.error) as e:
        text = str(e)
        if "central directory" in text or "zip archive" in text:
            problem = "truncated or corrupt zip archive (PyTorch could not read it)"
        else:
            problem = f"corrupt or unreadable ({type(e).__name__}: {_first_line(e)})"
        raise CheckpointError(path, problem) from None
    except Exception as e:
        raise CheckpointError(path, f"could not be loaded ({type(e).__name__}: "
                                    f"{_first_line(e)})") from None
    notes: list[str] = []
    tensors = _unwrap(obj, path, notes)
    src = TensorDictSource(tensors, path, fmt="torch-zip" if is_zip else "torch-legacy")
    src.notes.extend(notes)
    return src


def open_checkpoint(src: CheckpointLike) -> CheckpointSource:
    """A path (.pt/.pth/.bin/.ckpt, .safetensors, or a .json names/shapes manifest), an
    in-memory state dict, or an already opened CheckpointSource."""
    if isinstance(src, CheckpointSource):
        return src
    if isinstance(src, Mapping):
        notes: list[str] = []
        tensors = _unwrap(src, None, notes)
        out = TensorDictSource(tensors)
        out.notes.extend(notes)
        return out
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(f"expected a checkpoint path or a state dict, got {type(src).__name__}")
    path = Path(src)
    if not path.exists():
        raise CheckpointError(path, "no such file")
    if path.is_dir():
        raise CheckpointError(path, "is a directory, expected a checkpoint file (sharded "
                                    "checkpoints are not supported: merge them first)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "empty file (0 bytes)")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return ManifestSource.from_json(path)
    if suffix == ".safetensors":
        return SafetensorsSource(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < size:
        return SafetensorsSource(path)
    return _torch_load(path)


# ---------------------------------------------------------------------------- kinds
_SEED_RE = re.compile(r"^(aggregator\.)?((pose|geo)_)?(time|view)_blocks\.")
_MV_ONLY_RE = re.compile(r"^aggregator\.((pose|geo)_(frame|global)_blocks\.|sparse_blocks\.|"
                         r"memory_tokens$|lambda_\w+_logit$|dynamic_mask_head\.(alpha|beta)$)")


def detect_kind(names: Iterable[str]) -> str:
    """Which family a set of tensor names comes from (see KINDS)."""
    names = list(names)
    if any(_SEED_RE.match(n) for n in names):
        return "seed"
    if any(n.startswith("encoder.") for n in names) and any(n.startswith("decoder.")
                                                           for n in names):
        return "pi3"
    if not any(n.startswith("aggregator.") for n in names):
        return "unknown"
    if any(_MV_ONLY_RE.match(n) for n in names):
        return "vggt_mv"
    if any(n.startswith("aggregator.spatial_mask_head.") for n in names):
        return "page4d"
    return "vggt"
