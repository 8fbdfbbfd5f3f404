from .camera_head import CameraHead
from .dpt_head import DPTHead
from .head_act import activate_head, activate_pose, inverse_log_transform
from .pose_encoding import (extri_intri_to_pose_encoding, mat_to_quat,
                            pose_encoding_to_extri_intri, quat_to_mat, standardize_quaternion)
from .track_head import TrackHead

__all__ = ["CameraHead", "DPTHead", "TrackHead", "activate_head", "activate_pose",
           "inverse_log_transform", "extri_intri_to_pose_encoding",
           "pose_encoding_to_extri_intri", "quat_to_mat", "mat_to_quat",
           "standardize_quaternion"]
