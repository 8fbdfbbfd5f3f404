// Runs CUDA kernel source on the CPU, unchanged, for tests on machines without a GPU.
//
// Every CUDA thread of a block becomes a std::thread and __syncthreads() a std::barrier,
// so kernels that cooperate through shared memory execute with their real
// synchronisation. Blocks run one after another, which is why `__shared__` can map to a
// function-local `static`: one block at a time owns it. Only the features the kernels in
// this folder use are mapped; using anything else fails to compile on the host, which is
// the point (the CPU test must cover every line the GPU runs).
#pragma once
#ifndef __CUDACC__

#include <barrier>
#include <functional>
#include <thread>
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
                std::vector<std::thread> threads;
                threads.reserve(nthreads);
                for (unsigned t = 0; t < nthreads; ++t)
                {
                    threads.emplace_back([=]() {
                        tl_blockIdx = dim3(bx, by, bz);
                        tl_threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
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

#endif // __CUDACC__
