// Runs CUDA kernel source on the CPU, unchanged, for tests on machines without a GPU.
//
// Every CUDA thread of a block becomes a std::thread and __syncthreads() a std::barrier,
// so kernels that cooperate through shared memory execute with their real
// synchronisation. Each warp of 32 threads also gets its own barrier, which is what
// __syncwarp(), the register shuffles and the warp-collective PTX instructions of
// mma_ptx.h (mma.sync, ldmatrix, the per-warp accounting of shared-memory accesses)
// wait on. Blocks run one after another, which is why `__shared__` can map to a
// function-local `static`: one block at a time owns it. Only the features the kernels in
// this folder use are mapped; using anything else fails to compile on the host, which is
// the point (the CPU test must cover every line the GPU runs).
//
// Shared memory declared through VGGT_SHARED_ARENA (the tensor-core kernel) is modelled
// more strictly than the GPU guarantees, so the CPU run fails where a GPU run could be
// wrong:
//   - it is filled with NaN bytes at every block start, and a read of a word no thread
//     of the block has written aborts (initcheck);
//   - every access goes through a warp-collective wrapper that knows the warp, so a read
//     of a word another warp wrote, or a write of a word another warp read or wrote,
//     since the last __syncthreads aborts (racecheck at warp granularity);
//   - cp.async data lands only when the wait_group that retires it runs; until then the
//     destination holds NaN and reading it aborts;
//   - each warp access is split into the wavefronts a 32-bank x 4-byte shared memory
//     needs, and the totals are kept, so a harness can report the bank-conflict factor.
// Launch configurations the GPU refuses (more than 1,024 threads, grid y / z above
// 65,535, more than 48 KB of static shared memory) are refused here too.
#pragma once
#ifndef __CUDACC__

#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
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
#define __launch_bounds__(...)
#define __noinline__ __attribute__((noinline))

