"""Which ONNX graph of a bucket onnxruntime runs when the caller names none.

The rule (``choose_graph``), documented in ``infer --help``:

1. An explicit graph always wins.
2. Otherwise the portable graph model.onnx: onnxruntime fuses its standard ops, while the
   plugin graph's attention runs on numpy reference ops (about 3x slower on the CPU).
3. Unless model.onnx's dense attention logits ([L, L] per head, plus the softmax copy)
   would take more than DENSE_FRACTION of the available memory: then the plugin graph,
   whose reference ops are tiled, with a one-line notice. model.native.onnx is never the
   default: onnxruntime runs its Attention nodes densely too, at the portable graph's cost.
4. A bucket without model.onnx runs model.plugins.onnx.

The plugin graph needs onnxruntime-extensions; where it is missing and model.onnx fits,
the portable graph stands in (with a notice) instead of failing.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .layout import PLUGIN_GRAPH, PORTABLE_GRAPH, Bucket

__all__ = ["DENSE_FRACTION", "AVAILABLE_MEMORY_ENV", "GraphChoice", "choose_graph",
           "dense_logits_bytes", "available_memory_bytes", "have_reference_ops",
           "MISSING_EXTENSIONS"]

# The portable graph runs only while its logits take at most this share of the available
# memory (export's validation of model.onnx uses the same bound).
DENSE_FRACTION = 0.6
# Test hook (tests/test_faults.py, test_runtime.py): pretend this machine has this much
# available memory.
AVAILABLE_MEMORY_ENV = "VGGT_MV_TEST_AVAILABLE_MEMORY"
MISSING_EXTENSIONS = ("onnxruntime-extensions is not installed: it serves the vggt_mv "
                      "plugin ops of {graph} on onnxruntime (pip install "
                      "onnxruntime-extensions, or pip install -e '.[runtime-ort]')")


@dataclass(frozen=True)
class GraphChoice:
    graph: str
    notice: str | None = None  # why the default is not the fast graph, for the user


def dense_logits_bytes(model_config: Mapping[str, Any], bucket: Bucket) -> int:
    """Largest logits tensor the portable graph materializes (its attention bodies are
    dense): one fp32 [groups, heads, L, L] per attention node, plus the softmax copy."""
    c = model_config
    patch = int(c["patch_size"])
    F = 1 + int(c["num_register_tokens"]) + (bucket.H // patch) * (bucket.W // patch)
    T, N, B, H = bucket.T, bucket.N, bucket.batch, int(c["num_heads"])
    sizes = [B * N * H * (T * F) ** 2, B * T * H * (N * F) ** 2]
    if c.get("sparse_global"):
        m = int(c["num_memory_tokens"]) if c.get("sparse_strategy") == "memory_bank" else 0
        sizes.append(B * H * (T * N * F + m) ** 2)
    return 2 * 4 * max(sizes)


def available_memory_bytes() -> int:
    """MemAvailable: what can be allocated without swapping."""
    fake = os.environ.get(AVAILABLE_MEMORY_ENV)
    if fake:
        return int(float(fake))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def have_reference_ops() -> bool:
    """Whether the plugin graph can run on onnxruntime here (onnxruntime-extensions)."""
    return importlib.util.find_spec("onnxruntime_extensions") is not None


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def choose_graph(folder: Path, manifest: Mapping[str, Any], graph: str | None = None,
                 available: int | None = None) -> GraphChoice:
    """The graph onnxruntime runs for this bucket; see the module docstring for the rule."""
    if graph:
        return GraphChoice(graph)
    if not (folder / PORTABLE_GRAPH).is_file():
        return GraphChoice(PLUGIN_GRAPH)
    config = manifest.get("model_config")
    if not config:  # an old manifest: nothing to size the logits by
        return GraphChoice(PORTABLE_GRAPH)
    bucket = Bucket.from_dict(manifest["bucket"])
    need = dense_logits_bytes(config, bucket)
    have = available_memory_bytes() if available is None else available
    if need <= DENSE_FRACTION * have:
        return GraphChoice(PORTABLE_GRAPH)
    why = (f"{bucket.name}: {PORTABLE_GRAPH}'s dense attention needs ~{_size(need)} per "
           f"node, more than {DENSE_FRACTION:.0%} of the {_size(have)} available")
    if not have_reference_ops():
        # Neither graph can run: say what each would need.
        from .session import SessionError  # noqa: PLC0415 - session imports this module

        raise SessionError(f"{why}, and {MISSING_EXTENSIONS.format(graph=PLUGIN_GRAPH)}; "
                           f"or force --graph {PORTABLE_GRAPH}")
    return GraphChoice(PLUGIN_GRAPH, f"{why}; running {PLUGIN_GRAPH} (tiled reference ops, "
                                     f"slower; --graph chooses)")
