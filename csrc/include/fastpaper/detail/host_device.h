// Helpers for math that compiles both as host C++ and as CUDA device code.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#  define FP_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined: these helpers sit inside vectorized per-element loops of the CPU kernels.
#  define FP_HD inline __attribute__((always_inline))
#else
#  define FP_HD inline
#endif

namespace fastpaper::detail {

FP_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

FP_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// a + b and a * b rounded once, never fused with a neighbouring operation into an FMA
// (nvcc contracts by default; the host build uses ISO C++ with -ffp-contract=off).
FP_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

FP_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// Number of leading zero bits of a nonzero 32-bit value.
FP_HD int clz32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __clz(static_cast<int>(x));
#else
  return __builtin_clz(x);
#endif
}

}  // namespace fastpaper::detail
