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


def make_buckets(T: str | Iterable[int], N: str | Iterable[int], H: int, W: int,
                 batch: int = 1, single_view: bool = False, ext_mask: bool = False,
                 patch_size: int = 14) -> list[Bucket]:
    Ts = parse_int_list(T, "T")
    Ns = [1] if single_view else parse_int_list(N, "N")
    out = []
    for t in Ts:
        for n in Ns:
            out.append(Bucket(t, n, H, W, batch, single_view, ext_mask).validate(patch_size))
    return out
