"""Writers for runtime results (point clouds, depth/confidence images), numpy + stdlib only.

Every writer goes through ``atomic_write`` so that a crash, a full disk or Ctrl-C during a
long run never leaves a truncated PLY/PNG that a later step would silently read.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import RuntimeDataError
from .layout import atomic_write  # the one atomic writer; re-exported for callers

__all__ = ["atomic_write", "write_ply", "read_ply", "colorize", "save_png", "COLORMAPS",
           "depth_png_name", "confidence_png_name"]


# ------------------------------------------------------------------------------------- PLY
_PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
              "uchar": "u1", "uint8": "u1", "char": "i1", "int8": "i1", "short": "<i2",
              "ushort": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4"}


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray | None = None,
              drop_nonfinite: bool = True) -> int:
    """Binary little-endian PLY with float32 x, y, z and optional uchar red, green, blue.

    Non-finite points are dropped by default (viewers choke on NaN). Returns the number of
    vertices written.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise RuntimeDataError(f"points must be [M, 3], got {pts.shape}")
    cols = None
    if colors is not None:
        cols = np.asarray(colors)
        if cols.shape != pts.shape:
            raise RuntimeDataError(f"colors must be [M, 3] like points {pts.shape}, got "
                                   f"{cols.shape}")
        if cols.dtype != np.uint8:
            if np.issubdtype(cols.dtype, np.floating) and cols.size and cols.max() <= 1.0:
                cols = np.clip(np.floor(cols * 255.0 + 0.5), 0, 255)
            cols = np.clip(cols, 0, 255).astype(np.uint8)
    if drop_nonfinite:
        ok = np.isfinite(pts).all(axis=1)
        pts = pts[ok]
        cols = cols[ok] if cols is not None else None
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if cols is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    rec = np.empty(len(pts), dtype=fields)
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    if cols is not None:
        rec["red"], rec["green"], rec["blue"] = cols[:, 0], cols[:, 1], cols[:, 2]
    header = ["ply", "format binary_little_endian 1.0", "comment written by vggt-mv-deploy",
              f"element vertex {len(pts)}", "property float x", "property float y",
              "property float z"]
    if cols is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header.append("end_header")
    with atomic_write(path) as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(rec.tobytes())
    return len(pts)


def read_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Read the vertex element of a binary little-endian PLY -> {property: array}."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise RuntimeDataError(f"{path} is not a PLY file")
    lines = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise RuntimeDataError(f"{path}: only binary_little_endian PLY is supported")
    count, fields, in_vertex = 0, [], False
    for line in lines:
        tok = line.split()
        if tok[:1] == ["element"]:
            in_vertex = tok[1] == "vertex"
            if in_vertex:
                count = int(tok[2])
            elif count:
                break  # vertex must come first for the offset below to be right
        elif tok[:1] == ["property"] and in_vertex:
            if tok[1] == "list" or tok[1] not in _PLY_TYPES:
                raise RuntimeDataError(f"{path}: unsupported vertex property {line!r}")
            fields.append((tok[2], _PLY_TYPES[tok[1]]))
    dtype = np.dtype(fields)
    body = data[end + len(b"end_header\n"):]
    if len(body) < count * dtype.itemsize:
        raise RuntimeDataError(f"{path}: truncated ({len(body)} bytes for {count} vertices)")
    rec = np.frombuffer(body, dtype=dtype, count=count)
    return {name: rec[name].copy() for name in dtype.names}


# ------------------------------------------------------------------------------ colormaps
# Polynomial fits of the published colormaps: turbo (Google's 5th-order approximation) and
# viridis (6th-order fit); evaluated once into a 256-entry LUT.
_TURBO = (
    np.array([0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943]),
    np.array([0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604]),
    np.array([0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973]),
)
_VIRIDIS = (
    np.array([0.2777273272234177, 0.1050930431085774, -0.3308618287255563, -4.634230498983486,
              6.228269936347081, 4.776384997670288, -5.435455855934631]),
    np.array([0.005407344544966578, 1.404613529898575, 0.214847559468213, -5.799100973351585,
              14.17993336680509, -13.74514537774601, 4.645852612178535]),
    np.array([0.3340998053353061, 1.384590162594685, 0.09509516302823659, -19.33244095627987,
              56.69055260068105, -65.35303263337234, 26.3124352495832]),
)


