"""Bucket dispatch: which exported bucket (and engine) runs a clip of T time steps x N views.

Every bucket is one fixed (T, N, H, W) shape (plugins and sparse patterns are specialised
to it), so a clip either matches a bucket exactly or is padded up to a larger one:
T by repeating the last time step, N by repeating the last view. Padding at the end keeps
frame (0, 0), which defines the world frame of every output, where it was. It is not
free: the copies take part in attention, so results for the real frames move slightly;
that is why it is opt-in (``allow_pad``) and reported.

numpy + stdlib only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .errors import NonFiniteError, RuntimeDataError
from .layout import (
    ENGINE_PATTERN,
    PRECISIONS,
    Bucket,
    ManifestIO,
    bucket_folders,
    engine_filename,
    engine_filenames,
    is_bucket,
    load_manifest,
)

# The manifest's bucket; one type with export's (runtime/layout.py), kept under this name.
BucketSpec = Bucket

__all__ = [
    "BucketSpec",
    "BucketEntry",
    "BucketIndex",
    "Selection",
    "UnknownBucketError",
    "FeedError",
    "ENGINE_PATTERN",
    "engine_filename",
    "check_feeds",
    "pad_feeds",
    "trim_outputs",
    "load_manifest",
]

class UnknownBucketError(RuntimeDataError):
    """No exported bucket fits the requested clip; the message lists the available ones."""


class FeedError(RuntimeDataError):
    """Inputs do not match the bucket's names, shapes or dtypes, or hold NaN/Inf."""


@dataclass
class BucketEntry(ManifestIO):
    folder: Path
    manifest: dict[str, Any]
    spec: BucketSpec
    graphs: tuple[str, ...]            # *.onnx files present in the folder
    engines: dict[str, Path] = field(default_factory=dict)  # precision -> engine path

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Selection:
    """A bucket chosen for a clip of (T, N); pad_T / pad_N frames are appended copies."""

    entry: BucketEntry
    T: int
    N: int

    @property
    def pad_T(self) -> int:
        return self.entry.spec.T - self.T

    @property
    def pad_N(self) -> int:
        return 0 if self.entry.spec.single_view else self.entry.spec.N - self.N

    @property
    def padded(self) -> bool:
        return self.pad_T > 0 or self.pad_N > 0


