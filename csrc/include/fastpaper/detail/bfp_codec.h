// BFP block codec math, shared by the CPU kernels (csrc/bfp) and the CUDA kernels (cuda/bfp).
// See fastpaper/bfp.h for the format. Everything here is branch-light scalar code on float32:
// scaling by powers of two is exact, so the only roundings are the element rounding and the final
// conversion to the output dtype, and host and device agree bit for bit.
#pragma once

#include <cstdint>

#include "fastpaper/detail/host_device.h"

namespace fastpaper::bfp::detail {

using fastpaper::detail::add_rn;
using fastpaper::detail::bits_float;
using fastpaper::detail::clz32;
using fastpaper::detail::float_bits;
using fastpaper::detail::mul_rn;

constexpr int kMinExponent = -127;  // exponent byte 0
constexpr int kMaxExponent = 127;   // exponent byte 254
constexpr uint8_t kNonFiniteByte = 255;

// Runtime description of a format, derived once per call.
struct Codec {
  int block;        // B
  int mbits;        // M
  int field_bits;   // W: 4 or 8
  int qmax;         // 2^(M-1) - 1
  bool twos;        // two's complement elements (MXINT8)
  bool floor_scale; // Scale::floor
  bool stochastic;  // Rounding::stochastic
  uint64_t seed;
};

FP_HD Codec make_codec(int block, int mbits, bool twos, bool floor_scale, bool stochastic,
                       uint64_t seed) {
  Codec c;
  c.block = block;
  c.mbits = mbits;
  c.field_bits = mbits <= 4 ? 4 : 8;
  c.qmax = (1 << (mbits - 1)) - 1;
  c.twos = twos;
  c.floor_scale = floor_scale;
  c.stochastic = stochastic;
  c.seed = seed;
  return c;
}

// 2^k as a float, k in [-126, 127].
FP_HD float pow2f(int k) { return bits_float(static_cast<uint32_t>(k + 127) << 23); }

// x * 2^k for k in [-252, 254], exact unless the result leaves the float range (split in two
// factors so each is a normal float).
FP_HD float mul_pow2(float x, int k) {
  const int k1 = k / 2;
  return mul_rn(mul_rn(x, pow2f(k1)), pow2f(k - k1));
}

// floor(log2(a)) of a finite a > 0, subnormals included.
FP_HD int floor_log2(float a) {
  const uint32_t u = float_bits(a);
  const int e = static_cast<int>(u >> 23);
  if (e != 0) return e - 127;
  return -149 + (31 - clz32(u & 0x7fffffu));
}

FP_HD bool is_nonfinite(float x) { return (float_bits(x) & 0x7f800000u) == 0x7f800000u; }

// Round v >= 0, v < 2^22, to the nearest integer, ties to even: v + 2^23 has exponent 23, so the
// addition itself rounds v to an integer (in the default rounding mode) and that integer is the
// sum's mantissa field. One add and one integer subtract; vectorizes, unlike rintf.
FP_HD uint32_t round_half_even_to_uint(float v) {
  return float_bits(add_rn(v, 8388608.0f)) - 0x4b000000u;
}

// Block exponent E for a block whose largest magnitude is `amax` (finite, >= 0).
FP_HD int choose_exponent(float amax, const Codec& c) {
  if (!(amax > 0.0f)) return kMinExponent;
  int e = floor_log2(amax);
  if (!c.floor_scale && e < kMaxExponent) {
    // amax * 2^(M-2-E) lies in [2^(M-2), 2^(M-1)); it clips when it would round past qmax.
    const float s = mul_pow2(amax, (c.mbits - 2) - e);
    const float q = static_cast<float>(c.qmax);
    const bool clips = c.stochastic ? (s > q) : (s >= q + 0.5f);
    if (clips) ++e;
  }
  return e < kMinExponent ? kMinExponent : (e > kMaxExponent ? kMaxExponent : e);
}

FP_HD uint8_t exponent_byte(int e) { return static_cast<uint8_t>(e + 127); }

// Counter-based 24-bit uniform integer for stochastic rounding (splitmix64 finaliser).
FP_HD uint32_t uniform24(uint64_t seed, uint64_t index) {
  uint64_t z = index * 0x9E3779B97F4A7C15ull + seed * 0xD1B54A32D192ED03ull + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<uint32_t>(z >> 40);
}

// 2^k split into two normal floats (k in [-252, 254]): multiplying by both is exact unless the
// result leaves the float range. Computed once per block.
struct BlockScale {
  float lo, hi;
};

FP_HD BlockScale pow2_split(int k) {
  const int k1 = k / 2;
  return BlockScale{pow2f(k1), pow2f(k - k1)};
}

FP_HD float apply(float x, BlockScale s) { return mul_rn(mul_rn(x, s.lo), s.hi); }

// Scale of the elements of a block with exponent E when encoding: v = |x| * 2^((M-2) - E).
FP_HD BlockScale encode_scale(int e, const Codec& c) { return pow2_split((c.mbits - 2) - e); }
// Scale when decoding a block with exponent byte `ebyte` (not 255): value = q * 2^(E - (M-2)).
FP_HD BlockScale decode_scale(uint8_t ebyte, const Codec& c) {
  return pow2_split(static_cast<int>(ebyte) - 127 - (c.mbits - 2));
}

// Encode one finite element x of a block as a W-bit field; `s` is the block's encode_scale and
// `index` the element's logical index (row * cols + col) for stochastic rounding. The template
// flags let CPU loops compile without per-element branches; the CUDA kernels use the runtime
// overload below (their branches are warp-uniform).
template <bool Stochastic, bool Twos>
FP_HD uint32_t encode_element(float x, BlockScale s, int qmax, int field_bits, uint64_t seed,
                              uint64_t index) {
  const uint32_t bits = float_bits(x);
  const uint32_t sign = bits >> 31;
  float v = apply(bits_float(bits & 0x7fffffffu), s);
  const float cap = static_cast<float>(2 * qmax + 2);  // keeps v in the rounding trick's range
  v = v < cap ? v : cap;
  int32_t q;
  if constexpr (Stochastic) {
    const int32_t fl = static_cast<int32_t>(v);  // v >= 0: truncation is floor
    const float frac_scaled = mul_rn(add_rn(v, -static_cast<float>(fl)), 16777216.0f);  // exact
    const float u = static_cast<float>(uniform24(seed, index));
    q = fl + (u < frac_scaled ? 1 : 0);
  } else {
    q = static_cast<int32_t>(round_half_even_to_uint(v));
  }
  q = q < qmax ? q : qmax;
  if constexpr (Twos) {
    return static_cast<uint32_t>(sign ? -q : q) & 0xffu;
  } else {
    return (sign << (field_bits - 1)) | static_cast<uint32_t>(q);
  }
}

FP_HD uint32_t encode_element(float x, BlockScale s, const Codec& c, uint64_t index) {
  if (c.stochastic) {
    return c.twos ? encode_element<true, true>(x, s, c.qmax, c.field_bits, c.seed, index)
                  : encode_element<true, false>(x, s, c.qmax, c.field_bits, c.seed, index);
  }
  return c.twos ? encode_element<false, true>(x, s, c.qmax, c.field_bits, c.seed, index)
                : encode_element<false, false>(x, s, c.qmax, c.field_bits, c.seed, index);
}

// Decode one W-bit field of a block that is not non-finite; `s` is the block's decode_scale.
template <bool Twos>
FP_HD float decode_element(uint32_t field, BlockScale s, int field_bits) {
  if constexpr (Twos) {
    return apply(static_cast<float>(static_cast<int8_t>(static_cast<uint8_t>(field))), s);
  } else {
    const uint32_t top = static_cast<uint32_t>(field_bits - 1);
    const float mag = apply(static_cast<float>(field & ((1u << top) - 1u)), s);
    return bits_float(float_bits(mag) | (((field >> top) & 1u) << 31));
  }
}

FP_HD float nan_value() { return bits_float(0x7fc00000u); }

FP_HD float decode_element(uint32_t field, uint8_t ebyte, const Codec& c) {
  if (ebyte == kNonFiniteByte) return nan_value();
  const BlockScale s = decode_scale(ebyte, c);
  return c.twos ? decode_element<true>(field, s, c.field_bits)
                : decode_element<false>(field, s, c.field_bits);
}

}  // namespace fastpaper::bfp::detail
