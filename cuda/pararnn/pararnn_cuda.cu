// CUDA kernel of the ParaRNN linear scan h_t = J_t h_{t-1} + r_t (or its reverse), in the native
// [B, T, N] layout (no transposes).
//
// Work split: a CTA of 32 x kWarps threads owns 32 consecutive channel groups (lane = group, so a
// warp's loads of one time step are contiguous) of one batch element, and walks its time axis in
// segments of kWarps * L steps (L = steps per thread, up to kMaxChunk). Within a segment warp w
// owns the time chunk [w L, (w + 1) L):
// (The adjoint recurrence is the same scan in the opposite direction reading J^T of the
// neighbouring step.)
//   1. each thread composes the affine maps of its chunk, (A, b) = (J_s, r_s) o ... o (J_1, r_1),
//      in registers and stores it to shared memory;
//   2. each thread applies the maps of the chunks before its own to the segment carry (at most
//      kWarps - 1 small matrix-vector products), which gives its chunk's initial state, and all
//      kWarps maps to get the carry into the next segment;
//   3. each thread re-runs its chunk from that state, writing h (the second read of J and r comes
//      from L1/L2).
// One pass over the sequence, no host synchronization, any T; the CTAs of different channel
// groups and batch elements are independent (grid = batch x ceil(groups / 32)). The step math is
// fastpaper/detail/pararnn_scan.h, shared with the CPU kernel.
#include <cuda_runtime.h>

#include <string>

#include "core/error.h"
#include "core/cuda_launch.h"
#include "fastpaper/detail/pararnn_scan.h"
#include "pararnn/pararnn_backends.h"

