// Internal: the small-M GEMM of the CPU recurrence, C[M x N] (+)= A[M x K] B[K x N], with B packed
// once per call into panels of kNR columns ([panel][K][kNR], zero-padded), the layout the
// micro-kernel streams. Why not OpenBLAS here: it repacks B on every call, and per time step B is
// the whole recurrent matrix (up to MBs) while M is only the batch (the packing then dominates).
// The micro-kernel keeps an MR x kNR block of C in registers (MR = 6: 12 AVX2 registers) and runs
// K rank-1 updates; callers run it one panel (kNR columns) at a time, so they can consume a
// block of C (e.g. the cell on those hidden units) while it is still in L1. Two builds: float
// with AVX2+FMA intrinsics (chosen at run time when the CPU has them) and a portable one
// (double, other CPUs).
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
    // a pure copy, split over panels (one head's B is up to MBs: the fused input projection)
#pragma omp parallel for schedule(static) if (panels > 1 && K * N >= (1 << 17))
    for (int64_t p = 0; p < panels; ++p)
      for (int64_t k = 0; k < K; ++k)
        for (int j = 0; j < kNR && p * kNR + j < N; ++j) data[(p * K + k) * kNR + j] = at(k, p * kNR + j);
  }
};

// The A operand: rows i of A (K columns) followed by rows i of A2 (K2 columns), i.e. the product
// [A | A2] B with B's first K packed rows multiplying A (the fused input projection x_t W^T +
// h_{t-1} R^T of the forward: A = x_t, A2 = h_{t-1}). K2 = 0: a plain A.
template <typename T>
struct Seg {
  const T* A;
  int64_t lda, K;
  const T* A2;
  int64_t lda2, K2;
  Seg rows(int64_t i) const { return {A + i * lda, lda, K, A2 ? A2 + i * lda2 : nullptr, lda2, K2}; }
};

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FP_RNN_HAVE_AVX2 1
#define FP_RNN_AVX2 __attribute__((target("avx2,fma")))
#else
#define FP_RNN_HAVE_AVX2 0
#endif

// One MR x kNR block: C[i][0 .. ncols) (+)= sum_k A[i][k] Bp[k][.] (portable build).
template <int MR, typename T>
inline void micro_generic(const Seg<T>& s, const T* Bp, T* C, int64_t ldc, int ncols,
                          bool accumulate) {
  T c[MR][kNR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) c[i][j] = T(0);
  for (int64_t k = 0; k < s.K; ++k) {
    const T* b = Bp + k * kNR;
    for (int i = 0; i < MR; ++i) {
      const T a = s.A[i * s.lda + k];
      for (int j = 0; j < kNR; ++j) c[i][j] = a * b[j] + c[i][j];
    }
  }
  for (int64_t k = 0; k < s.K2; ++k) {  // the second segment continues the same sums
    const T* b = Bp + (s.K + k) * kNR;
    for (int i = 0; i < MR; ++i) {
      const T a = s.A2[i * s.lda2 + k];
      for (int j = 0; j < kNR; ++j) c[i][j] = a * b[j] + c[i][j];
    }
  }
  for (int i = 0; i < MR; ++i) {
    T* out = C + i * ldc;
    for (int j = 0; j < ncols; ++j) out[j] = accumulate ? out[j] + c[i][j] : c[i][j];
  }
}

template <typename T>
void micro_generic_panel(const Seg<T>& s, int64_t M, const T* Bp, T* C, int64_t ldc, int nc,
                         bool accumulate) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4) micro_generic<4>(s.rows(i), Bp, C + i * ldc, ldc, nc, accumulate);
  switch (M - i) {
    case 3: micro_generic<3>(s.rows(i), Bp, C + i * ldc, ldc, nc, accumulate); break;
    case 2: micro_generic<2>(s.rows(i), Bp, C + i * ldc, ldc, nc, accumulate); break;
    case 1: micro_generic<1>(s.rows(i), Bp, C + i * ldc, ldc, nc, accumulate); break;
    default: break;
  }
}

