// Math of the ParaRNN linear scan, shared by the CPU (csrc/pararnn/) and CUDA (cuda/pararnn/)
// kernels.
//
// One step of the recurrence h_t = J_t h_{t-1} + r_t is the affine map x -> J_t x + r_t. A run of
// steps composes into one affine map, and composition is associative:
//
//   (J2, r2) o (J1, r1) = (J2 J1, J2 r1 + r2)        identity: (I, 0)
//
// so the maps of disjoint time chunks can be built independently and combined afterwards (the
// three-phase chunked scan). A channel group is K state entries coupled by a dense K x K block
// (K = 1 is the diagonal case); blocks are row-major, J[i * K + j] multiplies h[j] into h[i].
#pragma once

#include "fastpaper/detail/host_device.h"

// K is a compile-time constant: nvcc's device pass is told to unroll; host compilers unroll such
// loops unasked (and GCC would warn about an unknown `#pragma unroll`, also in nvcc's host pass).
#if defined(__CUDA_ARCH__)
#  define FP_SCAN_UNROLL _Pragma("unroll")
#else
#  define FP_SCAN_UNROLL
#endif

namespace fastpaper::pararnn::detail {

// h <- J h + r for one group (h is updated in place; a copy keeps it alias-safe).
template <int K, typename T>
FP_HD void affine_apply(const T* J, const T* r, T* h) {
  T prev[K];
FP_SCAN_UNROLL
  for (int j = 0; j < K; ++j) prev[j] = h[j];
FP_SCAN_UNROLL
  for (int i = 0; i < K; ++i) {
    T acc = r[i];
FP_SCAN_UNROLL
    for (int j = 0; j < K; ++j) acc += J[i * K + j] * prev[j];
    h[i] = acc;
  }
}

// (A, b) <- (J, r) o (A, b) = (J A, J b + r): appends one step (J, r) after the map (A, b).
template <int K, typename T>
FP_HD void affine_compose_after(const T* J, const T* r, T* A, T* b) {
  T a[K * K];
FP_SCAN_UNROLL
  for (int e = 0; e < K * K; ++e) a[e] = A[e];
FP_SCAN_UNROLL
  for (int i = 0; i < K; ++i) {
FP_SCAN_UNROLL
    for (int j = 0; j < K; ++j) {
      T acc = T(0);
FP_SCAN_UNROLL
      for (int m = 0; m < K; ++m) acc += J[i * K + m] * a[m * K + j];
      A[i * K + j] = acc;
    }
  }
  affine_apply<K>(J, r, b);
}

// (A, b) <- the identity map (I, 0).
template <int K, typename T>
FP_HD void affine_identity(T* A, T* b) {
FP_SCAN_UNROLL
  for (int i = 0; i < K; ++i) {
    b[i] = T(0);
FP_SCAN_UNROLL
    for (int j = 0; j < K; ++j) A[i * K + j] = i == j ? T(1) : T(0);
  }
}

}  // namespace fastpaper::pararnn::detail
