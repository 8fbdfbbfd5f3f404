// The PTX instructions of the tensor-core kernel behind small inline wrappers: on the GPU
// each is one `asm volatile`, on the host the same call runs the shim below, which
// implements the instruction with the per-lane layouts the PTX ISA documents
// (sections "Matrix Fragments for mma.m16n8k16" and "ldmatrix"), so the kernel source is
// identical for both builds and a layout mistake fails the CPU tests.
//
//   mma_16816         mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 (D = A B + D)
//   ldmatrix<N, T>    ldmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16
//   cp_async_16       cp.async.cg.shared.global, 16 bytes (src-size 0: zero fill)
//   cp_async_commit / cp_async_wait<N>   commit_group / wait_group N
//   lds / sts         a shared-memory load / store (on the host: bank + race accounting)
//   ldg               ld.global.nc (read-only global load)
//   pack_half2, ex2   cvt.rn.f16x2.f32, ex2.approx.ftz.f32
//
// Every wrapper except cp_async_commit / cp_async_wait is called by all 32 lanes of a
// warp together (uniform control flow); the host shim enforces it.
#pragma once
#include <cstdint>

#include "half_type.h"

#ifdef __CUDACC__
#define VGGT_SHARED_ARENA(name, bytes) __shared__ alignas(128) unsigned char name[bytes]
#define VGGT_DYNAMIC_SHARED_ARENA(name) extern __shared__ __align__(128) unsigned char name[]
#else
#include "cuda_host_shim.h"
#include <cmath>
#include <deque>
#endif

namespace vggt
{
namespace ptx
{

#ifdef __CUDACC__

__device__ __forceinline__ uint32_t smem_addr(const void* p)
{
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2])
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// N 8x8 matrices; lanes 8i .. 8i+7 give the row addresses of matrix i.
template <int N, bool Trans>
__device__ __forceinline__ void ldmatrix(uint32_t* r, const void* row)
{
    const uint32_t a = smem_addr(row);
    if constexpr (N == 4 && Trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
    else if constexpr (N == 4)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
    else if constexpr (N == 2 && Trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
    else if constexpr (N == 2)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
    else if constexpr (Trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
}

__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool fill)
{
    const int src_size = fill ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_size));
}

__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int N>
__device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <typename T>
__device__ __forceinline__ T lds(const T* p)
{
    return *p;
}

// A read-only global load (ld.global.nc) for pointers the compiler cannot place in the
// global space itself (loaded from shared memory, it would otherwise be a generic LD).
template <typename T>
__device__ __forceinline__ T ldg(const T* p)
{
    return __ldg(p);
}

template <typename T>
__device__ __forceinline__ void sts(T* p, T v, bool active = true)
{
    if (active)
        *p = v;
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi)
{
    uint32_t r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));   // first source -> upper half
    return r;
}

__device__ __forceinline__ float ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

#else // host shim ------------------------------------------------------------------

inline float half_lo(uint32_t r) { return half_bits_to_float(static_cast<uint16_t>(r & 0xffffu)); }
inline float half_hi(uint32_t r) { return half_bits_to_float(static_cast<uint16_t>(r >> 16)); }
inline float half_of(uint32_t r, unsigned which) { return which ? half_hi(r) : half_lo(r); }

inline uint32_t pack_half2(float lo, float hi)
{
    return static_cast<uint32_t>(float_to_half_bits(lo)) | (static_cast<uint32_t>(float_to_half_bits(hi)) << 16);
}

inline float ex2(float x) { return std::exp2(x); }

// Fragment layouts (PTX ISA, m16n8k16 with .f16 A/B and .f32 C/D), g = lane / 4,
// t = lane % 4: A (16x16, row): a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..),
// a3 (g+8, 2t+8..); B (16x8, col): b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g);
// C / D: c0, c1 (g, 2t..2t+1), c2, c3 (g+8, 2t..2t+1). Low half = lower column / k.
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2])
{
    uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    const auto* table = vggt_host::exchange(mine, sizeof mine);
    auto reg = [&](unsigned lane, unsigned i) {
        uint32_t v;
        std::memcpy(&v, table[lane] + 4 * i, 4);
        return v;
    };
    auto A = [&](unsigned row, unsigned k) {
        return half_of(reg((row % 8) * 4 + (k % 8) / 2, (row >= 8 ? 1u : 0u) + (k >= 8 ? 2u : 0u)), k % 2);
    };
    auto B = [&](unsigned k, unsigned n) { return half_of(reg(n * 4 + (k % 8) / 2, 4u + (k >= 8 ? 1u : 0u)), k % 2); };
    const unsigned g = vggt_host::tl_lane / 4, t = vggt_host::tl_lane % 4;
    for (unsigned e = 0; e < 4; ++e)
    {
        const unsigned row = g + (e >= 2 ? 8u : 0u), col = 2 * t + e % 2;
        float acc = d[e];
        for (unsigned k = 0; k < 16; ++k)
            acc += A(row, k) * B(k, col);   // products of fp16 values are exact in fp32
        d[e] = acc;
    }
}

