"""Exceptions raised by the numpy-only runtime (pre/post-processing, data loading).

Every class derives from ValueError or FileNotFoundError so that callers that only know
the builtin types still catch them, while the CLI and the calibration tooling can tell the
cases apart and print the message as is (each message names the file or the counts).
"""
from __future__ import annotations

__all__ = [
    "RuntimeDataError",
    "SceneNotFoundError",
    "MissingFrameError",
    "NotEnoughFramesError",
    "ImageReadError",
    "SizeMismatchError",
    "PatchMultipleError",
    "NonFiniteError",
    "CalibrationSetError",
]


class RuntimeDataError(ValueError):
    """Base class: input data that the runtime cannot turn into a valid model input."""


class SceneNotFoundError(FileNotFoundError):
    """The scene folder (or its images/ sub-folder) does not exist or holds no frames."""


class MissingFrameError(FileNotFoundError):
    """A (time step, view) image or mask that a clip needs is absent from the scene."""


class NotEnoughFramesError(RuntimeDataError):
    """A clip asks for more time steps or views than the scene has."""


class ImageReadError(RuntimeDataError):
    """An image or mask file exists but cannot be decoded (corrupt, truncated, not an image)."""


class SizeMismatchError(RuntimeDataError):
    """Frames of one clip (or a mask and its image) do not share one resolution."""


class PatchMultipleError(RuntimeDataError):
    """A target height/width is not a positive multiple of the ViT patch size (14)."""


class NonFiniteError(RuntimeDataError):
    """An array that must be finite holds NaN or Inf."""


class CalibrationSetError(RuntimeDataError):
    """A calibration .npz is malformed or does not match the requested T / N / size."""
