"""What an export needs from the machine, known before a minute of tracing: disk for the
bucket, and peak memory for tracing + validation. `export` refuses up front when either
does not fit (naming the numbers and what would fit), `model-info` prints both.

The estimates are simple models fitted to runs measured on this project's 2-core, 24 GB
machine (random weights: weights never change sizes), and lean conservative:

- disk: the bucket is model.onnx + model.plugins.onnx + model.native.onnx (+
  model.onnx.data, shared, once the weights pass EXTERNAL_DATA_BYTES; below that each
  graph embeds them). The data file is one file for every bucket of the export (hard
  links), so an export of k buckets keeps the weights once (export_disk_bytes). Measured,
  full-size default model (1,256,559,023 parameters): T=2,N=2 518x392 wrote 4,802 MB
  (model.onnx 9.9 MB + model.onnx.data 4.79 GB + model.plugins.onnx 0.76 MB); T=8,N=4
  518x518 4.78 GB. 4 bytes x parameters (5.03 GB) bounds the data file (some parameters,
  unused by the exported heads, are not in it) and 16 MB the three graph protos.
- memory, peak RSS: tracing holds the weights about 1.1 times (T=8,N=4 518x518 export
  --no-validate: 5.5 GB = 1.09 x 5.03 GB); it never materializes activations. Validation
  runs the model: the PyTorch forward's activations grow with frames x pixels (T=2,N=2
  518x392 forward: 6.7 GB peak - 5.03 GB weights = 2,060 bytes per frame pixel, mostly
  the DPT heads' full-resolution features), and the onnxruntime sessions add their own
  weight copies while the PyTorch model stays loaded (3 x weights), plus the portable
  graph's dense attention logits (export.pipeline.dense_attention_bytes; model.onnx
  validation is skipped when they pass 60% of the available memory, as the validator
  does). T=2,N=2 518x392: 3 x 5.03 + 1.11 + 1.71 + 0.5 = 18.4 GB against 16.4 GB measured
  (16.1 / 16.4 GB on two runs): the terms do not all peak at once, so it errs high.
  At T=8,N=4 518x518 the activation term alone is ~18 GB: validation there needs a
  larger machine than the 24 GB one these figures come from (--no-validate fits).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import RuntimeDataError
from runtime.layout import Bucket

from .pipeline import available_memory_bytes  # the one home of MemAvailable (+ test hook)

GB = 1e9
GRAPH_PROTO_BYTES = 16_000_000   # both graph protos of the full-size model: 10.7 MB measured
TRACE_WEIGHT_COPIES = 1.1        # export --no-validate, T=8,N=4 518x518: 5.5 GB / 5.03 GB
VALIDATE_WEIGHT_COPIES = 3.0     # PyTorch model + the onnxruntime session's weights + arena
ACTIVATION_BYTES_PER_PIXEL = 2_100  # per frame pixel, PyTorch forward (see above)
MEMORY_MARGIN_BYTES = 500_000_000   # interpreter, libraries, allocator slack
# Test hook (tests/test_faults.py): pretend the disk has this much free space.
FREE_DISK_ENV = "VGGT_MV_TEST_FREE_DISK"


class ResourceError(RuntimeDataError):
    """The machine cannot hold the export (a bucket too large for it): raised before
    anything is traced, exit 2 like any other choice the user can change."""


@dataclass(frozen=True)
class Needs:
    disk_bytes: int         # the bucket alone (copied to another machine): graphs + weights
    memory_bytes: int
    dense_validated: bool   # whether model.onnx's dense attention is validated at this size
    shared_bytes: int = 0   # of disk_bytes, the weights file every bucket of the export shares

    def describe(self) -> str:
        disk = (f"~{(self.disk_bytes - self.shared_bytes) / GB:.2f} GB of disk + the shared "
                f"weights ~{self.shared_bytes / GB:.2f} GB (once per export)"
                if self.shared_bytes else f"~{self.disk_bytes / GB:.2f} GB of disk")
        return f"needs {disk}, ~{self.memory_bytes / GB:.1f} GB peak memory"


def shared_bytes(num_parameters: int, external_data_bytes: int) -> int:
    """The weights file the buckets share (0 when the weights stay inside the graphs)."""
    weights = 4 * num_parameters
    return weights if weights > external_data_bytes else 0


def export_disk_bytes(needs: list[Needs]) -> int:
    """Disk an export of these buckets needs at its peak: each bucket's graphs, the shared
    weights once, and while a bucket is written torch.onnx's data file and the canonical
    one beside the store's copy (export/shared_weights.py reads the first into the
    second)."""
    shared = max((n.shared_bytes for n in needs), default=0)
    own = sum(n.disk_bytes - n.shared_bytes for n in needs)
    return int(own + shared * (1 + min(len(needs), 2)))


def disk_bytes(num_parameters: int, external_data_bytes: int) -> int:
    weights = 4 * num_parameters
    if weights > external_data_bytes:
        return int(weights + GRAPH_PROTO_BYTES)
    return int(2 * weights + GRAPH_PROTO_BYTES // 10)  # each graph embeds the weights


def estimate(config, bucket: Bucket, num_parameters: int, validate: bool,
             available_memory: int | None = None) -> Needs:
    """Disk and peak memory of exporting ``bucket`` of a model with ``config``."""
    from .exporter import EXTERNAL_DATA_BYTES
    from .pipeline import dense_attention_bytes, dense_validation_fits

    weights = 4 * num_parameters
    shared = shared_bytes(num_parameters, EXTERNAL_DATA_BYTES)
    if not validate:
        return Needs(disk_bytes(num_parameters, EXTERNAL_DATA_BYTES),
                     int(TRACE_WEIGHT_COPIES * weights + MEMORY_MARGIN_BYTES), False, shared)
    avail = available_memory_bytes() if available_memory is None else available_memory
    dense = dense_attention_bytes(config, bucket)
    dense_validated = dense_validation_fits(config, bucket, avail)  # as the validator decides
    frames = bucket.batch * bucket.T * (1 if bucket.single_view else bucket.N)
    activations = ACTIVATION_BYTES_PER_PIXEL * frames * bucket.H * bucket.W
    peak = VALIDATE_WEIGHT_COPIES * weights + (dense if dense_validated else 0) + activations
    return Needs(disk_bytes(num_parameters, EXTERNAL_DATA_BYTES),
                 int(peak + MEMORY_MARGIN_BYTES), dense_validated, shared)


def free_disk_bytes(path: str | Path) -> tuple[Path, int]:
    """(the existing folder measured, its free bytes) for an output path not yet made."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    fake = os.environ.get(FREE_DISK_ENV)
    return p, int(float(fake)) if fake else shutil.disk_usage(p).free


