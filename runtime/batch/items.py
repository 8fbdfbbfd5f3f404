"""Batch items, their done markers and the batch record; numpy and Ray free.

An item is one clip folder (any layout ``infer`` reads). ``--input`` is either a text file
with one clip folder per line (relative lines are relative to the file; blank lines and
``#`` comments skipped) or a root folder whose sub-folders are the clips. Each item's
outputs go to ``OUT/<name>/``; a finished item holds ``batch_done.json`` (written inside
the same atomic folder swap as the outputs, so it exists exactly when they all do).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import RuntimeDataError
from ..layout import atomic_write_json

__all__ = ["DONE_MARKER", "BATCH_JSON", "Item", "ItemResult", "discover_items", "is_done",
           "percentile", "summarize", "write_batch_json"]

DONE_MARKER = "batch_done.json"
BATCH_JSON = "batch.json"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Item:
    name: str          # folder name under OUT
    input: str         # the clip folder (absolute)


@dataclass
class ItemResult:
    name: str
    input: str
    status: str                    # done, skipped, failed
    message: str = ""
    seconds: float = 0.0           # on the worker: read, infer, write
    attempts: int = 1              # > 1: an actor died while running it
    worker: str = ""               # actor (node:pid) that finished it
    written: bool = False          # this run wrote the outputs (skipped/failed: False)
    bucket: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _name_for(path: Path, base: Path | None) -> str:
    try:
        rel = path.relative_to(base) if base is not None else Path(path.name)
    except ValueError:
        rel = Path(path.name)
    name = _SAFE.sub("_", "__".join(rel.parts)).strip("._") or "item"
    return name


def discover_items(input: str | Path) -> list[Item]:
    """The items of ``--input`` (a list file or a root of clip folders), in a stable order.

    Nothing is opened here: a folder that is not a readable clip becomes a failed item
    when it runs (reported, the others continue), not a refusal of the whole batch."""
    src = Path(input)
    if src.is_file():
        base = src.parent.resolve()
        paths = []
        for line in src.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                paths.append((p if p.is_absolute() else base / p).resolve())
    elif src.is_dir():
        base = src.resolve()
        if (base / "images").is_dir() or any(d.name.startswith("time_") for d in base.iterdir()):
            raise RuntimeDataError(
                f"--input {src} is one clip, not a batch: give the folder that holds the clip "
                f"folders, or a text file listing them (one per line)")
        paths = sorted(d.resolve() for d in base.iterdir()
                       if d.is_dir() and not d.name.startswith("."))
    else:
        raise RuntimeDataError(f"--input {src} not found: give a folder of clip folders or a "
                               f"text file listing clip folders")
    if not paths:
        raise RuntimeDataError(f"--input {src} names no clip folders")
    items, seen = [], {}
    for p in paths:
        name = _name_for(p, base)
        if name in seen:
            raise RuntimeDataError(f"--input {src}: {seen[name]} and {p} would both write "
                                   f"OUT/{name}; rename one of them")
        seen[name] = p
        items.append(Item(name, str(p)))
    return items


def is_done(out_item: str | Path) -> bool:
    return (Path(out_item) / DONE_MARKER).is_file()


def percentile(values: Iterable[float], q: float) -> float | None:
    vals = sorted(values)
    if not vals:
        return None
    k = (len(vals) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def summarize(results: list[ItemResult], wall_s: float, **extra: Any) -> dict[str, Any]:
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    lat = [r.seconds for r in results if r.status == "done"]
    return {**counts, "items": len(results), "wall_s": round(wall_s, 3),
            "clips_per_s": round(counts["done"] / wall_s, 3) if wall_s > 0 else None,
            "latency_p50_s": _round(percentile(lat, 50)),
            "latency_p90_s": _round(percentile(lat, 90)),
            "retried": sum(r.attempts > 1 for r in results), **extra}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def write_batch_json(out: str | Path, results: list[ItemResult], summary: dict[str, Any]
                     ) -> Path:
    """OUT/batch.json: every item with its status (replaced atomically)."""
    return atomic_write_json(Path(out) / BATCH_JSON,
                             {"summary": summary, "items": [r.to_dict() for r in results]})


def read_batch_json(out: str | Path) -> dict[str, Any]:
    return json.loads((Path(out) / BATCH_JSON).read_text())
