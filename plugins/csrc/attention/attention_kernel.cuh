// Fused attention kernels of the plugins: flash-style (keys visited in shared-memory
// tiles, online softmax, fp32 statistics and accumulation), never an L x S buffer.
//
//   biased:  out_i = sum_j softmax_j(scale <q_i, k_j> + r_i c_j) v_j
//   sparse:  the same without bias, over the keys contract.json allows for query i.
//
// One thread owns one query row; a block of kBlockQ rows shares each key tile. For the
// sparse op a block never straddles a frame, so all its rows see the same key list, and
// the list is enumerated (own frame, landmarks, dilated frames, memory tokens) instead
// of scanning all L keys against a mask: cost is proportional to the visible keys.
//
// The same source compiles with nvcc for the GPU and, through cuda_host_shim.h, with a
// host compiler for the CPU tests, so every line here is executed in CI.
#pragma once
#include "../common/attention_params.h"
#include "../common/half_type.h"

#include <type_traits>

// Loops over compile-time extents are unrolled on the GPU so per-thread arrays indexed
// by them (a query row, its accumulator) stay in registers instead of local memory.
#ifdef __CUDACC__
#define VGGT_PRAGMA(x) _Pragma(#x)
#define VGGT_UNROLL VGGT_PRAGMA(unroll)
#define VGGT_UNROLL_N(n) VGGT_PRAGMA(unroll n)
#else
#define VGGT_UNROLL
#define VGGT_UNROLL_N(n)
#endif

#ifndef __CUDACC__
#include "../common/cuda_host_shim.h"
#include <cmath>
#endif

