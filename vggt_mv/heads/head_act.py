"""Output activations of the VGGT heads (pose encoding, dense predictions, confidence).

The formulas are VGGT's; the names of the activation strings are the ones VGGT configs
use, so a checkpoint's head settings carry over unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

POSE_ACTS = ("linear", "inv_log", "exp", "relu")
DENSE_ACTS = ("norm_exp", "norm", "exp", "relu", "inv_log", "xy_inv_log", "sigmoid", "linear")
CONF_ACTS = ("expp1", "expp0", "sigmoid")


def inverse_log_transform(y: torch.Tensor) -> torch.Tensor:
    """sign(y) * (exp(|y|) - 1): undoes the log-compression the point head was trained on."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


def base_pose_act(x: torch.Tensor, act_type: str = "linear") -> torch.Tensor:
    if act_type == "linear":
        return x
    if act_type == "inv_log":
        return inverse_log_transform(x)
    if act_type == "exp":
        return torch.exp(x)
    if act_type == "relu":
        return F.relu(x)
    raise ValueError(f"unknown pose activation {act_type!r}; choose one of {POSE_ACTS}")


def activate_pose(pred_pose_enc: torch.Tensor, trans_act: str = "linear",
                  quat_act: str = "linear", fl_act: str = "linear") -> torch.Tensor:
    """Activates the translation [..., :3], quaternion [..., 3:7] and FoV [..., 7:] parts."""
    t = base_pose_act(pred_pose_enc[..., :3], trans_act)
    q = base_pose_act(pred_pose_enc[..., 3:7], quat_act)
    fov = base_pose_act(pred_pose_enc[..., 7:], fl_act)
    return torch.cat([t, q, fov], dim=-1)


def activate_head(out: torch.Tensor, activation: str = "norm_exp",
                  conf_activation: str = "expp1") -> tuple[torch.Tensor, torch.Tensor]:
    """[N, C, H, W] network output -> (values [N, H, W, C-1], confidence [N, H, W]).

    The last channel is the confidence; the others are the prediction (depth or xyz).
    """
    fmap = out.permute(0, 2, 3, 1)
    xyz = fmap[..., :-1]
    conf = fmap[..., -1]

    if activation == "norm_exp":
        d = xyz.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        pts = xyz / d * torch.expm1(d)
    elif activation == "norm":
        pts = xyz / xyz.norm(dim=-1, keepdim=True)
    elif activation == "exp":
        pts = torch.exp(xyz)
    elif activation == "relu":
        pts = F.relu(xyz)
    elif activation == "inv_log":
        pts = inverse_log_transform(xyz)
    elif activation == "xy_inv_log":
        xy, z = xyz.split([2, 1], dim=-1)
        z = inverse_log_transform(z)
        pts = torch.cat([xy * z, z], dim=-1)
    elif activation == "sigmoid":
        pts = torch.sigmoid(xyz)
    elif activation == "linear":
        pts = xyz
    else:
        raise ValueError(f"unknown activation {activation!r}; choose one of {DENSE_ACTS}")

    if conf_activation == "expp1":
        conf_out = 1 + conf.exp()
    elif conf_activation == "expp0":
        conf_out = conf.exp()
    elif conf_activation == "sigmoid":
        conf_out = torch.sigmoid(conf)
    else:
        raise ValueError(f"unknown conf_activation {conf_activation!r}; choose one of {CONF_ACTS}")
    return pts, conf_out
