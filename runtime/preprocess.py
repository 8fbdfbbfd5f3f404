"""Frame loading and preprocessing for VGGT_MV, numpy only (PIL optional, for decoding).

This module runs on the Jetson next to TensorRT, so it must not import torch or onnx.

Geometry rule (shared by images, masks, intrinsics and the calibration set)
---------------------------------------------------------------------------
VGGT's ``load_and_preprocess_images(mode="crop")`` sets the width to 518, scales the
height by the same factor and rounds it to a multiple of 14 (so the aspect ratio is kept
only up to <= 7 px), resizes with PIL bicubic and centre-crops the height to 518 if it is
larger. 640x480 therefore becomes 518x392 (480 * 518/640 = 388.5 -> 392).

For an arbitrary target bucket (H, W) we generalise this to "cover, then centre-crop":
fit the width exactly and round the scaled height to a multiple of 14 as VGGT does; if
that height covers H, centre-crop it; otherwise fit the height exactly, round the scaled
width the same way and centre-crop the width. When (H, W) is what the crop rule gives,
the first branch reproduces VGGT bit for bit (same PIL call, same crop offset).

Pixel-coordinate convention: OpenCV, i.e. pixel (u, v) has its centre at integer (u, v).
A resize maps centre to centre, so x_out = (x_in + 0.5) * s - 0.5 - crop_offset.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import (
    ImageReadError,
    MissingFrameError,
    NonFiniteError,
    NotEnoughFramesError,
    PatchMultipleError,
    RuntimeDataError,
    SceneNotFoundError,
    SizeMismatchError,
)

try:  # PIL is optional on the device: without it only in-memory arrays can be preprocessed.
    from PIL import Image as _PILImage
except ImportError:  # pragma: no cover - exercised only on PIL-less deployments
    _PILImage = None

__all__ = [
    "PATCH",
    "VGGT_SIZE",
    "PREPROCESS_RULE",
    "ResizePlan",
    "SceneIndex",
    "check_size_hw",
    "target_size_for",
    "plan_resize",
    "map_pixels",
    "transform_intrinsics",
    "intrinsics_to_source",
    "preprocess_rgb",
    "preprocess_mask",
    "read_image",
    "decode_frame",
    "read_mask",
    "select_views",
    "load_image",
    "load_mask",
    "pool_mask_to_patches",
    "discover_scene",
    "natural_key",
    "load_clip",
]

PATCH = 14
VGGT_SIZE = 518
# Recorded in calibration sets so that a set built with another rule is detectable.
PREPROCESS_RULE = (
    "vggt-crop-cover/v1: fit W, H=round(h*W/w/14)*14 (else fit H, W=round(w*H/h/14)*14), "
    "PIL bicubic on uint8, centre-crop, /255 float32 CHW; masks nearest, >=0.5 -> 1"
)

_TIME_DIR = re.compile(r"^time_(\d+)$")
_VIEW_FILE = re.compile(r"^view(\d+)\.(png|jpg|jpeg)$", re.IGNORECASE)
# When a frame exists in several formats the lossless one wins, deterministically.
_EXT_PRIORITY = {"png": 0, "jpg": 1, "jpeg": 2}
_IMAGE_EXTS = {".png", ".jpg", ".jpeg"}


# ----------------------------------------------------------------------------- geometry
def check_size_hw(size_hw: Sequence[int], patch: int = PATCH) -> tuple[int, int]:
    """Validate a target (H, W) and return it as a tuple of ints."""
    try:
        H, W = (int(s) for s in size_hw)
    except (TypeError, ValueError) as e:
        raise PatchMultipleError(f"size_hw must be two integers (H, W), got {size_hw!r}") from e
    if H <= 0 or W <= 0 or H % patch or W % patch:
        raise PatchMultipleError(
            f"target size {H}x{W} (HxW) must be positive multiples of the patch size {patch}; "
            f"nearest valid: {max(patch, round(H / patch) * patch)}x"
            f"{max(patch, round(W / patch) * patch)}")
    return H, W


def _round_to_patch(x: float, patch: int) -> int:
    # Same expression and builtin round (half to even) as VGGT, so ties resolve identically.
    return round(x / patch) * patch


def target_size_for(h: int, w: int, mode: str = "crop", size: int = VGGT_SIZE) -> tuple[int, int]:
    """(H, W) that VGGT's ``load_and_preprocess_images`` produces for an h x w image."""
    if mode != "crop":
        raise ValueError(f"only mode='crop' is supported (the runtime never pads), got {mode!r}")
    if h <= 0 or w <= 0:
        raise RuntimeDataError(f"image size must be positive, got {h}x{w}")
    if size % PATCH:
        raise PatchMultipleError(f"target width {size} is not a multiple of {PATCH}")
    H = min(_round_to_patch(h * (size / w), PATCH), size)
    if H < PATCH:
        raise RuntimeDataError(f"image {w}x{h} (WxH) is too wide: height rounds to {H} px")
    return H, size


