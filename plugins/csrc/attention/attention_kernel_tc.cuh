// Tensor-core kernel (fp16 I/O, head size <= 128): FlashAttention-2's register-resident
// forward pass with this project's rank-1 bias and sparse key lists.
//
// Per block: 4 warps, kBlockM query rows (each warp two 16-row m-tiles); per key tile of
// kBlockN keys, S = Q K^T and O += P V run as warp-level mma.sync.m16n8k16 (fp16 operands,
// fp32 accumulation) through common/mma_ptx.h, whose fragment layouts the PTX ISA
// documents, so every value has a known owner lane:
//   - Q is loaded once (cp.async -> shared -> ldmatrix.x4) into A fragments kept in registers
//     (D = 64; at D = 128 Q stays in shared memory and is re-read by ldmatrix, see traits);
//   - S stays in the accumulator registers; the bias r_i c_j and the key mask join the
//     fp32 logits there, in the log2 domain (log2 e folded into scale and r, exp2 below);
//   - the running max / sum are fp32, one row owned by a quad of lanes (two xor shuffles);
//   - P is packed to fp16 straight from the S accumulators into the A fragments of P V
//     (the accumulator layout of an n8 pair is the A layout of one k16 step);
//   - O lives in accumulator registers, rescaled in place, written once at the end;
//   - K and V tiles come in with 16-byte cp.async, double buffered (the next tile is in
//     flight while this one computes), from rows XOR-swizzled in 16-byte chunks so that
//     the 8 row addresses of every ldmatrix phase hit 8 different bank groups;
//   - keys are enumerated per tile row by key_at (the sparse lists are runs: a frame,
//     landmark entries, dilated frames, the memory bank), each row copied with 16-byte
//     vector copies; duplicates and padding are masked with -inf as in the CUDA-core kernel.
//
// The head size is a compile-time DMAX (64 or 128) so every fragment loop is unrolled
// and fragments stay in registers; a smaller run-time D (multiple of 8) is zero-padded
// by the cp.async zero fill, which changes neither product.
//
// Mutations for the tests (each must make the CPU run fail; see test_kernels_host.py):
//   VGGT_MUTATE_NO_ASYNC_WAIT    drop the cp.async.wait_group before a tile is read
//   VGGT_MUTATE_DROP_BARRIER=1|2 drop the barrier after the wait (1) / before reuse (2)
//   VGGT_MUTATE_NO_O_RESCALE     do not rescale O when the running max grows
//   VGGT_MUTATE_NO_SWIZZLE       plain row-major tiles (bank-conflict factor rises)
#pragma once
#include "attention_kernel.cuh"
#include "../common/mma_ptx.h"

#ifndef VGGT_MUTATE_DROP_BARRIER
#define VGGT_MUTATE_DROP_BARRIER 0
#endif

