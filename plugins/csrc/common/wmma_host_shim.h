// CUDA's warp matrix (tensor-core) API, nvcuda::wmma, for the host-executed kernels.
//
// Only the shape the kernels use is provided: m16n16k16, fp16 operands, fp32
// accumulator, which is also the one every tensor-core arch (sm_70+) supports. Semantics
// follow the CUDA programming guide:
//   - fragments are warp-wide; here every lane keeps a full copy of the tile (the GPU
//     spreads it over the lanes in an unspecified layout, which is why the kernels never
//     touch fragment elements directly and neither does this shim);
//   - load/store/mma are collective; the operand pointer must be 256-bit aligned and
//     ldm a multiple of 16 bytes, otherwise the behaviour on the GPU is undefined, so
//     here it aborts: a kernel that passes the CPU tests respects the GPU's rules;
//   - products of fp16 values are exact in fp32 and are accumulated in fp32.
// store_matrix_sync writes each element from exactly one lane, so concurrent lanes never
// race; other lanes see the result after __syncwarp(), as on the GPU.
#pragma once
#ifndef __CUDACC__

#include "cuda_host_shim.h"
#include "half_type.h"

#include <cstdint>
#include <type_traits>

namespace nvcuda
{
namespace wmma
{
struct matrix_a
{
};
struct matrix_b
{
};
struct accumulator
{
};
struct row_major
{
};
struct col_major
{
};
enum layout_t
{
    mem_row_major,
    mem_col_major
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment
{
    static_assert(M == 16 && N == 16 && K == 16, "the host shim provides m16n16k16 only");
    static_assert(std::is_same_v<Use, accumulator> ? std::is_same_v<T, float> && std::is_same_v<Layout, void>
                                                   : std::is_same_v<T, vggt::half_t>
                          && (std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>),
        "fp16 row/col-major operands and an fp32 accumulator without layout");
    // [row][col] of the logical tile: A is M x K, B is K x N, the accumulator M x N.
    float x[16][16];
};

namespace detail
{
template <typename T>
inline void check_operand(const T* ptr, unsigned ldm)
{
    if (reinterpret_cast<std::uintptr_t>(ptr) % 32 != 0)
        vggt_host::fail("wmma: fragment pointer is not 256-bit aligned");
    if ((ldm * sizeof(T)) % 16 != 0 || ldm < 16)
        vggt_host::fail("wmma: ldm must be >= 16 elements and a multiple of 16 bytes");
}
inline unsigned lane()
{
    return vggt_host::tl_lane;
}
} // namespace detail

template <typename Use, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, vggt::half_t, Layout>& f, const vggt::half_t* p, unsigned ldm)
{
    detail::check_operand(p, ldm);
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c)
            f.x[r][c] = vggt::to_float(std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[c * ldm + r]);
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t layout)
{
    detail::check_operand(p, ldm);
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c)
            f.x[r][c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float value)
{
    for (auto& row : f.x)
        for (float& e : row)
            e = value;
}

template <typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
    const fragment<matrix_a, 16, 16, 16, vggt::half_t, LA>& a, const fragment<matrix_b, 16, 16, 16, vggt::half_t, LB>& b,
    const fragment<accumulator, 16, 16, 16, float>& c)
{
    float out[16][16];
    for (int r = 0; r < 16; ++r)
        for (int n = 0; n < 16; ++n)
        {
            float acc = c.x[r][n];
            for (int k = 0; k < 16; ++k)
                acc += a.x[r][k] * b.x[k][n];
            out[r][n] = acc;
        }
    for (int r = 0; r < 16; ++r)
        for (int n = 0; n < 16; ++n)
            d.x[r][n] = out[r][n];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout)
{
    detail::check_operand(p, ldm);
    for (unsigned e = detail::lane(); e < 256; e += vggt_host::kWarpSize)
    {
        const unsigned r = e / 16, c = e % 16;
        (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r][c];
    }
}
} // namespace wmma
} // namespace nvcuda

#endif // __CUDACC__
