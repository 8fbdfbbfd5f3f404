"""The kernel cases both the CPU tests (plugins/tests/test_kernels_host.py) and the GPU check
(scripts/gpu_check.py) run, and the attention sites of VGGT_MV at T=8, N=4, 518x518.

numpy and the model config only: a GPU machine without pytest imports it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CUDA_CORES, TENSOR_CORES = 1, 2   # vggt::KernelPath (0 = automatic)

BIASED_CASES = [
    # B, H, L, S, D, has_bias, magnitude, dtype
    (1, 1, 1, 1, 8, 1, 1.0, np.float32),
    (1, 2, 7, 7, 8, 1, 1.0, np.float32),
    (2, 2, 33, 33, 16, 1, 1.0, np.float32),
    (1, 1, 31, 65, 24, 1, 1.0, np.float32),
    (1, 3, 64, 64, 64, 1, 1.0, np.float32),
    (1, 1, 100, 37, 64, 0, 1.0, np.float32),
    (2, 1, 129, 97, 64, 1, 1.0, np.float32),
    (1, 1, 45, 45, 128, 1, 1.0, np.float32),
    (1, 1, 40, 70, 136, 1, 1.0, np.float32),   # generic (DMAX 256) path
    (1, 1, 33, 17, 256, 1, 1.0, np.float32),
    (1, 2, 50, 50, 64, 1, 12.0, np.float32),   # scale*qk ~ 1e2..1e3
    (1, 1, 61, 61, 32, 1, 30.0, np.float32),
    (1, 1, 300, 300, 64, 1, 1.0, np.float32),
    (1, 1, 257, 513, 64, 0, 1.0, np.float32),
    (1, 2, 40, 40, 64, 1, 1.0, np.float16),
    (1, 1, 65, 33, 128, 1, 1.0, np.float16),
    (2, 1, 31, 31, 64, 0, 1.0, np.float16),
    (1, 1, 77, 50, 16, 1, 4.0, np.float16),
    (1, 1, 3, 200, 64, 1, 1.0, np.float32),
    (3, 1, 20, 20, 40, 1, 1.0, np.float32),
    (1, 4, 16, 48, 72, 1, 1.0, np.float16),
]

SPARSE_CASES = [
    # strategy, T, N, F, mem, levels, M(landmarks), D, dtype
    ("landmark", 1, 1, 5, 0, (), 2, 8, np.float32),
    ("landmark", 2, 2, 7, 0, (), 4, 16, np.float32),
    ("landmark", 3, 2, 33, 0, (), 10, 64, np.float32),   # frames longer than a query tile
    ("landmark", 2, 3, 40, 0, (), 31, 64, np.float16),
    ("landmark", 4, 1, 9, 0, (), 7, 128, np.float32),
    ("landmark", 2, 2, 65, 0, (), 1, 32, np.float32),
    ("landmark", 1, 4, 12, 0, (), 12, 64, np.float32),
    ("dilated", 5, 2, 3, 0, (1, 2), 0, 8, np.float32),
    ("dilated", 6, 2, 9, 0, (1, 4), 0, 16, np.float32),
    ("dilated", 8, 4, 5, 0, (1, 2, 4), 0, 64, np.float32),
    ("dilated", 3, 3, 35, 0, (2,), 0, 64, np.float16),
    ("dilated", 4, 1, 11, 0, (), 0, 32, np.float32),      # no dilations: same time only
    ("dilated", 7, 2, 6, 0, (3, 5), 0, 128, np.float32),
    ("dilated", 2, 2, 50, 0, (1,), 0, 64, np.float32),
    ("memory_bank", 1, 1, 5, 3, (), 0, 8, np.float32),
    ("memory_bank", 2, 2, 7, 4, (), 0, 16, np.float32),
    ("memory_bank", 2, 3, 40, 32, (), 0, 64, np.float32),  # memory longer than a tile
    ("memory_bank", 3, 1, 33, 5, (), 0, 64, np.float16),
    ("memory_bank", 1, 2, 10, 1, (), 0, 128, np.float32),
    ("memory_bank", 2, 2, 12, 40, (), 0, 32, np.float32),
    ("landmark", 2, 2, 6, 0, (), 24, 64, np.float32),     # every token is a landmark
]

# Every case above with a head size the tensor-core kernel takes (<= 128), run in fp16.
TC_BIASED = [c for c in BIASED_CASES if c[4] <= 128]
TC_SPARSE = [c for c in SPARSE_CASES if c[7] <= 128]

# VGGT_MV's attention sites at small lengths (the kernel does not see the structure of a
# sequence, only L, S, D and the key lists): Time-SA (T*F tokens of one view), View-SA
# (N*F tokens of one time step), a DINOv2 frame (F = patches + 5 special tokens), the
# camera trunk (D = 128), 16 heads as in the 1B model, and the sparse strategies at D = 64
# and 128.
SITE_BIASED = [
    # B, H, L, S, D, has_bias, magnitude, dtype
    (1, 16, 8 * 14, 8 * 14, 64, 1, 1.0, np.float16),    # Time-SA, T=8, F=14
    (2, 4, 4 * 14, 4 * 14, 64, 1, 1.0, np.float16),     # View-SA, N=4
    (2, 2, 41, 41, 64, 0, 1.0, np.float16),             # DINOv2 frame, 6x6 + 5 tokens
    (1, 2, 160, 160, 128, 1, 1.0, np.float16),          # camera trunk, D=128
    (1, 1, 130, 257, 128, 1, 4.0, np.float16),          # D=128, several key tiles, large logits
]
SITE_SPARSE = [
    # strategy, T, N, F, mem, levels, M, D, dtype
    ("landmark", 4, 2, 14, 0, (), 9, 128, np.float16),
    ("dilated", 6, 2, 10, 0, (1, 2, 4), 0, 128, np.float16),
    ("memory_bank", 2, 2, 20, 70, (), 0, 128, np.float16),
    ("dilated", 8, 2, 9, 0, (1, 2, 4), 0, 64, np.float16),
]


def gpu_cases() -> list[tuple[str, tuple, int]]:
    """(kind, case, kernel path) of every case test_kernels_host.py runs on the CPU: the
    CUDA-core kernel on its own lists, the tensor-core kernel on the fp16 ones."""
    biased = [("biased", c, CUDA_CORES) for c in BIASED_CASES]
    biased += [("biased", c, TENSOR_CORES) for c in TC_BIASED + SITE_BIASED]
    sparse = [("sparse", c, CUDA_CORES) for c in SPARSE_CASES]
    sparse += [("sparse", c, TENSOR_CORES) for c in TC_SPARSE + SITE_SPARSE]
    return biased + sparse


# Small enough for compute-sanitizer's slowest tool to finish in seconds; between them a
# partial query tile and key tile, D = 64 and the D = 128 kernel (dynamic shared memory),
# a landmark list and the CUDA-core kernel.
SANITIZE_CASES = [
    ("biased", (1, 1, 70, 200, 64, 1, 1.0, np.float16), TENSOR_CORES),
    ("biased", (1, 1, 45, 45, 128, 1, 1.0, np.float16), TENSOR_CORES),
    ("sparse", ("landmark", 2, 2, 7, 0, (), 4, 64, np.float16), TENSOR_CORES),
    ("biased", (1, 1, 33, 17, 64, 1, 1.0, np.float32), CUDA_CORES),
]


@dataclass(frozen=True)
class Site:
    """One dense attention call of the model: q, k, v [batch, heads, length, head_dim]."""
    name: str
    batch: int
    heads: int
    length: int
    head_dim: int
    calls: str   # where the model makes it, for the report


def real_sites(T: int = 8, N: int = 4) -> list[Site]:
    """The four dense sites of vggt_mv_1b at T x N frames of its image size (518x518), read
    off the model config so a change there moves them."""
    from vggt_mv.config import get_config

    cfg = get_config("vggt_mv_1b")
    patches = (cfg.img_size // cfg.patch_size) ** 2
    per_frame = 1 + cfg.num_register_tokens + patches   # camera + register tokens first
    D = cfg.embed_dim // cfg.num_heads
    enc = cfg.encoder
    cam_dim = 2 * cfg.embed_dim   # the camera head reads concat(frame, global) tokens
    return [
        Site("Time-SA", N, cfg.num_heads, T * per_frame, D, f"frame_blocks x {cfg.depth}"),
        Site("View-SA", T, cfg.num_heads, N * per_frame, D, f"global_blocks x {cfg.depth}"),
        Site("DINOv2", T * N, enc.num_heads, 1 + enc.num_register_tokens + patches,
             enc.embed_dim // enc.num_heads, f"encoder x {enc.depth}"),
        Site("camera trunk", 1, cfg.heads.camera_num_heads, T * N, cam_dim // cfg.heads.camera_num_heads,
             f"camera trunk x {cfg.heads.camera_trunk_depth * cfg.heads.camera_iterations}"),
    ]
