// Checks of the host shims themselves (cuda_host_shim.h, mma_ptx.h): the CPU tests of the
// kernels are only as strict as these mappings, so (a) what the PTX ISA defines must come
// out exactly (fragment layouts against plain loops), and (b) what the GPU leaves
// undefined or refuses must make the host run abort.
//
// usage: shim_test MODE, MODE one of
//   shuffle        __shfl_xor_sync and indexed __shfl_sync over two warps: lane i gets lane i^m's / lane (3i+m)%32's value; exit 0
//   mma            mma.sync m16n8k16 from fragments built per the documented layout vs a
//                  scalar matmul (with a non-zero C); exit 0
//   ldmatrix       .x1 / .x2 / .x4, with and without .trans, vs the documented layout; exit 0
//   cp_async       cp.async lands at its wait_group (not at commit, not before); exit 0
//   bank           prints the bank-conflict factor of four access patterns; exit 0
//   read_early     reads a cp.async destination before the wait: must abort
//   uninit         reads shared memory nobody wrote: must abort
//   race           warp 1 reads what warp 0 wrote without __syncthreads: must abort
//   war            warp 1 overwrites what warp 0 read without __syncthreads: must abort
//   big_grid / big_block / big_smem   launches the GPU refuses: must abort
//   dynamic_opt_in 64 KB of dynamic shared memory after the opt-in: usable to its end; exit 0
//   big_dynamic    64 KB of dynamic shared memory without the opt-in: must abort
//   partial_warp   __shfl_xor_sync in a block of 48 threads (last warp partial): must abort
#include "../common/cuda_host_shim.h"
#include "../common/half_type.h"
#include "../common/mma_ptx.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

using vggt::half_t;
namespace ptx = vggt::ptx;

static int g_errors = 0;
static void expect(bool ok, const char* what)
{
    if (!ok && g_errors++ < 10)
        std::fprintf(stderr, "mismatch: %s\n", what);
}

__global__ void shuffle_kernel(int lane_mask, int* out)
{
    const int tid = static_cast<int>(threadIdx.x);
    const int got = __shfl_xor_sync(0xffffffffu, tid * 10, lane_mask);
    // indexed: every lane reads lane (lane * 3 + lane_mask) % 32 of its warp
    const int idx = __shfl_sync(0xffffffffu, tid * 10, (tid % 32) * 3 + lane_mask);
    __syncwarp();
    out[tid] = got;
    out[64 + tid] = idx;
}

// ---- mma: A 16x16, B 16x8 (k x n), C 16x8 ----------------------------------------------
static float A[16][16], Bm[16][8], C[16][8], Dout[16][8];

static uint32_t pack(float lo, float hi) { return ptx::pack_half2(lo, hi); }

__global__ void mma_kernel()
{
    const unsigned l = vggt_host::tl_lane, g = l / 4, t = l % 4;
    const uint32_t a[4] = {pack(A[g][2 * t], A[g][2 * t + 1]), pack(A[g + 8][2 * t], A[g + 8][2 * t + 1]),
        pack(A[g][2 * t + 8], A[g][2 * t + 9]), pack(A[g + 8][2 * t + 8], A[g + 8][2 * t + 9])};
    const uint32_t b[2] = {pack(Bm[2 * t][g], Bm[2 * t + 1][g]), pack(Bm[2 * t + 8][g], Bm[2 * t + 9][g])};
    float d[4] = {C[g][2 * t], C[g][2 * t + 1], C[g + 8][2 * t], C[g + 8][2 * t + 1]};
    ptx::mma_16816(d, a, b);
    Dout[g][2 * t] = d[0];
    Dout[g][2 * t + 1] = d[1];
    Dout[g + 8][2 * t] = d[2];
    Dout[g + 8][2 * t + 1] = d[3];
}

static int run_mma()
{
    for (int i = 0; i < 16; ++i)
        for (int k = 0; k < 16; ++k)
            A[i][k] = static_cast<float>((i * 7 + k * 3) % 11) - 5.F;
    for (int k = 0; k < 16; ++k)
        for (int n = 0; n < 8; ++n)
            Bm[k][n] = 0.25F * static_cast<float>((k * 5 + n) % 9) - 1.F;
    for (int i = 0; i < 16; ++i)
        for (int n = 0; n < 8; ++n)
            C[i][n] = 0.5F * static_cast<float>(i - n);
    vggt_host::launch(dim3(1), dim3(32), mma_kernel);
    for (int i = 0; i < 16; ++i)
        for (int n = 0; n < 8; ++n)
        {
            float want = C[i][n];
            for (int k = 0; k < 16; ++k)
                want += A[i][k] * Bm[k][n];
            expect(Dout[i][n] == want, "mma element");
        }
    return g_errors == 0 ? 0 : 1;
}

// ---- ldmatrix: 4 matrices of 8x8, element (m, r, c) = m * 64 + r * 8 + c -----------------
static uint32_t lm_out[6][32][4];

