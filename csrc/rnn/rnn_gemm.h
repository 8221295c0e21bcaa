// Internal: the small-M GEMM of the CPU recurrence, C[M x N] (+)= A[M x K] B[K x N], with B packed
// once per call into panels of kNR columns ([panel][K][kNR], zero-padded), the layout the
// micro-kernel streams. Why not OpenBLAS here: it repacks B on every call, and per time step B is
// the whole recurrent matrix (up to MBs) while M is only the batch (the packing then dominates).
// The micro-kernel keeps an MR x kNR block of C in registers (MR = 6: 12 AVX2 registers) and runs
// K rank-1 updates. Two builds: float with AVX2+FMA intrinsics (chosen at run time when the CPU has
// them) and a portable one (double, other CPUs).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace fastpaper::rnn::cpu {

inline constexpr int kNR = 16;

template <typename T>
struct Packed {
  std::vector<T> data;  // [panels][K][kNR]
  int64_t K = 0, N = 0, panels = 0;
  // B(k, n) given by a callable; columns >= N are zero.
  template <typename F>
  void pack(int64_t k_, int64_t n_, F&& at) {
    K = k_;
    N = n_;
    panels = (N + kNR - 1) / kNR;
    data.assign(static_cast<size_t>(panels * K * kNR), T(0));
    for (int64_t p = 0; p < panels; ++p)
      for (int64_t k = 0; k < K; ++k)
        for (int j = 0; j < kNR && p * kNR + j < N; ++j) data[(p * K + k) * kNR + j] = at(k, p * kNR + j);
  }
};

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FP_RNN_HAVE_AVX2 1
#define FP_RNN_AVX2 __attribute__((target("avx2,fma")))
#else
#define FP_RNN_HAVE_AVX2 0
#endif

// One MR x kNR block: C[i][0 .. ncols) (+)= sum_k A[i][k] Bp[k][.].
#define FP_RNN_MICRO(NAME, ATTR, MADD)                                                          \
  template <int MR, typename T>                                                                 \
  ATTR inline void NAME(const T* A, int64_t lda, const T* Bp, int64_t K, T* C, int64_t ldc,     \
                        int ncols, bool accumulate) {                                           \
    T c[MR][kNR];                                                                               \
    for (int i = 0; i < MR; ++i)                                                                \
      for (int j = 0; j < kNR; ++j) c[i][j] = T(0);                                             \
    for (int64_t k = 0; k < K; ++k) {                                                           \
      const T* b = Bp + k * kNR;                                                                \
      for (int i = 0; i < MR; ++i) {                                                            \
        const T a = A[i * lda + k];                                                             \
        for (int j = 0; j < kNR; ++j) c[i][j] = MADD(a, b[j], c[i][j]);                         \
      }                                                                                         \
    }                                                                                           \
    for (int i = 0; i < MR; ++i) {                                                              \
      T* out = C + i * ldc;                                                                     \
      if (accumulate) {                                                                         \
        for (int j = 0; j < ncols; ++j) out[j] += c[i][j];                                      \
      } else {                                                                                  \
        for (int j = 0; j < ncols; ++j) out[j] = c[i][j];                                       \
      }                                                                                         \
    }                                                                                           \
  }                                                                                             \
  template <typename T>                                                                         \
  ATTR void NAME##_rows(const T* A, int64_t lda, int64_t M, const Packed<T>& P, int64_t p0,     \
                        int64_t p1, T* C, int64_t ldc, bool accumulate) {                       \
    for (int64_t p = p0; p < p1; ++p) {                                                         \
      const T* Bp = P.data.data() + p * P.K * kNR;                                              \
      const int nc = static_cast<int>(std::min<int64_t>(kNR, P.N - p * kNR));                   \
      T* Cp = C + p * kNR;                                                                      \
      int64_t i = 0;                                                                            \
      for (; i + 4 <= M; i += 4) NAME<4>(A + i * lda, lda, Bp, P.K, Cp + i * ldc, ldc, nc, accumulate); \
      switch (M - i) {                                                                          \
        case 3: NAME<3>(A + i * lda, lda, Bp, P.K, Cp + i * ldc, ldc, nc, accumulate); break;   \
        case 2: NAME<2>(A + i * lda, lda, Bp, P.K, Cp + i * ldc, ldc, nc, accumulate); break;   \
        case 1: NAME<1>(A + i * lda, lda, Bp, P.K, Cp + i * ldc, ldc, nc, accumulate); break;   \
        default: break;                                                                         \
      }                                                                                         \
    }                                                                                           \
  }

