"""Where each tensor of a checkpoint goes in VGGT_MV, decided from names and shapes alone.

Working on names and shapes (never values) lets the same plan drive a real load, a
dry run on the meta device at full size, and `inspect_checkpoint`.

Per source kind:
  page4d / vggt / vggt_mv  identity names (VGGT_MV keeps the VGGT / PAGE-4D layout).
  pi3   encoder.*     -> aggregator.patch_embed.*   (same DINOv2 sub-keys, no mask_token)
        decoder.{2i}  -> aggregator.frame_blocks.{i}  (even = per-image attention)
        decoder.{2i+1}-> aggregator.global_blocks.{i} (odd = cross-image attention)
        register_token [1, 1, 5, C] -> aggregator.register_token [1, 2, R, C]: the first R
          tokens, shared by the reference and the other frames as in Pi3
        heads and image_mean / image_std: skipped (no VGGT_MV counterpart)
  seed  time/view(_blocks) -> frame/global(_blocks), for the pose_ / geo_ streams too; the
        prototype also registered the same modules under the VGGT names, so those keys are
        aliases: each parameter is loaded once and the aliases are reported as such.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..config import VGGTMVConfig

Shape = tuple[int, ...]

LOAD, SKIP, MISMATCH, UNEXPECTED, ALIAS = "loaded", "skipped", "mismatched", "unexpected", "alias"
STATUSES = (LOAD, SKIP, MISMATCH, UNEXPECTED, ALIAS)

PI3_REGISTER = "pi3_register_token"

_PI3_HEADS = ("point_decoder.", "point_head.", "conf_decoder.", "conf_head.",
              "camera_decoder.", "camera_head.")
_PI3_DECODER_RE = re.compile(r"^decoder\.(\d+)\.(.+)$")

# seed prototype name -> VGGT_MV name (component right after "aggregator.")
SEED_RENAMES = {
    "time_blocks": "frame_blocks",
    "view_blocks": "global_blocks",
    "pose_time_blocks": "pose_frame_blocks",
    "pose_view_blocks": "pose_global_blocks",
    "geo_time_blocks": "geo_frame_blocks",
    "geo_view_blocks": "geo_global_blocks",
}
_SEED_ALIAS_OF = {v: k for k, v in SEED_RENAMES.items()}
_SEED_COMPONENT_RE = re.compile(r"^aggregator\.([a-z_]+)\.(.*)$")

_HEADS = ("camera_head", "depth_head", "point_head", "track_head")


@dataclass
class Entry:
    """The fate of one tensor of a source file."""
    source: str
    status: str
    target: str | None = None
    reason: str = ""
    got: Shape | None = None
    expected: Shape | None = None
    adapt: str | None = None
    alias_of: str | None = None

    @property
    def group(self) -> str:
        return group_of(self.target or self.source)


def group_of(name: str) -> str:
    """Report group of a parameter: aggregator.<submodule> or the top-level module."""
    parts = name.split(".")
    if parts[0] == "aggregator" and len(parts) > 1:
        sub = parts[1]
        return "aggregator.lambda_*" if sub.startswith("lambda_") else f"aggregator.{sub}"
    return parts[0]


# ---------------------------------------------------------------------------- names
def map_name(kind: str, name: str) -> tuple[str | None, str, str | None]:
    """(target name or None, skip reason, adaptation) for one source name.

    A None target with an empty reason means the name is not understood (unexpected).
    """
    if kind == "pi3":
        return _map_pi3(name)
    if kind == "seed":
        return _map_seed(name)
    return name, "", None


def _map_pi3(name: str) -> tuple[str | None, str, str | None]:
    if name == "register_token":
        return "aggregator.register_token", "", PI3_REGISTER
    if name in ("image_mean", "image_std"):
        return None, ("Pi3 normalization buffer; VGGT_MV normalizes with fixed ImageNet "
                      "constants (non-persistent buffers)"), None
    if name.startswith("encoder."):
        return "aggregator.patch_embed." + name[len("encoder."):], "", None
    m = _PI3_DECODER_RE.match(name)
    if m:
        k, rest = int(m.group(1)), m.group(2)
        blocks = "frame_blocks" if k % 2 == 0 else "global_blocks"
        return f"aggregator.{blocks}.{k // 2}.{rest}", "", None
    if name.startswith(_PI3_HEADS):
        # Pi3's camera_head.* shares a name with VGGT's camera head but is a different
        # network: it must never reach the identity path.
        return None, "Pi3 head (point/conf/camera decoders): no VGGT_MV counterpart", None
    return None, "", None


def _map_seed(name: str) -> tuple[str | None, str, str | None]:
    if name.startswith("aggregator.dynamic_mask_head.mask_head."):
        return None, ("seed's second mask head (DynamicMaskHead.mask_head); VGGT_MV has none: "
                      "PAGE-4D's spatial_mask_head yields the mask"), None
    m = _SEED_COMPONENT_RE.match(name)
    if m and m.group(1) in SEED_RENAMES:
        return f"aggregator.{SEED_RENAMES[m.group(1)]}.{m.group(2)}", "", None
    return name, "", None


def seed_alias_of(name: str, present: set[str]) -> str | None:
    """The primary seed name that `name` duplicates, if the file holds it."""
    m = _SEED_COMPONENT_RE.match(name)
    if not m or m.group(1) not in _SEED_ALIAS_OF:
        return None
    primary = f"aggregator.{_SEED_ALIAS_OF[m.group(1)]}.{m.group(2)}"
    return primary if primary in present else None


# ---------------------------------------------------------------------------- absence
_BLOCK_RE = re.compile(r"^aggregator\.(frame_blocks|global_blocks|patch_embed\.blocks|"
                       r"(?:pose|geo)_(?:frame|global)_blocks|sparse_blocks)\.(\d+)\.")


def explain_absent(target: str, cfg: VGGTMVConfig) -> str:
    """Why a well-formed target name has no parameter in this configuration ('' = no idea,
    i.e. the tensor is unexpected)."""
    for head in _HEADS:
        if target.startswith(head + ".") and not getattr(cfg.heads, head[:-len("_head")]):
            return f"config.heads.{head[:-len('_head')]} is off"
    if target.startswith("aggregator.spatial_mask_head.") and not cfg.mask_head:
        return "config.mask_head is off (no PAGE-4D mask head in this model)"
    if target in ("aggregator.dynamic_mask_head.alpha", "aggregator.dynamic_mask_head.beta") \
            and not cfg.learnable_mask_fusion:
        return "config.learnable_mask_fusion is off (fixed a = b = 1)"
    if re.match(r"^aggregator\.lambda_\w+_logit$", target) and not cfg.dual_stream:
        return "config.dual_stream is off"
    if target == "aggregator.memory_tokens" and not (
            cfg.sparse_global and cfg.sparse_strategy == "memory_bank"):
        return "config has no memory bank (sparse_global / sparse_strategy)"
    m = _BLOCK_RE.match(target)
    if m:
        mod, idx = m.group(1), int(m.group(2))
        if mod in ("frame_blocks", "global_blocks") and idx >= cfg.depth:
            return f"layer {idx} beyond config.depth = {cfg.depth}"
        if mod == "patch_embed.blocks" and idx >= cfg.encoder.depth:
            return f"encoder block {idx} beyond config.encoder.depth = {cfg.encoder.depth}"
        if mod.startswith(("pose_", "geo_")):
            if not cfg.dual_stream:
                return "config.dual_stream is off"
            if idx >= len(cfg.dual_stream_layers):
                return (f"dual-stream block {idx} beyond the {len(cfg.dual_stream_layers)} "
                        "layers of config.dual_stream_layers")
        if mod == "sparse_blocks":
            if not cfg.sparse_global:
                return "config.sparse_global is off"
            if idx >= len(cfg.sparse_layers):
                return (f"sparse block {idx} beyond the {len(cfg.sparse_layers)} layers of "
                        "config.sparse_layers")
    return ""


# ---------------------------------------------------------------------------- shapes
def adapted_shape(adapt: str | None, got: Shape, expected: Shape) -> bool:
    """Whether a source tensor of shape `got` can fill a parameter of shape `expected`."""
    if adapt is None:
        return tuple(got) == tuple(expected)
    if adapt == PI3_REGISTER:
        # [1, 1, K, C] -> [1, 2, R, C] needs K >= R and the same width
        return (len(got) == 4 and len(expected) == 4 and got[0] == 1 and got[1] == 1
                and expected[0] == 1 and got[2] >= expected[2] and got[3] == expected[3])
    raise ValueError(f"unknown adaptation {adapt!r}")


def adapt_tensor(adapt: str | None, t: torch.Tensor, expected: Shape) -> torch.Tensor:
    if adapt is None:
        return t
    if adapt == PI3_REGISTER:
        R = expected[2]
        return t[:, :1, :R].expand(*expected)
    raise ValueError(f"unknown adaptation {adapt!r}")


# ---------------------------------------------------------------------------- plan
@dataclass
class SourcePlan:
    kind: str
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def by_status(self, status: str) -> list[Entry]:
        return [e for e in self.entries if e.status == status]

    def counts(self) -> dict[str, int]:
        c = {s: 0 for s in STATUSES}
        for e in self.entries:
            c[e.status] += 1
        return c


def plan_source(kind: str, shapes: Mapping[str, Shape], target_shapes: Mapping[str, Shape],
                cfg: VGGTMVConfig) -> SourcePlan:
    """Decide, for every tensor of one source, whether it loads, where, and if not, why."""
    plan = SourcePlan(kind)
    present = set(shapes)
    primaries, aliases = [], []
    for name in shapes:
        (aliases if kind == "seed" and seed_alias_of(name, present) else primaries).append(name)

    claimed: dict[str, str] = {}
    for name in primaries:
        got = tuple(shapes[name])
        target, reason, adapt = map_name(kind, name)
        if target is None:
            plan.entries.append(Entry(name, SKIP if reason else UNEXPECTED, reason=reason,
                                      got=got))
            continue
        if target in claimed:
            # two differently named tensors for one parameter: the first one wins
            plan.entries.append(Entry(name, ALIAS, target, f"same parameter as {claimed[target]}",
                                      got=got, alias_of=claimed[target]))
            continue
        claimed[target] = name
        if target not in target_shapes:
            why = explain_absent(target, cfg)
            plan.entries.append(Entry(name, SKIP if why else UNEXPECTED, target, why, got=got))
            continue
        expected = tuple(target_shapes[target])
        if adapted_shape(adapt, got, expected):
            plan.entries.append(Entry(name, LOAD, target, got=got, expected=expected, adapt=adapt))
        else:
            plan.entries.append(Entry(name, MISMATCH, target, "shape", got=got, expected=expected,
                                      adapt=adapt))

    for name in aliases:
        primary = seed_alias_of(name, present)
        got = tuple(shapes[name])
        target = map_name(kind, name)[0]
        if got != tuple(shapes[primary]):
            plan.entries.append(Entry(name, UNEXPECTED, target,
                                      f"named like an alias of {primary} but shaped {got} vs "
                                      f"{tuple(shapes[primary])}", got=got))
            continue
        plan.entries.append(Entry(name, ALIAS, target, f"alias of {primary} (loaded once)",
                                  got=got, alias_of=primary))

    if kind == "pi3":
        plan.notes.append("Pi3 decoder LayerNorms use eps 1e-6, VGGT_MV blocks 1e-5: blocks "
                          "kept from Pi3 differ numerically by that much")
    if kind == "seed" and any(e.target and re.match(r"aggregator\.(pose|geo)_", e.target)
                              and e.status == LOAD for e in plan.entries):
        if tuple(cfg.dual_stream_layers) != tuple(range(6, 11)):
            plan.notes.append("seed dual-stream blocks j were trained at layers 6..10 (seed "
                              "default); this config runs block j at layer "
                              f"dual_stream_layers[j] = {list(cfg.dual_stream_layers)}")
    return plan
