// Math of the MoE MLP shared by the CPU and CUDA kernels (fastpaper/moe.h): exact GELU and its
// derivative, storage conversions, and the counting-sort bookkeeping of (token, slot) pairs.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastpaper/detail/host_device.h"
#include "fastpaper/detail/storage_io.h"

namespace fastpaper::moe::detail {

// Storage types and their compute types: fastpaper/detail/storage_io.h.
using fastpaper::detail::bf16_bits;
using fastpaper::detail::half_bits;
using fastpaper::detail::Io;

// exp(v) in float without library calls, so that CPU loops over it vectorize (CUDA runs the same
// code): v = n ln2 + r, |r| <= ln2 / 2 (n rounded by the 1.5 * 2^23 trick, ln2 split in two so
// n * ln2_hi is exact), exp(r) by its degree-7 Taylor polynomial (truncation < 6e-9 relative),
// times 2^n built in the exponent field. v is clamped to [-87, 88] (normal results only).
FP_HD float exp_poly(float v) {
  v = v < -87.0f ? -87.0f : (v > 88.0f ? 88.0f : v);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (v * 1.44269504088896341f + magic) - magic;
  const float r = (v - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t biased = static_cast<uint32_t>(static_cast<int32_t>(n) + 127);
  return p * fastpaper::detail::bits_float(biased << 23);
}

// erf(x) in float without library calls: Abramowitz & Stegun 7.1.26,
// erf|x| = 1 - (a1 t + ... + a5 t^5) exp(-x^2), t = 1 / (1 + p |x|), absolute error <= 1.5e-7
// (below float32 rounding of the GELU values it feeds, which are 0.5 z (1 + erf)).
FP_HD float erf_poly(float x) {
  const float a = x < 0.0f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  float q = 1.061405429f;
  q = q * t - 1.453152027f;
  q = q * t + 1.421413741f;
  q = q * t - 0.284496736f;
  q = q * t + 0.254829592f;
  const float y = 1.0f - q * t * exp_poly(-a * a);
  return x < 0.0f ? -y : y;
}

FP_HD float erf_(float v) { return erf_poly(v); }
FP_HD double erf_(double v) { return erf(v); }
FP_HD float exp_(float v) { return exp_poly(v); }
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