namespace vggt
{

// Tile sizes (FlashAttention-2 style traits) and why:
//   D = 64: kWarps = 4, kMTiles = 2 -> kBlockM = 128 query rows: every K / V fragment
//     loaded by ldmatrix feeds two MMAs (two m-tiles), halving shared-memory bytes per MMA
//     against one m-tile; kBlockN = 64 keys: S (2 x 8 x 4 = 64 fp32), O (64) and Q (32)
//     registers fit under 255 with no spills, so 2 blocks = 8 warps are resident per SM.
//   D = 128: two m-tiles as well (the fragment reuse), but O is 128 registers, so Q stays
//     in shared memory (32 KB, read by ldmatrix once per k-step pair and tile) instead of
//     64 more registers, and kBlockN = 32 keys keeps S at 32 registers. Q + two K / V
//     stages are 64.5 KB: dynamic shared memory with the opt-in above 48 KB (every target
//     arch grants >= 99 KB per block; 2 blocks = 8 warps per SM on sm_80 / 87 / 90).
//   kStages = 2: one tile computing while the next is in flight; Q's staging buffer is
//     the same shared memory (Q goes to registers before the first K / V copy).
// What only general() reads, the same for the whole block: kept in shared memory (see
// MmaTraits::kKeyListOffset).
struct TcBlock
{
    KeyList kl;
    const half_t* k;      // this (batch, head)'s K, V, and c row (kBias only)
    const half_t* v;
    const float* c_row;
    half_t* out;          // this block's first output row, and its rows [0, rows)
    int rows;
};

template <int DMAX>
struct MmaTraits
{
    static_assert(DMAX == 64 || DMAX == 128, "compile-time head sizes 64 and 128");
    static constexpr int kWarps = 4;
    static constexpr int kThreads = kWarps * 32;
    static constexpr int kMTiles = 2;
    static constexpr bool kQInRegs = DMAX <= 64;
    static constexpr int kBlockM = kWarps * kMTiles * 16;
    static constexpr int kBlockN = DMAX <= 64 ? 64 : 32;
    static constexpr int kChunks = DMAX / 8;      // 16-byte chunks per row
    static constexpr int kKSteps = DMAX / 16;     // k16 steps of Q K^T
    static constexpr int kNTiles = kBlockN / 8;   // n8 tiles of S
    static constexpr int kPSteps = kBlockN / 16;  // k16 steps of P V
    static constexpr int kDTiles = DMAX / 8;      // n8 tiles of O
    static constexpr int kStages = 2;
    static constexpr int kTileBytes = kBlockN * DMAX * 2;
    static constexpr int kStageBytes = 2 * kTileBytes + 2 * kBlockN * 4;   // K, V, c_j, mask_j
    static constexpr int kQBytes = kBlockM * DMAX * 2;
    // Q in registers: its staging area is reused by the stages; otherwise Q stays resident.
    static constexpr int kStagesOffset = kQInRegs ? 0 : kQBytes;
    static constexpr int kTileSmem = kQInRegs ? (kQBytes > kStages * kStageBytes ? kQBytes : kStages * kStageBytes)
                                              : kQBytes + kStages * kStageBytes;
    // After the tiles: the dilated strategy's frame list (KeyList::frames) and the key
    // list itself, which only general() reads: held in shared memory, its fields take no
    // registers across the hot loop (and a local copy would be a stack frame).
    static constexpr int kFramesOffset = kTileSmem;
    static constexpr int kKeyListOffset = kFramesOffset + kMaxDilatedFrames * 4;
    static constexpr int kSmemBytes = kKeyListOffset + static_cast<int>((sizeof(TcBlock) + 15) / 16 * 16);
    static_assert(kChunks >= 8, "the XOR swizzle permutes 8 chunks");
    static_assert(kKSteps % 2 == 0 && kDTiles % 2 == 0, "x4 ldmatrix covers two k-steps / two d-tiles");
    static_assert(kSmemBytes <= 99 * 1024, "dynamic shared memory every target arch grants (sm_86 / 89: 99 KB)");
};

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of `chunks` chunks per row.
// Chunk c of row r sits at slot c ^ (r & 7): the 8 rows an ldmatrix phase reads (same
// logical chunk) and the 8 chunks a cp.async phase writes land in 8 distinct 16-byte bank
// groups.
__device__ __forceinline__ int swz(int row, int chunk, int chunks)
{
#ifdef VGGT_MUTATE_NO_SWIZZLE
    return (row * chunks + chunk) * 16;
#else
    return (row * chunks + (chunk ^ (row & 7))) * 16;
#endif
}

// The same offset split into a per-lane register and compile-time immediates, so the
// unrolled fragment loops add constants to a few registers instead of keeping one address
// per fragment alive. For row = R0 + lane_row with R0 % 8 == 0 and chunk = C0 + lane_chunk
// with (C0 % 8) and lane_chunk on disjoint bits (C0 % 8 + lane_chunk < 8):
//   swz(row, chunk) = R0 * row_bytes + (C0 / 8) * 128 + lane_swz(lane_row, lane_chunk, C0 % 8)
// because the XOR only touches the low three chunk bits.
__device__ __forceinline__ int lane_swz(int lane_row, int lane_chunk, int c0lo, int chunks)
{
#ifdef VGGT_MUTATE_NO_SWIZZLE
    const int x = lane_chunk;
#else
    const int x = lane_chunk ^ (lane_row & 7);
#endif
    return lane_row * chunks * 16 + (c0lo ^ x) * 16;
}

struct alignas(8) Float2
{
    float x, y;
};

struct alignas(16) Float4
{
    float x, y, z, w;
};

// Slot of key column j in a stage's c_j / mask_j rows. For kBlockN = 64 the four columns
// one lane needs from n8 tiles 2u and 2u + 1 (2 t4, 2 t4 + 1 of each) are adjacent, so
// one 16-byte load brings them (half the load instructions of 8-byte pairs); kBlockN = 32
// keeps column order (c_j goes by shuffles there, lane j holding column j).
template <int BN>
__device__ __forceinline__ int col_slot(int j)
{
    if constexpr (BN == 64)
        return (j / 16) * 16 + ((j % 8) / 2) * 4 + ((j / 8) % 2) * 2 + j % 2;
    else
        return j;
}

constexpr float kLog2e = 1.4426950408889634F;

// First virtual key position after the contiguous run holding position j (the key list
// is a sequence of runs: all keys; own frame then landmark singletons; whole frames; own
// frame then the memory bank). Inside a run, key = j + (key_at(j) - j).
__device__ __forceinline__ int run_end(const KeyList& kl, int j)
{
    switch (kl.mode)
    {
    case 0: return kl.count;
    case 1: return j < kl.own ? kl.own : j + 1;
    case 2: return (frame_of(kl, j) + 1) * kl.frame_len;
    default: return j < kl.own ? kl.own : kl.count;
    }
}

// Fills one stage (K tile, V tile, c_j, mask_j) of kBlockN key-list entries with
// 16-byte cp.async. A tile inside one contiguous run (nearly every tile: VGGT's runs are
// frames of 1,374 tokens) takes contiguous(): row j is key j + (run start key - run start), all keys
// visible, so it writes no mask (the tiles it loads are computed without one). Any other
// tile (a run boundary inside, landmark singletons, the padded end of the list) takes
// general(), which also looks up the run the next tile starts in. Both are inlined: an
// out-of-line call made this struct and the key list address-taken, i.e. a stack frame
// and local loads in the hot loop; instead general() is only reached outside it.
template <int DMAX, bool kBias>
struct TileLoader
{
    using Tr = MmaTraits<DMAX>;
    static constexpr int kRowStep = Tr::kThreads / Tr::kChunks;
    static constexpr int RB = Tr::kChunks * 16;
    static constexpr bool kOffsetRows = DMAX > 64;
    int D, tid, cp_off;
    int src_col;          // this thread's column, or 0 where it is past D (then zero-filled)
    bool fill_col;        // this thread's column is inside the head
    int run_stop;         // the run of the next tile ends here (0: unknown)
    int run_base;         // ... and starts (for this loader) at this position, where
    // this thread's K / V source rows are (D = 64: two pointers; D = 128, short of
    // registers: one element offset from the kernel's k / v arguments, which the compiler
    // re-reads from the constant bank), and its c_j
    const half_t* kp;
    const half_t* vp;
    int64_t kv_row;
    const half_t* k_arg;
    const half_t* v_arg;
    const float* cp;

