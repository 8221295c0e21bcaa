// Time-chunk and time-block pieces of the ParaRNN linear scan shared by the two CUDA kernels
// (cuda/pararnn/pararnn_cuda.cu: the per-chain kernel and the multi-block look-back kernel) and
// compiled on the host by the C++ test that emulates the look-back kernel
// (tests/cpp/test_pararnn_lookback.cpp), so the CPU build covers this code.
//
// Scan steps vs time: scan step `step` = 0, 1, ... runs in the direction of the recurrence; its
// physical time is `step` (forward) or T - 1 - step (backwards). The adjoint recurrence
// (fastpaper/pararnn.h) reads at scan step s >= 1 the transposed Jacobian of the previous scan
// step's time (t - 1 forward, t + 1 backwards), and step 0 has no Jacobian (the state restarts at
// r): a chunk containing step 0 composes to a map with A = 0, whatever enters it.
#pragma once

#include <cstdint>

#include "fastpaper/detail/pararnn_scan.h"

namespace fastpaper::pararnn::detail {

struct ScanGeometry {
  int64_t time, channels, groups;  // groups = channels / K
  bool backwards;                  // scan order runs from t = T - 1 down to 0
};

FP_HD int64_t scan_time(const ScanGeometry& geo, int64_t step) {
  return geo.backwards ? geo.time - 1 - step : step;
}

// (A, b) <- the composed map of scan steps [s0, s1) of group g of batch element b (the identity
// for an empty range): (J_{s1-1}, r_{s1-1}) o ... o (J_{s0}, r_{s0}).
template <int K, bool Adj, typename S, typename T>
FP_HD void chunk_map(const S* __restrict__ J, const S* r, const ScanGeometry& geo, int64_t b,
                     int64_t g, int64_t s0, int64_t s1, T* A, T* bv) {
  affine_identity<K>(A, bv);
  for (int64_t step = s0; step < s1; ++step) {
    const int64_t t = scan_time(geo, step);
    const S* rp = r + (b * geo.time + t) * geo.channels + g * K;
    if (Adj && step == 0) {
      affine_restart<K>(rp, A, bv);
      continue;
    }
    const int64_t tj = !Adj ? t : (geo.backwards ? t + 1 : t - 1);
    affine_compose_after<K, Adj>(J + ((b * geo.time + tj) * geo.groups + g) * K * K, rp, A, bv);
  }
}

// Runs scan steps [s0, s1) of group g of batch element b from `state` (the state entering step
// s0), writing h at every step; `state` ends as the state after step s1 - 1.
template <int K, bool Adj, typename S, typename T>
FP_HD void chunk_run(const S* __restrict__ J, const S* r, S* h, const ScanGeometry& geo,
                     int64_t b, int64_t g, int64_t s0, int64_t s1, T* state) {
  for (int64_t step = s0; step < s1; ++step) {
    const int64_t t = scan_time(geo, step);
    const int64_t off = (b * geo.time + t) * geo.channels + g * K;
    if (Adj && step == 0) {  // no Jacobian: h = r
FP_SCAN_UNROLL
      for (int i = 0; i < K; ++i) state[i] = Io<S>::load(r[off + i]);
    } else {
      const int64_t tj = !Adj ? t : (geo.backwards ? t + 1 : t - 1);
      affine_apply<K, Adj>(J + ((b * geo.time + tj) * geo.groups + g) * K * K, r + off, state);
    }
FP_SCAN_UNROLL
    for (int i = 0; i < K; ++i) h[off + i] = Io<S>::store(state[i]);
  }
}

// (A, b) <- (A, b) o (P, q) = (A P, A q + b): the map (P, q) of an earlier time range is put
// before (A, b). The look-back walks backwards in time, so it grows its exclusive prefix this way.
template <int K, typename T>
FP_HD void affine_compose_before(const T* P, const T* q, T* A, T* b) {
  T a[K * K], c[K];
FP_SCAN_UNROLL
  for (int e = 0; e < K * K; ++e) a[e] = A[e];
FP_SCAN_UNROLL
  for (int i = 0; i < K; ++i) c[i] = b[i];
  // (P, q) followed by (a, c): compose_after appends the step (a, c) to the map (P, q)
FP_SCAN_UNROLL
  for (int e = 0; e < K * K; ++e) A[e] = P[e];
FP_SCAN_UNROLL
  for (int i = 0; i < K; ++i) b[i] = q[i];
  affine_compose_after<K>(a, c, A, b);
}

// One predecessor block of the look-back, newest first: an INCLUSIVE one (its payload `b` is the
// state leaving it) ends the walk with x = P(b); an AGGREGATE one (its map (A, b)) goes before the
// exclusive prefix (P, q) and the walk goes on. Returns true when the walk has ended.
template <int K, typename T>
FP_HD bool lookback_take(bool inclusive, const T* A, const T* b, T* P, T* q, T* x) {
  if (inclusive) {
FP_SCAN_UNROLL
    for (int i = 0; i < K; ++i) x[i] = b[i];
    affine_apply<K>(P, q, x);
    return true;
  }
  affine_compose_before<K>(A, b, P, q);
  return false;
}

// How the look-back kernel cuts the time axis: every chain (batch element x tile of 32 groups)
// gets `blocks` time blocks of `warps * chunk` scan steps (a thread composes `chunk` steps), the
// last one possibly shorter; blocks * (warps * chunk) >= time > (blocks - 1) * (warps * chunk), so
// no block is empty. The chunk is sized so that chains * blocks is about target_ctas (enough
// CTAs to fill the GPU) but at least min_chunk steps (a block must amortise its look-back).
struct LookbackPlan {
  int64_t chunk;   // scan steps per thread
  int64_t blocks;  // time blocks per chain
};

inline LookbackPlan plan_lookback(int64_t time, int64_t chains, int64_t warps, int64_t target_ctas,
                                  int64_t min_chunk) {
  const int64_t per_chain = target_ctas / chains > 1 ? target_ctas / chains : 1;
  int64_t chunk = (time + warps * per_chain - 1) / (warps * per_chain);
  if (chunk < min_chunk) chunk = min_chunk;
  const int64_t len = warps * chunk;
  return {chunk, (time + len - 1) / len};
}

// The time block a CTA works on, from its ticket (the order in which CTAs started, not blockIdx):
// tickets run time-block-major, so the predecessor (chain, block - 1) always has a smaller
// ticket and has therefore already started when anyone waits for it.
FP_HD void ticket_block(int64_t ticket, int64_t chains, int64_t* chain, int64_t* block) {
  *chain = ticket % chains;
  *block = ticket / chains;
}

}  // namespace fastpaper::pararnn::detail