class BucketIndex:
    """Exported buckets found under one or more folders, keyed by bucket name."""

    def __init__(self, entries: Iterable[BucketEntry], roots: Iterable[Path] = ()):
        self.entries: dict[str, BucketEntry] = {}
        for e in entries:
            if e.name in self.entries:
                raise RuntimeDataError(f"bucket {e.name} found twice: "
                                       f"{self.entries[e.name].folder} and {e.folder}")
            self.entries[e.name] = e
        self.roots = tuple(roots)

    @classmethod
    def scan(cls, root_or_dirs: str | Path | Iterable[str | Path]) -> "BucketIndex":
        """A bucket folder, a folder of bucket folders, or a list of either."""
        if isinstance(root_or_dirs, (str, Path)):
            roots = [Path(root_or_dirs)]
        else:
            roots = [Path(p) for p in root_or_dirs]
        missing = [r for r in roots if not r.is_dir()]
        if missing:
            raise FileNotFoundError(f"bucket folder not found: {missing[0]}")
        folders = [f for f in bucket_folders(roots) if is_bucket(f)]
        if not folders:
            raise FileNotFoundError(
                f"no exported buckets (folders with manifest.json) in "
                f"{', '.join(map(str, roots))}; run `python cli.py export` first")
        entries = []
        for f in folders:
            m = load_manifest(f)
            spec = Bucket.from_dict(m["bucket"])
            engines = {}
            for prec in PRECISIONS:  # full TensorRT's engine first, else TensorRT for RTX's
                found = [f / n for n in engine_filenames(prec) if (f / n).is_file()]
                if found:
                    engines[prec] = found[0]
            graphs = tuple(sorted(p.name for p in f.glob("*.onnx")))
            entries.append(BucketEntry(f, m, spec, graphs, engines))
        return cls(entries, roots)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries.values())

    def __getitem__(self, name: str) -> BucketEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise UnknownBucketError(f"no bucket named {name!r}; available: "
                                     f"{', '.join(sorted(self.entries))}") from None

    def describe(self) -> str:
        return "\n".join(f"  - {e.spec.describe()} in {e.folder}"
                         + (f" [engines: {', '.join(sorted(e.engines))}]" if e.engines else "")
                         for e in sorted(self, key=lambda e: (e.spec.T, e.spec.N, e.name)))

    def select(self, T: int, N: int, H: int | None = None, W: int | None = None,
               allow_pad: bool = False, ext_mask: bool | None = None,
               aspect: float | None = None, require: str | None = None) -> Selection:
        """The bucket that runs T x N frames; exact match first, then (if allow_pad) the
        smallest larger one of the same size.

        H/W None accept any resolution; when several fit, the one whose aspect ratio
        (W/H) is closest to ``aspect`` wins, then the largest. ``require`` ("onnx",
        "engine" or a precision) skips buckets without that graph / engine.
        """
        if T < 1 or N < 1:
            raise UnknownBucketError(f"a clip needs T >= 1 and N >= 1, got T={T}, N={N}")
        usable = [e for e in self if self._usable(e, H, W, ext_mask, require)]
        if N != 1 and usable and all(e.spec.single_view for e in usable):
            raise UnknownBucketError(
                f"N={N} views asked for, but the buckets here are single-view (one image per "
                f"time step): {', '.join(sorted(e.name for e in usable))}. Leave --N out "
                f"(or --N 1), or export multi-view buckets: "
                f"`{self._export_hint(T, N, H, W, ext_mask)}`")
        cands = [e for e in usable
                 if (e.spec.T, _views(e.spec)) == (T, N)
                 or (allow_pad and e.spec.T >= T and _views(e.spec) >= N
                     and not (e.spec.single_view and N != 1))]
        if cands:
            def key(e: BucketEntry):
                s = e.spec
                ar = abs(s.W / s.H - aspect) if aspect else 0.0
                return (s.T * _views(s), round(ar, 6), -s.H * s.W, e.name)

            return Selection(min(cands, key=key), T, N)
        raise UnknownBucketError(self._no_match(T, N, H, W, allow_pad, ext_mask, require,
                                                usable))

    @staticmethod
    def _usable(e: BucketEntry, H, W, ext_mask, require) -> bool:
        s = e.spec
        if (H is not None and s.H != H) or (W is not None and s.W != W):
            return False
        if ext_mask is not None and s.ext_mask != ext_mask:
            return False
        if require == "onnx":
            return bool(e.graphs)
        if require == "engine":
            return bool(e.engines)
        if require in PRECISIONS:
            return require in e.engines
        return True

    def _no_match(self, T, N, H, W, allow_pad, ext_mask, require, usable) -> str:
        size = f", {H}x{W}" if H is not None and W is not None else ""
        what = f"T={T}, N={N}{size}" + (", ext_mask" if ext_mask else "")
        need = "" if require is None else (
            " with an ONNX graph" if require == "onnx" else
            " with a TensorRT engine" if require == "engine" else f" with a {require} engine")
        msg = f"no exported bucket{need} for {what}. Available buckets:\n{self.describe()}"
        larger = sorted((e for e in usable if e.spec.T >= T and _views(e.spec) >= N),
                        key=lambda e: (e.spec.T * _views(e.spec), e.name))
        if larger and not allow_pad:
            msg += (f"\nPadding would fit {larger[0].name}: pass allow_pad=True (CLI: --pad) "
                    f"to repeat the last time step / view, outputs are trimmed back.")
        smaller = [e for e in usable if e.spec.T <= T and _views(e.spec) <= N]
        if smaller:
            s = max(smaller, key=lambda e: e.spec.T * _views(e.spec)).spec
            msg += (f"\nOr run a sub-clip that fits: T={s.T}, N={s.N} (CLI: --T {s.T} "
                    f"--N {s.N}).")
        if require in PRECISIONS or require == "engine":
            flag = require if require in PRECISIONS else "fp16"
            msg += (f"\nBuild missing engines with `python cli.py build-engine --{flag} "
                    f"--bucket DIR`.")
        else:
            msg += f"\nExport a matching bucket with `{self._export_hint(T, N, H, W, ext_mask)}`."
        return msg

    def _export_hint(self, T, N, H, W, ext_mask) -> str:
        """The export command for the missing bucket, with every option it needs: the
        model preset and bucket kind of the buckets already here, and the frame size."""
        ref = next(iter(sorted(self.entries.values(), key=lambda e: e.name)), None)
        cfg = (ref.manifest.get("model_config") or {}) if ref else {}
        preset = cfg.get("name")
        if H is None or W is None:
            H, W = (ref.spec.H, ref.spec.W) if ref else (518, 518)
        parts = ["python cli.py export"]
        if preset and preset != "vggt_mv_1b":  # the default needs no flag
            parts.append(f"--preset {preset}")
        parts.append(f"--T {T} --N {N} --height {H} --width {W}")
        if ref is not None and ref.spec.single_view and N == 1:
            parts.append("--single-view")
        if ext_mask:
            parts.append("--ext-mask")
        weights = str((ref.manifest.get("weights") or {}).get("source", "")) if ref else ""
        if weights and not weights.startswith("random"):
            parts.append("--checkpoint <the checkpoint of the other buckets>")
        return " ".join(parts)