namespace fastpaper::pararnn::cuda {
namespace {

using namespace fastpaper::pararnn::detail;

constexpr int kLanes = 32;
constexpr int kWarps = 8;
constexpr int kMaxChunk = 16;

struct Geometry {
  int64_t time, channels, groups, tiles;
  int chunk;       // time steps per thread per segment
  bool backwards;  // scan order runs from t = T down to 1
};

// Adj: the adjoint recurrence (fastpaper/pararnn.h): scan step `step` uses J^T of the previous
// scan step's time, and step 0 has no Jacobian (the state restarts at r).
template <int K, typename S, bool Adj>
__global__ void __launch_bounds__(kLanes * kWarps)
scan_kernel(const S* __restrict__ J, const S* r, const S* __restrict__ h0, S* h, Geometry geo) {
  using T = typename Io<S>::T;  // compute type (float for 16-bit storage)
  __shared__ T smA[kWarps][kLanes][K * K];
  __shared__ T smb[kWarps][kLanes][K];
  const int lane = threadIdx.x, w = threadIdx.y;
  const int64_t b = blockIdx.x / geo.tiles;
  const int64_t g = (blockIdx.x % geo.tiles) * kLanes + lane;
  const bool active = g < geo.groups;

  T carry[K];
#pragma unroll
  for (int i = 0; i < K; ++i) {
    carry[i] = (active && h0) ? Io<S>::load(h0[b * geo.channels + g * K + i]) : T(0);
  }

  const int64_t seg_len = static_cast<int64_t>(kWarps) * geo.chunk;
  for (int64_t seg0 = 0; seg0 < geo.time; seg0 += seg_len) {
    const int64_t s0 = seg0 + static_cast<int64_t>(w) * geo.chunk;
    const int64_t s1 = s0 + geo.chunk < geo.time ? s0 + geo.chunk : geo.time;

    // 1. this thread's chunk map (identity for a chunk past the end)
    T A[K * K], bv[K];
    affine_identity<K>(A, bv);
    if (active) {
      for (int64_t step = s0; step < s1; ++step) {
        const int64_t t = geo.backwards ? geo.time - 1 - step : step;
        const S* rp = r + (b * geo.time + t) * geo.channels + g * K;
        if (Adj && step == 0) {
          affine_restart<K>(rp, A, bv);
          continue;
        }
        const int64_t tj = !Adj ? t : (geo.backwards ? t + 1 : t - 1);
        affine_compose_after<K, Adj>(J + ((b * geo.time + tj) * geo.groups + g) * K * K, rp, A, bv);
      }
    }
#pragma unroll
    for (int e = 0; e < K * K; ++e) smA[w][lane][e] = A[e];
#pragma unroll
    for (int i = 0; i < K; ++i) smb[w][lane][i] = bv[i];
    __syncthreads();

    // 2. state entering this chunk, and the carry into the next segment
    T state[K];
    for (int v = 0; v < kWarps; ++v) {
      if (v == w) {
#pragma unroll
        for (int i = 0; i < K; ++i) state[i] = carry[i];
      }
      affine_apply<K>(&smA[v][lane][0], &smb[v][lane][0], carry);
    }
    __syncthreads();  // shared memory is rewritten by the next segment

    // 3. re-run the chunk from its true initial state
    if (active) {
      for (int64_t step = s0; step < s1; ++step) {
        const int64_t t = geo.backwards ? geo.time - 1 - step : step;
        const int64_t off = (b * geo.time + t) * geo.channels + g * K;
        if (Adj && step == 0) {  // no Jacobian: h = r
#pragma unroll
          for (int i = 0; i < K; ++i) state[i] = Io<S>::load(r[off + i]);
        } else {
          const int64_t tj = !Adj ? t : (geo.backwards ? t + 1 : t - 1);
          affine_apply<K, Adj>(J + ((b * geo.time + tj) * geo.groups + g) * K * K, r + off, state);
        }
#pragma unroll
        for (int i = 0; i < K; ++i) h[off + i] = Io<S>::store(state[i]);
      }
    }
  }
}

using fastpaper::detail::launched;

template <int K, typename S>
void launch(const S* J, const S* r, const S* h0, S* h, const ScanShape& s, cudaStream_t stream) {
  // the adjoint runs against the direction of its primal recurrence
  Geometry geo;
  geo.time = s.time;
  geo.channels = s.channels;
  geo.groups = s.channels / K;
  geo.tiles = (geo.groups + kLanes - 1) / kLanes;
  const int64_t per_warp = (s.time + kWarps - 1) / kWarps;
  geo.chunk = static_cast<int>(per_warp < kMaxChunk ? per_warp : kMaxChunk);
  geo.backwards = s.reverse != s.adjoint;
  const dim3 block(kLanes, kWarps);
  const int64_t grid = s.batch * geo.tiles;
  if (s.adjoint) {
    scan_kernel<K, S, true><<<static_cast<unsigned>(grid), block, 0, stream>>>(J, r, h0, h, geo);
  } else {
    scan_kernel<K, S, false><<<static_cast<unsigned>(grid), block, 0, stream>>>(J, r, h0, h, geo);
  }
}

}  // namespace

template <typename S>
Status linear_scan(const S* J, const S* r, const S* h0, S* h, const ScanShape& s, void* stream) {
  // one CTA per (batch element, 32 groups): gridDim.x is limited to 2^31 - 1
  const int64_t tiles = (s.channels / s.block + kLanes - 1) / kLanes;
  if (s.batch > (int64_t{1} << 31) / tiles - 1) {
    return fastpaper::detail::fail(Status::invalid_argument,
                                   "pararnn::linear_scan: batch x channel tiles exceeds the CUDA "
                                   "grid limit (2^31 - 1 blocks)");
  }
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (s.block) {
    case 1: launch<1>(J, r, h0, h, s, st); break;
    case 2: launch<2>(J, r, h0, h, s, st); break;
    case 3: launch<3>(J, r, h0, h, s, st); break;
    case 4: launch<4>(J, r, h0, h, s, st); break;
    default: return fastpaper::detail::fail(Status::invalid_argument, "block must be in [1, 4] on CUDA");
  }
  return launched("pararnn::linear_scan");
}

template Status linear_scan(const float*, const float*, const float*, float*, const ScanShape&, void*);
template Status linear_scan(const double*, const double*, const double*, double*, const ScanShape&,
                            void*);
template Status linear_scan(const half_bits*, const half_bits*, const half_bits*, half_bits*,
                            const ScanShape&, void*);
template Status linear_scan(const bf16_bits*, const bf16_bits*, const bf16_bits*, bf16_bits*,
                            const ScanShape&, void*);

}  // namespace fastpaper::pararnn::cuda