#define FP_RNN_MULADD(a, b, c) ((a) * (b) + (c))
FP_RNN_MICRO(micro_generic, , FP_RNN_MULADD)
#undef FP_RNN_MICRO

#if FP_RNN_HAVE_AVX2
// float on AVX2 + FMA: the MR x 16 block of C lives in 2 * MR ymm registers (MR <= 6).
template <int MR>
FP_RNN_AVX2 inline void micro_avx2(const float* A, int64_t lda, const float* Bp, int64_t K,
                                   float* C, int64_t ldc, int ncols, bool accumulate) {
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(Bp + k * kNR), b1 = _mm256_loadu_ps(Bp + k * kNR + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(A + i * lda + k);
      c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    float* out = C + i * ldc;
    if (ncols == kNR) {
      if (accumulate) {
        c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(out));
        c1[i] = _mm256_add_ps(c1[i], _mm256_loadu_ps(out + 8));
      }
      _mm256_storeu_ps(out, c0[i]);
      _mm256_storeu_ps(out + 8, c1[i]);
    } else {
      alignas(32) float tmp[kNR];
      _mm256_store_ps(tmp, c0[i]);
      _mm256_store_ps(tmp + 8, c1[i]);
      for (int j = 0; j < ncols; ++j) out[j] = accumulate ? out[j] + tmp[j] : tmp[j];
    }
  }
}

FP_RNN_AVX2 inline void micro_avx2_rows(const float* A, int64_t lda, int64_t M,
                                        const Packed<float>& P, int64_t p0, int64_t p1, float* C,
                                        int64_t ldc, bool accumulate) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* Bp = P.data.data() + p * P.K * kNR;
    const int nc = static_cast<int>(std::min<int64_t>(kNR, P.N - p * kNR));
    float* Cp = C + p * kNR;
    int64_t i = 0;
    // 6 x 16 blocks (12 accumulators, 6 broadcasts + 2 loads per 12 FMAs), then the rest
    for (; i + 6 <= M; i += 6) micro_avx2<6>(A + i * lda, lda, Bp, P.K, Cp + i * ldc, ldc, nc, accumulate);
    switch (M - i) {
      case 5: micro_avx2<5>(A + i * lda, lda, Bp, P.K, Cp + i * ldc, ldc, nc, accumulate); break;
      case 4: micro_avx2<4>(A + i * lda, lda, Bp, P.K, Cp + i * ldc, ldc, nc, accumulate); break;
      case 3: micro_avx2<3>(A + i * lda, lda, Bp, P.K, Cp + i * ldc, ldc, nc, accumulate); break;
      case 2: micro_avx2<2>(A + i * lda, lda, Bp, P.K, Cp + i * ldc, ldc, nc, accumulate); break;
      case 1: micro_avx2<1>(A + i * lda, lda, Bp, P.K, Cp + i * ldc, ldc, nc, accumulate); break;
      default: break;
    }
  }
}
#endif

inline bool cpu_has_avx2_fma() {
#if FP_RNN_HAVE_AVX2
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// C[:, panels p0 .. p1) (+)= A[M x K] * packed B: A row-major with leading dimension lda,
// C row-major with leading dimension ldc (only the N valid columns are written).
template <typename T>
void packed_gemm(const T* A, int64_t lda, int64_t M, const Packed<T>& P, int64_t p0, int64_t p1,
                 T* C, int64_t ldc, bool accumulate) {
#if FP_RNN_HAVE_AVX2
  if constexpr (sizeof(T) == 4) {
    if (cpu_has_avx2_fma()) return micro_avx2_rows(A, lda, M, P, p0, p1, C, ldc, accumulate);
  }
#endif
  micro_generic_rows(A, lda, M, P, p0, p1, C, ldc, accumulate);
}

}  // namespace fastpaper::rnn::cpu
