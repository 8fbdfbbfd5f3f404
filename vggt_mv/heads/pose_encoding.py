"""VGGT's camera pose encoding ("absT_quaR_FoV") and quaternion helpers, in torch.

Conventions (VGGT's): extrinsics are camera-from-world [R | t] in OpenCV axes (x right,
y down, z forward); quaternions are XYZW (scalar last) with w >= 0; intrinsics have the
principal point at the image centre; fov_h = 2 atan(H / 2 / fy), fov_w = 2 atan(W / 2 / fx).

Everything works on any leading shape and stays in the input dtype (float32-safe): no
float64 promotion, no boolean-mask indexing (shape-static, exportable).
"""
from __future__ import annotations

from typing import Sequence

import torch


def quat_to_mat(quaternions: torch.Tensor) -> torch.Tensor:
    """[..., 4] XYZW -> [..., 3, 3]. Non-unit quaternions are normalized implicitly."""
    i, j, k, r = torch.unbind(quaternions, dim=-1)
    two_s = 2.0 / (quaternions * quaternions).sum(-1)
    m = torch.stack([
        1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
        two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
        two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j),
    ], dim=-1)
    return m.reshape(quaternions.shape[:-1] + (3, 3))


def standardize_quaternion(quaternions: torch.Tensor) -> torch.Tensor:
    """q and -q are the same rotation; pick the one with a non-negative real part (w)."""
    return torch.where(quaternions[..., 3:4] < 0, -quaternions, quaternions)


def mat_to_quat(matrix: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] rotation -> [..., 4] XYZW with w >= 0.

    Four candidate quaternions are formed, each divided by one of 4|w|, 4|x|, 4|y|, 4|z|;
    the one with the largest divisor is best conditioned (PyTorch3D's method). The pick
    is a one-hot weighted sum so the op count and shapes do not depend on the data.
    """
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"expected [..., 3, 3] rotations, got {tuple(matrix.shape)}")
    batch = matrix.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(
        matrix.reshape(batch + (9,)), dim=-1)
    q_abs = torch.sqrt(torch.clamp(torch.stack([
        1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22,
        1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], dim=-1), min=0.0))
    # Rows: the quaternion (r, i, j, k) scaled by 4r, 4i, 4j, 4k respectively.
    by_rijk = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
    ], dim=-2)
    # The 0.1 floor only guards the candidates that are never picked.
    candidates = by_rijk / (2.0 * q_abs[..., None].clamp(min=0.1))
    best = q_abs.argmax(dim=-1, keepdim=True)
    pick = (torch.arange(4, device=q_abs.device) == best).to(candidates.dtype)
    rijk = (candidates * pick[..., None]).sum(dim=-2)
    return standardize_quaternion(rijk[..., [1, 2, 3, 0]])


def extri_intri_to_pose_encoding(extrinsics: torch.Tensor, intrinsics: torch.Tensor,
                                 image_size_hw: Sequence[int],
                                 pose_encoding_type: str = "absT_quaR_FoV") -> torch.Tensor:
    """extrinsics [..., 3, 4], intrinsics [..., 3, 3] (pixels) -> [..., 9] float32:
    t (3), quaternion XYZW (4), fov_h, fov_w (radians)."""
    if pose_encoding_type != "absT_quaR_FoV":
        raise NotImplementedError(pose_encoding_type)
    H, W = image_size_hw
    R = extrinsics[..., :3, :3]
    t = extrinsics[..., :3, 3]
    quat = mat_to_quat(R)
    fov_h = 2 * torch.atan((H / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2) / intrinsics[..., 0, 0])
    enc = torch.cat([t, quat, fov_h[..., None], fov_w[..., None]], dim=-1)
    return enc.to(torch.float32)


def pose_encoding_to_extri_intri(pose_encoding: torch.Tensor,
                                 image_size_hw: Sequence[int] | None = None,
                                 pose_encoding_type: str = "absT_quaR_FoV",
                                 build_intrinsics: bool = True
                                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[..., 9] -> (extrinsics [..., 3, 4], intrinsics [..., 3, 3] or None).

    Intrinsics put the principal point at (W / 2, H / 2), as VGGT assumes.
    """
    if pose_encoding_type != "absT_quaR_FoV":
        raise NotImplementedError(pose_encoding_type)
    t = pose_encoding[..., :3]
    R = quat_to_mat(pose_encoding[..., 3:7])
    extrinsics = torch.cat([R, t[..., None]], dim=-1)
    if not build_intrinsics:
        return extrinsics, None
    if image_size_hw is None:
        raise ValueError("image_size_hw is needed to build intrinsics")
    H, W = image_size_hw
    fy = (H / 2.0) / torch.tan(pose_encoding[..., 7] / 2.0)
    fx = (W / 2.0) / torch.tan(pose_encoding[..., 8] / 2.0)
    zero = torch.zeros_like(fx)
    one = torch.ones_like(fx)
    intrinsics = torch.stack([
        fx, zero, zero + W / 2.0,
        zero, fy, zero + H / 2.0,
        zero, zero, one,
    ], dim=-1).reshape(fx.shape + (3, 3))
    return extrinsics, intrinsics
