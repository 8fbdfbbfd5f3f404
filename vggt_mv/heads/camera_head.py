"""Camera head of VGGT: iterative AdaLN-modulated refinement of the per-frame camera token.

Parameter names (trunk.i.*, token_norm, trunk_norm, empty_pose_tokens, embed_pose,
poseLN_modulation.1, pose_branch.fc1/fc2) are VGGT-1B's, so checkpoints load strictly.
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers import Block, Mlp
from .head_act import POSE_ACTS, activate_pose

POSE_ENCODING_DIMS = {"absT_quaR_FoV": 9}


class CameraHead(nn.Module):
    def __init__(self, dim_in: int = 2048, trunk_depth: int = 4, num_heads: int = 16,
                 mlp_ratio: float = 4.0, init_values: float | None = 0.01,
                 trans_act: str = "linear", quat_act: str = "linear", fl_act: str = "relu",
                 pose_encoding_type: str = "absT_quaR_FoV"):
        super().__init__()
        if pose_encoding_type not in POSE_ENCODING_DIMS:
            raise ValueError(f"unsupported pose encoding {pose_encoding_type!r}")
        for act in (trans_act, quat_act, fl_act):
            if act not in POSE_ACTS:
                raise ValueError(f"unknown pose activation {act!r}; choose one of {POSE_ACTS}")
        self.target_dim = POSE_ENCODING_DIMS[pose_encoding_type]
        self.trans_act, self.quat_act, self.fl_act = trans_act, quat_act, fl_act
        self.trunk_depth = trunk_depth

        self.trunk = nn.Sequential(*[
            Block(dim_in, num_heads, mlp_ratio=mlp_ratio, init_values=init_values)
            for _ in range(trunk_depth)
        ])
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        # The first iteration is conditioned on this learned "no estimate yet" encoding.
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, self.target_dim))
        self.embed_pose = nn.Linear(self.target_dim, dim_in)
        # Index 0 is the SiLU, so the checkpoint's linear sits at poseLN_modulation.1.
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, self.target_dim)

    def forward(self, aggregated_tokens_list: list[torch.Tensor | None],
                num_iterations: int = 4) -> list[torch.Tensor]:
        """Returns one activated pose encoding [B, S, 9] per iteration (the last is final).

        Only aggregated_tokens_list[-1] is read; its token 0 of every frame is the camera token.
        """
        tokens = aggregated_tokens_list[-1]
        if tokens is None:
            raise ValueError("CameraHead needs the last aggregator layer (got None)")
        pose_tokens = self.token_norm(tokens[:, :, 0])
        B, S, _ = pose_tokens.shape

        pred: torch.Tensor | None = None
        preds: list[torch.Tensor] = []
        # num_iterations is a Python int, so the loop unrolls into a fixed graph on export.
        for _ in range(num_iterations):
            if pred is None:
                cond = self.embed_pose(self.empty_pose_tokens.expand(B, S, -1))
            else:
                # Upstream trains without backprop through earlier estimates; the running
                # sum below therefore also starts from the detached value.
                pred = pred.detach()
                cond = self.embed_pose(pred)
            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(pose_tokens) * (1 + scale) + shift) + pose_tokens
            x = self.trunk(x)
            delta = self.pose_branch(self.trunk_norm(x))
            pred = delta if pred is None else pred + delta
            preds.append(activate_pose(pred, self.trans_act, self.quat_act, self.fl_act))
        return preds
