"""DPT head of VGGT (depth, world points, and the track head's feature extractor).

Module names (norm, projects.i, resize_layers.{0,1,3}, scratch.layerK_rn,
scratch.refinenetK.{out_conv,resConfUnit1,resConfUnit2}, scratch.output_conv1,
scratch.output_conv2.{0,2}) are VGGT-1B's so checkpoints load strictly.

Export-oriented differences from upstream (same maths):
- all B*S frames go through at once (no frames_chunk_size loop, no INT_MAX chunking of
  the final resize), so the graph has no shape-dependent Python branching;
- the UV position embedding is computed in float32 (see pos_embed.py);
- the fusion blocks' "scale_factor=2" resize is written as an explicit output size,
  which is what upstream computes from the scale factor anyway.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .head_act import CONF_ACTS, DENSE_ACTS, activate_head
from .pos_embed import uv_position_embed

POS_EMBED_RATIO = 0.1


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # Upstream DPT upsamples bilinearly with align_corners=True and no antialias.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ResidualConvUnit(nn.Module):
    """relu -> conv3x3 -> relu -> conv3x3, plus a skip.

    Upstream passes nn.ReLU(inplace=True) and adds the skip after the first ReLU has
    overwritten its input, so the skip carries relu(x), not x. Checkpoints were trained
    with that behaviour, so it is reproduced explicitly here (without in-place ops).
    """

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    def __init__(self, features: int, has_residual: bool = True):
        super().__init__()
        self.has_residual = has_residual
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: Sequence[int] | None = None) -> torch.Tensor:
        if self.has_residual:
            if skip is None:
                raise ValueError("this fusion block needs a skip input")
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (x.shape[-2] * 2, x.shape[-1] * 2)
        return self.out_conv(_resize(x, (int(size[0]), int(size[1]))))


class DPTHead(nn.Module):
    def __init__(self, dim_in: int = 2048, patch_size: int = 14, output_dim: int = 4,
                 activation: str = "inv_log", conf_activation: str = "expp1",
                 features: int = 256, out_channels: Sequence[int] = (256, 512, 1024, 1024),
                 intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23),
                 pos_embed: bool = True, feature_only: bool = False, down_ratio: int = 1):
        super().__init__()
        out_channels = tuple(int(c) for c in out_channels)
        if len(out_channels) != 4 or len(tuple(intermediate_layer_idx)) != 4:
            raise ValueError("DPTHead fuses exactly 4 layers: out_channels and "
                             "intermediate_layer_idx need 4 entries each")
        if not feature_only:
            if activation not in DENSE_ACTS:
                raise ValueError(f"unknown activation {activation!r}; choose one of {DENSE_ACTS}")
            if conf_activation not in CONF_ACTS:
                raise ValueError(f"unknown conf_activation {conf_activation!r}; "
                                 f"choose one of {CONF_ACTS}")
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.pos_embed = pos_embed
        self.feature_only = feature_only
        self.down_ratio = down_ratio
        self.intermediate_layer_idx = tuple(int(i) for i in intermediate_layer_idx)

        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, oc, kernel_size=1) for oc in out_channels])
        c0, c1, _, c3 = out_channels
        # Strides 4, 2, 1, 1/2 turn the single patch grid into a 4-level pyramid.
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(c0, c0, kernel_size=4, stride=4),
            nn.ConvTranspose2d(c1, c1, kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1),
        ])

        self.scratch = nn.Module()
        for i, oc in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn",
                    nn.Conv2d(oc, features, kernel_size=3, padding=1, bias=False))
        self.scratch.refinenet1 = FeatureFusionBlock(features)
        self.scratch.refinenet2 = FeatureFusionBlock(features)
        self.scratch.refinenet3 = FeatureFusionBlock(features)
        self.scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        if feature_only:
            self.scratch.output_conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        else:
            self.scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3,
                                                  padding=1)
            self.scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, 32, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, output_dim, kernel_size=1),
            )

    def _add_pos_embed(self, x: torch.Tensor, W: int, H: int) -> torch.Tensor:
        # Aspect ratio of the image, not of the feature map (upstream convention).
        emb = uv_position_embed(x.shape[1], x.shape[-2], x.shape[-1], aspect_ratio=W / H,
                                device=x.device)
        return x + (emb * POS_EMBED_RATIO).to(x.dtype)[None]

    def forward(self, aggregated_tokens_list: list[torch.Tensor | None], images: torch.Tensor,
                patch_start_idx: int
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """images [B, S, 3, H, W] (only its shape is read).

        Returns (preds [B, S, H, W, output_dim - 1], conf [B, S, H, W]), or with
        feature_only features [B, S, C, H / down_ratio, W / down_ratio].
        """
        B, S, _, H, W = images.shape
        ph, pw = H // self.patch_size, W // self.patch_size

        pyramid = []
        for k, layer_idx in enumerate(self.intermediate_layer_idx):
            tokens = aggregated_tokens_list[layer_idx]
            if tokens is None:
                raise ValueError(f"DPTHead needs aggregator layer {layer_idx} (got None)")
            x = tokens[:, :, patch_start_idx:]
            x = self.norm(x.reshape(B * S, ph * pw, x.shape[-1]))
            x = x.permute(0, 2, 1).reshape(B * S, -1, ph, pw)
            x = self.projects[k](x)
            if self.pos_embed:
                x = self._add_pos_embed(x, W, H)
            pyramid.append(self.resize_layers[k](x))

        out = self._fuse(pyramid)
        out = _resize(out, (int(ph * self.patch_size / self.down_ratio),
                            int(pw * self.patch_size / self.down_ratio)))
        if self.pos_embed:
            out = self._add_pos_embed(out, W, H)
        if self.feature_only:
            return out.reshape(B, S, *out.shape[1:])

        out = self.scratch.output_conv2(out)
        preds, conf = activate_head(out, self.activation, self.conf_activation)
        return preds.reshape(B, S, *preds.shape[1:]), conf.reshape(B, S, *conf.shape[1:])

    def _fuse(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        sc = self.scratch
        l1, l2, l3, l4 = (sc.layer1_rn(pyramid[0]), sc.layer2_rn(pyramid[1]),
                          sc.layer3_rn(pyramid[2]), sc.layer4_rn(pyramid[3]))
        out = sc.refinenet4(l4, size=l3.shape[2:])
        out = sc.refinenet3(out, l3, size=l2.shape[2:])
        out = sc.refinenet2(out, l2, size=l1.shape[2:])
        out = sc.refinenet1(out, l1)
        return sc.output_conv1(out)