#if FP_RNN_HAVE_AVX2
// float on AVX2 + FMA: the MR x 16 block of C lives in 2 * MR ymm registers (MR <= 6), per k
// 2 loads of B and MR broadcasts of A feed 2 * MR FMAs. Every loop over i is fully unrolled
// (the epilogue too): an i-indexed access left in a loop would force the accumulators onto
// the stack, which costs half the speed.
template <int MR>
FP_RNN_AVX2 inline void micro_avx2(const Seg<float>& s, const float* Bp, float* C, int64_t ldc,
                                   int ncols, bool accumulate) {
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
  // the second segment (if any) continues the same sums: rows K .. K + K2 of the panel
  const float* const As[2] = {s.A, s.A2};
  const int64_t ldas[2] = {s.lda, s.lda2}, Ks[2] = {s.K, s.K2};
  for (int seg = 0; seg < 2; ++seg) {
    const float* A = As[seg];
    const int64_t lda = ldas[seg], K = Ks[seg];
    for (int64_t k = 0; k < K; ++k) {
      const __m256 b0 = _mm256_loadu_ps(Bp + k * kNR), b1 = _mm256_loadu_ps(Bp + k * kNR + 8);
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        const __m256 a = _mm256_broadcast_ss(A + i * lda + k);
        c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
        c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
      }
    }
    Bp += K * kNR;
  }
  if (ncols == kNR) {
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      float* out = C + i * ldc;
      if (accumulate) {
        c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(out));
        c1[i] = _mm256_add_ps(c1[i], _mm256_loadu_ps(out + 8));
      }
      _mm256_storeu_ps(out, c0[i]);
      _mm256_storeu_ps(out + 8, c1[i]);
    }
  } else {
    alignas(32) float tmp[MR][kNR];
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      _mm256_store_ps(tmp[i], c0[i]);
      _mm256_store_ps(tmp[i] + 8, c1[i]);
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < ncols; ++j)
        C[i * ldc + j] = accumulate ? C[i * ldc + j] + tmp[i][j] : tmp[i][j];
  }
}

// All M rows against one packed panel, in blocks of at most 6 rows of equal size (M = 16: 6, 5,
// 5): a block of r rows keeps 2r independent FMA chains, and r >= 5 of them cover the FMA latency
// (4-5 cycles at 2 FMAs per cycle) where a 4-row remainder would stall. The panel (K x 16) stays
// in L1 across the row blocks.
FP_RNN_AVX2 inline void micro_avx2_panel(const Seg<float>& s, int64_t M, const float* Bp,
                                         float* C, int64_t ldc, int nc, bool accumulate) {
  const int64_t blocks = (M + 5) / 6;
  for (int64_t q = 0, i = 0; q < blocks; ++q) {
    const int64_t r = (M - i) / (blocks - q);  // rows left / blocks left: sizes differ by <= 1
    const Seg<float> si = s.rows(i);
    float* Ci = C + i * ldc;
    switch (r) {
      case 6: micro_avx2<6>(si, Bp, Ci, ldc, nc, accumulate); break;
      case 5: micro_avx2<5>(si, Bp, Ci, ldc, nc, accumulate); break;
      case 4: micro_avx2<4>(si, Bp, Ci, ldc, nc, accumulate); break;
      case 3: micro_avx2<3>(si, Bp, Ci, ldc, nc, accumulate); break;
      case 2: micro_avx2<2>(si, Bp, Ci, ldc, nc, accumulate); break;
      default: micro_avx2<1>(si, Bp, Ci, ldc, nc, accumulate); break;
    }
    i += r;
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

// C[M x ncols] (+)= A[M x K] * panel p of B (its columns p * kNR ..): A row-major with leading
// dimension lda, C row-major with leading dimension ldc; only the panel's valid columns
// (min(kNR, N - p * kNR)) are written.
template <typename T>
void panel_gemm(const Seg<T>& s, int64_t M, const Packed<T>& P, int64_t p, T* C, int64_t ldc,
                bool accumulate) {
  const T* Bp = P.data.data() + p * P.K * kNR;
  const int nc = static_cast<int>(std::min<int64_t>(kNR, P.N - p * kNR));
#if FP_RNN_HAVE_AVX2
  if constexpr (sizeof(T) == 4) {
    if (cpu_has_avx2_fma()) return micro_avx2_panel(s, M, Bp, C, ldc, nc, accumulate);
  }
#endif
  micro_generic_panel(s, M, Bp, C, ldc, nc, accumulate);
}
template <typename T>
void panel_gemm(const T* A, int64_t lda, int64_t M, const Packed<T>& P, int64_t p, T* C,
                int64_t ldc, bool accumulate) {
  panel_gemm(Seg<T>{A, lda, P.K, nullptr, 0, 0}, M, P, p, C, ldc, accumulate);
}

}  // namespace fastpaper::rnn::cpu
