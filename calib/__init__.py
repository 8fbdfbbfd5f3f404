"""Calibration data for INT8/FP8 TensorRT builds: real multi-view clips, runtime preprocessing."""
from .dataset import (
    FORMAT_VERSION,
    build_calibration_set,
    load_calibration_set,
    sample_clips,
    split_clips,
)

__all__ = ["FORMAT_VERSION", "build_calibration_set", "load_calibration_set", "sample_clips",
           "split_clips"]