namespace vggt
{

constexpr int kBlockQ = 32;
constexpr int kMaxDilatedFrames = 64;

template <int DMAX>
struct TileCfg
{
    // Two fp32 tiles of kTileK x DMAX must fit the 48 KB static shared-memory limit.
    static constexpr int kTileK = DMAX <= 128 ? 32 : 16;
};

struct KeyList
{
    // Virtual key positions 0..count-1 map to real key indices: the first `own` come from
    // [own_start, own_start + own), then either `frames` whole frames, landmark entries or
    // a contiguous tail starting at tail_start.
    int count;
    int own_start, own;
    int tail_start;                 // memory tokens (strategy 2) or all keys (biased)
    const int32_t* landmarks;       // strategy 0
    int n_frames;                   // strategy 1
    // strategy 1: kMaxDilatedFrames entries the caller owns (a local array of the CUDA-core
    // kernel; shared memory in the tensor-core kernel, which must have no local memory)
    int* frames;
    int frame_len;
    uint32_t frame_recip;           // (2^32 - 1) / frame_len, see frame_of
    int mode;                       // 0 contiguous, 1 own+landmarks, 2 frames, 3 own+tail
};

// Read-only global data (the landmark lists): ld.global.nc, also where the pointer itself
// was loaded from memory and the compiler could not tell its address space.
template <typename T>
__device__ __forceinline__ T load_global_ro(const T* p)
{
#ifdef __CUDACC__
    return __ldg(p);
#else
    return *p;
#endif
}

// j / frame_len for 0 <= j < 2^31 without a division (a ~20-instruction sequence at run
// time; general() needs seven per tile): with m = floor((2^32 - 1) / F), the high half of
// j m is j / F - j (2^32 - mF) / (F 2^32) rounded down, and 2^32 - mF <= F makes that at
// most one below floor(j / F); one compare corrects it. Exact for every F >= 1.
__device__ __forceinline__ int frame_of(const KeyList& kl, int j)
{
    const uint32_t uj = static_cast<uint32_t>(j);
#ifdef __CUDACC__
    uint32_t q = __umulhi(uj, kl.frame_recip);
#else
    uint32_t q = static_cast<uint32_t>((static_cast<uint64_t>(uj) * kl.frame_recip) >> 32);
#endif
    q += uj - q * static_cast<uint32_t>(kl.frame_len) >= static_cast<uint32_t>(kl.frame_len) ? 1u : 0u;
    return static_cast<int>(q);
}

__device__ __forceinline__ int key_at(const KeyList& kl, int j, bool& valid)
{
    valid = true;
    switch (kl.mode)
    {
    case 0: return kl.tail_start + j;
    case 1:
    {
        if (j < kl.own)
            return kl.own_start + j;
        const int idx = load_global_ro(kl.landmarks + (j - kl.own));
        // A landmark inside the query's own frame is already visible once.
        valid = !(idx >= kl.own_start && idx < kl.own_start + kl.own);
        return idx;
    }
    case 2:
    {
        const int f = frame_of(kl, j);
        return kl.frames[f] * kl.frame_len + (j - f * kl.frame_len);
    }
    default: return j < kl.own ? kl.own_start + j : kl.tail_start + (j - kl.own);
    }
}

// Which queries a block of `rows` query rows owns and which keys they see.
// `frames` receives strategy 1's frame list; only threads with write_frames store it
// (the tensor-core kernel lets one thread fill its shared copy, before a barrier).
__device__ __forceinline__ void block_problem(const AttentionParams& p, int L, int S, int M, int b,
    const int32_t* landmarks, int& q_begin, int& q_end, KeyList& kl, int* frames, int rows = kBlockQ,
    bool write_frames = true)
{
    kl.frames = frames;
    kl.mode = 0;
    kl.tail_start = 0;
    kl.count = S;
    kl.own = 0;
    kl.own_start = 0;
    kl.frame_len = 1;
    kl.frame_recip = 0xffffffffu;
    kl.n_frames = 0;
    kl.landmarks = nullptr;
    if (p.kind == OpKind::kBiased)
    {
        q_begin = blockIdx.x * rows;
        q_end = q_begin + rows < L ? q_begin + rows : L;
        return;
    }
    const int F = p.frame_len;
    const int n_frames = p.num_t * p.num_n;
    const int tiles_per_frame = (F + rows - 1) / rows;
    const int frame_tiles = n_frames * tiles_per_frame;
    const int tile = static_cast<int>(blockIdx.x);
    if (tile >= frame_tiles)
    {   // memory-token queries (strategy 2) see every key
        q_begin = n_frames * F + (tile - frame_tiles) * rows;
        q_end = q_begin + rows < L ? q_begin + rows : L;
        return;
    }
    const int f = tile / tiles_per_frame;
    q_begin = f * F + (tile % tiles_per_frame) * rows;
    q_end = q_begin + rows < (f + 1) * F ? q_begin + rows : (f + 1) * F;
    kl.own_start = f * F;
    kl.own = F;
    kl.frame_len = F;
    kl.frame_recip = 0xffffffffu / static_cast<uint32_t>(F > 0 ? F : 1);
    if (p.strategy == kStrategyLandmark)
    {
        kl.mode = 1;
        kl.landmarks = landmarks + static_cast<int64_t>(b) * M;
        kl.count = F + M;
    }
    else if (p.strategy == kStrategyDilated)
    {
        kl.mode = 2;
        const int t = f / p.num_n, n = f % p.num_n;
        int nf = 0;
        for (int vv = 0; vv < p.num_n && nf < kMaxDilatedFrames; ++vv, ++nf)
            if (write_frames)
                frames[nf] = t * p.num_n + vv;
        for (int tt = 0; tt < p.num_t && nf < kMaxDilatedFrames; ++tt)
        {
            const int dt = tt > t ? tt - t : t - tt;
            if (dt > 0 && dt < 31 && ((p.level_mask >> dt) & 1))
            {
                if (write_frames)
                    frames[nf] = tt * p.num_n + n;
                ++nf;
            }
        }
        kl.n_frames = nf;
        kl.count = nf * F;
    }
    else
    {
        kl.mode = 3;
        kl.tail_start = n_frames * F;
        kl.count = F + p.num_memory;
    }
}

template <typename Dst, typename Src>
__device__ __forceinline__ Dst convert_elem(Src x)
{
    if constexpr (std::is_same_v<Dst, Src>)
        return x;
    else
        return from_float<Dst>(to_float(x));
}

// Cooperative load (thread `tid` of `nthreads`) of key-list entries t0 .. t0 + TK - 1:
// K and V rows into shared tiles of row stride `ld` (columns [D, width) and rows past
// the list's end are zero, so padded products add nothing), their visibility flags, and
// the bias column c_j. Every thread of the block must call it, so barriers line up.
template <int TK, typename Src, typename Dst>
__device__ __forceinline__ void load_key_tile(const KeyList& kl, int t0, int D, int width, int ld, int tid,
    int nthreads, const Src* __restrict__ k, const Src* __restrict__ v, const float* __restrict__ c_row,
    bool biased, Dst* ks, Dst* vs, int* valid_s, float* cs)
{
    const Dst zero = from_float<Dst>(0.F);
    for (int e = tid; e < TK * width; e += nthreads)
    {
        const int jj = e / width, d = e % width;
        const int j = t0 + jj;
        Dst kval = zero, vval = zero;
        if (j < kl.count && d < D)
        {
            bool ok;
            const int64_t idx = key_at(kl, j, ok);
            kval = convert_elem<Dst>(k[idx * D + d]);
            vval = convert_elem<Dst>(v[idx * D + d]);
        }
        ks[jj * ld + d] = kval;
        vs[jj * ld + d] = vval;
    }
    for (int jj = tid; jj < TK; jj += nthreads)
    {
        const int j = t0 + jj;
        bool ok = false;
        int idx = 0;
        if (j < kl.count)
            idx = key_at(kl, j, ok);
        valid_s[jj] = ok ? 1 : 0;
        cs[jj] = (ok && biased) ? c_row[idx] : 0.F;
    }
}

// grid: (query tiles, B*H); block: kBlockQ threads. D <= DMAX at run time.
template <typename T, int DMAX>
__global__ void attention_kernel(AttentionParams p, int /*B: grid.y = B*H*/, int H, int L, int S, int D, int M,
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const float* __restrict__ r,
    const float* __restrict__ c, const int32_t* __restrict__ landmarks, T* __restrict__ out)
{
    constexpr int TK = TileCfg<DMAX>::kTileK;
    __shared__ float ks[TK][DMAX];
    __shared__ float vs[TK][DMAX];
    __shared__ float cs[TK];
    __shared__ int valid_s[TK];

    const int bh = static_cast<int>(blockIdx.y);
    const int b = bh / H;
    const int tid = static_cast<int>(threadIdx.x);
    int q_begin = 0, q_end = 0;
    KeyList kl;
    int frames[kMaxDilatedFrames];
    block_problem(p, L, S, M, b, landmarks, q_begin, q_end, kl, frames);

    const int i = q_begin + tid;
    const bool active = i < q_end;
    const int64_t q_off = (static_cast<int64_t>(bh) * L + (active ? i : 0)) * D;
    const int64_t kv_base = static_cast<int64_t>(bh) * S * D;

    // Up to D = 64 (VGGT's head size) the row and its accumulator fit in registers when
    // the d-loops have the constant extent DMAX (columns past D are zero); larger tiles
    // would spill anyway, so they loop to D and live in local memory.
    constexpr bool kInRegs = DMAX <= 64;
    const int DL = kInRegs ? DMAX : D;
    float qr[DMAX];
    float acc[DMAX];
    VGGT_UNROLL
    for (int d = 0; d < DMAX; ++d)
    {
        qr[d] = (active && d < D) ? to_float(q[q_off + d]) * p.scale : 0.F;
        acc[d] = 0.F;
    }
    const bool biased = p.kind == OpKind::kBiased && p.has_bias != 0;
    const float r_i = (biased && active) ? r[static_cast<int64_t>(b) * L + i] : 0.F;
    float m_run = -INFINITY;
    float l_run = 0.F;

    for (int t0 = 0; t0 < kl.count; t0 += TK)
    {
        load_key_tile<TK>(kl, t0, D, DL, DMAX, tid, kBlockQ, k + kv_base, v + kv_base,
            biased ? c + static_cast<int64_t>(b) * S : nullptr, biased, &ks[0][0], &vs[0][0], valid_s, cs);
        __syncthreads();
        if (active)
        {
            float s[TK];
            float tile_max = -INFINITY;
            VGGT_UNROLL
            for (int jj = 0; jj < TK; ++jj)
            {
                float dot = 0.F;
                VGGT_UNROLL_N((kInRegs ? DMAX : 1))
                for (int d = 0; d < DL; ++d)
                    dot += qr[d] * ks[jj][d];
                s[jj] = valid_s[jj] ? dot + r_i * cs[jj] : -INFINITY;
                tile_max = s[jj] > tile_max ? s[jj] : tile_max;
            }
            const float m_new = m_run > tile_max ? m_run : tile_max;
            if (m_new > -INFINITY)
            {
                const float corr = m_run > -INFINITY ? expf(m_run - m_new) : 0.F;
                l_run *= corr;
                VGGT_UNROLL_N((kInRegs ? DMAX : 1))
                for (int d = 0; d < DL; ++d)
                    acc[d] *= corr;
                VGGT_UNROLL
                for (int jj = 0; jj < TK; ++jj)
                {
                    // exp(-inf) = 0 for keys that are not visible: no branch around the row
                    const float pr = valid_s[jj] ? expf(s[jj] - m_new) : 0.F;
                    l_run += pr;
                    VGGT_UNROLL_N((kInRegs ? DMAX : 1))
                    for (int d = 0; d < DL; ++d)
                        acc[d] += pr * vs[jj][d];
                }
                m_run = m_new;
            }
        }
        __syncthreads();
    }
    if (active)
    {
        const float inv = l_run > 0.F ? 1.F / l_run : 0.F;
        VGGT_UNROLL_N((kInRegs ? DMAX : 1))
        for (int d = 0; d < DL; ++d)
            if (d < D)
                out[q_off + d] = from_float<T>(acc[d] * inv);
    }
}

// Number of query tiles (grid.x) for a problem.
inline int query_tiles(const AttentionParams& p, int L, int rows = kBlockQ)
{
    if (p.kind == OpKind::kBiased)
        return (L + rows - 1) / rows;
    const int F = p.frame_len;
    return p.num_t * p.num_n * ((F + rows - 1) / rows) + (p.num_memory + rows - 1) / rows;
}

} // namespace vggt
