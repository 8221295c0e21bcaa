// CUDA kernels of the fused ParaGRU / ParaLSTM (fastpaper/pararnn.h, cell_*), in the native
// layouts pre [B, T, 3, N] and states [B, T, N, K] (no transposes). The cell math is
// fastpaper/detail/pararnn_cells.h, shared with (and tested through) the CPU kernels. Every
// (batch, channel) is an independent recurrence s_t = f(s_{t-1}, pre_t).
//
// sequential_kernel: a thread per (batch element, channel), walking t; the pre-activations are
//   loaded kDepth x kUnroll steps ahead of their use (a register pipeline), so the dependent
//   chain of steps is not bound by load latency. Consecutive threads own consecutive channels:
//   coalesced.
//
// newton_kernel: a CTA of 32 x kWarps threads per (batch element, tile of 32 channels); lane =
//   channel, warp w = a chunk of L consecutive steps. The CTA walks time in segments of
//   kWarps * L steps and solves each segment by Newton with everything in registers (pre read
//   from HBM once per segment, one segment ahead; the iterate s, J and the residual r of its L
//   steps per thread):
//     1. neighbour exchange through shared memory: each chunk's first step needs the previous
//        chunk's last iterate (the segment's first step: the converged carry of the previous one)
//     2. residual r = f(s_{t-1}, pre_t) - s_t and J = df/ds in the thread, composed into the
//        chunk's affine map (A, b) (fastpaper/detail/pararnn_scan.h's combine)
//     3. cross-warp scan through shared memory: a chunk's incoming delta is the maps of the
//        chunks before it applied to delta = 0 (the segment start is fixed)
//     4. re-run the chunk: delta_t = J_t delta_{t-1} + r_t, s_t += delta_t
//     5. block reduction of max|delta|, max|s| and a non-finite flag; every thread takes the same
//        decision: stop when converged (or exact: iterations >= the segment's length) or
//        non-finite, else iterate (at most max_iters).
//   The converged last state seeds the next segment: the same system solved segment by segment,
//   exact, any T, no host synchronization. info[0] = max iterations over (CTA, segment), info[1]
//   = (CTA, segment) units that did not converge (atomics on a zeroed int32[2]).
//
// backward_kernel: same CTA layout, walking the segments from the end: the adjoint
//   lam_t = g_t + J_{t+1}^T lam_{t+1} is linear (one pass, no Newton): each thread recomputes
//   J_t from the saved solution (s_{t-1}, pre_t), composes its chunk's map mu -> J_t^T (mu + g_t)
//   in decreasing t, the cross-warp scan gives every chunk its incoming mu, and the chunk re-runs
//   through the cell's VJP writing dpre_t; mu after step 1 is dh0. Parameter gradients are summed
//   per thread, then over the warps in a fixed order into a per-batch-element partial
//   (workspace [B, P, N]); reduce_params_kernel sums the partials over b in order (a thread per
//   (param, channel)): deterministic, no atomics on floats.
#include <cuda_runtime.h>

#include "core/cuda_launch.h"
#include "core/error.h"
#include "fastpaper/detail/pararnn_cells.h"
#include "fastpaper/detail/pararnn_scan.h"
#include "pararnn/pararnn_backends.h"

namespace fastpaper::pararnn::cuda {
namespace {

using namespace fastpaper::pararnn::detail;
using fastpaper::detail::bf16_bits;
using fastpaper::detail::half_bits;

constexpr int kLanes = 32;
constexpr int kWarps = 16;
constexpr int kSeqThreads = 256;
constexpr int kUnroll = 8;
constexpr int kDepth = 4;  // sequential kernel: groups of kUnroll steps loaded ahead

struct Geo {
  int64_t batch, time, channels, tiles;
};

template <typename T>
__device__ __forceinline__ bool finite(T v) { return isfinite(v); }

template <typename T>
__device__ __forceinline__ T absv(T v) { return v < T(0) ? -v : v; }

// ------------------------------------------------------------------------------ sequential

// q <- the raw pre-activations of steps [t0, t0 + kUnroll) of one channel (base: step 0, gate 0;
// steps past the end are not loaded).
template <typename S>
__device__ __forceinline__ void load_group(const S* base, int64_t N, int64_t time, int64_t t0,
                                           S (*q)[3]) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    if (t0 + u < time) {
#pragma unroll
      for (int g = 0; g < 3; ++g) q[u][g] = base[((t0 + u) * 3 + g) * N];
    }
  }
}

