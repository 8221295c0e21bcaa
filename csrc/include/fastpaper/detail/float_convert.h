// Exact conversions between float32 and the 16-bit float formats, by bit manipulation so that the
// host and the device produce identical bits (float -> 16 bit rounds to nearest-even, NaN stays a
// quiet NaN, overflow becomes Inf, as IEEE 754 and CUDA's __float2half_rn / __float2bfloat16_rn).
#pragma once

#include <cstdint>

#include "fastpaper/detail/host_device.h"

namespace fastpaper::detail {

FP_HD float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

FP_HD uint16_t float_to_bf16(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x0040u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// Branch-free (selects only, so loops over it vectorize): normals rebias the exponent; Inf/NaN
// get the float exponent 255; subnormals are renormalized by an exact float subtraction.
FP_HD float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = static_cast<uint32_t>(h & 0x7fffu) << 13;  // exponent+mantissa in float position
  const uint32_t exp = em & 0x0f800000u;
  const uint32_t normal = em + 0x38000000u;                      // rebias 15 -> 127
  const uint32_t inf_nan = em + 0x70000000u;                     // exponent field -> 255
  // subnormal: (2^-14 + m * 2^-24) - 2^-14 computed exactly in float
  const uint32_t sub = float_bits(bits_float(em + 0x38800000u) - bits_float(0x38800000u));
  const uint32_t mag = exp == 0x0f800000u ? inf_nan : (exp == 0 ? sub : normal);
  return bits_float(sign | mag);
}

FP_HD uint16_t float_to_half(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: Inf
  if (a >= 0x38800000u) {                                              // normal half (>= 2^-14)
    const uint32_t r = a + 0xfffu + ((a >> 13) & 1u);  // round the 13 dropped bits to nearest-even
    return static_cast<uint16_t>(sign | ((r - 0x38000000u) >> 13));
  }
  if (a < 0x33000000u) return sign;  // below 2^-25: rounds to zero (2^-25 itself ties to even 0)
  // subnormal half: value = m * 2^-24 with m = round(a * 2^24)
  const uint32_t e = a >> 23;                   // 102..112
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;              // 14..24: drop this many bits of the 24-bit m
  const uint32_t half_bit = 1u << (shift - 1u);
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  if (rem > half_bit || (rem == half_bit && (q & 1u))) ++q;
  return static_cast<uint16_t>(sign | q);
}

}  // namespace fastpaper::detail

#include "fastpaper/status.h"

namespace fastpaper::detail {

// Element i of a dense array of dtype D, widened to float32 (exact).
template <DType D>
FP_HD float load_as_float(const void* p, int64_t i) {
  if constexpr (D == DType::float32) {
    return static_cast<const float*>(p)[i];
  } else if constexpr (D == DType::float16) {
    return half_to_float(static_cast<const uint16_t*>(p)[i]);
  } else {
    return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
  }
}

// Store v into element i of a dense array of dtype D (rounding to nearest-even).
template <DType D>
FP_HD void store_from_float(void* p, int64_t i, float v) {
  if constexpr (D == DType::float32) {
    static_cast<float*>(p)[i] = v;
  } else if constexpr (D == DType::float16) {
    static_cast<uint16_t*>(p)[i] = float_to_half(v);
  } else {
    static_cast<uint16_t*>(p)[i] = float_to_bf16(v);
  }
}

// Store a value known to be exactly representable in D, or NaN (a decoded BFP element: at most 7
// significant bits, exponent within float32's range). bfloat16 then needs no rounding, only the
// top half of the float32 bits; float16 may still overflow or underflow and rounds as usual.
template <DType D>
FP_HD void store_exact(void* p, int64_t i, float v) {
  if constexpr (D == DType::bfloat16) {
    static_cast<uint16_t*>(p)[i] = static_cast<uint16_t>(float_bits(v) >> 16);
  } else {
    store_from_float<D>(p, i, v);
  }
}

}  // namespace fastpaper::detail
