// Tensor-core variant of attention_kernel (fp16 I/O, head size <= 128): the two matrix
// products of each key tile, S = Q K^T and O += P V, run as m16n16k16 wmma operations
// (fp16 operands, fp32 accumulation); everything else is the kernel of
// attention_kernel.cuh: the same block -> (queries, visible keys) mapping, the same
// online softmax with fp32 statistics, the rank-1 bias added to the fp32 logits.
//
// Layout of a block (kBlockQ = 32 query rows, kTcWarps = 2 warps):
//   warp w owns rows [16w, 16w + 16); in the softmax step a lane pair owns one row, each
//   lane half of the key tile's columns (their max and sum meet through one shuffle).
// wmma fragments have an unspecified element -> lane layout, so the per-row rescaling of
// the output accumulator cannot happen in registers: O lives in shared memory (fp32),
// is rescaled there by the row's owners, and is loaded into an accumulator fragment for
// the P V product. P is rounded to fp16 for the tensor cores; the row sum is taken over
// the rounded values so numerator and denominator see the same weights.
//
// Shared memory, under the 48 KB static limit: at DMAX = 128 with 32-key tiles Q 8 KB +
// K 8 KB + V 8 KB + O 16 KB + S 4 KB + P 2 KB; at DMAX = 64 with 64-key tiles Q 4 KB + K 8 KB
// + V 8 KB + O 8 KB + S 8 KB + P 4 KB. Head sizes that are multiples of 8 but not of 16 are padded
// with zero columns to the 16-wide k-step, which changes neither product.
//
// On the host (cuda_host_shim.h + wmma_host_shim.h) the same code runs with real
// per-warp barriers and shuffles, and the shim enforces wmma's alignment / ldm rules.
#pragma once
#include "attention_kernel.cuh"

#ifdef __CUDACC__
#include <mma.h>
#else
#include "../common/wmma_host_shim.h"
#endif