template <class Cell, typename S>
__global__ void __launch_bounds__(kSeqThreads)
sequential_kernel(const S* __restrict__ pre, const typename Io<S>::T* __restrict__ params,
                  const S* __restrict__ h0, S* __restrict__ states, Geo geo) {
  using T = typename Io<S>::T;
  constexpr int K = Cell::kState, P = Cell::kParams;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kSeqThreads + threadIdx.x;
  if (idx >= geo.batch * geo.channels) return;
  const int64_t b = idx / geo.channels, n = idx % geo.channels, N = geo.channels;
  T a[P], st[K];
#pragma unroll
  for (int q = 0; q < P; ++q) a[q] = params[q * N + n];
#pragma unroll
  for (int k = 0; k < K; ++k) st[k] = h0 ? Io<S>::load(h0[(b * N + n) * K + k]) : T(0);
  // kDepth groups of kUnroll steps in flight: computing group d reloads its registers with the
  // group kDepth ahead (prefetch distance kDepth * kUnroll steps, all indices compile-time)
  const S* base = pre + (b * geo.time * 3) * N + n;
  S q[kDepth][kUnroll][3];
#pragma unroll
  for (int d = 0; d < kDepth; ++d) load_group(base, N, geo.time, int64_t{d} * kUnroll, q[d]);
  for (int64_t t0 = 0; t0 < geo.time; t0 += kDepth * kUnroll) {
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      const int64_t g0 = t0 + int64_t{d} * kUnroll;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (g0 + u < geo.time) {
          T qi[3], nx[K];
#pragma unroll
          for (int g = 0; g < 3; ++g) qi[g] = Io<S>::load(q[d][u][g]);
          Cell::step(qi, a, st, nx);
          S* out = states + ((b * geo.time + g0 + u) * N + n) * K;
#pragma unroll
          for (int k = 0; k < K; ++k) {
            st[k] = nx[k];
            out[k] = Io<S>::store(nx[k]);
          }
        }
      }
      load_group(base, N, geo.time, g0 + kDepth * kUnroll, q[d]);
    }
  }
}

// ------------------------------------------------------------------------- Newton (forward)

