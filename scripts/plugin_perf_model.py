"""FLOPs and bytes per plugin call for a bucket: the yardstick a GPU run is judged by.

usage: python scripts/plugin_perf_model.py [--T 8 --N 4 --height 518 --width 518]
                                          [--peak-tflops 65]
Counts the two matmuls of attention (4 L S D per head) and the minimum DRAM traffic (read
q, k, v once, write out once, fp16), plus what the kernels re-read: each block of
--block-q queries streams all its keys and values once (128 rows for the fp16 tensor-core
kernel, the default since fp16 engines are the fast path; 32 for the fp32 CUDA-core one). With --peak-tflops (the GPU's dense fp16 tensor-core rate, from its
datasheet) it adds the compute-bound lower limit per call, the figure a measured time
is judged against.
"""
from __future__ import annotations

import argparse

from vggt_mv.config import get_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=8)
    ap.add_argument("--N", type=int, default=4)
    ap.add_argument("--height", type=int, default=518)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--block-q", type=int, default=128,
                    help="query rows per block: 128 tensor-core kernel (fp16), 32 CUDA-core (fp32)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="dense fp16 tensor-core TFLOPS of the target GPU (datasheet)")
    a = ap.parse_args()
    if a.peak_tflops is not None and not a.peak_tflops > 0:
        ap.error("--peak-tflops must be a positive rate (the GPU's dense fp16 tensor-core TFLOPS)")
    cfg = get_config()
    F = cfg.patch_start_idx + (a.height // 14) * (a.width // 14)
    P1 = (a.height // 14) * (a.width // 14) + 5  # DINOv2: cls + 4 registers + patches
    H, D = cfg.num_heads, cfg.embed_dim // cfg.num_heads
    S = a.T * a.N
    calls = [  # name, sequences, length, head dim, heads, calls per forward
        ("Time-SA", a.N, a.T * F, D, H, cfg.depth),
        ("View-SA", a.T, a.N * F, D, H, cfg.depth),
        ("DINOv2", S, P1, D, H, cfg.encoder.depth),
        ("camera trunk", 1, S, 2 * cfg.embed_dim // cfg.heads.camera_num_heads,
         cfg.heads.camera_num_heads, cfg.heads.camera_trunk_depth * cfg.heads.camera_iterations),
    ]
    print(f"bucket T={a.T} N={a.N} {a.height}x{a.width}: {F} tokens/frame")
    print(f"{'call':<13} {'seqs x L':>12} {'D':>4} {'GFLOP/call':>11} {'min MB/call':>12} "
          f"{'kernel K/V reads MB':>20} {'calls':>6} {'TFLOP/forward':>14}"
          + (f" {'>= ms/call':>11}" if a.peak_tflops else ""))
    total = 0.0
    for name, seqs, L, d, h, n in calls:
        flop = 4.0 * L * L * d * h * seqs
        min_bytes = 4 * seqs * h * L * d * 2
        tiles = -(-L // a.block_q)
        kv_reads = tiles * seqs * h * L * d * 2 * 2
        total += flop * n
        print(f"{name:<13} {f'{seqs} x {L}':>12} {d:>4} {flop / 1e9:>11.1f} {min_bytes / 1e6:>12.1f} "
              f"{kv_reads / 1e6:>20.0f} {n:>6} {flop * n / 1e12:>14.2f}"
              + (f" {flop / (a.peak_tflops * 1e12) * 1e3:>11.2f}" if a.peak_tflops else ""))
    print(f"attention total per forward: {total / 1e12:.1f} TFLOP")
    if a.peak_tflops:
        print(f"compute-bound lower limit per forward at {a.peak_tflops:g} TFLOPS: "
              f"{total / (a.peak_tflops * 1e12):.2f} s")


if __name__ == "__main__":
    main()
