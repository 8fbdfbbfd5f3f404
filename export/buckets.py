"""Export buckets: parsing the --T / --N lists into Bucket shapes.

The Bucket type itself lives in runtime/layout.py (runtime dispatches between the same
buckets without importing export/); it is re-exported here for export's callers.
"""
from __future__ import annotations

from typing import Iterable

from runtime.layout import Bucket, BucketError

__all__ = ["Bucket", "BucketError", "parse_int_list", "make_buckets"]


def parse_int_list(text: str | int | Iterable[int], what: str) -> list[int]:
    if isinstance(text, int):
        return [text]
    if not isinstance(text, str):
        return [int(x) for x in text]
    try:
        vals = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as e:
        raise BucketError(f"--{what} expects integers separated by commas, got {text!r}") from e
    if not vals:
        raise BucketError(f"--{what} is empty")
    return vals


def make_buckets(T: str | Iterable[int], N: str | Iterable[int] | None, H: int, W: int,
                 batch: int = 1, single_view: bool = False, ext_mask: bool = False,
                 patch_size: int = 14) -> list[Bucket]:
    """N None: 4 views, or the single view of ``single_view`` buckets."""
    Ts = parse_int_list(T, "T")
    if single_view:
        # A single-view bucket has no view axis: a --N would be silently ignored.
        if N is not None and parse_int_list(N, "N") != [1]:
            raise BucketError(f"--N {N} does not apply to --single-view buckets (one image "
                              f"per step, S = --T frames); leave --N out, or drop "
                              f"--single-view for a multi-view bucket with N views")
        Ns = [1]
    else:
        Ns = parse_int_list(4 if N is None else N, "N")
    out = []
    for t in Ts:
        for n in Ns:
            out.append(Bucket(t, n, H, W, batch, single_view, ext_mask).validate(patch_size))
    return out
