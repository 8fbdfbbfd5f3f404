"""Configurations of VGGT_MV. The default, vggt_mv_1b, has exactly the state-dict names
and shapes of a PAGE-4D checkpoint (../shared/ref/state_dicts/page4d.json); every option
adds parameters of its own and renames nothing, so real checkpoints always load."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ATTN_KINDS = ("time", "view")
SPARSE_STRATEGIES = ("landmark", "dilated", "memory_bank")


@dataclass
class EncoderConfig:
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4


@dataclass
class HeadsConfig:
    camera: bool = True
    depth: bool = True
    point: bool = True
    track: bool = True
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_iterations: int = 4
    dpt_features: int = 256
    dpt_out_channels: tuple[int, ...] = (256, 512, 1024, 1024)
    dpt_layers: tuple[int, ...] = (4, 11, 17, 23)
    track_features: int = 128
    track_iters: int = 4
    track_hidden_size: int = 384
    track_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class VGGTMVConfig:
    name: str = "vggt_mv_1b"
    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    init_values: float = 0.01
    rope_freq: float = 100.0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # Which alternating attention runs first in each layer. frame_blocks serve Time-SA
    # and global_blocks View-SA; ("time", "view") is VGGT's (frame, global) order, the
    # one every released checkpoint was trained with.
    aa_order: tuple[str, ...] = ("time", "view")
    # PAGE-4D dynamic mask head: computed after frame block mask_layer, biasing the
    # global (View-SA) blocks of mask_bias_layers.
    mask_head: bool = True
    mask_layer: int = 7
    mask_bias_layers: tuple[int, ...] = tuple(range(8, 24))
    learnable_mask_fusion: bool = False
    # Dual pose / geo streams (seed design); off in checkpoints released so far.
    dual_stream: bool = False
    dual_stream_layers: tuple[int, ...] = (8, 9, 10, 11, 12)
    lambda_clamp: float = 4.0
    # Sparse global attention over all T*N frames in a few late layers.
    sparse_global: bool = False
    sparse_layers: tuple[int, ...] = (22, 23)
    sparse_strategy: str = "landmark"
    landmark_k: int = 64
    dilated_levels: tuple[int, ...] = (1, 2, 4)
    num_memory_tokens: int = 32
    # Relative temporal RoPE in Time-SA (no checkpoint was trained with it).
    temporal_encoding: bool = False
    temporal_frequency: float = 1.0
    heads: HeadsConfig = field(default_factory=HeadsConfig)

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        if isinstance(self.heads, dict):
            self.heads = HeadsConfig(**self.heads)
        for name in ("aa_order", "mask_bias_layers", "dual_stream_layers", "sparse_layers",
                     "dilated_levels"):
            setattr(self, name, tuple(getattr(self, name)))
        self.heads.dpt_out_channels = tuple(self.heads.dpt_out_channels)
        self.heads.dpt_layers = tuple(self.heads.dpt_layers)
        self.validate()

    def validate(self) -> None:
        problems = []
        if sorted(self.aa_order) != sorted(ATTN_KINDS):
            problems.append(f"aa_order must be a permutation of {ATTN_KINDS}, got {self.aa_order}")
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 8:
            problems.append("embed_dim / num_heads must be a multiple of 8 (plugin contract)")
        for name in ("mask_bias_layers", "dual_stream_layers", "sparse_layers"):
            bad = [i for i in getattr(self, name) if not 0 <= i < self.depth]
            if bad:
                problems.append(f"{name} has layers outside [0, {self.depth}): {bad}")
        if self.mask_head and not 0 <= self.mask_layer < self.depth:
            problems.append(f"mask_layer {self.mask_layer} outside [0, {self.depth})")
        if self.mask_head and any(i <= self.mask_layer for i in self.mask_bias_layers):
            problems.append("mask_bias_layers must come after mask_layer")
        # Dual layers before mask_layer are allowed (the seed prototype used 6..10 with
        # the mask at 7): until the mask exists their bias is zero, i.e. plain attention.
        if self.dual_stream and list(self.dual_stream_layers) != list(
                range(self.dual_stream_layers[0], self.dual_stream_layers[-1] + 1)):
            problems.append("dual_stream_layers must be consecutive")
        if self.sparse_strategy not in SPARSE_STRATEGIES:
            problems.append(f"sparse_strategy must be one of {SPARSE_STRATEGIES}")
        if any(i >= self.depth for i in self.heads.dpt_layers):
            problems.append("heads.dpt_layers outside the trunk depth")
        if problems:
            raise ValueError("invalid VGGT_MV config: " + "; ".join(problems))

    @property
    def patch_start_idx(self) -> int:
        return 1 + self.num_register_tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VGGTMVConfig":
        return cls(**d)

    def replace(self, **changes: Any) -> "VGGTMVConfig":
        d = self.to_dict()
        for k, v in changes.items():
            if k in ("encoder", "heads") and isinstance(v, dict):
                d[k].update(v)
                continue
            old = d.get(k)
            # an override of the wrong type would fail far away (or not at all): say so here
            wrong = (isinstance(old, bool) and not isinstance(v, bool)) or (
                isinstance(old, (int, float)) and not isinstance(old, bool)
                and (isinstance(v, bool) or not isinstance(v, (int, float))
                     or (isinstance(old, int) and isinstance(v, float)))) or (
                isinstance(old, str) and not isinstance(v, str))
            if wrong:
                raise ValueError(f"config {k}={v!r}: expected {type(old).__name__} like the "
                                 f"default {old!r}")
            d[k] = v
        return VGGTMVConfig.from_dict(d)


def tiny_config(**changes: Any) -> VGGTMVConfig:
    """Same structure as the 1B model (every module, every option) at toy width/depth."""
    cfg = VGGTMVConfig(
        name="tiny", embed_dim=64, depth=4, num_heads=4,
        encoder=EncoderConfig(embed_dim=64, depth=2, num_heads=4),
        mask_layer=1, mask_bias_layers=(2, 3), dual_stream_layers=(2, 3),
        sparse_layers=(3,), landmark_k=4, num_memory_tokens=4, dilated_levels=(1, 2),
        heads=HeadsConfig(camera_trunk_depth=1, camera_num_heads=4, dpt_features=32,
                          dpt_out_channels=(16, 32, 64, 64), dpt_layers=(0, 1, 2, 3),
                          track_features=16, track_hidden_size=32,
                          track_kwargs={"depth": 1, "num_heads": 2, "num_virtual_tracks": 4,
                                        "corr_levels": 3, "corr_radius": 2}),
    )
    return cfg.replace(**changes) if changes else cfg


PRESETS = {
    "vggt_mv_1b": lambda **kw: VGGTMVConfig(**kw),
    "vggt_1b": lambda **kw: VGGTMVConfig(name="vggt_1b", mask_head=False, **kw),
    "tiny": tiny_config,
}


def get_config(preset: str = "vggt_mv_1b", **changes: Any) -> VGGTMVConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[preset]()
    return cfg.replace(**changes) if changes else cfg