// J <- J^T for K = 1 or 2.
template <int K, typename T>
__device__ __forceinline__ void transpose(T* J) {
  if constexpr (K == 2) {
    const T j1 = J[1];
    J[1] = J[2];
    J[2] = j1;
  }
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <class Cell, typename S, int L>
__global__ void __launch_bounds__(kLanes * kWarps)
newton_kernel(const S* __restrict__ pre, const typename Io<S>::T* __restrict__ params,
              const S* __restrict__ h0, S* __restrict__ states, int32_t* info, Geo geo,
              NewtonCfg cfg) {
  using T = typename Io<S>::T;
  constexpr int K = Cell::kState, P = Cell::kParams;
  __shared__ T sm_A[kWarps][kLanes][K * K];
  __shared__ T sm_b[kWarps][kLanes][K];
  __shared__ T sm_last[kWarps][kLanes][K];
  __shared__ T sm_red[2][kWarps];
  __shared__ T sm_carry[kLanes][K];
  const int lane = threadIdx.x, w = threadIdx.y;
  const int64_t b = blockIdx.x / geo.tiles, N = geo.channels;
  const int64_t n = (blockIdx.x % geo.tiles) * kLanes + lane;
  const bool active = n < N;
  const T atol = static_cast<T>(cfg.atol), rtol = static_cast<T>(cfg.rtol);

  T a[P], carry[K];
#pragma unroll
  for (int q = 0; q < P; ++q) a[q] = active ? params[q * N + n] : T(0);
#pragma unroll
  for (int k = 0; k < K; ++k) carry[k] = (active && h0) ? Io<S>::load(h0[(b * N + n) * K + k]) : T(0);

  int32_t max_its = 0, failed = 0;  // meaningful in thread (0, 0)
  constexpr int64_t seg_len = static_cast<int64_t>(kWarps) * L;
  // the raw pre-activations of this thread's chunk of the next segment, loaded one segment ahead
  // so that their latency hides behind the current segment's iterations
  S qn[L][3];
  auto prefetch = [&](int64_t c) {
#pragma unroll
    for (int j = 0; j < L; ++j) {
      if (active && c + j < geo.time) {
        const S* p = pre + ((b * geo.time + c + j) * 3) * N + n;
#pragma unroll
        for (int g = 0; g < 3; ++g) qn[j][g] = p[g * N];
      }
    }
  };
  prefetch(static_cast<int64_t>(w) * L);
  for (int64_t seg0 = 0; seg0 < geo.time; seg0 += seg_len) {
    const int64_t c0 = seg0 + static_cast<int64_t>(w) * L;
    const int64_t seg_steps = geo.time - seg0 < seg_len ? geo.time - seg0 : seg_len;
    T q[L][3], s[L][K], J[L][K * K], r[L][K];
    // pre of the chunk (read once per segment) and the initial guess s^0_t = f(0, pre_t)
#pragma unroll
    for (int j = 0; j < L; ++j) {
      const bool valid = active && c0 + j < geo.time;
      if (valid) {
#pragma unroll
        for (int g = 0; g < 3; ++g) q[j][g] = Io<S>::load(qn[j][g]);
        T zero[K];
#pragma unroll
        for (int k = 0; k < K; ++k) zero[k] = T(0);
        Cell::step(q[j], a, zero, s[j]);
      } else {
#pragma unroll
        for (int g = 0; g < 3; ++g) q[j][g] = T(0);
#pragma unroll
        for (int k = 0; k < K; ++k) s[j][k] = T(0);
      }
    }
    prefetch(c0 + seg_len);
    int32_t it = 0;
    bool conv = false;
    while (it < cfg.max_iters) {
      ++it;
      // 1. neighbour exchange
#pragma unroll
      for (int k = 0; k < K; ++k) sm_last[w][lane][k] = s[L - 1][k];
      __syncthreads();
      T prev[K];
#pragma unroll
      for (int k = 0; k < K; ++k) prev[k] = w == 0 ? carry[k] : sm_last[w - 1][lane][k];
      // 2. residual, Jacobian, chunk map
      T A[K * K], bv[K];
      affine_identity<K>(A, bv);
#pragma unroll
      for (int j = 0; j < L; ++j) {
        const bool valid = active && c0 + j < geo.time;
        if (valid) {
          T f[K];
          Cell::step_jac(q[j], a, prev, f, J[j]);
#pragma unroll
          for (int k = 0; k < K; ++k) r[j][k] = f[k] - s[j][k];
        } else {  // past the end / no channel: the identity step
          T dummy[K];
          affine_identity<K>(J[j], dummy);
#pragma unroll
          for (int k = 0; k < K; ++k) r[j][k] = T(0);
        }
        affine_compose_after<K>(J[j], r[j], A, bv);
#pragma unroll
        for (int k = 0; k < K; ++k) prev[k] = s[j][k];
      }
#pragma unroll
      for (int e = 0; e < K * K; ++e) sm_A[w][lane][e] = A[e];
#pragma unroll
      for (int k = 0; k < K; ++k) sm_b[w][lane][k] = bv[k];
      __syncthreads();
      // 3. incoming delta of this chunk
      T d[K];
#pragma unroll
      for (int k = 0; k < K; ++k) d[k] = T(0);
      for (int v = 0; v < w; ++v) affine_apply<K>(&sm_A[v][lane][0], &sm_b[v][lane][0], d);
      // 4. update
      T dmax = T(0), smax = T(0);
      bool bad = false;
#pragma unroll
      for (int j = 0; j < L; ++j) {
        affine_apply<K>(J[j], r[j], d);
        if (active && c0 + j < geo.time) {  // steps past the end stay out of the test
#pragma unroll
          for (int k = 0; k < K; ++k) {
            const T v = s[j][k] + d[k];
            s[j][k] = v;
            dmax = fmax(dmax, absv(d[k]));
            smax = fmax(smax, absv(v));
            bad = bad || !finite(d[k]) || !finite(v);
          }
        }
      }
      // 5. block decision
      dmax = warp_max(dmax);
      smax = warp_max(smax);
      if (lane == 0) {
        sm_red[0][w] = dmax;
        sm_red[1][w] = smax;
      }
      const bool any_bad = __syncthreads_or(bad) != 0;
      T dall = T(0), sall = T(0);
#pragma unroll
      for (int v = 0; v < kWarps; ++v) {
        dall = fmax(dall, sm_red[0][v]);
        sall = fmax(sall, sm_red[1][v]);
      }
      conv = !any_bad && (it >= seg_steps || dall <= atol + rtol * sall);
      if (conv || any_bad) break;
    }
    // write the segment, hand its last state to the next one
    const int64_t last = seg_steps - 1;
    const int wl = static_cast<int>(last / L), jl = static_cast<int>(last % L);
#pragma unroll
    for (int j = 0; j < L; ++j) {
      if (active && c0 + j < geo.time) {
        S* out = states + ((b * geo.time + c0 + j) * N + n) * K;
#pragma unroll
        for (int k = 0; k < K; ++k) out[k] = Io<S>::store(s[j][k]);
      }
      if (w == wl && j == jl) {
#pragma unroll
        for (int k = 0; k < K; ++k) sm_carry[lane][k] = s[j][k];
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < K; ++k) carry[k] = sm_carry[lane][k];
    __syncthreads();
    max_its = it > max_its ? it : max_its;
    failed += conv ? 0 : 1;
  }
  if (lane == 0 && w == 0) {
    atomicMax(&info[0], max_its);
    if (failed) atomicAdd(&info[1], failed);
  }
}

// ------------------------------------------------------------------------------- backward

template <class Cell, typename S, int L>
__global__ void __launch_bounds__(kLanes * kWarps)
backward_kernel(const S* __restrict__ pre, const typename Io<S>::T* __restrict__ params,
                const S* __restrict__ h0, const S* __restrict__ states,
                const S* __restrict__ grad, S* __restrict__ dpre, S* __restrict__ dh0,
                typename Io<S>::T* __restrict__ workspace, Geo geo) {
  using T = typename Io<S>::T;
  constexpr int K = Cell::kState, P = Cell::kParams;
  __shared__ T sm_A[kWarps][kLanes][K * K];
  __shared__ T sm_b[kWarps][kLanes][K];
  __shared__ T sm_carry[kLanes][K];
  __shared__ T sm_p[kWarps][kLanes][P];
  const int lane = threadIdx.x, w = threadIdx.y;
  const int64_t b = blockIdx.x / geo.tiles, N = geo.channels;
  const int64_t n = (blockIdx.x % geo.tiles) * kLanes + lane;
  const bool active = n < N;

  T a[P], da[P], carry[K];
#pragma unroll
  for (int q = 0; q < P; ++q) {
    a[q] = active ? params[q * N + n] : T(0);
    da[q] = T(0);
  }
#pragma unroll
  for (int k = 0; k < K; ++k) carry[k] = T(0);  // mu past the last step

  constexpr int64_t seg_len = static_cast<int64_t>(kWarps) * L;
  for (int64_t seg_end = geo.time; seg_end > 0; seg_end -= seg_len) {
    const int64_t seg_lo = seg_end > seg_len ? seg_end - seg_len : 0;
    const int64_t top = seg_end - 1 - static_cast<int64_t>(w) * L;  // this chunk's latest step
    T q[L][3], sp[L][K], g[L][K], J[L][K * K];
    T A[K * K], bv[K];
    affine_identity<K>(A, bv);
#pragma unroll
    for (int j = 0; j < L; ++j) {
      const int64_t t = top - j;
      if (active && t >= seg_lo) {
        const S* p = pre + ((b * geo.time + t) * 3) * N + n;
#pragma unroll
        for (int gi = 0; gi < 3; ++gi) q[j][gi] = Io<S>::load(p[gi * N]);
        const S* prev = t > 0 ? states + ((b * geo.time + t - 1) * N + n) * K
                              : (h0 ? h0 + (b * N + n) * K : nullptr);
#pragma unroll
        for (int k = 0; k < K; ++k) {
          sp[j][k] = prev ? Io<S>::load(prev[k]) : T(0);
          g[j][k] = Io<S>::load(grad[((b * geo.time + t) * N + n) * K + k]);
        }
        T f[K];
        Cell::step_jac(q[j], a, sp[j], f, J[j]);
        transpose<K>(J[j]);
      } else {
        T dummy[K];
        affine_identity<K>(J[j], dummy);
#pragma unroll
        for (int k = 0; k < K; ++k) {
          sp[j][k] = T(0);
          g[j][k] = T(0);
        }
#pragma unroll
        for (int gi = 0; gi < 3; ++gi) q[j][gi] = T(0);
      }
      // mu -> J^T mu + J^T g  (identity for a missing step: g = 0)
      T jg[K], zero[K];
#pragma unroll
      for (int k = 0; k < K; ++k) zero[k] = T(0), jg[k] = g[j][k];
      affine_apply<K>(J[j], zero, jg);
      affine_compose_after<K>(J[j], jg, A, bv);
    }
#pragma unroll
    for (int e = 0; e < K * K; ++e) sm_A[w][lane][e] = A[e];
#pragma unroll
    for (int k = 0; k < K; ++k) sm_b[w][lane][k] = bv[k];
    __syncthreads();
    T mu[K];
#pragma unroll
    for (int k = 0; k < K; ++k) mu[k] = carry[k];
    for (int v = 0; v < w; ++v) affine_apply<K>(&sm_A[v][lane][0], &sm_b[v][lane][0], mu);
    // re-run the chunk through the VJP
    const int64_t off_lo = seg_end - 1 - seg_lo;  // position of step seg_lo in the segment
    const int wl = static_cast<int>(off_lo / L), jl = static_cast<int>(off_lo % L);
#pragma unroll
    for (int j = 0; j < L; ++j) {
      const int64_t t = top - j;
      if (active && t >= seg_lo) {
        T lam[K], dq[3], ds[K];
#pragma unroll
        for (int k = 0; k < K; ++k) lam[k] = g[j][k] + mu[k];
        Cell::vjp(q[j], a, sp[j], lam, dq, ds, da);
        S* dp = dpre + ((b * geo.time + t) * 3) * N + n;
#pragma unroll
        for (int gi = 0; gi < 3; ++gi) dp[gi * N] = Io<S>::store(dq[gi]);
#pragma unroll
        for (int k = 0; k < K; ++k) mu[k] = ds[k];
      }
      if (w == wl && j == jl) {
#pragma unroll
        for (int k = 0; k < K; ++k) sm_carry[lane][k] = mu[k];
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < K; ++k) carry[k] = sm_carry[lane][k];
    __syncthreads();
  }
  if (w == 0 && active && dh0) {
#pragma unroll
    for (int k = 0; k < K; ++k) dh0[(b * N + n) * K + k] = Io<S>::store(carry[k]);
  }
  // parameter gradients: sum over the warps in a fixed order
#pragma unroll
  for (int q = 0; q < P; ++q) sm_p[w][lane][q] = da[q];
  __syncthreads();
  if (w == 0 && active) {
#pragma unroll
    for (int q = 0; q < P; ++q) {
      T acc = T(0);
      for (int v = 0; v < kWarps; ++v) acc += sm_p[v][lane][q];
      workspace[(b * P + q) * N + n] = acc;
    }
  }
}

// dparams[e] = sum_b workspace[b][e], b in order: a thread per (param, channel).
template <typename T>
__global__ void reduce_params_kernel(const T* __restrict__ workspace, T* __restrict__ dparams,
                                     int64_t batch, int64_t pn) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= pn) return;
  T acc = T(0);
  for (int64_t b = 0; b < batch; ++b) acc += workspace[b * pn + e];
  dparams[e] = acc;
}

using fastpaper::detail::fail;
using fastpaper::detail::launched;

Geo geometry(const CellShape& s) {
  return Geo{s.batch, s.time, s.channels, (s.channels + kLanes - 1) / kLanes};
}

Status grid_ok(int64_t blocks, const char* what) {
  if (blocks > (int64_t{1} << 31) - 1) {
    return fail(Status::invalid_argument,
                std::string(what) + ": the problem exceeds the CUDA grid limit (2^31 - 1 blocks)");
  }
  return Status::ok;
}

}  // namespace