namespace vggt_host
{
inline thread_local dim3 tl_threadIdx;
inline thread_local dim3 tl_blockIdx;
inline dim3 g_blockDim;
inline dim3 g_gridDim;
constexpr unsigned kWarpSize = 32;
constexpr size_t kStaticSmemLimit = 48 * 1024;   // without cudaFuncSetAttribute opt-in
constexpr size_t kExchangeBytes = 64;            // per lane and collective

[[noreturn]] inline void fail(const char* what)
{
    std::fprintf(stderr, "cuda_host_shim: %s\n", what);
    std::abort();
}

// One per warp: its barrier and two alternating exchange areas. A collective writes the
// area of its parity, waits, reads; the next collective uses the other area, and a lane
// can only come back to this one after every lane has passed the next barrier, i.e. has
// finished reading: one barrier per collective.
struct WarpState
{
    WarpState(unsigned n, unsigned id_) : size(n), id(id_), bar(static_cast<std::ptrdiff_t>(n)) {}
    unsigned size;
    unsigned id;
    std::barrier<> bar;
    alignas(16) unsigned char slots[2][kWarpSize][kExchangeBytes] = {};
};
inline thread_local WarpState* tl_warp = nullptr;
inline thread_local unsigned tl_lane = 0;
inline thread_local unsigned tl_parity = 0;

// Publishes `bytes` of this lane's data and returns the warp's table (lane-major rows of
// kExchangeBytes), valid until this lane's next-but-one collective.
inline const unsigned char (*exchange(const void* mine, size_t bytes))[kExchangeBytes]
{
    if (tl_warp->size != kWarpSize)
        fail("warp collective needs a full warp (block size a multiple of 32)");
    if (bytes > kExchangeBytes)
        fail("exchange payload too large");
    auto& area = tl_warp->slots[tl_parity];
    tl_parity ^= 1u;
    std::memcpy(area[tl_lane], mine, bytes);
    tl_warp->bar.arrive_and_wait();
    return area;
}

// ---- shared-memory model of one block (VGGT_SHARED_ARENA) --------------------------
struct WordState
{
    uint32_t write_epoch = 0;   // 0: never written in this block
    int32_t writer = -1;        // warp id
    uint32_t read_epoch = 0;
    int32_t reader = -1;        // warp id, -2 several warps
    bool pending = false;       // cp.async issued, not yet retired
};

struct BlockShared
{
    static constexpr size_t kBytes = 228 * 1024;   // the largest per-SM shared memory
    alignas(128) unsigned char bytes[kBytes];
    std::vector<WordState> words = std::vector<WordState>(kBytes / 4);
    std::mutex mu;
    uint32_t epoch = 1;   // incremented when a __syncthreads completes
    std::atomic<size_t> declared{0};
    void reset()
    {
        std::memset(bytes, 0xff, kBytes);   // NaN as fp16 and as fp32
        std::fill(words.begin(), words.end(), WordState{});
        epoch = 1;
        declared = 0;
    }
};
inline BlockShared* g_shared = nullptr;

// __syncthreads: a block-wide barrier whose completion opens a new race-check epoch.
struct EpochTick
{
    void operator()() noexcept
    {
        if (g_shared != nullptr)
            ++g_shared->epoch;
    }
};
using BlockBarrier = std::barrier<EpochTick>;
inline BlockBarrier* g_barrier = nullptr;

struct BankStats
{
    std::atomic<uint64_t> wavefronts{0};
    std::atomic<uint64_t> ideal{0};
    std::atomic<uint64_t> accesses{0};
};
inline BankStats g_bank;

inline double bank_conflict_factor()
{
    const uint64_t ideal = g_bank.ideal.load();
    return ideal == 0 ? 1.0 : static_cast<double>(g_bank.wavefronts.load()) / static_cast<double>(ideal);
}

// Dynamic shared memory: the launch's byte count, refused above 48 KB unless the kernel
// opted in (cudaFuncSetAttribute(..., MaxDynamicSharedMemorySize)), and above 227 KB.
inline size_t g_dynamic_bytes = 0;
inline std::vector<std::pair<const void*, size_t>> g_dynamic_opt_in;
constexpr size_t kMaxDynamicSmem = 227 * 1024;

inline void set_max_dynamic_shared(const void* kernel, size_t bytes)
{
    if (bytes > kMaxDynamicSmem)
        fail("cudaFuncSetAttribute: more dynamic shared memory than any GPU grants (227 KB)");
    g_dynamic_opt_in.emplace_back(kernel, bytes);
}

inline unsigned char* dynamic_shared()
{
    g_shared->declared = g_dynamic_bytes;
    return g_shared->bytes;
}

inline unsigned char* block_shared(size_t bytes)
{
    if (bytes > kStaticSmemLimit)
        fail("static shared memory above 48 KB: the GPU refuses it without the dynamic opt-in");
    g_shared->declared = bytes;
    return g_shared->bytes;
}

inline size_t smem_offset(const void* p, size_t bytes)
{
    const auto* b = static_cast<const unsigned char*>(p);
    if (g_shared == nullptr || b < g_shared->bytes || b + bytes > g_shared->bytes + g_shared->declared)
        fail("shared-memory access outside the block's declared shared memory");
    return static_cast<size_t>(b - g_shared->bytes);
}

enum class Access { kRead, kWrite, kAsyncIssue, kAsyncLand };

// Race / initialisation checks of one word by warp `w` (caller holds g_shared->mu).
inline void check_word(size_t word, Access a, int32_t w)
{
    WordState& s = g_shared->words[word];
    const uint32_t e = g_shared->epoch;
    char msg[200];
    switch (a)
    {
    case Access::kRead:
        if (s.pending)
            std::snprintf(msg, sizeof msg, "read of shared word %zu before the cp.async.wait_group that lands it", word);
        else if (s.write_epoch == 0)
            std::snprintf(msg, sizeof msg, "read of uninitialised shared word %zu (initcheck)", word);
        else if (s.write_epoch == e && s.writer != w)
            std::snprintf(msg, sizeof msg,
                "shared-memory race: warp %d reads word %zu written by warp %d without a __syncthreads between", w, word, s.writer);
        else
        {
            s.reader = (s.read_epoch == e && s.reader != w) ? -2 : w;
            s.read_epoch = e;
            return;
        }
        fail(msg);
    case Access::kWrite:
    case Access::kAsyncIssue:
        if ((s.write_epoch == e && s.writer != w) || (s.read_epoch == e && s.reader != w))
        {
            std::snprintf(msg, sizeof msg,
                "shared-memory race: warp %d overwrites word %zu accessed by another warp without a __syncthreads between", w, word);
            fail(msg);
        }
        s.write_epoch = e;
        s.writer = w;
        s.pending = a == Access::kAsyncIssue;
        return;
    case Access::kAsyncLand:
        s.write_epoch = e;
        s.writer = w;
        s.pending = false;
        return;
    }
}

// Wavefronts of one phase: the lanes of a phase are served together; a bank serving k
// distinct words needs k wavefronts (the same word is broadcast).
inline unsigned phase_wavefronts(const size_t* offs, const unsigned* widths, unsigned n)
{
    unsigned words[kWarpSize * 4];
    unsigned nw = 0;
    for (unsigned i = 0; i < n; ++i)
        for (unsigned b = 0; b < widths[i]; b += 4)
        {
            const unsigned word = static_cast<unsigned>((offs[i] + b) / 4);
            bool seen = false;
            for (unsigned j = 0; j < nw && !seen; ++j)
                seen = words[j] == word;
            if (!seen)
                words[nw++] = word;
        }
    unsigned per_bank[32] = {};
    unsigned worst = 0;
    for (unsigned j = 0; j < nw; ++j)
    {
        const unsigned c = ++per_bank[words[j] % 32];
        worst = c > worst ? c : worst;
    }
    return worst;
}

// One warp-wide shared-memory instruction: lane i accesses [offs[i], offs[i] + width)
// (active[i] false: no access). `phase_lanes`: lanes served per phase (32 for 4-byte
// accesses, 16 for 8-byte, 8 for 16-byte and for each 8x8 matrix of ldmatrix).
inline void account_warp_access(const size_t* offs, const bool* active, unsigned width, unsigned phase_lanes, Access a)
{
    uint64_t waves = 0, ideal = 0;
    for (unsigned p0 = 0; p0 < kWarpSize; p0 += phase_lanes)
    {
        size_t po[kWarpSize];
        unsigned pw[kWarpSize];
        unsigned n = 0;
        for (unsigned l = p0; l < p0 + phase_lanes; ++l)
            if (active[l])
            {
                po[n] = offs[l];
                pw[n++] = width;
            }
        if (n == 0)
            continue;
        waves += phase_wavefronts(po, pw, n);
        ideal += (n * width + 127) / 128;
    }
    g_bank.wavefronts += waves;
    g_bank.ideal += ideal;
    g_bank.accesses += 1;
    std::lock_guard<std::mutex> lock(g_shared->mu);
    for (unsigned l = 0; l < kWarpSize; ++l)
        if (active[l])
            for (size_t wd = offs[l] / 4; wd < (offs[l] + width + 3) / 4; ++wd)
                check_word(wd, a, static_cast<int32_t>(tl_warp->id));
}

template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args);

