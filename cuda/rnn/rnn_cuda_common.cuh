// Pieces shared by the CUDA kernels of the recurrent cells (rnn_cuda.cu, rnn_sliced.cuh): launch
// constants, the wmma element types, and the per-unit forward / backward cell steps that every
// kernel (persistent, cluster, cooperative) runs after its recurrent product. The arithmetic
// itself is fastpaper/detail/rnn_cells.h (shared with the CPU kernels and covered by their tests);
// these helpers only move data between the API's tensors and that math.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "rnn/rnn_backends.h"

namespace fastpaper::rnn::cuda {
namespace {

using namespace fastpaper::rnn::detail;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;  // batch rows per persistent / sliced CTA (the MMA's M)

template <typename S> struct Wmma;
template <> struct Wmma<half_t> { using type = __half; };
template <> struct Wmma<bf16_t> { using type = __nv_bfloat16; };

__host__ __device__ inline int64_t align_up(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

// rec[bb * cols + c] = sum_k h[bb * ldh + k] R[c * ldr + k] for the kTile batch rows of a tile and
// `cols` output columns: the fp32 recurrent product by FMA, a thread per output (the 16-bit kernels
// use wmma instead). h and R are in shared memory; the caller synchronizes before and after.
__device__ inline void rec_product_fma(const float* h, int64_t ldh, const float* R, int64_t ldr,
                                       int64_t K, int64_t cols, float* rec) {
  for (int64_t i = threadIdx.x; i < kTile * cols; i += kThreads) {
    const int64_t bb = i / cols, c = i % cols;
    const float* hr = h + bb * ldh;
    const float* rr = R + c * ldr;
    float acc = 0.f;
    for (int64_t k = 0; k < K; ++k) acc = fmaf(hr[k], rr[k], acc);
    rec[i] = acc;
  }
}

// Forward cell of unit j of head n, batch row b, step t, given its recurrent products rec[G]
// (R_n h_{t-1}) and previous states prev[S]: writes the new states to next[S] and, where the API
// asked for them, hist[:, t + 1], cache[t] (the pre-activations) and h_all[b, t]. wx_pre: Wx[b, t,
// :, n, j] already loaded (prefetched by the caller), or nullptr to load it here. A row past its
// length is frozen: next = prev, cached pre-activations 0, h_all 0.
template <typename S, typename C>
__device__ inline void fwd_unit(const FwdArgs<S, float>& a, const Shape& sh, int64_t t, int64_t b,
                                int64_t n, int64_t j, const float* rec, const float* prev,
                                float* next, const float* wx_pre = nullptr) {
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  const int64_t DH = sh.head_dim, NH = sh.heads, B = sh.batch, Tn = sh.time;
  const int64_t N = NH * DH, BN = B * N, unit = b * N + n * DH + j;
  const bool active = a.lengths == nullptr || t < a.lengths[b];
  float pre[GB];
  if (active) {
    float wx[G], bias[GB];
    const S* wxp = a.Wx + ((b * Tn + t) * G * NH + n) * DH + j;
    for (int g = 0; g < G; ++g) wx[g] = wx_pre ? wx_pre[g] : Io<S>::load(wxp[g * N]);
    for (int g = 0; g < GB; ++g) bias[g] = Io<S>::load(a.b[g * N + n * DH + j]);
    C::preact(wx, rec, bias, pre);
    C::forward(pre, prev, next);
  } else {
    for (int s = 0; s < NS; ++s) next[s] = prev[s];
    for (int g = 0; g < GB; ++g) pre[g] = 0.f;
  }
  if (a.hist) {
    for (int s = 0; s < NS; ++s) a.hist[(s * (Tn + 1) + t + 1) * BN + unit] = next[s];
  }
  if (a.cache) {
    float* cp = a.cache + ((t * B + b) * NH + n) * GB * DH + j;
    for (int g = 0; g < GB; ++g) cp[g * DH] = pre[g];
  }
  a.h_all[(b * Tn + t) * N + n * DH + j] = Io<S>::store(active ? next[0] : 0.f);
}

// Backward cell of unit k of head n, batch row b, step t: d[S] holds the gradients of the states
// after step t (without the h_all term, added here) and receives those of the states before it;
// dpre[GB] receives d pre, which is also written to the work buffer (for dR, db, dWx). A row past
// its length passes d through unchanged and has d pre = 0.
template <typename S, typename C>
__device__ inline void bwd_unit(const BwdArgs<S, float>& a, const Shape& sh, int64_t t, int64_t b,
                                int64_t n, int64_t k, float* d, float* dpre) {
  constexpr int GB = C::GB, NS = C::S;
  const int64_t DH = sh.head_dim, NH = sh.heads, B = sh.batch, Tn = sh.time;
  const int64_t N = NH * DH, BN = B * N, GBD = GB * DH, unit = b * N + n * DH + k;
  float* wt = a.work + ((t * B + b) * NH + n) * GBD + k;
  if (!(a.lengths == nullptr || t < a.lengths[b])) {  // frozen step: the gradients pass through
    for (int g = 0; g < GB; ++g) {
      dpre[g] = 0.f;
      wt[g * DH] = 0.f;
    }
    return;
  }
  float pre[GB], prev[NS], dprev[NS];
  const float* cp = a.cache + ((t * B + b) * NH + n) * GBD + k;
  for (int g = 0; g < GB; ++g) pre[g] = cp[g * DH];
  for (int s = 0; s < NS; ++s) prev[s] = a.hist[(s * (Tn + 1) + t) * BN + unit];
  if (a.dh_all) d[0] += Io<S>::load(a.dh_all[(b * Tn + t) * N + n * DH + k]);
  C::backward(pre, prev, d, dprev, dpre);
  for (int s = 0; s < NS; ++s) d[s] = dprev[s];
  for (int g = 0; g < GB; ++g) wt[g * DH] = dpre[g];
}

}  // namespace
}  // namespace fastpaper::rnn::cuda