    // A row past the list reads key 0 with src-size 0, so every source address is a real
    // one. Offsets inside one (batch, head) slice are below S * D < 2^31 elements: 32-bit.
    __device__ __forceinline__ void copy_row(const half_t* kb, const half_t* vb, unsigned char* stage, int it,
        int key, bool in_list) const
    {
        const bool fill = in_list && fill_col;
        const int off = key * D + src_col;
        ptx::cp_async_16(stage + cp_off + it * kRowStep * RB, kb + off, fill);
        ptx::cp_async_16(stage + Tr::kTileBytes + cp_off + it * kRowStep * RB, vb + off, fill);
    }

    // Sources from the per-thread pointers general() set at the run's start: one 32-bit
    // offset per tile instead of a 64-bit key address per row.
    __device__ __forceinline__ void contiguous(int t0, unsigned char* stage) const
    {
        const int rel = t0 - run_base;
        const int off = rel * D;
        const half_t* const k0 = kOffsetRows ? k_arg + (kv_row + off) : kp + off;
        const half_t* const v0 = kOffsetRows ? v_arg + (kv_row + off) : vp + off;
        VGGT_UNROLL
        for (int it = 0; it < Tr::kBlockN * Tr::kChunks / Tr::kThreads; ++it)
        {
            ptx::cp_async_16(stage + cp_off + it * kRowStep * RB, k0 + it * kRowStep * D, fill_col);
            ptx::cp_async_16(stage + Tr::kTileBytes + cp_off + it * kRowStep * RB, v0 + it * kRowStep * D,
                fill_col);
        }
        if constexpr (kBias)
        {
            float* cs = reinterpret_cast<float*>(stage + 2 * Tr::kTileBytes);
            const float cj = tid < Tr::kBlockN ? ptx::ldg(cp + rel) : 0.F;
            ptx::sts(cs + col_slot<Tr::kBlockN>(tid % Tr::kBlockN), cj, tid < Tr::kBlockN);
        }
    }

