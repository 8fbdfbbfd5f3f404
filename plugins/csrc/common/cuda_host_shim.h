// Runs CUDA kernel source on the CPU, unchanged, for tests on machines without a GPU.
//
// Every CUDA thread of a block becomes a std::thread and __syncthreads() a std::barrier,
// so kernels that cooperate through shared memory execute with their real
// synchronisation. Each warp of 32 threads also gets its own barrier, which is what
// __syncwarp() and the register shuffles (__shfl_xor_sync) wait on. Blocks run one after
// another, which is why `__shared__` can map to a function-local `static`: one block at a
// time owns it. Only the features the kernels in this folder use are mapped; using
// anything else fails to compile on the host, which is the point (the CPU test must cover
// every line the GPU runs). Tensor-core fragments are in wmma_host_shim.h.
#pragma once
#ifndef __CUDACC__

#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

struct dim3
{
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static

namespace vggt_host
{
inline thread_local dim3 tl_threadIdx;
inline thread_local dim3 tl_blockIdx;
inline dim3 g_blockDim;
inline dim3 g_gridDim;
inline std::barrier<>* g_barrier = nullptr;
constexpr unsigned kWarpSize = 32;

// One per warp: its barrier and the exchange slots of the shuffles.
struct WarpState
{
    explicit WarpState(unsigned n) : size(n), bar(static_cast<std::ptrdiff_t>(n)) {}
    unsigned size;
    std::barrier<> bar;
    uint64_t slots[kWarpSize] = {};
};
inline thread_local WarpState* tl_warp = nullptr;
inline thread_local unsigned tl_lane = 0;

[[noreturn]] inline void fail(const char* what)
{
    std::fprintf(stderr, "cuda_host_shim: %s\n", what);
    std::abort();
}

// Launches kernel(args...) over grid x block, blocks sequentially, threads concurrently.
template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args)
{
    g_gridDim = grid;
    g_blockDim = block;
    const unsigned nthreads = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx)
            {
                std::barrier<> bar(static_cast<std::ptrdiff_t>(nthreads));
                g_barrier = &bar;
                // Warps are consecutive linear thread ids, as on the GPU; a partial last
                // warp has a smaller barrier (shuffles across it are refused below).
                std::vector<std::unique_ptr<WarpState>> warps;
                for (unsigned w = 0; w * kWarpSize < nthreads; ++w)
                    warps.push_back(std::make_unique<WarpState>(
                        nthreads - w * kWarpSize < kWarpSize ? nthreads - w * kWarpSize : kWarpSize));
                std::vector<std::thread> threads;
                threads.reserve(nthreads);
                for (unsigned t = 0; t < nthreads; ++t)
                {
                    WarpState* warp = warps[t / kWarpSize].get();
                    threads.emplace_back([=]() {
                        tl_blockIdx = dim3(bx, by, bz);
                        tl_threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                        tl_warp = warp;
                        tl_lane = t % kWarpSize;
                        kernel(args...);
                    });
                }
                for (auto& th : threads)
                    th.join();
                g_barrier = nullptr;
            }
}
} // namespace vggt_host

#define threadIdx (vggt_host::tl_threadIdx)
#define blockIdx (vggt_host::tl_blockIdx)
#define blockDim (vggt_host::g_blockDim)
#define gridDim (vggt_host::g_gridDim)
inline void __syncthreads()
{
    vggt_host::g_barrier->arrive_and_wait();
}

// Only whole-warp masks are mapped: the kernels here never run divergent warp collectives.
inline void __syncwarp(unsigned mask = 0xffffffffu)
{
    if (mask != 0xffffffffu || vggt_host::tl_warp->size != vggt_host::kWarpSize)
        vggt_host::fail("__syncwarp needs a full warp and a full mask");
    vggt_host::tl_warp->bar.arrive_and_wait();
}

// Lane i receives `var` of lane i ^ lane_mask: publish, wait, read, wait (so no lane
// overwrites its slot before every lane has read).
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32)
{
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(uint64_t), "shuffle of a register value");
    if (mask != 0xffffffffu || width != 32 || lane_mask < 0 || lane_mask >= 32
        || vggt_host::tl_warp->size != vggt_host::kWarpSize)
        vggt_host::fail("__shfl_xor_sync needs a full warp, a full mask and width 32");
    vggt_host::WarpState& w = *vggt_host::tl_warp;
    std::memcpy(&w.slots[vggt_host::tl_lane], &var, sizeof(T));
    w.bar.arrive_and_wait();
    T out;
    std::memcpy(&out, &w.slots[vggt_host::tl_lane ^ static_cast<unsigned>(lane_mask)], sizeof(T));
    w.bar.arrive_and_wait();
    return out;
}

#endif // __CUDACC__