def _views(spec: BucketSpec) -> int:
    return 1 if spec.single_view else spec.N


# ---------------------------------------------------------------------------- feeds
def check_feeds(manifest_inputs: Mapping[str, Mapping[str, Any]],
                feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Validate feeds against a manifest's inputs; returns C-contiguous arrays in input
    order. Every problem is reported at once, each with the expected value."""
    problems = []
    missing = [n for n in manifest_inputs if n not in feeds]
    extra = [n for n in feeds if n not in manifest_inputs]
    if missing:
        problems.append(f"missing input(s) {missing}")
    if extra:
        problems.append(f"unexpected input(s) {extra}; this bucket takes "
                        f"{list(manifest_inputs)}")
    out: dict[str, np.ndarray] = {}
    nonfinite = []
    for name, spec in manifest_inputs.items():
        if name not in feeds:
            continue
        a = feeds[name]
        if not isinstance(a, np.ndarray):
            problems.append(f"{name}: expected a numpy array, got {type(a).__name__}")
            continue
        want_shape = tuple(int(d) for d in spec["shape"])
        want_dtype = np.dtype(spec["dtype"])
        if a.shape != want_shape:
            hint = ""
            if a.ndim == len(want_shape) - 1 and a.shape == want_shape[1:]:
                hint = " (missing the batch dimension: add a leading axis)"
            problems.append(f"{name}: shape {list(a.shape)} but the bucket expects "
                            f"{list(want_shape)}{hint}")
        if a.dtype != want_dtype:
            problems.append(f"{name}: dtype {a.dtype} but the bucket expects {want_dtype} "
                            f"(convert with .astype(np.{want_dtype}))")
        if a.shape == want_shape and a.dtype == want_dtype:
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                bad = int(a.size - np.count_nonzero(np.isfinite(a)))
                nonfinite.append(f"{name}: {bad} of {a.size} values are NaN/Inf")
            out[name] = np.ascontiguousarray(a)
    if problems:
        raise FeedError("inputs do not match the bucket: " + "; ".join(problems))
    if nonfinite:
        raise NonFiniteError("non-finite inputs: " + "; ".join(nonfinite))
    return out


def _repeat_last(a: np.ndarray, axis: int, count: int) -> np.ndarray:
    if count <= 0:
        return a
    last = np.take(a, [a.shape[axis] - 1], axis=axis)
    return np.concatenate([a, np.repeat(last, count, axis=axis)], axis=axis)


def pad_feeds(feeds: Mapping[str, np.ndarray], sel: Selection) -> dict[str, np.ndarray]:
    """Pad images [B, T, N, 3, H, W] / ext_mask [B, T, N, H, W] (or single-view [B, S, ...])
    from (sel.T, sel.N) up to the bucket by repeating the last time step / view."""
    out = {}
    for name, a in feeds.items():
        a = np.asarray(a)
        if a.shape[1] != sel.T or (not sel.entry.spec.single_view and a.shape[2] != sel.N):
            raise FeedError(f"{name}: shape {list(a.shape)} does not hold T={sel.T}"
                            + ("" if sel.entry.spec.single_view else f", N={sel.N}")
                            + " in dims 1, 2")
        a = _repeat_last(a, 1, sel.pad_T)
        if not sel.entry.spec.single_view:
            a = _repeat_last(a, 2, sel.pad_N)
        out[name] = np.ascontiguousarray(a)
    return out


def trim_outputs(outputs: Mapping[str, np.ndarray], sel: Selection) -> dict[str, np.ndarray]:
    """Drop the padded time steps / views again (outputs are [B, T, N, ...] or [B, S, ...])."""
    spec = sel.entry.spec
    out = {}
    for name, a in outputs.items():
        if not sel.padded:
            out[name] = a
            continue
        if a.ndim < 2 or a.shape[1] != spec.T or (
                not spec.single_view and (a.ndim < 3 or a.shape[2] != spec.N)):
            raise RuntimeDataError(f"output {name} {list(a.shape)} is not laid out "
                                   f"[B, T={spec.T}, N={spec.N}, ...]; cannot trim padding")
        a = a[:, :sel.T] if spec.single_view else a[:, :sel.T, :sel.N]
        out[name] = np.ascontiguousarray(a)
    return out
