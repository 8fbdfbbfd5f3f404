// Dispatch on element type and head size; the only file that differs between the GPU
// build (nvcc, <<<>>>) and the host test build (vggt_host::launch).
#include "attention_kernel.cuh"
#include "attention_kernel_tc.cuh"
#include "attention_launch.h"

#ifdef __CUDACC__
#include <cuda_runtime.h>
#define VGGT_LAUNCH(kernel, grid, block, stream, ...) \
    kernel<<<grid, block, 0, static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__)
#else
#define VGGT_LAUNCH(kernel, grid, block, stream, ...) \
    ((void) (stream), vggt_host::launch(grid, block, kernel, __VA_ARGS__))
#endif

namespace vggt
{

// 0 when the last launch was accepted, 1 otherwise (the host build runs synchronously).
static int launch_status()
{
#ifdef __CUDACC__
    return cudaGetLastError() == cudaSuccess ? 0 : 1;
#else
    return 0;
#endif
}

template <typename T, int DMAX>
static int launch_typed(const AttentionParams& p, int B, int H, int L, int S, int D, int M, const void* q,
    const void* k, const void* v, const float* r, const float* c, const int32_t* landmarks, void* out,
    void* stream)
{
    const dim3 grid(static_cast<unsigned>(query_tiles(p, L)), static_cast<unsigned>(B * H));
    const dim3 block(kBlockQ);
    VGGT_LAUNCH((attention_kernel<T, DMAX>), grid, block, stream, p, B, H, L, S, D, M,
        static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), r, c, landmarks,
        static_cast<T*>(out));
    return launch_status();
}

template <int DMAX>
static int launch_tc(const AttentionParams& p, int B, int H, int L, int S, int D, int M, const void* q,
    const void* k, const void* v, const float* r, const float* c, const int32_t* landmarks, void* out,
    void* stream)
{
    const dim3 grid(static_cast<unsigned>(query_tiles(p, L, MmaTraits<DMAX>::kBlockM)), static_cast<unsigned>(B * H));
    const dim3 block(MmaTraits<DMAX>::kThreads);
    constexpr int smem = MmaTraits<DMAX>::kSmemBytes;
    // the bias is a template parameter: without one the hot loop carries no c_j at all
    auto* kernel = (p.kind == OpKind::kBiased && p.has_bias != 0) ? attention_kernel_mma<DMAX, true>
                                                                  : attention_kernel_mma<DMAX, false>;
#ifdef __CUDACC__
    // above 48 KB of dynamic shared memory a kernel must opt in (per device; cheap to repeat)
    if (smem > 48 * 1024 && cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess)
        return 1;
    kernel<<<grid, block, smem, static_cast<cudaStream_t>(stream)>>>(p, H, L, S, D, M, static_cast<const half_t*>(q),
        static_cast<const half_t*>(k), static_cast<const half_t*>(v), r, c, landmarks, static_cast<half_t*>(out));
#else
    (void) stream;
    if (smem > 48 * 1024)
        vggt_host::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), smem);
    vggt_host::launch_dynamic(grid, block, smem, kernel, p, H, L, S, D, M, static_cast<const half_t*>(q),
        static_cast<const half_t*>(k), static_cast<const half_t*>(v), r, c, landmarks, static_cast<half_t*>(out));
#endif
    return launch_status();
}

template <typename T>
static int launch_dim(const AttentionParams& p, int B, int H, int L, int S, int D, int M, const void* q,
    const void* k, const void* v, const float* r, const float* c, const int32_t* landmarks, void* out,
    void* stream)
{
    // Registers hold a query row and its accumulator: pick the smallest DMAX that fits.
    if (D <= 64)
        return launch_typed<T, 64>(p, B, H, L, S, D, M, q, k, v, r, c, landmarks, out, stream);
    if (D <= 128)
        return launch_typed<T, 128>(p, B, H, L, S, D, M, q, k, v, r, c, landmarks, out, stream);
    return launch_typed<T, 256>(p, B, H, L, S, D, M, q, k, v, r, c, landmarks, out, stream);
}

int launch_attention(const AttentionParams& p, ElemType type, int B, int H, int L, int S, int D, int M,
    const void* q, const void* k, const void* v, const float* r, const float* c, const int32_t* landmarks,
    void* out, void* stream, KernelPath path)
{
    if (D < 8 || D > kMaxHeadDim || D % 8 != 0 || B < 1 || H < 1 || L < 1 || S < 1)
        return 2;
    const bool tc = tensor_cores_apply(type, D);
    if (path == KernelPath::kTensorCores && !tc)
        return 4;
    if (tc && path != KernelPath::kCudaCores)
    {   // smallest padded tile that holds D: registers and shared memory scale with DMAX
        if (D <= 64)
            return launch_tc<64>(p, B, H, L, S, D, M, q, k, v, r, c, landmarks, out, stream);
        return launch_tc<128>(p, B, H, L, S, D, M, q, k, v, r, c, landmarks, out, stream);
    }
    if (type == ElemType::kFloat)
        return launch_dim<float>(p, B, H, L, S, D, M, q, k, v, r, c, landmarks, out, stream);
    if (type == ElemType::kHalf)
        return launch_dim<half_t>(p, B, H, L, S, D, M, q, k, v, r, c, landmarks, out, stream);
    return 3;
}

} // namespace vggt