template <typename S>
Status cell_sequential(const S* pre, const typename Io<S>::T* params, const S* h0, S* states,
                       const CellShape& s, void* stream) {
  using T = typename Io<S>::T;
  const Geo geo = geometry(s);
  const int64_t blocks = (s.batch * s.channels + kSeqThreads - 1) / kSeqThreads;
  if (Status st = grid_ok(blocks, "pararnn::cell_sequential"); st != Status::ok) return st;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (s.cell == Cell::gru) {
    sequential_kernel<GruCell<T>, S><<<static_cast<unsigned>(blocks), kSeqThreads, 0, st>>>(
        pre, params, h0, states, geo);
  } else {
    sequential_kernel<LstmCell<T>, S><<<static_cast<unsigned>(blocks), kSeqThreads, 0, st>>>(
        pre, params, h0, states, geo);
  }
  return launched("pararnn::cell_sequential");
}

template <typename S>
Status cell_newton(const S* pre, const typename Io<S>::T* params, const S* h0, S* states,
                   int32_t* info, const CellShape& s, const NewtonCfg& cfg, void* stream) {
  using T = typename Io<S>::T;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (cudaMemsetAsync(info, 0, 2 * sizeof(int32_t), st) != cudaSuccess) {
    return launched("pararnn::cell_newton (clearing info)");
  }
  if (s.batch == 0 || s.time == 0 || s.channels == 0) return Status::ok;
  const Geo geo = geometry(s);
  const int64_t blocks = s.batch * geo.tiles;
  if (Status e = grid_ok(blocks, "pararnn::cell_newton"); e != Status::ok) return e;
  const dim3 block(kLanes, kWarps);
  // steps per thread: the LSTM's 2 x 2 blocks need 4x the registers per step
  if (s.cell == Cell::gru) {
    newton_kernel<GruCell<T>, S, 8><<<static_cast<unsigned>(blocks), block, 0, st>>>(
        pre, params, h0, states, info, geo, cfg);
  } else {
    newton_kernel<LstmCell<T>, S, 4><<<static_cast<unsigned>(blocks), block, 0, st>>>(
        pre, params, h0, states, info, geo, cfg);
  }
  return launched("pararnn::cell_newton");
}

