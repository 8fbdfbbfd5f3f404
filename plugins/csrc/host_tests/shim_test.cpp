// Checks of the host shims themselves (cuda_host_shim.h, wmma_host_shim.h): the CPU
// tests of the kernels are only as strict as these mappings, so the rules the GPU
// enforces by undefined behaviour must make the host run abort.
//
// usage: shim_test MODE, MODE one of
//   shuffle      __shfl_xor_sync over two warps: lane i gets lane i^m's value; exit 0
//   wmma         a 16x32 * 32x16 product (row- and col-major B) against a plain loop; exit 0
//   misaligned   wmma load from a pointer that is not 256-bit aligned: must abort
//   bad_ldm      wmma load with ldm not a multiple of 16 bytes: must abort
//   partial_warp __shfl_xor_sync in a block of 48 threads (last warp partial): must abort
#include "../common/cuda_host_shim.h"
#include "../common/half_type.h"
#include "../common/wmma_host_shim.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

namespace wmma = nvcuda::wmma;
using vggt::half_t;

static int g_errors = 0;

__global__ void shuffle_kernel(int lane_mask, int* out)
{
    const int tid = static_cast<int>(threadIdx.x);
    const int got = __shfl_xor_sync(0xffffffffu, tid * 10, lane_mask);
    __syncwarp();
    out[tid] = got;
}

alignas(32) static half_t a_mem[16 * 32];
alignas(32) static half_t b_mem[32 * 16];   // row-major K x N
alignas(32) static half_t bt_mem[16 * 32];  // the same B, column-major (N rows of K)
alignas(32) static float d_mem[16 * 16];
alignas(32) static float d2_mem[16 * 16];

__global__ void wmma_kernel(int mode)
{
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc, acc2;
    wmma::fill_fragment(acc, 0.F);
    wmma::fill_fragment(acc2, 0.F);
    for (int kk = 0; kk < 32; kk += 16)
    {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, half_t, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, half_t, wmma::row_major> b;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, half_t, wmma::col_major> bt;
        if (mode == 1)
            wmma::load_matrix_sync(a, a_mem + 8, 32);  // 16 bytes off: not 256-bit aligned
        else if (mode == 2)
            wmma::load_matrix_sync(a, a_mem, 20);      // 40-byte rows
        wmma::load_matrix_sync(a, a_mem + kk, 32);
        wmma::load_matrix_sync(b, b_mem + kk * 16, 16);
        wmma::load_matrix_sync(bt, bt_mem + kk, 32);
        wmma::mma_sync(acc, a, b, acc);
        wmma::mma_sync(acc2, a, bt, acc2);
    }
    wmma::store_matrix_sync(d_mem, acc, 16, wmma::mem_row_major);
    wmma::store_matrix_sync(d2_mem, acc2, 16, wmma::mem_col_major);
    __syncwarp();
}

static int run_wmma(int mode)
{
    for (int i = 0; i < 16; ++i)
        for (int k = 0; k < 32; ++k)
            a_mem[i * 32 + k] = vggt::from_float<half_t>(static_cast<float>((i * 7 + k * 3) % 11) - 5.F);
    for (int k = 0; k < 32; ++k)
        for (int n = 0; n < 16; ++n)
        {
            const half_t x = vggt::from_float<half_t>(0.25F * static_cast<float>((k * 5 + n) % 9) - 1.F);
            b_mem[k * 16 + n] = x;
            bt_mem[n * 32 + k] = x;
        }
    vggt_host::launch(dim3(1), dim3(32), wmma_kernel, mode);
    for (int i = 0; i < 16; ++i)
        for (int n = 0; n < 16; ++n)
        {
            float want = 0.F;
            for (int k = 0; k < 32; ++k)
                want += vggt::to_float(a_mem[i * 32 + k]) * vggt::to_float(b_mem[k * 16 + n]);
            if (std::fabs(d_mem[i * 16 + n] - want) > 1e-5F || std::fabs(d2_mem[n * 16 + i] - want) > 1e-5F)
                ++g_errors;
        }
    return g_errors == 0 ? 0 : 1;
}

int main(int argc, char** argv)
{
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "shuffle")
    {
        for (int m : {1, 2, 16, 31})
        {
            int out[64] = {};
            vggt_host::launch(dim3(2), dim3(64), shuffle_kernel, m, out);
            for (int t = 0; t < 64; ++t)
                if (out[t] != ((t / 32) * 32 + ((t % 32) ^ m)) * 10)
                    ++g_errors;
        }
        return g_errors == 0 ? 0 : 1;
    }
    if (mode == "wmma")
        return run_wmma(0);
    if (mode == "misaligned")
        return run_wmma(1);
    if (mode == "bad_ldm")
        return run_wmma(2);
    if (mode == "partial_warp")
    {
        int out[48] = {};
        vggt_host::launch(dim3(1), dim3(48), shuffle_kernel, 1, out);
        return 0;
    }
    std::fprintf(stderr, "unknown mode '%s'\n", mode.c_str());
    return 2;
}
