// Host-side entry point of the kernels (no TensorRT, no CUDA types in the signature).
#pragma once
#include "../common/attention_params.h"

namespace vggt
{
// q/k/v/out in `type` (kFloat or kHalf), [B, H, L|S, D] contiguous; r [B, L], c [B, S]
// fp32 (biased op); landmarks [B, M] int32 (sparse op). `stream` is a cudaStream_t on
// the GPU build and ignored on the host build. Returns 0 on success, 2 for a bad
// problem size, 3 for an unsupported type, 4 when `path` forces tensor cores on a
// problem they do not apply to (see tensor_cores_apply), 1 for a CUDA launch error.
int launch_attention(const AttentionParams& p, ElemType type, int B, int H, int L, int S, int D, int M,
    const void* q, const void* k, const void* v, const float* r, const float* c, const int32_t* landmarks,
    void* out, void* stream, KernelPath path = KernelPath::kAuto);
} // namespace vggt
