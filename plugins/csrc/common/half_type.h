// One element type name for fp16 on both sides: CUDA's __half on the device, and on the
// host a bit-exact IEEE binary16 (round to nearest even) so the host-executed kernel
// sees exactly the values a GPU would load.
#pragma once
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#include <cuda_fp16.h>
namespace vggt
{
using half_t = __half;
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
} // namespace vggt
#else
namespace vggt
{
struct half_t
{
    uint16_t bits;
};

inline float half_bits_to_float(uint16_t h)
{
    const uint32_t sign = (h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t f;
    if (exp == 0)
    {
        if (mant == 0)
            f = sign;
        else
        {   // subnormal: normalise
            exp = 127 - 15 + 1;
            while ((mant & 0x400u) == 0)
            {
                mant <<= 1;
                --exp;
            }
            f = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
        }
    }
    else if (exp == 31)
        f = sign | 0x7f800000u | (mant << 13);
    else
        f = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    float out;
    std::memcpy(&out, &f, 4);
    return out;
}

inline uint16_t float_to_half_bits(float x)
{
    uint32_t f;
    std::memcpy(&f, &x, 4);
    const uint16_t sign = static_cast<uint16_t>((f >> 16) & 0x8000u);
    const int32_t exp = static_cast<int32_t>((f >> 23) & 0xffu) - 127 + 15;
    uint32_t mant = f & 0x7fffffu;
    if (((f >> 23) & 0xffu) == 0xffu)
        return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u));
    if (exp >= 31)
        return static_cast<uint16_t>(sign | 0x7c00u);
    if (exp <= 0)
    {
        if (exp < -10)
            return sign;
        mant |= 0x800000u;
        const uint32_t shift = static_cast<uint32_t>(14 - exp);
        uint32_t half_mant = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1u);
        const uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (half_mant & 1u)))
            ++half_mant;
        return static_cast<uint16_t>(sign | half_mant);
    }
    uint32_t h = (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        ++h;  // may carry into the exponent, which is the correct rounding
    return static_cast<uint16_t>(sign | h);
}

inline float to_float(float x) { return x; }
inline float to_float(half_t x) { return half_bits_to_float(x.bits); }
template <typename T> inline T from_float(float x);
template <> inline float from_float<float>(float x) { return x; }
template <> inline half_t from_float<half_t>(float x) { return half_t{float_to_half_bits(x)}; }
} // namespace vggt
#endif