namespace vggt
{

namespace wmma = nvcuda::wmma;

constexpr int kTcWarps = kBlockQ / 16;
constexpr int kTcThreads = kTcWarps * 32;
// Keys per tile: each tile costs one load + store of the warp's O rows in shared memory,
// so the longest tile that fits halves that traffic per FLOP; at D = 128 only 32 fit.
template <int DMAX>
struct TcTileCfg
{
    static constexpr int kTileK = DMAX <= 64 ? 64 : 32;
};
static_assert(kBlockQ % 16 == 0, "wmma tiles are 16 x 16");

// grid: same as attention_kernel (query tiles, B*H); block: kTcThreads threads.
template <int DMAX>
__global__ void attention_kernel_tc(AttentionParams p, int H, int L, int S, int D, int M,
    const half_t* __restrict__ q, const half_t* __restrict__ k, const half_t* __restrict__ v,
    const float* __restrict__ r, const float* __restrict__ c, const int32_t* __restrict__ landmarks,
    half_t* __restrict__ out)
{
    static_assert(DMAX % 16 == 0 && DMAX <= kTensorCoreMaxHeadDim, "DMAX: 16-wide k-steps, shared memory budget");
    constexpr int TK = TcTileCfg<DMAX>::kTileK;
    static_assert(TK % 32 == 0, "16-key wmma columns; the lane pair of a row splits the tile");
    constexpr int HALF_TK = TK / 2;
    alignas(32) __shared__ half_t qs[kBlockQ][DMAX];
    alignas(32) __shared__ half_t ks[TK][DMAX];
    alignas(32) __shared__ half_t vs[TK][DMAX];
    alignas(32) __shared__ half_t ps[kBlockQ][TK];
    alignas(32) __shared__ float ss[kBlockQ][TK];
    alignas(32) __shared__ float os[kBlockQ][DMAX];
    __shared__ float cs[TK];
    __shared__ int valid_s[TK];
    __shared__ float rs[kBlockQ];

    const int bh = static_cast<int>(blockIdx.y);
    const int b = bh / H;
    const int tid = static_cast<int>(threadIdx.x);
    const int warp = tid / 32;
    const int lane = tid % 32;
    int q_begin = 0, q_end = 0;
    KeyList kl;
    block_problem(p, L, S, M, b, landmarks, q_begin, q_end, kl);

    const int DP = (D + 15) / 16 * 16;
    const int64_t q_base = static_cast<int64_t>(bh) * L * D;
    const int64_t kv_base = static_cast<int64_t>(bh) * S * D;
    const bool biased = p.kind == OpKind::kBiased && p.has_bias != 0;
    const half_t zero = from_float<half_t>(0.F);

    // Q tile (rows past q_end and columns past D are zero, so they add nothing) and O = 0.
    for (int e = tid; e < kBlockQ * DP; e += kTcThreads)
    {
        const int row = e / DP, d = e % DP;
        const int i = q_begin + row;
        qs[row][d] = (i < q_end && d < D) ? q[q_base + static_cast<int64_t>(i) * D + d] : zero;
        os[row][d] = 0.F;
    }
    for (int row = tid; row < kBlockQ; row += kTcThreads)
    {
        const int i = q_begin + row;
        rs[row] = (biased && i < q_end) ? r[static_cast<int64_t>(b) * L + i] : 0.F;
    }
    __syncthreads();

    const int my_row = warp * 16 + lane / 2;
    const int col0 = (lane % 2) * HALF_TK;
    const float r_i = rs[my_row];
    float m_run = -INFINITY;
    float l_run = 0.F;

    for (int t0 = 0; t0 < kl.count; t0 += TK)
    {
        load_key_tile<TK>(kl, t0, D, DP, DMAX, tid, kTcThreads, k + kv_base, v + kv_base,
            biased ? c + static_cast<int64_t>(b) * S : nullptr, biased, &ks[0][0], &vs[0][0], valid_s, cs);
        __syncthreads();

        // S = Q K^T for this warp's 16 rows (K stored [key][d] is K^T in column-major).
        for (int nt = 0; nt < TK; nt += 16)
        {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
            wmma::fill_fragment(sf, 0.F);
            for (int kk = 0; kk < DP; kk += 16)
            {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, half_t, wmma::row_major> af;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, half_t, wmma::col_major> bf;
                wmma::load_matrix_sync(af, &qs[warp * 16][kk], DMAX);
                wmma::load_matrix_sync(bf, &ks[nt][kk], DMAX);
                wmma::mma_sync(sf, af, bf, sf);
            }
            wmma::store_matrix_sync(&ss[warp * 16][nt], sf, TK, wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax of the row this lane pair owns.
        float s_loc[HALF_TK];
        float tile_max = -INFINITY;
        for (int u = 0; u < HALF_TK; ++u)
        {
            const int jj = col0 + u;
            s_loc[u] = valid_s[jj] ? ss[my_row][jj] * p.scale + r_i * cs[jj] : -INFINITY;
            tile_max = s_loc[u] > tile_max ? s_loc[u] : tile_max;
        }
        const float other_max = __shfl_xor_sync(0xffffffffu, tile_max, 1);
        tile_max = other_max > tile_max ? other_max : tile_max;
        const float m_new = m_run > tile_max ? m_run : tile_max;
        // m_new = -inf: nothing visible yet; P = 0 and O (still 0) may be scaled by 0.
        const float corr = m_run > -INFINITY ? expf(m_run - m_new) : 0.F;
        float row_sum = 0.F;
        for (int u = 0; u < HALF_TK; ++u)
        {
            const half_t pr = from_float<half_t>(s_loc[u] > -INFINITY ? expf(s_loc[u] - m_new) : 0.F);
            ps[my_row][col0 + u] = pr;
            row_sum += to_float(pr);
        }
        row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
        l_run = l_run * corr + row_sum;
        m_run = m_new;
        for (int d = lane % 2; d < DP; d += 2)
            os[my_row][d] *= corr;
        __syncwarp();

        // O += P V for this warp's rows, through accumulator fragments loaded from shared.
        for (int dt = 0; dt < DP; dt += 16)
        {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> of;
            wmma::load_matrix_sync(of, &os[warp * 16][dt], DMAX, wmma::mem_row_major);
            for (int kk = 0; kk < TK; kk += 16)
            {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, half_t, wmma::row_major> pf;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, half_t, wmma::row_major> vf;
                wmma::load_matrix_sync(pf, &ps[warp * 16][kk], TK);
                wmma::load_matrix_sync(vf, &vs[kk][dt], DMAX);
                wmma::mma_sync(of, pf, vf, of);
            }
            wmma::store_matrix_sync(&os[warp * 16][dt], of, DMAX, wmma::mem_row_major);
        }
        __syncthreads();
    }

    const int i = q_begin + my_row;
    if (i < q_end)
    {
        const float inv = l_run > 0.F ? 1.F / l_run : 0.F;
        const int64_t o_off = q_base + static_cast<int64_t>(i) * D;
        for (int d = lane % 2; d < D; d += 2)
            out[o_off + d] = from_float<half_t>(os[my_row][d] * inv);
    }
}

} // namespace vggt