__global__ void ldmatrix_kernel()
{
    VGGT_SHARED_ARENA(smem, 4 * 64 * 2);
    auto* h = reinterpret_cast<uint32_t*>(smem);
    const unsigned l = vggt_host::tl_lane;
    for (unsigned w = l; w < 128; w += 32)   // word w holds elements 2w, 2w + 1
        ptx::sts(h + w, pack(static_cast<float>(2 * w), static_cast<float>(2 * w + 1)));
    __syncthreads();
    // lane l addresses row l % 8 of matrix l / 8; rows are 16 bytes
    const unsigned char* row = smem + (l / 8) * 128 + (l % 8) * 16;
    ptx::ldmatrix<1, false>(lm_out[0][l], row);
    ptx::ldmatrix<2, false>(lm_out[1][l], row);
    ptx::ldmatrix<4, false>(lm_out[2][l], row);
    ptx::ldmatrix<1, true>(lm_out[3][l], row);
    ptx::ldmatrix<2, true>(lm_out[4][l], row);
    ptx::ldmatrix<4, true>(lm_out[5][l], row);
}

static int run_ldmatrix()
{
    vggt_host::launch(dim3(1), dim3(32), ldmatrix_kernel);
    const int counts[6] = {1, 2, 4, 1, 2, 4};
    for (int v = 0; v < 6; ++v)
        for (unsigned l = 0; l < 32; ++l)
            for (int m = 0; m < counts[v]; ++m)
            {
                const bool trans = v >= 3;
                const unsigned r0 = trans ? 2 * (l % 4) : l / 4, c0 = trans ? l / 4 : 2 * (l % 4);
                const unsigned r1 = trans ? r0 + 1 : r0, c1 = trans ? c0 : c0 + 1;
                const float want_lo = static_cast<float>(m * 64 + r0 * 8 + c0);
                const float want_hi = static_cast<float>(m * 64 + r1 * 8 + c1);
                expect(ptx::half_lo(lm_out[v][l][m]) == want_lo && ptx::half_hi(lm_out[v][l][m]) == want_hi,
                    "ldmatrix element");
            }
    return g_errors == 0 ? 0 : 1;
}

// ---- cp.async ------------------------------------------------------------------------
alignas(16) static half_t g_src[32 * 8 * 2];
static float cp_seen[3][32];

__global__ void cp_async_kernel(int mode)
{
    VGGT_SHARED_ARENA(smem, 32 * 16 * 2);
    const unsigned l = vggt_host::tl_lane;
    ptx::cp_async_16(smem + l * 16, g_src + l * 8, true);
    ptx::cp_async_commit();
    ptx::cp_async_16(smem + 512 + l * 16, g_src + 256 + l * 8, true);
    ptx::cp_async_commit();
    if (mode == 1)   // read before any wait
        (void) ptx::lds(reinterpret_cast<const float*>(smem + l * 16));
    ptx::cp_async_wait<1>();   // the first group has landed, the second not
    cp_seen[0][l] = ptx::half_lo(ptx::lds(reinterpret_cast<const uint32_t*>(smem + l * 16)));
    ptx::cp_async_wait<0>();
    cp_seen[1][l] = ptx::half_lo(ptx::lds(reinterpret_cast<const uint32_t*>(smem + 512 + l * 16)));
    // zero fill (src-size 0) lands zeros
    ptx::cp_async_16(smem + l * 16, g_src, false);
    ptx::cp_async_commit();
    ptx::cp_async_wait<0>();
    cp_seen[2][l] = ptx::half_lo(ptx::lds(reinterpret_cast<const uint32_t*>(smem + l * 16)));
}

static int run_cp_async(int mode)
{
    for (int i = 0; i < 512; ++i)
        g_src[i] = vggt::from_float<half_t>(static_cast<float>(i));
    vggt_host::launch(dim3(1), dim3(32), cp_async_kernel, mode);
    for (unsigned l = 0; l < 32; ++l)
    {
        expect(cp_seen[0][l] == static_cast<float>(l * 8), "first group after wait_group 1");
        expect(cp_seen[1][l] == static_cast<float>(256 + l * 8), "second group after wait_group 0");
        expect(cp_seen[2][l] == 0.F, "zero fill");
    }
    return g_errors == 0 ? 0 : 1;
}

// ---- bank conflicts: factor of one warp access pattern -------------------------------
__global__ void bank_kernel(int pattern)
{
    VGGT_SHARED_ARENA(smem, 16 * 1024);
    const unsigned l = vggt_host::tl_lane;
    auto* f = reinterpret_cast<float*>(smem);
    if (pattern == 0)        // consecutive words: 1 wavefront
        ptx::sts(f + l, 1.F);
    else if (pattern == 1)   // stride of 32 words: all lanes in bank 0, 32 wavefronts
        ptx::sts(f + 32 * l, 1.F);
    else if (pattern == 2)   // all lanes the same word: broadcast, 1 wavefront
    {
        ptx::sts(f, 1.F, l == 0);
        ptx::lds(f);
    }
    else                     // ldmatrix.x4 over 8 rows of 128 bytes, same column: 8-way
    {
        for (unsigned i = l; i < 1024; i += 32)
            ptx::sts(f + i, 0.F);
        ptx::ldmatrix<4, false>(reinterpret_cast<uint32_t*>(smem + 8192), smem + (l % 8) * 128 + (l / 8) * 1024);
    }
}