    __device__ __forceinline__ void general(const TcBlock& blk, const int* frames_s, int t0, unsigned char* stage)
    {
        // Copies read once (each cp.async is an asm volatile the compiler will not move
        // loads across, so the fields would be read again per row), with a frame list
        // pointer the compiler knows to be shared memory.
        KeyList kl = blk.kl;
        kl.frames = const_cast<int*>(frames_s);
        if constexpr (kBias)
            kl.mode = 0;   // only the biased op has a bias: every key, one run (block_problem)
        const half_t* const kb = blk.k;
        const half_t* const vb = blk.v;
        const float* const cb = blk.c_row;
        VGGT_UNROLL
        for (int it = 0; it < Tr::kBlockN * Tr::kChunks / Tr::kThreads; ++it)
        {
            const int j = t0 + tid / Tr::kChunks + it * kRowStep;
            bool ok = false;
            const int key = j < kl.count ? key_at(kl, j, ok) : 0;
            copy_row(kb, vb, stage, it, key, j < kl.count);
        }
        const int j = t0 + tid;
        bool ok = false;
        int key = 0;
        if (tid < Tr::kBlockN && j < kl.count)
            key = key_at(kl, j, ok);
        float* cs = reinterpret_cast<float*>(stage + 2 * Tr::kTileBytes);
        if constexpr (kBias)
            ptx::sts(cs + col_slot<Tr::kBlockN>(tid % Tr::kBlockN), ok ? ptx::ldg(cb + key) : 0.F,
                tid < Tr::kBlockN);
        ptx::sts(cs + Tr::kBlockN + col_slot<Tr::kBlockN>(tid % Tr::kBlockN), ok ? 0.F : -INFINITY, tid < Tr::kBlockN);
        // the run the next tile starts in
        const int next = t0 + Tr::kBlockN;
        run_stop = 0;
        if (next < kl.count)
        {
            bool v_ok = false;
            const int key = key_at(kl, next, v_ok);
            run_stop = run_end(kl, next);
            run_base = next;
            const int64_t row = key + tid / Tr::kChunks;
            if constexpr (kOffsetRows)
                kv_row = (kb - k_arg) + row * D + src_col;
            else
            {
                kp = kb + row * D + src_col;
                vp = vb + row * D + src_col;
            }
            if constexpr (kBias)
                cp = cb + key + tid % Tr::kBlockN;
        }
    }
};

template <bool B>
using Masked = std::integral_constant<bool, B>;

// grid: (query tiles of kBlockM rows, B*H); block: kThreads threads. kBias: the biased op
// with a bias (r, c); without one the logits are q.k alone and the kernel reads no c_j.
template <int DMAX, bool kBias>
__global__ void __launch_bounds__(MmaTraits<DMAX>::kThreads, 2) attention_kernel_mma(AttentionParams p, int H,
    int L, int S, int D, int M, const half_t* __restrict__ q, const half_t* __restrict__ k,
    const half_t* __restrict__ v, const float* __restrict__ r, const float* __restrict__ c,
    const int32_t* __restrict__ landmarks, half_t* __restrict__ out)
{
    using Tr = MmaTraits<DMAX>;
    constexpr int BN = Tr::kBlockN, CH = Tr::kChunks, MT = Tr::kMTiles;
    VGGT_DYNAMIC_SHARED_ARENA(smem);   // Tr::kSmemBytes, set by the launch

    const int bh = static_cast<int>(blockIdx.y);
    const int b = bh / H;
    const int tid = static_cast<int>(threadIdx.x);
    const int warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t4 = lane % 4;   // fragment row group, thread in group
    int q_begin = 0, q_end = 0;
    KeyList kl;
    // the dilated frame list is indexed at run time: shared memory, not a local array
    block_problem(p, L, S, M, b, landmarks, q_begin, q_end, kl, reinterpret_cast<int*>(smem + Tr::kFramesOffset),
        Tr::kBlockM, tid == 0);
    const int64_t q_base = static_cast<int64_t>(bh) * L * D;
    TcBlock& blk = *reinterpret_cast<TcBlock*>(smem + Tr::kKeyListOffset);
    if (tid == 0)
    {
        blk.kl = kl;
        blk.k = k + static_cast<int64_t>(bh) * S * D;
        blk.v = v + static_cast<int64_t>(bh) * S * D;
        blk.c_row = kBias ? c + static_cast<int64_t>(b) * S : nullptr;
        blk.out = out + q_base + static_cast<int64_t>(q_begin) * D;
        blk.rows = q_end - q_begin;
    }
    const float scale2 = p.scale * kLog2e;

    // Per-thread parts of the swizzled offsets (see lane_swz): the cp.async slot of this
    // thread (its chunk is fixed, its rows step by kThreads / CH, a multiple of 8), and the
    // ldmatrix row addresses of the Q / V pattern (rows lane % 8 + 8 ((lane / 8) % 2),
    // chunk + lane / 16) and the K pattern (rows lane % 8, chunk + lane / 8).
    constexpr int RB = CH * 16;                      // bytes per tile row
    constexpr int kRowStep = Tr::kThreads / CH;      // rows between a thread's copies
    static_assert(kRowStep % 8 == 0, "copy rows keep their swizzle phase");
    const int cp_chunk = tid % CH;
    const int cp_off = swz(tid / CH, cp_chunk, CH);
    const bool fill_col = cp_chunk * 8 < D;
    const int src_col = fill_col ? cp_chunk * 8 : 0;
    const int av_row = lane % 8 + ((lane / 8) % 2) * 8;
    int avoff[4], koff[2];
    VGGT_UNROLL
    for (int j = 0; j < 4; ++j)
        avoff[j] = lane_swz(av_row, lane / 16, 2 * j, CH);
    VGGT_UNROLL
    for (int j = 0; j < 2; ++j)
        koff[j] = lane_swz(lane % 8, lane / 8, 4 * j, CH);

    // ---- Q: cp.async into shared (zero rows / columns past the problem), then ldmatrix
    VGGT_UNROLL
    for (int it = 0; it < Tr::kBlockM * CH / Tr::kThreads; ++it)
    {
        const int i = q_begin + tid / CH + it * kRowStep;
        const bool fill = i < q_end && fill_col;
        ptx::cp_async_16(smem + cp_off + it * kRowStep * RB,
            fill ? q + q_base + static_cast<int64_t>(i) * D + cp_chunk * 8 : q, fill);
    }
    ptx::cp_async_commit();
    ptx::cp_async_wait<0>();
    __syncthreads();   // Q, and the key list thread 0 wrote
    uint32_t qf[MT][Tr::kQInRegs ? Tr::kKSteps : 1][4];
    VGGT_UNROLL
    for (int mt = 0; mt < MT; ++mt)
        VGGT_UNROLL
        for (int ks = 0; ks < (Tr::kQInRegs ? Tr::kKSteps : 0); ++ks)
            ptx::ldmatrix<4, false>(qf[mt][ks],
                smem + (warp * MT + mt) * 16 * RB + (ks * 2 / 8) * 128 + avoff[(ks * 2 % 8) / 2]);
    // Per row of this lane (m-tile mt, half h: rows g and g + 8): r_i / scale (the stages
    // hold c_j as it is, so the loaders need no 1 / scale register).
    float rb[MT][2];
    const float inv_scale = 1.F / p.scale;
    VGGT_UNROLL
    for (int mt = 0; mt < MT; ++mt)
        VGGT_UNROLL
        for (int h = 0; h < 2; ++h)
        {
            const int i = q_begin + (warp * MT + mt) * 16 + g + 8 * h;
            rb[mt][h] = (kBias && i < q_end) ? r[static_cast<int64_t>(b) * L + i] * inv_scale : 0.F;
        }
    if (Tr::kQInRegs)
        __syncthreads();   // Q's staging area becomes the K / V stages

    TileLoader<DMAX, kBias> ld;
    ld.D = D;
    ld.tid = tid;
    ld.cp_off = cp_off;
    ld.src_col = src_col;
    ld.fill_col = fill_col;
    ld.run_stop = 0;
    ld.run_base = 0;
    ld.kp = k;
    ld.vp = v;
    ld.kv_row = 0;
    ld.k_arg = k;
    ld.v_arg = v;
    ld.cp = c;

    float o[MT][Tr::kDTiles][4];
    // Row sums come out of the tensor cores: P times an n8 tile of ones gives, in every
    // lane, the full row sum of the fp16 P that also multiplies V (numerator and
    // denominator see the same weights). FlashAttention-2's per-thread FADDs would take
    // 64 FADDs (plus 64 conversions to sum the fp16-rounded P) where this takes 8 HMMAs.
    // Each tile's sums start from zero and join the running sum in one FFMA per row.
    float m_run[MT][2], l_run[MT][2];
    const uint32_t ones[2] = {0x3c003c00u, 0x3c003c00u};   // fp16 1.0 pairs
    VGGT_UNROLL
    for (int mt = 0; mt < MT; ++mt)
    {
        VGGT_UNROLL
        for (int dt = 0; dt < Tr::kDTiles; ++dt)
            VGGT_UNROLL
            for (int e = 0; e < 4; ++e)
                o[mt][dt][e] = 0.F;
        m_run[mt][0] = m_run[mt][1] = -INFINITY;
        l_run[mt][0] = l_run[mt][1] = 0.F;
    }

    // One key tile: wait for its stage, S = Q K^T (+ bias, + mask for tiles general()
    // loaded), online softmax, O += P V, and a barrier after which the stage may be refilled.
    auto compute_tile = [&](auto masked, int stage_off) {
        constexpr bool kMasked = decltype(masked)::value;
#ifndef VGGT_MUTATE_NO_ASYNC_WAIT
        ptx::cp_async_wait<1>();   // this thread's copies of `tile` have landed
#endif
#if VGGT_MUTATE_DROP_BARRIER != 1
        __syncthreads();           // ... and every other thread's
#endif
        const unsigned char* ks = smem + Tr::kStagesOffset + stage_off;
        const unsigned char* vs = ks + Tr::kTileBytes;
        const float* cs = reinterpret_cast<const float*>(vs + Tr::kTileBytes);
        const float* ms = cs + BN;

        // S = Q K^T. The accumulator starts at (r_i / scale) c_j + mask_j (0 or -inf; only
        // tiles general() loaded have masked keys), so the MMAs leave s = q.k + r_i c_j /
        // scale: the bias costs one FMUL (FFMA with the mask) per logit, nothing without one.
        float s[MT][Tr::kNTiles][4];
        // kBlockN = 32 (D = 128): one c_j (mask_j) per lane, handed to the lanes that need it by
        // shuffles, which move no shared-memory bytes (the pair loads would move 1 KB per
        // tile, the x4 loads of Q, K and V being what D = 128 cannot shrink)
        constexpr bool kShuffleC = kBias && BN == 32;
        float c_lane = 0.F, m_lane = 0.F;
        if constexpr (kShuffleC)
            c_lane = ptx::lds(cs + lane);
        if constexpr (kMasked && BN == 32)
            m_lane = ptx::lds(ms + lane);
        Float4 c4{0.F, 0.F, 0.F, 0.F}, m4{0.F, 0.F, 0.F, 0.F};
        (void) c_lane;   // each is used by some instantiations only
        (void) m_lane;
        (void) c4;
        (void) m4;
        VGGT_UNROLL
        for (int nt = 0; nt < Tr::kNTiles; ++nt)
        {
            Float2 cj{0.F, 0.F}, mj{0.F, 0.F};
            if constexpr (BN == 64)
            {   // one 16-byte load per pair of n8 tiles (see col_slot)
                if (nt % 2 == 0)
                {
                    if constexpr (kBias)
                        c4 = ptx::lds(reinterpret_cast<const Float4*>(cs + (nt / 2) * 16 + 4 * t4));
                    if constexpr (kMasked)
                        m4 = ptx::lds(reinterpret_cast<const Float4*>(ms + (nt / 2) * 16 + 4 * t4));
                }
                cj = nt % 2 ? Float2{c4.z, c4.w} : Float2{c4.x, c4.y};
                mj = nt % 2 ? Float2{m4.z, m4.w} : Float2{m4.x, m4.y};
            }
            else
            {
                if constexpr (kShuffleC)
                {
                    cj.x = __shfl_sync(0xffffffffu, c_lane, nt * 8 + 2 * t4);
                    cj.y = __shfl_sync(0xffffffffu, c_lane, nt * 8 + 2 * t4 + 1);
                }
                if constexpr (kMasked)
                {
                    mj.x = __shfl_sync(0xffffffffu, m_lane, nt * 8 + 2 * t4);
                    mj.y = __shfl_sync(0xffffffffu, m_lane, nt * 8 + 2 * t4 + 1);
                }
            }
            VGGT_UNROLL
            for (int mt = 0; mt < MT; ++mt)
                VGGT_UNROLL
                for (int e = 0; e < 4; ++e)
                {
                    const float cv = e % 2 ? cj.y : cj.x, mv = e % 2 ? mj.y : mj.x;
                    if constexpr (kBias && kMasked)
                        s[mt][nt][e] = fmaf(rb[mt][e / 2], cv, mv);
                    else if constexpr (kBias)
                        s[mt][nt][e] = rb[mt][e / 2] * cv;
                    else
                        s[mt][nt][e] = mv;
                }
        }
        // Per pair of k-steps: the Q fragments (registers, or one ldmatrix.x4 each from the
        // resident Q tile), then per n8 tile one ldmatrix.x4 of K = B fragments of both
        // k-steps, each feeding both m-tiles.
        VGGT_UNROLL
        for (int kk = 0; kk < Tr::kKSteps; kk += 2)
        {
            uint32_t qa[MT][2][4];
            VGGT_UNROLL
            for (int mt = 0; mt < MT; ++mt)
                VGGT_UNROLL
                for (int h2 = 0; h2 < 2; ++h2)
                {
                    if constexpr (Tr::kQInRegs)
                    {
                        VGGT_UNROLL
                        for (int e = 0; e < 4; ++e)
                            qa[mt][h2][e] = qf[mt][kk + h2][e];
                    }
                    else
                        ptx::ldmatrix<4, false>(qa[mt][h2], smem + (warp * MT + mt) * 16 * RB
                                + ((kk + h2) * 2 / 8) * 128 + avoff[((kk + h2) * 2 % 8) / 2]);
                }
            VGGT_UNROLL
            for (int nt = 0; nt < Tr::kNTiles; ++nt)
            {
                uint32_t bf[4];
                ptx::ldmatrix<4, false>(bf, ks + nt * 8 * RB + (kk * 2 / 8) * 128 + koff[(kk * 2 % 8) / 4]);
                const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
                VGGT_UNROLL
                for (int mt = 0; mt < MT; ++mt)
                {
                    ptx::mma_16816(s[mt][nt], qa[mt][0], b0);
                    ptx::mma_16816(s[mt][nt], qa[mt][1], b1);
                }
            }
        }

        // Row maxima of the raw logits (scale > 0, so the order is that of the logits).
        float tmax[MT][2];
        VGGT_UNROLL
        for (int mt = 0; mt < MT; ++mt)
            VGGT_UNROLL
            for (int h = 0; h < 2; ++h)
            {
                tmax[mt][h] = -INFINITY;
                VGGT_UNROLL
                for (int nt = 0; nt < Tr::kNTiles; ++nt)
                    tmax[mt][h] = fmaxf(tmax[mt][h], fmaxf(s[mt][nt][2 * h], s[mt][nt][2 * h + 1]));
            }
        // Online softmax per row (a quad of lanes shares a row: two xor shuffles).
        float corr[MT][2], m_use[MT][2];
        VGGT_UNROLL
        for (int mt = 0; mt < MT; ++mt)
            VGGT_UNROLL
            for (int h = 0; h < 2; ++h)
            {
                float mx = tmax[mt][h];
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float m_new = fmaxf(m_run[mt][h], mx);
                // exponents in the log2 domain: p = exp2(scale log2e (s - m)); nothing visible
                // yet: subtract 0 (exp2(-inf) = 0 keeps P and O at 0). Unmasked tiles have
                // finite logits in every row (padded query rows too: zero Q, zero r), so
                // there m_new is finite.
                m_use[mt][h] = (kMasked && m_new == -INFINITY) ? 0.F : m_new * scale2;
                corr[mt][h] = ptx::ex2(m_run[mt][h] * scale2 - m_use[mt][h]);
                m_run[mt][h] = m_new;
            }
#ifndef VGGT_MUTATE_NO_O_RESCALE
        VGGT_UNROLL
        for (int mt = 0; mt < MT; ++mt)
            VGGT_UNROLL
            for (int dt = 0; dt < Tr::kDTiles; ++dt)
                VGGT_UNROLL
                for (int e = 0; e < 4; ++e)
                    o[mt][dt][e] *= corr[mt][e / 2];
#endif
        // P = exp2(scale log2e (s - m)), packed to fp16:
        // S tiles 2kk, 2kk+1 form the A fragment of k-step kk of P V.
        uint32_t pf[MT][Tr::kPSteps][4];
        VGGT_UNROLL
        for (int mt = 0; mt < MT; ++mt)
            VGGT_UNROLL
            for (int nt = 0; nt < Tr::kNTiles; ++nt)
            {
                float pe[4];
                VGGT_UNROLL
                for (int e = 0; e < 4; ++e)
                    pe[e] = ptx::ex2(fmaf(s[mt][nt][e], scale2, -m_use[mt][e / 2]));
                pf[mt][nt / 2][(nt % 2) * 2 + 0] = ptx::pack_half2(pe[0], pe[1]);
                pf[mt][nt / 2][(nt % 2) * 2 + 1] = ptx::pack_half2(pe[2], pe[3]);
            }
        // O += P V: one ldmatrix.x4.trans of V = B fragments of two d-tiles for one k-step.
        VGGT_UNROLL
        for (int mt = 0; mt < MT; ++mt)
        {
            float l_tile[4] = {0.F, 0.F, 0.F, 0.F};
            VGGT_UNROLL
            for (int kk = 0; kk < Tr::kPSteps; ++kk)
                ptx::mma_16816(l_tile, pf[mt][kk], ones);
            VGGT_UNROLL
            for (int h = 0; h < 2; ++h)
                l_run[mt][h] = fmaf(l_run[mt][h], corr[mt][h], l_tile[2 * h]);
        }
        VGGT_UNROLL
        for (int dt = 0; dt < Tr::kDTiles; dt += 2)
            VGGT_UNROLL
            for (int kk = 0; kk < Tr::kPSteps; ++kk)
            {
                uint32_t bf[4];
                ptx::ldmatrix<4, true>(bf, vs + kk * 16 * RB + (dt / 8) * 128 + avoff[(dt % 8) / 2]);
                const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
                VGGT_UNROLL
                for (int mt = 0; mt < MT; ++mt)
                {
                    ptx::mma_16816(o[mt][dt], pf[mt][kk], b0);
                    ptx::mma_16816(o[mt][dt + 1], pf[mt][kk], b1);
                }
            }
#if VGGT_MUTATE_DROP_BARRIER != 2
        __syncthreads();   // every warp is done with this stage before it is refilled
#endif
    };

    // Two stages: while tile i computes, tile i + 1 is in flight; after it, tile i + 2 is
    // issued into the stage tile i freed. Every issue commits one group (empty past the
    // end), so wait_group 1 always means "all but the newest tile have landed".
    const int n_tiles = (kl.count + BN - 1) / BN;
    unsigned char* const stages = smem + Tr::kStagesOffset;
    bool cur_contig = false, next_contig = false;   // loaded by contiguous(): no mask
    auto issue = [&](int t) {
        if (t < n_tiles)
        {
            next_contig = t > 0 && (t + 1) * BN <= ld.run_stop;
            if (next_contig)
                ld.contiguous(t * BN, stages + (t & 1) * Tr::kStageBytes);
            else
                ld.general(blk, reinterpret_cast<const int*>(smem + Tr::kFramesOffset), t * BN,
                    stages + (t & 1) * Tr::kStageBytes);
        }
        ptx::cp_async_commit();
    };
    issue(0);
    cur_contig = next_contig;
    issue(1);
    int tile = 0;
    while (tile < n_tiles)
    {
        if (cur_contig)
        {
            // The hot loop: this tile was loaded by contiguous(), and so was the one in
            // flight unless it ends after one tile; tile t < stop can load contiguously.
            // Tile t + 1 goes into the stage tile t - 1 used: the one just computed, so one
            // toggled offset serves both.
            const int run_tiles = ld.run_stop / BN;
            const int stop = next_contig ? (run_tiles < n_tiles ? run_tiles : n_tiles) : tile + 2;
            int stage_off = (tile & 1) * Tr::kStageBytes;
            int t = tile + 2;   // the next tile to load
            for (;;)
            {
                compute_tile(Masked<false>{}, stage_off);
                if (t >= stop)
                    break;
                ld.contiguous(t * BN, stages + stage_off);
                ptx::cp_async_commit();
                stage_off ^= Tr::kStageBytes;
                ++t;
            }
            tile = t - 1;
            cur_contig = next_contig;
        }
        else
        {
            compute_tile(Masked<true>{}, (tile & 1) * Tr::kStageBytes);
            ++tile;
            cur_contig = next_contig;
        }
        issue(tile + 1);
    }
    ptx::cp_async_wait<0>();

    // One write of O (rows past the problem are skipped); where it goes comes from shared
    // memory, so no register holds it through the loop.
    half_t* const out_blk = blk.out;
    const int rows = blk.rows;
    VGGT_UNROLL
    for (int mt = 0; mt < MT; ++mt)
        VGGT_UNROLL
        for (int h = 0; h < 2; ++h)
        {
            const float l = l_run[mt][h];
            const float inv = l > 0.F ? 1.F / l : 0.F;
            const int i = (warp * MT + mt) * 16 + g + 8 * h;
            if (i < rows)
            {
                half_t* orow = out_blk + static_cast<int64_t>(i) * D;
                VGGT_UNROLL
                for (int dt = 0; dt < Tr::kDTiles; ++dt)
                {
                    const int d = dt * 8 + 2 * t4;
                    if (d < D)
                    {
                        orow[d] = from_float<half_t>(o[mt][dt][2 * h] * inv);
                        orow[d + 1] = from_float<half_t>(o[mt][dt][2 * h + 1] * inv);
                    }
                }
            }
        }
}

} // namespace vggt