// launch with `smem` bytes of dynamic shared memory (<<<grid, block, smem>>>).
template <typename Kernel, typename... Args>
void launch_dynamic(dim3 grid, dim3 block, size_t smem, Kernel kernel, Args... args)
{
    size_t allowed = kStaticSmemLimit;
    for (const auto& [k, b] : g_dynamic_opt_in)
        if (k == reinterpret_cast<const void*>(kernel))
            allowed = b;
    if (smem > allowed)
        fail("dynamic shared memory above 48 KB without the cudaFuncSetAttribute opt-in: the GPU refuses the launch");
    g_dynamic_bytes = smem;
    launch(grid, block, kernel, args...);
    g_dynamic_bytes = 0;
}

// Launches kernel(args...) over grid x block, blocks sequentially, threads concurrently.
template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args)
{
    const unsigned long long nthreads = 1ULL * block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || block.z > 64 || grid.y > 65535 || grid.z > 65535 || grid.x == 0
        || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u)
        fail("launch configuration the GPU refuses (threads per block <= 1024, grid y / z <= 65535)");
    g_gridDim = grid;
    g_blockDim = block;
    auto shared = std::make_unique<BlockShared>();
    g_shared = shared.get();
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx)
            {
                shared->reset();
                BlockBarrier bar(static_cast<std::ptrdiff_t>(nthreads));
                g_barrier = &bar;
                // Warps are consecutive linear thread ids, as on the GPU; a partial last
                // warp has a smaller barrier (collectives across it are refused).
                std::vector<std::unique_ptr<WarpState>> warps;
                for (unsigned w = 0; w * kWarpSize < nthreads; ++w)
                    warps.push_back(std::make_unique<WarpState>(
                        nthreads - w * kWarpSize < kWarpSize ? static_cast<unsigned>(nthreads - w * kWarpSize) : kWarpSize, w));
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
                        tl_parity = 0;
                        kernel(args...);
                    });
                }
                for (auto& th : threads)
                    th.join();
                g_barrier = nullptr;
            }
    g_shared = nullptr;
}
} // namespace vggt_host

#define threadIdx (vggt_host::tl_threadIdx)
#define blockIdx (vggt_host::tl_blockIdx)
#define blockDim (vggt_host::g_blockDim)
#define gridDim (vggt_host::g_gridDim)
// The block's shared memory as one raw array (the GPU build declares it __shared__).
#define VGGT_SHARED_ARENA(name, bytes) unsigned char* name = vggt_host::block_shared(bytes)
#define VGGT_DYNAMIC_SHARED_ARENA(name) unsigned char* name = vggt_host::dynamic_shared()

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

// Lane i receives `var` of lane i ^ lane_mask.
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32)
{
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(uint64_t), "shuffle of a register value");
    if (mask != 0xffffffffu || width != 32 || lane_mask < 0 || lane_mask >= 32
        || vggt_host::tl_warp->size != vggt_host::kWarpSize)
        vggt_host::fail("__shfl_xor_sync needs a full warp, a full mask and width 32");
    const auto* table = vggt_host::exchange(&var, sizeof(T));
    T out;
    std::memcpy(&out, table[vggt_host::tl_lane ^ static_cast<unsigned>(lane_mask)], sizeof(T));
    return out;
}

// Indexed shuffle: lane l receives src_lane's value (src_lane taken modulo 32, as on the GPU).
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32)
{
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(uint64_t), "shuffle of a register value");
    if (mask != 0xffffffffu || width != 32 || vggt_host::tl_warp->size != vggt_host::kWarpSize)
        vggt_host::fail("__shfl_sync needs a full warp, a full mask and width 32");
    const auto* table = vggt_host::exchange(&var, sizeof(T));
    T out;
    std::memcpy(&out, table[static_cast<unsigned>(src_lane) % 32u], sizeof(T));
    return out;
}

#else
#define VGGT_SHARED_ARENA(name, bytes) __shared__ alignas(128) unsigned char name[bytes]
#endif // __CUDACC__