static int run_bank()
{
    const char* names[4] = {"consecutive", "stride32", "broadcast", "ldmatrix_rows128"};
    for (int pattern = 0; pattern < 4; ++pattern)
    {
        vggt_host::g_bank.wavefronts = 0;
        vggt_host::g_bank.ideal = 0;
        if (pattern == 3)
        {   // measure the ldmatrix alone
            vggt_host::launch(dim3(1), dim3(32), bank_kernel, pattern);
            const uint64_t w = vggt_host::g_bank.wavefronts.load(), id = vggt_host::g_bank.ideal.load();
            std::printf("%s %.4f\n", names[pattern], static_cast<double>(w - 32) / static_cast<double>(id - 32));
            continue;
        }
        vggt_host::launch(dim3(1), dim3(32), bank_kernel, pattern);
        std::printf("%s %.4f\n", names[pattern], vggt_host::bank_conflict_factor());
    }
    return 0;
}

// ---- what must abort -----------------------------------------------------------------
__global__ void sharing_kernel(int mode)
{
    VGGT_SHARED_ARENA(smem, 1024);
    auto* f = reinterpret_cast<float*>(smem);
    const unsigned warp = threadIdx.x / 32, l = vggt_host::tl_lane;
    if (mode == 0)   // uninitialised read
        (void) ptx::lds(f + l);
    if (mode == 1)   // RAW across warps without a barrier
    {
        if (warp == 0)
            ptx::sts(f + l, 1.F);
        __syncwarp();
        if (warp == 1)
        {
            while (vggt_host::g_shared->words[0].write_epoch == 0) std::this_thread::yield();
            (void) ptx::lds(f + l);
        }
    }
    if (mode == 2)   // WAR across warps without a barrier
    {
        if (warp == 0)
            ptx::sts(f + l, 1.F);
        __syncthreads();
        if (warp == 0)
            (void) ptx::lds(f + l);
        __syncwarp();
        if (warp == 1)
        {
            while (vggt_host::g_shared->words[0].read_epoch < 2) std::this_thread::yield();
            ptx::sts(f + l, 2.F);
        }
    }
}

__global__ void empty_kernel() {}
__global__ void dynamic_kernel()
{
    VGGT_DYNAMIC_SHARED_ARENA(smem);
    ptx::sts(reinterpret_cast<float*>(smem + 64 * 1024 - 128) + vggt_host::tl_lane, 1.F);
}
__global__ void big_smem_kernel()
{
    VGGT_SHARED_ARENA(smem, 48 * 1024 + 16);
    (void) smem;
}

int main(int argc, char** argv)
{
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "shuffle")
    {
        for (int m : {1, 2, 16, 31})
        {
            int out[128] = {};
            vggt_host::launch(dim3(2), dim3(64), shuffle_kernel, m, out);
            for (int t = 0; t < 64; ++t)
            {
                expect(out[t] == ((t / 32) * 32 + ((t % 32) ^ m)) * 10, "shuffle");
                expect(out[64 + t] == ((t / 32) * 32 + ((t % 32) * 3 + m) % 32) * 10, "indexed shuffle");
            }
        }
        return g_errors == 0 ? 0 : 1;
    }
    if (mode == "mma")
        return run_mma();
    if (mode == "ldmatrix")
        return run_ldmatrix();
    if (mode == "cp_async")
        return run_cp_async(0);
    if (mode == "read_early")
        return run_cp_async(1);
    if (mode == "bank")
        return run_bank();
    if (mode == "uninit" || mode == "race" || mode == "war")
    {
        vggt_host::launch(dim3(1), dim3(64), sharing_kernel, mode == "uninit" ? 0 : mode == "race" ? 1 : 2);
        return 0;
    }
    if (mode == "big_grid")
        vggt_host::launch(dim3(1, 65536), dim3(32), empty_kernel);
    else if (mode == "big_block")
        vggt_host::launch(dim3(1), dim3(1025), empty_kernel);
    else if (mode == "dynamic_opt_in")
    {
        vggt_host::set_max_dynamic_shared(reinterpret_cast<const void*>(dynamic_kernel), 64 * 1024);
        vggt_host::launch_dynamic(dim3(1), dim3(32), 64 * 1024, dynamic_kernel);
    }
    else if (mode == "big_dynamic")
        vggt_host::launch_dynamic(dim3(1), dim3(32), 64 * 1024, dynamic_kernel);
    else if (mode == "big_smem")
        vggt_host::launch(dim3(1), dim3(32), big_smem_kernel);
    else if (mode == "partial_warp")
    {
        int out[48] = {};
        vggt_host::launch(dim3(1), dim3(48), shuffle_kernel, 1, out);
    }
    else
    {
        std::fprintf(stderr, "unknown mode '%s'\n", mode.c_str());
        return 2;
    }
    return 0;
}
