// Math of the MoE MLP shared by the CPU and CUDA kernels (fastpaper/moe.h): exact GELU and its
// derivative, storage conversions, and the counting-sort bookkeeping of (token, slot) pairs.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastpaper/detail/float_convert.h"
#include "fastpaper/detail/host_device.h"

namespace fastpaper::moe::detail {

// 16-bit storage types, distinct so that Io can tell them apart (layout of uint16_t).
struct half_bits { uint16_t v; };
struct bf16_bits { uint16_t v; };

// Io<S>: how an element stored as S widens to the compute type T and is rounded back.
template <typename S> struct Io;
template <> struct Io<float> {
  using T = float;
  static FP_HD float load(float s) { return s; }
  static FP_HD float store(float v) { return v; }
};
template <> struct Io<double> {
  using T = double;
  static FP_HD double load(double s) { return s; }
  static FP_HD double store(double v) { return v; }
};
template <> struct Io<half_bits> {
  using T = float;
  static FP_HD float load(half_bits s) { return fastpaper::detail::half_to_float(s.v); }
  static FP_HD half_bits store(float v) { return {fastpaper::detail::float_to_half(v)}; }
};
template <> struct Io<bf16_bits> {
  using T = float;
  static FP_HD float load(bf16_bits s) { return fastpaper::detail::bf16_to_float(s.v); }
  static FP_HD bf16_bits store(float v) { return {fastpaper::detail::float_to_bf16(v)}; }
};

FP_HD float erf_(float v) { return erff(v); }
FP_HD double erf_(double v) { return erf(v); }
FP_HD float exp_(float v) { return expf(v); }
FP_HD double exp_(double v) { return exp(v); }

// GELU(z) = z * Phi(z) = 0.5 z (1 + erf(z / sqrt 2))   (torch's default, approximate="none")
template <typename T>
FP_HD T gelu(T z) {
  return T(0.5) * z * (T(1) + erf_(z * T(0.70710678118654752440)));
}

// GELU'(z) = Phi(z) + z phi(z),  phi(z) = exp(-z^2 / 2) / sqrt(2 pi)
template <typename T>
FP_HD T gelu_grad(T z) {
  const T cdf = T(0.5) * (T(1) + erf_(z * T(0.70710678118654752440)));
  const T pdf = exp_(T(-0.5) * z * z) * T(0.39894228040143267794);
  return cdf + z * pdf;
}

// Pair p = t * k + j is token t's slot j. After the counting sort, sorted[offsets[e] + i] is
// the i-th pair routed to expert e (pairs of one expert in increasing p, hence token order).
FP_HD int64_t pair_token(int64_t p, int64_t k) { return p / k; }

}  // namespace fastpaper::moe::detail
