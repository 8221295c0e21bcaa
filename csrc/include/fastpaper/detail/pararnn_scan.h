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
//
// Storage and arithmetic types differ for 16-bit inputs: Io<S> says how an element stored as S
// is widened to the compute type Io<S>::T (float for float16/bfloat16/float32, double for
// float64) and rounded back.
#pragma once

#include <cstdint>

#include "fastpaper/detail/host_device.h"
#include "fastpaper/detail/storage_io.h"

// K is a compile-time constant: nvcc's device pass is told to unroll; host compilers unroll such
// loops unasked (and GCC would warn about an unknown `#pragma unroll`, also in nvcc's host pass).
#if defined(__CUDA_ARCH__)
#  define FP_SCAN_UNROLL _Pragma("unroll")
#else
#  define FP_SCAN_UNROLL
#endif

namespace fastpaper::pararnn::detail {

// Storage types and their compute types: fastpaper/detail/storage_io.h.
using fastpaper::detail::bf16_bits;
using fastpaper::detail::half_bits;
using fastpaper::detail::Io;

// Element (i, j) of a row-major K x K block, or of its transpose (Tr: the adjoint recurrence
// reads J^T without a transposed copy).
template <int K, bool Tr>
FP_HD int block_index(int i, int j) { return Tr ? j * K + i : i * K + j; }

// h <- J h + r (Tr: J^T h + r) for one group; J and r are stored as SJ and SR (a storage type or
// the compute type), h is in the compute type T.
template <int K, bool Tr = false, typename SJ, typename SR, typename T>
FP_HD void affine_apply(const SJ* J, const SR* r, T* h) {
  T prev[K];
FP_SCAN_UNROLL
  for (int j = 0; j < K; ++j) prev[j] = h[j];
FP_SCAN_UNROLL
  for (int i = 0; i < K; ++i) {
    T acc = Io<SR>::load(r[i]);
FP_SCAN_UNROLL
    for (int j = 0; j < K; ++j) acc += Io<SJ>::load(J[block_index<K, Tr>(i, j)]) * prev[j];
    h[i] = acc;
  }
}

// (A, b) <- (J, r) o (A, b) = (J A, J b + r): appends one step (J, r) after the map (A, b)
// (Tr: the step (J^T, r)).
template <int K, bool Tr = false, typename S, typename T>
FP_HD void affine_compose_after(const S* J, const S* r, T* A, T* b) {
  T j[K * K], a[K * K];
FP_SCAN_UNROLL
  for (int e = 0; e < K * K; ++e) {
    j[e] = Io<S>::load(J[block_index<K, Tr>(e / K, e % K)]);
    a[e] = A[e];
  }
FP_SCAN_UNROLL
  for (int i = 0; i < K; ++i) {
FP_SCAN_UNROLL
    for (int c = 0; c < K; ++c) {
      T acc = T(0);
FP_SCAN_UNROLL
      for (int m = 0; m < K; ++m) acc += j[i * K + m] * a[m * K + c];
      A[i * K + c] = acc;
    }
  }
  affine_apply<K>(j, r, b);
}

// (A, b) <- the map (0, r) of a step without a Jacobian: the state restarts at r.
template <int K, typename S, typename T>
FP_HD void affine_restart(const S* r, T* A, T* b) {
FP_SCAN_UNROLL
  for (int i = 0; i < K; ++i) {
    b[i] = Io<S>::load(r[i]);
FP_SCAN_UNROLL
    for (int j = 0; j < K; ++j) A[i * K + j] = T(0);
  }
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