// ldmatrix: lane l receives, from matrix i, row l / 4, elements 2 (l % 4) and +1; with
// .trans, elements (row 2 (l % 4), column l / 4) and (row 2 (l % 4) + 1, column l / 4).
template <int N, bool Trans>
inline void ldmatrix(uint32_t* r, const void* row)
{
    static_assert(N == 1 || N == 2 || N == 4, "ldmatrix .x1 / .x2 / .x4");
    const size_t off = vggt_host::smem_offset(row, 16);
    if (off % 16 != 0)
        vggt_host::fail("ldmatrix: row address not 16-byte aligned");
    const auto* table = vggt_host::exchange(&off, sizeof off);
    size_t offs[32];
    bool active[32];
    for (unsigned l = 0; l < 32; ++l)
    {
        std::memcpy(&offs[l], table[l], sizeof(size_t));
        active[l] = l < 8u * N;
    }
    if (vggt_host::tl_lane == 0)
        vggt_host::account_warp_access(offs, active, 16, 8, vggt_host::Access::kRead);
    const unsigned char* base = vggt_host::g_shared->bytes;
    const unsigned l = vggt_host::tl_lane;
    auto elem = [&](unsigned m, unsigned rr, unsigned cc) {
        uint16_t h;
        std::memcpy(&h, base + offs[8 * m + rr] + 2 * cc, 2);
        return static_cast<uint32_t>(h);
    };
    for (unsigned m = 0; m < static_cast<unsigned>(N); ++m)
        r[m] = Trans ? (elem(m, 2 * (l % 4), l / 4) | (elem(m, 2 * (l % 4) + 1, l / 4) << 16))
                     : (elem(m, l / 4, 2 * (l % 4)) | (elem(m, l / 4, 2 * (l % 4) + 1) << 16));
}

// cp.async: the 16 source bytes are read at issue; the destination holds NaN (and is
// marked pending, so reading it aborts) until the wait_group that retires the group.
struct AsyncCopy
{
    size_t off;
    unsigned char data[16];
};
inline thread_local std::vector<AsyncCopy> tl_open_group;
inline thread_local std::deque<std::vector<AsyncCopy>> tl_groups;

inline void cp_async_16(void* dst, const void* src, bool fill)
{
    const size_t off = vggt_host::smem_offset(dst, 16);
    if (off % 16 != 0 || (fill && reinterpret_cast<uintptr_t>(src) % 16 != 0))
        vggt_host::fail("cp.async: 16-byte copy needs 16-byte aligned addresses");
    const auto* table = vggt_host::exchange(&off, sizeof off);
    if (vggt_host::tl_lane == 0)
    {
        size_t offs[32];
        bool active[32];
        for (unsigned l = 0; l < 32; ++l)
        {
            std::memcpy(&offs[l], table[l], sizeof(size_t));
            active[l] = true;
        }
        vggt_host::account_warp_access(offs, active, 16, 8, vggt_host::Access::kAsyncIssue);
    }
    AsyncCopy c{off, {}};
    if (fill)
        std::memcpy(c.data, src, 16);
    tl_open_group.push_back(c);
    __syncwarp();   // the issue marks above precede the NaN fill below
    std::memset(vggt_host::g_shared->bytes + off, 0xff, 16);
}

inline void cp_async_commit()
{
    tl_groups.push_back(std::move(tl_open_group));
    tl_open_group.clear();
}

template <int N>
inline void cp_async_wait()
{
    while (tl_groups.size() > static_cast<size_t>(N))
    {
        std::lock_guard<std::mutex> lock(vggt_host::g_shared->mu);
        for (const AsyncCopy& c : tl_groups.front())
        {
            std::memcpy(vggt_host::g_shared->bytes + c.off, c.data, 16);
            for (size_t w = c.off / 4; w < c.off / 4 + 4; ++w)
                vggt_host::check_word(w, vggt_host::Access::kAsyncLand, static_cast<int32_t>(vggt_host::tl_warp->id));
        }
        tl_groups.pop_front();
    }
}

template <typename T>
inline void warp_access(const T* p, bool active, vggt_host::Access a)
{
    static_assert(sizeof(T) == 4 || sizeof(T) == 8 || sizeof(T) == 16, "32-, 64- or 128-bit shared access");
    struct Entry
    {
        size_t off;
        bool active;
    } mine{active ? vggt_host::smem_offset(p, sizeof(T)) : 0, active};
    if (active && mine.off % sizeof(T) != 0)
        vggt_host::fail("shared-memory access not aligned to its size");
    const auto* table = vggt_host::exchange(&mine, sizeof mine);
    if (vggt_host::tl_lane == 0)
    {
        size_t offs[32];
        bool act[32];
        for (unsigned l = 0; l < 32; ++l)
        {
            Entry e;
            std::memcpy(&e, table[l], sizeof e);
            offs[l] = e.off;
            act[l] = e.active;
        }
        vggt_host::account_warp_access(offs, act, sizeof(T), 128 / sizeof(T), a);
    }
    __syncwarp();   // accounted (and race-checked) before any lane touches the data
}

template <typename T>
inline T ldg(const T* p)
{
    return *p;
}

template <typename T>
inline T lds(const T* p)
{
    warp_access(p, true, vggt_host::Access::kRead);
    return *p;
}

template <typename T>
inline void sts(T* p, T v, bool active = true)
{
    warp_access(p, active, vggt_host::Access::kWrite);
    if (active)
        *p = v;
}

#endif
} // namespace ptx
} // namespace vggt