template <typename S>
Status cell_backward(const S* pre, const typename Io<S>::T* params, const S* h0, const S* states,
                     const S* grad, S* dpre, S* dh0, typename Io<S>::T* dparams,
                     typename Io<S>::T* workspace, const CellShape& s, void* stream) {
  using T = typename Io<S>::T;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const Geo geo = geometry(s);
  const int64_t blocks = s.batch * geo.tiles;
  if (Status e = grid_ok(blocks, "pararnn::cell_backward"); e != Status::ok) return e;
  const dim3 block(kLanes, kWarps);
  if (s.cell == Cell::gru) {
    backward_kernel<GruCell<T>, S, 8><<<static_cast<unsigned>(blocks), block, 0, st>>>(
        pre, params, h0, states, grad, dpre, dh0, workspace, geo);
  } else {
    backward_kernel<LstmCell<T>, S, 4><<<static_cast<unsigned>(blocks), block, 0, st>>>(
        pre, params, h0, states, grad, dpre, dh0, workspace, geo);
  }
  if (Status e = launched("pararnn::cell_backward"); e != Status::ok) return e;
  const int64_t pn = static_cast<int64_t>(cell_params(s.cell)) * s.channels;
  reduce_params_kernel<T><<<static_cast<unsigned>((pn + 255) / 256), 256, 0, st>>>(
      workspace, dparams, s.batch, pn);
  return launched("pararnn::cell_backward (parameter reduction)");
}

#define FP_INSTANTIATE(S)                                                                        \
  template Status cell_sequential(const S*, const Io<S>::T*, const S*, S*, const CellShape&,    \
                                  void*);                                                       \
  template Status cell_newton(const S*, const Io<S>::T*, const S*, S*, int32_t*,                \
                              const CellShape&, const NewtonCfg&, void*);                       \
  template Status cell_backward(const S*, const Io<S>::T*, const S*, const S*, const S*, S*, S*, \
                                Io<S>::T*, Io<S>::T*, const CellShape&, void*);
FP_INSTANTIATE(float)
FP_INSTANTIATE(double)
FP_INSTANTIATE(half_bits)
FP_INSTANTIATE(bf16_bits)
#undef FP_INSTANTIATE

}  // namespace fastpaper::pararnn::cuda