def largest_fitting(config, bucket: Bucket, num_parameters: int, validate: bool,
                    memory: int) -> str | None:
    """The largest bucket (most frames, same frame size and kind) whose export fits in
    ``memory``, as export options; None when not even T=1, N=1 fits."""
    best = None
    for T in range(bucket.T, 0, -1):
        for N in range(1 if bucket.single_view else bucket.N, 0, -1):
            b = Bucket(T, N, bucket.H, bucket.W, batch=bucket.batch,
                       single_view=bucket.single_view, ext_mask=bucket.ext_mask)
            if estimate(config, b, num_parameters, validate, memory).memory_bytes <= memory:
                if best is None or T * N > best[0] * best[1]:
                    best = (T, N)
    return None if best is None else f"--T {best[0]} --N {best[1]}"


def check_resources(config, buckets: list[Bucket], num_parameters: int, validate: bool,
                    out: str | Path) -> list[Needs]:
    """Every bucket's needs; raises ResourceError when the disk under ``out`` or this
    machine's memory cannot hold the largest of them."""
    needs = [estimate(config, b, num_parameters, validate) for b in buckets]
    where, free = free_disk_bytes(out)
    # Buckets are written one at a time, each replacing its old folder only at the end.
    total = export_disk_bytes(needs)
    if total > free:
        raise ResourceError(
            f"not enough disk under {where}: the export writes ~{total / GB:.2f} GB "
            f"({len(buckets)} bucket(s)), {free / GB:.2f} GB are free; free space there or "
            f"choose another --out (--skip-resource-check to try anyway)")
    memory = available_memory_bytes()
    for b, n in zip(buckets, needs):
        if n.memory_bytes <= memory:
            continue
        hint = largest_fitting(config, b, num_parameters, validate, memory)
        alt = [f"{hint} fits" if hint else f"no {b.H}x{b.W} bucket fits"]
        if validate and estimate(config, b, num_parameters, False).memory_bytes <= memory:
            alt.append("--no-validate fits (validate the weights at a smaller bucket)")
        raise ResourceError(
            f"{b.name} needs ~{n.memory_bytes / GB:.1f} GB of memory at its peak "
            f"({'tracing + validation' if validate else 'tracing'}), this machine has "
            f"{memory / GB:.1f} GB available: {'; '.join(alt)} "
            f"(--skip-resource-check to try anyway)")
    return needs
