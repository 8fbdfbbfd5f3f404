// A C entry point to launch_attention for scripts/gpu_check.sh, which builds
// attention_launch.cu + this file into a small shared library and drives it from Python
// (ctypes, PyTorch tensors) on a GPU without TensorRT. Not part of the plugin library.
#include "attention_launch.h"

extern "C" int vggt_attention_launch(int kind, int half, int B, int H, int L, int S, int D, int M, float scale,
    int has_bias, int strategy, int frame_len, int num_t, int num_n, int num_memory, int level_mask,
    const void* q, const void* k, const void* v, const float* r, const float* c, const int* landmarks, void* out,
    void* stream, int path)
{
    vggt::AttentionParams p;
    p.kind = kind == 0 ? vggt::OpKind::kBiased : vggt::OpKind::kSparse;
    p.scale = scale;
    p.num_heads = H;
    p.has_bias = has_bias;
    p.strategy = strategy;
    p.frame_len = frame_len;
    p.num_t = num_t;
    p.num_n = num_n;
    p.num_memory = num_memory;
    p.level_mask = level_mask;
    if (!vggt::validate(p).empty())
        return 6;
    return vggt::launch_attention(p, half ? vggt::ElemType::kHalf : vggt::ElemType::kFloat, B, H, L, S, D, M, q, k,
        v, r, c, reinterpret_cast<const int32_t*>(landmarks), out, stream, static_cast<vggt::KernelPath>(path));
}