@dataclass(frozen=True)
class ResizePlan:
    """Resize to ``resize_hw`` then crop ``out_hw`` starting at (``top``, ``left``)."""

    src_hw: tuple[int, int]
    resize_hw: tuple[int, int]
    top: int
    left: int
    out_hw: tuple[int, int]

    @property
    def scale_xy(self) -> tuple[float, float]:
        return self.resize_hw[1] / self.src_hw[1], self.resize_hw[0] / self.src_hw[0]


def plan_resize(src_hw: Sequence[int], size_hw: Sequence[int]) -> ResizePlan:
    """Cover-then-centre-crop plan from a source (h, w) to a target bucket (H, W)."""
    h, w = int(src_hw[0]), int(src_hw[1])
    if h <= 0 or w <= 0:
        raise RuntimeDataError(f"source size must be positive, got {h}x{w}")
    H, W = check_size_hw(size_hw)
    h_fit = _round_to_patch(h * (W / w), PATCH)
    if h_fit >= H:
        resize = (h_fit, W)
    else:
        # W and H are multiples of 14 and h*W/w < H - 7 here, so the rounded width is >= W;
        # max() only guards against float noise.
        resize = (H, max(_round_to_patch(w * (H / h), PATCH), W))
    return ResizePlan((h, w), resize, (resize[0] - H) // 2, (resize[1] - W) // 2, (H, W))


def map_pixels(uv: np.ndarray, src_hw: Sequence[int], size_hw: Sequence[int]) -> np.ndarray:
    """Map pixel coordinates [..., 2] (u=x, v=y) of the source image into the target."""
    plan = plan_resize(src_hw, size_hw)
    sx, sy = plan.scale_xy
    uv = np.asarray(uv, dtype=np.float64)
    out = np.empty_like(uv)
    out[..., 0] = (uv[..., 0] + 0.5) * sx - 0.5 - plan.left
    out[..., 1] = (uv[..., 1] + 0.5) * sy - 0.5 - plan.top
    return out


def transform_intrinsics(K: np.ndarray, src_hw: Sequence[int], size_hw: Sequence[int]) -> np.ndarray:
    """Intrinsics [..., 3, 3] of the source camera expressed in the preprocessed image.

    The rounding to multiples of 14 makes the x and y scales differ slightly
    (640x480 -> 518x392: 0.809 vs 0.817), so fx and fy are scaled separately.
    """
    K = np.asarray(K)
    plan = plan_resize(src_hw, size_hw)
    sx, sy = plan.scale_xy
    out = np.array(K, dtype=np.result_type(K.dtype, np.float32), copy=True)
    out[..., 0, :] *= sx
    out[..., 1, :] *= sy
    # Row scaling also scaled the principal point; add the half-pixel and crop terms.
    out[..., 0, 2] += 0.5 * sx - 0.5 - plan.left
    out[..., 1, 2] += 0.5 * sy - 0.5 - plan.top
    return out


def intrinsics_to_source(K: np.ndarray, src_hw: Sequence[int], size_hw: Sequence[int]
                         ) -> np.ndarray:
    """Intrinsics [..., 3, 3] of the preprocessed (model) image expressed in the source
    image it was resized and cropped from: the inverse of ``transform_intrinsics``, so that
    a focal length or principal point the model predicts is in the user's own pixels."""
    K = np.asarray(K)
    plan = plan_resize(src_hw, size_hw)
    sx, sy = plan.scale_xy
    out = np.array(K, dtype=np.result_type(K.dtype, np.float64), copy=True)
    # Undo the crop and half-pixel terms first, then the row scaling that made them.
    out[..., 0, 2] -= 0.5 * sx - 0.5 - plan.left
    out[..., 1, 2] -= 0.5 * sy - 0.5 - plan.top
    out[..., 0, :] /= sx
    out[..., 1, :] /= sy
    return out


# --------------------------------------------------------------- numpy resampling (no PIL)
def _cubic(x: np.ndarray) -> np.ndarray:
    # Keys kernel with a = -0.5, the one PIL's BICUBIC uses.
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _cubic_weights(n_in: int, n_out: int) -> np.ndarray:
    # PIL widens the kernel by the scale when downsampling (antialiasing); mirror that so
    # the PIL-less path stays within a grey level of the PIL path.
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 2.0 * fscale
    centres = (np.arange(n_out) + 0.5) * scale
    src = np.arange(n_in)
    wts = _cubic((src[None, :] - centres[:, None] + 0.5) / fscale)
    lo = np.maximum(np.trunc(centres - support + 0.5), 0)
    hi = np.minimum(np.trunc(centres + support + 0.5), n_in)
    wts = np.where((src[None, :] >= lo[:, None]) & (src[None, :] < hi[:, None]), wts, 0.0)
    return wts / wts.sum(axis=1, keepdims=True)


def _resize_bicubic_uint8(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    h, w = img.shape[:2]
    x = img.astype(np.float64)
    # Horizontal pass first and uint8 rounding in between, as PIL does for 8-bit images.
    if w != out_hw[1]:
        x = np.einsum("pw,hwc->hpc", _cubic_weights(w, out_hw[1]), x)
        x = np.clip(np.floor(x + 0.5), 0, 255)
    if h != out_hw[0]:
        x = np.einsum("ph,hwc->pwc", _cubic_weights(h, out_hw[0]), x)
        x = np.clip(np.floor(x + 0.5), 0, 255)
    return x.astype(np.uint8)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    # PIL NEAREST samples source floor((i + 0.5) * n_in / n_out): centre-aligned like bicubic,
    # which is what keeps mask pixels on top of their image pixels. PIL gets the coordinate
    # by repeatedly adding the scale in double precision; doing the same sequential sum
    # reproduces its choice at exact ties (a closed form differs there).
    step = n_in / n_out
    coords = np.add.accumulate(np.concatenate([[0.5 * step], np.full(n_out - 1, step)]))
    return np.minimum(coords.astype(np.int64), n_in - 1)


# ------------------------------------------------------------------------ preprocessing
def _as_uint8_image(rgb: Any) -> np.ndarray:
    if _PILImage is not None and isinstance(rgb, _PILImage.Image):
        rgb = np.asarray(rgb.convert("RGB"))
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise RuntimeDataError(f"expected an HxWx3 (or HxWx4) image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise RuntimeDataError(f"image dtype {arr.dtype} is not numeric")
    if not np.isfinite(arr).all():
        raise NonFiniteError("image array contains NaN or Inf")
    if np.issubdtype(arr.dtype, np.floating):
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise RuntimeDataError(
                f"float images must be in [0, 1], got range [{arr.min():.3g}, {arr.max():.3g}]")
        # Quantise so float and uint8 inputs go through the very same resampler.
        return np.floor(arr * 255.0 + 0.5).astype(np.uint8)
    if arr.min() < 0 or arr.max() > 255:
        raise RuntimeDataError(f"integer images must be in [0, 255], got dtype {arr.dtype}")
    return arr.astype(np.uint8)


def _blend_alpha_white(x: np.ndarray) -> np.ndarray:
    # VGGT composites transparent pixels onto white after resizing.
    rgb, a = x[..., :3], x[..., 3:4]
    return rgb * a + (1.0 - a)


# Frames a resize would destroy are refused rather than fed to the model: a frame whose
# shorter side is under MIN_FRAME_SIDE pixels has less detail than two patch rows, and one
# whose centre crop keeps under MIN_KEPT_FRACTION of its area (an extreme aspect ratio
# against the bucket's) would be mostly thrown away. Both give confident-looking nonsense.
MIN_FRAME_SIDE = 28
MIN_KEPT_FRACTION = 0.25


def check_frame_size(src_hw: Sequence[int], size_hw: Sequence[int], name: str = "image") -> None:
    h, w = int(src_hw[0]), int(src_hw[1])
    if min(h, w) < MIN_FRAME_SIDE:
        raise RuntimeDataError(f"{name} is {w}x{h} pixels (WxH): frames need at least "
                               f"{MIN_FRAME_SIDE} px on each side; use the camera's full frames")
    plan = plan_resize((h, w), size_hw)
    kept = plan.out_hw[0] * plan.out_hw[1] / (plan.resize_hw[0] * plan.resize_hw[1])
    if kept < MIN_KEPT_FRACTION:
        raise RuntimeDataError(
            f"{name} is {w}x{h} pixels (WxH): fitting it to the {size_hw[1]}x{size_hw[0]} "
            f"bucket would crop away {100 * (1 - kept):.0f}% of it; export a bucket with a "
            f"closer aspect ratio (--height/--width) or crop the frames first")


def _sixteen_bit_to_uint8(im: Any) -> Any:
    """PIL opens 16-bit greyscale PNGs as mode I;16 (or I), and convert("RGB") clips every
    value above 255 to white: scale the full 16-bit range to 8 bits instead."""
    if im.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return im
    arr = np.asarray(im).astype(np.float64)
    if im.mode == "I" and arr.max() <= 255 and arr.min() >= 0:
        return _PILImage.fromarray(arr.astype(np.uint8))  # an 8-bit image stored as int32
    if arr.min() < 0 or arr.max() > 65535:
        raise RuntimeDataError(f"integer image values span [{arr.min():.0f}, {arr.max():.0f}]: "
                               f"not an 8- or 16-bit image")
    return _PILImage.fromarray(np.floor(arr / 257.0 + 0.5).astype(np.uint8))


def preprocess_rgb(rgb: Any, size_hw: Sequence[int], use_pil: bool | None = None,
                   name: str = "image") -> np.ndarray:
    """uint8 HxWx{3,4} array, float HxWx3 in [0,1] or PIL image -> float32 [3, H, W] in [0, 1].

    With PIL (default when installed) the result equals VGGT's preprocessing exactly;
    ``use_pil=False`` selects the numpy resampler (within ~1 grey level of PIL).
    """
    size = check_size_hw(size_hw)
    if use_pil is None:
        use_pil = _PILImage is not None
    if use_pil and _PILImage is None:
        raise ImportError("use_pil=True but Pillow is not installed")
    if _PILImage is not None and isinstance(rgb, _PILImage.Image):
        rgb = _sixteen_bit_to_uint8(rgb)
    if use_pil and isinstance(rgb, _PILImage.Image):
        im = rgb
        has_alpha = im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)
        im = im.convert("RGBA" if has_alpha else "RGB")
    else:
        arr = _as_uint8_image(rgb)
        has_alpha = arr.shape[-1] == 4
        im = _PILImage.fromarray(arr) if use_pil else arr
    src_hw = (im.size[1], im.size[0]) if use_pil else im.shape[:2]
    check_frame_size(src_hw, size, name)
    plan = plan_resize(src_hw, size)
    H, W = plan.out_hw
    if use_pil:
        if plan.resize_hw != src_hw:
            im = im.resize((plan.resize_hw[1], plan.resize_hw[0]), _PILImage.Resampling.BICUBIC)
        arr = np.asarray(im)
    else:
        arr = _resize_bicubic_uint8(im, plan.resize_hw) if plan.resize_hw != src_hw else im
    arr = arr[plan.top:plan.top + H, plan.left:plan.left + W]
    x = arr.astype(np.float32) / np.float32(255.0)
    if has_alpha:
        x = _blend_alpha_white(x)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def preprocess_mask(mask: np.ndarray, size_hw: Sequence[int], binarize: bool = True) -> np.ndarray:
    """Mask HxW (bool, 0/1, 0/255 or float [0,1]) -> float32 [H, W], same geometry as images.

    Binarised at 0.5 by default because JPEG-stored masks carry compression noise that the
    model would otherwise read as weak evidence of motion.
    """
    size = check_size_hw(size_hw)
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] in (1, 3, 4):
        m = m[..., 0]
    if m.ndim != 2:
        raise RuntimeDataError(f"expected an HxW mask, got shape {m.shape}")
    if m.dtype == np.bool_:
        m = m.astype(np.float32)
    elif m.dtype == np.uint8:
        m = m.astype(np.float32) / np.float32(255.0)
    else:
        m = m.astype(np.float32)
        if not np.isfinite(m).all():
            raise NonFiniteError("mask contains NaN or Inf")
        if m.size and (m.min() < 0.0 or m.max() > 1.0):
            raise RuntimeDataError(
                f"non-uint8 masks must be in [0, 1], got [{m.min():.3g}, {m.max():.3g}]")
    plan = plan_resize(m.shape, size)
    rows = _nearest_index(m.shape[0], plan.resize_hw[0])[plan.top:plan.top + plan.out_hw[0]]
    cols = _nearest_index(m.shape[1], plan.resize_hw[1])[plan.left:plan.left + plan.out_hw[1]]
    out = m[rows[:, None], cols[None, :]]
    if binarize:
        out = (out >= 0.5).astype(np.float32)
    return np.ascontiguousarray(out, dtype=np.float32)


def pool_mask_to_patches(mask: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """Mean over non-overlapping patch x patch cells: [..., H, W] -> [..., H/p, W/p]."""
    m = np.asarray(mask)
    if m.ndim < 2:
        raise RuntimeDataError(f"mask must have at least 2 dims (H, W), got shape {m.shape}")
    H, W = m.shape[-2:]
    if H % patch or W % patch:
        raise PatchMultipleError(f"mask size {H}x{W} is not a multiple of the patch size {patch}")
    m = m.astype(np.float32 if m.dtype != np.float64 else np.float64, copy=False)
    cells = m.reshape(*m.shape[:-2], H // patch, patch, W // patch, patch)
    return cells.mean(axis=(-3, -1))


# ------------------------------------------------------------------------------ decoding
def _require_pil(what: str) -> None:
    if _PILImage is None:
        raise ImportError(f"Pillow is required to decode {what}; pass decoded arrays to "
                          "preprocess_rgb / preprocess_mask instead")


def _open(path: Path) -> Any:
    _require_pil(str(path))
    if not path.is_file():
        raise MissingFrameError(f"image file not found: {path}")
    try:
        im = _PILImage.open(path)
        im.load()  # decode now: a truncated file must fail here, naming the file
        return im
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib errors...
        raise ImageReadError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e


def read_image(path: str | Path) -> Any:
    """Decode an image file into a PIL image (size checks happen before resizing)."""
    return _open(Path(path))


def decode_frame(path: str | Path) -> np.ndarray:
    """An image file -> uint8 [H, W, 3] (RGBA [H, W, 4] when it has transparency): the one
    frame decoder of every path that reads frames (local infer, streams, calibration, the
    Triton client), so 16-bit, greyscale, palette and alpha frames mean the same
    everywhere. 16-bit values are scaled to 8 bits, never clipped to white."""
    im = _sixteen_bit_to_uint8(read_image(path))
    alpha = im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)
    return np.asarray(im.convert("RGBA" if alpha else "RGB"))


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a mask file into a uint8 HxW array (first channel of colour masks)."""
    im = _open(Path(path))
    if im.mode in ("RGB", "RGBA", "P", "LA"):
        im = im.convert("RGB")
        return np.asarray(im)[..., 0]
    return np.asarray(im.convert("L"))


def load_image(path: str | Path, size_hw: Sequence[int]) -> np.ndarray:
    """Image file -> float32 [3, H, W] in [0, 1], VGGT "crop"-style cover/centre-crop."""
    return preprocess_rgb(decode_frame(path), size_hw, name=str(path))


def load_mask(path: str | Path, size_hw: Sequence[int], binarize: bool = True) -> np.ndarray:
    """Mask file (0/255) -> float32 [H, W] in {0, 1}, geometrically aligned with load_image."""
    return preprocess_mask(read_mask(path), size_hw, binarize=binarize)


# --------------------------------------------------------------------------------- scenes
@dataclass(frozen=True, eq=False)
class SceneIndex:
    """Frames of a synchronized multi-view sequence, keyed by (time label, view label).

    ``times`` and ``views`` are the numeric labels sorted numerically (time_2 < time_10);
    clip positions (``t0``) index into ``times``.
    """

    root: Path
    image_root: Path
    mask_root: Path | None
    camera_root: Path | None
    times: tuple[int, ...]
    views: tuple[int, ...]
    frames: Mapping[tuple[int, int], Path] = field(repr=False)
    masks: Mapping[tuple[int, int], Path] = field(repr=False)
    time_dirs: Mapping[int, str] = field(repr=False)
    layout: str = "time"        # "time" (time_TT/viewV), "cameras" (a folder per camera), "flat"
    view_names: Mapping[int, str] = field(default_factory=dict)  # view -> its folder's name

    @property
    def num_times(self) -> int:
        return len(self.times)

    @property
    def num_views(self) -> int:
        return len(self.views)

    def frame_path(self, t: int, v: int) -> Path:
        try:
            return self.frames[(t, v)]
        except KeyError:
            raise MissingFrameError(
                f"no image for time step {t}, view {v} in {self.image_root} "
                f"(expected {self.image_root / self.time_dirs.get(t, f'time_{t:02d}')}"
                f"/view{v}.png)") from None

    def mask_path(self, t: int, v: int) -> Path:
        if self.mask_root is None:
            raise MissingFrameError(f"scene {self.root} has no masks/ folder")
        try:
            return self.masks[(t, v)]
        except KeyError:
            raise MissingFrameError(
                f"no mask for time step {t}, view {v} in {self.mask_root}") from None

    def camera(self, t: int, v: int) -> tuple[np.ndarray, np.ndarray]:
        """(K [3,3], extrinsic [3,4]) as stored, or MissingFrameError if absent.

        For mv_scene the stored [R|t] is camera-from-world (OpenCV: X_cam = R X_world + t),
        the same convention as VGGT's extrinsics, so no inversion is needed. Evidence
        (tests/test_postprocess.py): the static mustard bottle triangulated from all four
        views reprojects within ~5 px (<= 12 px at time 15) with positive depth in every
        view under this reading, and 120-420 px off under the world-from-camera reading;
        the world origin and the optical axes' meeting point lie 4-7 m in front of every
        camera only under this reading.
        """
        if self.camera_root is None:
            raise MissingFrameError(f"scene {self.root} has no cameras/ folder")
        d = self.camera_root / self.time_dirs.get(t, f"time_{t:02d}")
        k_path, e_path = d / f"intrinsics_view{v}.npy", d / f"extrinsics_view{v}.npy"
        for p in (k_path, e_path):
            if not p.is_file():
                raise MissingFrameError(f"camera file not found: {p}")
        K, E = np.load(k_path), np.load(e_path)
        if K.shape != (3, 3) or E.shape[-2:] not in ((3, 4), (4, 4)):
            raise RuntimeDataError(f"bad camera shapes K{K.shape} E{E.shape} in {d}")
        return K, E[:3]


def _scan_time_dirs(root: Path) -> dict[int, tuple[str, dict[int, Path]]]:
    found: dict[int, tuple[str, dict[int, Path]]] = {}
    for d in root.iterdir():
        m = _TIME_DIR.match(d.name)
        if not m or not d.is_dir():
            continue
        t = int(m.group(1))
        if t in found:
            raise RuntimeDataError(f"time step {t} appears twice in {root}: "
                                   f"{found[t][0]} and {d.name}")
        best: dict[int, tuple[int, Path]] = {}
        for f in d.iterdir():
            fm = _VIEW_FILE.match(f.name)
            if not fm or not f.is_file():
                continue
            v, prio = int(fm.group(1)), _EXT_PRIORITY[fm.group(2).lower()]
            if v not in best or prio < best[v][0]:
                best[v] = (prio, f)
        found[t] = (d.name, {v: p for v, (_, p) in best.items()})
    return found


def natural_key(name: str) -> list[Any]:
    """Sort key that orders digit runs by value: frame2 < frame10, cam2 < cam10."""
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def _image_files(folder: Path) -> list[Path]:
    return sorted((f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")
                   and f.suffix.lower() in _IMAGE_EXTS), key=lambda f: natural_key(f.name))


# Sibling folders of a scene that hold no camera's frames (masks/ and cameras/ belong to
# the time_TT layout).
_NOT_CAMERA_DIRS = {"masks", "cameras"}


def _scan_sequences(image_root: Path) -> tuple[str, list[str], list[list[Path]]] | None:
    """The two layouts without time_TT folders: one folder per camera of time-ordered
    frames (cam0/000123.png, left/, right/), or a flat folder of one camera's frames.
    Returns (layout, view names, frames per view) or None if neither is there."""
    flat = _image_files(image_root)
    cams = sorted((d for d in image_root.iterdir() if d.is_dir()
                   and not d.name.startswith(".") and d.name not in _NOT_CAMERA_DIRS),
                  key=lambda d: natural_key(d.name))
    cams = [(d, _image_files(d)) for d in cams]
    cams = [(d, files) for d, files in cams if files]
    if flat and cams:
        raise RuntimeDataError(
            f"{image_root} holds both images ({flat[0].name}, ...) and camera folders "
            f"({', '.join(d.name for d, _ in cams)}); keep one layout: a flat folder of one "
            f"camera's frames, or one folder per camera")
    if flat:
        return "flat", [image_root.name], [flat]
    if not cams:
        return None
    counts = {d.name: len(files) for d, files in cams}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name}/ {n}" for name, n in counts.items())
        raise NotEnoughFramesError(
            f"camera folders under {image_root} hold different numbers of frames ({listed}); "
            f"each camera needs one frame per time step, in the same order")
    return "cameras", [d.name for d, _ in cams], [files for _, files in cams]


def _videos_hint(root: Path) -> str:
    """Where a frame folder was expected but the folder holds view videos: which commands
    read those (a clip of `infer` is frames; videos go through runtime/video.py)."""
    from .video import VIDEO_SUFFIXES  # noqa: PLC0415 - the name rule only, no OpenCV

    videos = sorted(p.name for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        return ""
    return (f"; it holds videos ({', '.join(videos[:4])}{', ...' if len(videos) > 4 else ''})"
            f": `infer --stream` and `calibrate` read one video per view, or extract their "
            f"frames to time_TT/viewV.png")


def discover_scene(folder: str | Path) -> SceneIndex:
    """Index a scene in one of three layouts (each optionally under images/):

    - ``time_TT/viewV.png`` (+ masks/, cameras/ beside it);
    - one folder per camera of time-ordered frames (``cam0/000123.png``, ``left/``,
      ``right/``): views in natural order of the folder names, time steps in natural
      order of the file names, every folder holding the same number of frames;
    - a flat folder of one camera's frames (VGGT's convention), for single-view buckets.
    """
    root = Path(folder)
    if not root.is_dir():
        raise SceneNotFoundError(f"scene folder not found: {root}")
    image_root = root / "images" if (root / "images").is_dir() else root
    scanned = _scan_time_dirs(image_root)
    if not scanned:
        seq = _scan_sequences(image_root)
        if seq is None:
            raise SceneNotFoundError(
                f"no frames under {image_root}: expected time_TT/viewV.png folders (e.g. "
                f"{image_root}/time_00/view0.png), one folder per camera (cam0/000000.png, "
                f"cam1/000000.png, ...) or a flat folder of images{_videos_hint(root)}")
        layout, names, per_view = seq
        n = len(per_view[0])
        frames = {(t, v): per_view[v][t] for v in range(len(per_view)) for t in range(n)}
        return SceneIndex(root=root, image_root=image_root, mask_root=None,
                          camera_root=None, times=tuple(range(n)),
                          views=tuple(range(len(per_view))), frames=frames, masks={},
                          time_dirs={t: f"frame {t}" for t in range(n)}, layout=layout,
                          view_names=dict(enumerate(names)))
    base = root if image_root != root else root.parent
    mask_root = base / "masks" if (base / "masks").is_dir() else None
    camera_root = base / "cameras" if (base / "cameras").is_dir() else None
    times = tuple(sorted(scanned))
    frames = {(t, v): p for t in times for v, p in scanned[t][1].items()}
    views = tuple(sorted({v for _, v in frames}))
    if not views:
        raise SceneNotFoundError(f"time folders under {image_root} contain no viewV images")
    masks: dict[tuple[int, int], Path] = {}
    if mask_root is not None:
        for t, (_, per_view) in _scan_time_dirs(mask_root).items():
            masks.update({(t, v): p for v, p in per_view.items()})
    return SceneIndex(root=root, image_root=image_root, mask_root=mask_root,
                      camera_root=camera_root, times=times, views=views, frames=frames,
                      masks=masks, time_dirs={t: scanned[t][0] for t in times})


def select_views(scene: SceneIndex, N: int, views: Sequence[int] | None) -> tuple[int, ...]:
    """The views a clip uses: `views` checked against the scene, else its first N. Public
    because the Triton client (serving/) must pick views exactly like load_clip."""
    if views is None:
        if N > scene.num_views:
            raise NotEnoughFramesError(
                f"scene {scene.root} has {scene.num_views} views {list(scene.views)}, "
                f"clip asks for N={N}")
        return scene.views[:N]
    chosen = tuple(int(v) for v in views)
    if len(chosen) != N:
        raise RuntimeDataError(f"views={list(chosen)} has {len(chosen)} entries, N={N}")
    if len(set(chosen)) != N:
        raise RuntimeDataError(f"views={list(chosen)} repeats a view")
    missing = [v for v in chosen if v not in scene.views]
    if missing:
        raise NotEnoughFramesError(
            f"views {missing} do not exist in scene {scene.root}; it has {scene.num_views} "
            f"views {list(scene.views)}")
    return chosen


def load_clip(folder: str | Path | SceneIndex, t0: int, T: int, N: int,
              size_hw: Sequence[int], views: Sequence[int] | None = None,
              with_masks: bool = False) -> dict[str, Any]:
    """Load time steps t0..t0+T-1 (positions in the sorted sequence) of N views.

    Returns images float32 [1, T, N, 3, H, W] in [0, 1], ext_mask float32 [1, T, N, H, W]
    (only with ``with_masks``), frame_paths [T][N] (str), plus times/views labels,
    size_hw and the common source size src_hw.
    """
    scene = folder if isinstance(folder, SceneIndex) else discover_scene(folder)
    H, W = check_size_hw(size_hw)
    if T < 1 or N < 1 or t0 < 0:
        raise RuntimeDataError(f"need T >= 1, N >= 1, t0 >= 0; got t0={t0}, T={T}, N={N}")
    if t0 + T > scene.num_times:
        raise NotEnoughFramesError(
            f"scene {scene.root} has {scene.num_times} time steps; clip t0={t0}, T={T} needs "
            f"{t0 + T}")
    chosen = select_views(scene, N, views)
    times = scene.times[t0:t0 + T]
    paths = [[scene.frame_path(t, v) for v in chosen] for t in times]
    mask_paths = [[scene.mask_path(t, v) for v in chosen] for t in times] if with_masks else None

    images = np.empty((1, T, N, 3, H, W), dtype=np.float32)
    ext_mask = np.empty((1, T, N, H, W), dtype=np.float32) if with_masks else None
    ref: tuple[tuple[int, int], Path] | None = None
    for i in range(T):
        for j in range(N):
            im = decode_frame(paths[i][j])
            hw = im.shape[:2]
            if ref is None:
                ref = (hw, paths[i][j])
            elif hw != ref[0]:
                raise SizeMismatchError(
                    f"frames of one clip must share a size: {ref[1]} is {ref[0][1]}x{ref[0][0]}"
                    f" but {paths[i][j]} is {hw[1]}x{hw[0]} (WxH)")
            images[0, i, j] = preprocess_rgb(im, (H, W), name=str(paths[i][j]))
            if mask_paths is not None:
                m = read_mask(mask_paths[i][j])
                if m.shape != hw:
                    raise SizeMismatchError(
                        f"mask {mask_paths[i][j]} is {m.shape[1]}x{m.shape[0]} but its image "
                        f"{paths[i][j]} is {hw[1]}x{hw[0]} (WxH)")
                ext_mask[0, i, j] = preprocess_mask(m, (H, W))
    if not np.isfinite(images).all():
        raise NonFiniteError(f"preprocessed clip from {scene.root} contains NaN/Inf")
    out: dict[str, Any] = {
        "images": images,
        "frame_paths": [[str(p) for p in row] for row in paths],
        "times": list(times),
        "views": list(chosen),
        "size_hw": (H, W),
        "src_hw": ref[0] if ref is not None else None,
    }
    if ext_mask is not None:
        out["ext_mask"] = ext_mask
        out["mask_paths"] = [[str(p) for p in row] for row in mask_paths]
    return out