def _lut(coeffs: tuple[np.ndarray, ...]) -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    chans = [np.polynomial.polynomial.polyval(x, c) for c in coeffs]
    return np.clip(np.floor(np.stack(chans, -1) * 255.0 + 0.5), 0, 255).astype(np.uint8)


COLORMAPS: dict[str, np.ndarray] = {"turbo": _lut(_TURBO), "viridis": _lut(_VIRIDIS)}


def depth_png_name(t: int, view: int) -> str:
    """depth PNG of time step t, view v, relative to the output folder (infer and stream)."""
    return f"depth/depth_t{t:02d}_view{view}.png"


def confidence_png_name(t: int, view: int) -> str:
    return f"confidence/conf_t{t:02d}_view{view}.png"


def colorize(array: np.ndarray, cmap: str = "turbo", vmin: float | None = None,
             vmax: float | None = None) -> np.ndarray:
    """Scalar map [H, W] -> uint8 RGB [H, W, 3]; NaN/Inf pixels are black.

    vmin/vmax default to the 2nd/98th percentiles of the finite values, because a few
    outliers in a depth map would otherwise squash the whole scene into one colour.
    """
    if cmap not in COLORMAPS:
        raise ValueError(f"cmap must be one of {sorted(COLORMAPS)}, got {cmap!r}")
    a = np.asarray(array, dtype=np.float64)
    if a.ndim != 2:
        raise RuntimeDataError(f"colorize expects [H, W], got {a.shape}")
    finite = np.isfinite(a)
    vals = a[finite]
    if vmin is None:
        vmin = float(np.percentile(vals, 2)) if vals.size else 0.0
    if vmax is None:
        vmax = float(np.percentile(vals, 98)) if vals.size else 1.0
    span = vmax - vmin if vmax > vmin else 1.0
    idx = np.clip(np.floor((np.where(finite, a, vmin) - vmin) / span * 255.0 + 0.5), 0, 255)
    rgb = COLORMAPS[cmap][idx.astype(np.intp)]
    rgb[~finite] = 0
    return rgb


# -------------------------------------------------------------------------------- PNG
def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + tag + payload
            + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF))


def save_png(path: str | Path, rgb: np.ndarray, compress_level: int = 6) -> None:
    """Write uint8 [H, W, 3], [H, W, 4] or [H, W] as an 8-bit PNG (stdlib zlib encoder).

    Our own encoder keeps PIL optional on the device and makes the bytes deterministic.
    """
    a = np.asarray(rgb)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        raise RuntimeDataError(f"save_png expects uint8 (use colorize first), got {a.dtype}")
    if a.ndim == 2:
        color_type = 0
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        color_type = 2 if a.shape[2] == 3 else 6
    else:
        raise RuntimeDataError(f"save_png expects [H, W], [H, W, 3] or [H, W, 4], got {a.shape}")
    H, W = a.shape[:2]
    if H == 0 or W == 0:
        raise RuntimeDataError(f"cannot save an empty image {a.shape}")
    rows = np.ascontiguousarray(a).reshape(H, -1)
    # Filter type 0 (None) per scanline: simple and still compresses depth maps well.
    raw = np.concatenate([np.zeros((H, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", W, H, 8, color_type, 0, 0, 0)
    with atomic_write(path) as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_png_chunk(b"IHDR", ihdr))
        f.write(_png_chunk(b"IDAT", zlib.compress(raw, compress_level)))
        f.write(_png_chunk(b"IEND", b""))
