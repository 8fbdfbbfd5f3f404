"""Export buckets: one fixed (T, N, H, W) shape per ONNX / engine.

TensorRT plugins and the sparse patterns are specialised to T, N and the patch grid, and
fixed shapes let TensorRT pick the best tactics, so every shape a user runs is its own
bucket (runtime/ dispatches between them).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable


class BucketError(ValueError):
    pass


@dataclass(frozen=True)
class Bucket:
    T: int
    N: int
    H: int = 518
    W: int = 518
    batch: int = 1
    single_view: bool = False
    ext_mask: bool = False

    @property
    def name(self) -> str:
        base = f"S{self.T}" if self.single_view else f"T{self.T}_N{self.N}"
        extra = "_mask" if self.ext_mask else ""
        batch = f"_B{self.batch}" if self.batch != 1 else ""
        return f"{base}_{self.H}x{self.W}{batch}{extra}"

    @property
    def images_shape(self) -> tuple[int, ...]:
        if self.single_view:
            return (self.batch, self.T, 3, self.H, self.W)
        return (self.batch, self.T, self.N, 3, self.H, self.W)

    @property
    def mask_shape(self) -> tuple[int, ...]:
        s = self.images_shape
        return s[:-3] + s[-2:]

    def validate(self, patch_size: int = 14) -> "Bucket":
        problems = []
        if self.T < 1 or self.N < 1 or self.batch < 1:
            problems.append(f"T, N and batch must be >= 1 (got T={self.T}, N={self.N}, "
                            f"batch={self.batch})")
        if self.single_view and self.N != 1:
            problems.append("the single-view layout has N = 1")
        if self.H % patch_size or self.W % patch_size or self.H < patch_size or self.W < patch_size:
            problems.append(f"height and width must be positive multiples of {patch_size} "
                            f"(got {self.H}x{self.W}; nearest: "
                            f"{max(1, round(self.H / patch_size)) * patch_size}x"
                            f"{max(1, round(self.W / patch_size)) * patch_size})")
        if self.T * self.N < 1:
            problems.append("a bucket needs at least one frame")
        if problems:
            raise BucketError(f"invalid bucket {self.name}: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Bucket":
        return cls(**{k: v for k, v in d.items() if k != "name"})


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
