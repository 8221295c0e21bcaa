// CPU kernels of the fused ParaGRU / ParaLSTM (fastpaper/pararnn.h, cell_*): the sequential
// recurrence, the fused Newton solve and the fused backward. The cell math is
// fastpaper/detail/pararnn_cells.h, shared with the CUDA kernels.
//
// Work split: every (batch element, channel) is an independent recurrence, so the unit of work
// is a (batch element, tile of channels) pair; OpenMP runs the units in parallel and the inner
// loops run over the tile's contiguous channels (vectorized: the host exp/tanh are branch-free
// polynomials). Each unit walks its time axis sequentially:
// - cell_sequential: one pass, s_t = f(s_{t-1}, pre_t). This is the fast CPU path: the same
//   memory traffic as one Newton iteration and a quarter of the arithmetic.
// - cell_newton: the ParaRNN algorithm on a unit of kNewtonTile channels (the CUDA CTA's tile),
//   in time segments of kCpuSegment steps, each seeded by the previous segment's solution (as
//   the CUDA kernel does with its shorter segments): the segment's iterate lives in a per-thread
//   float/double buffer [segment][K][tile]; each iteration recomputes
//   J and the residual and solves the linear recurrence of delta (sequentially here: the CPU's
//   parallelism is across units), with the early exit of the public contract.
// - cell_backward: lam_t = grad_t + J_{t+1}^T lam_{t+1} in reverse, sequentially per unit,
//   through the cell's VJP; parameter gradients go to per-batch-element partials in the
//   workspace (each unit owns its channels of its batch row: no races) and are then summed over
//   the batch in a fixed order (deterministic).
#include <algorithm>
#include <cmath>
#include <vector>

#include "fastpaper/detail/pararnn_cells.h"
#include "fastpaper/detail/pararnn_scan.h"
#include "pararnn/pararnn_backends.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define FP_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FP_CPU_CLONES
#endif

namespace fastpaper::pararnn::cpu {
namespace {

using namespace fastpaper::pararnn::detail;
using fastpaper::detail::bf16_bits;
using fastpaper::detail::half_bits;

constexpr int64_t kSeqTile = 64;                   // channels per sequential / backward unit
constexpr int64_t kCpuSegment = 1024;              // Newton time segment (steps) on the CPU
constexpr int64_t kParallelThreshold = 1 << 14;    // elements; below this one thread is faster

bool worth_threads(const CellShape& s) { return s.batch * s.time * s.channels >= kParallelThreshold; }

// The kernels below keep a unit's values in local structure-of-arrays buffers (x[entry][channel])
// so that the per-channel compute loops touch only unit-stride locals and vectorize; the global
// layouts (pre gates-major, states (c, h) interleaved) are converted in separate copy loops.

// q[g][i] <- pre gate g of the unit's channel i at one step (p points at gate 0, channel n0).
template <typename S, typename T, int W>
FP_HD void load_pre(const S* p, int64_t channels, int64_t nc, T (*q)[W]) {
  for (int g = 0; g < 3; ++g) {
    for (int64_t i = 0; i < nc; ++i) q[g][i] = Io<S>::load(p[g * channels + i]);
    for (int64_t i = nc; i < W; ++i) q[g][i] = T(0);  // padding lanes compute harmless values
  }
}

template <typename T, int W>
void load_params(const T* params, int64_t channels, int64_t n0, int64_t nc, int np, T (*a)[W]) {
  for (int q = 0; q < np; ++q) {
    for (int64_t i = 0; i < W; ++i) a[q][i] = i < nc ? params[q * channels + n0 + i] : T(0);
  }
}

// st[k][i] <- state entry k of channel n0 + i of batch element b (h0, or zeros).
template <typename S, typename T, int W>
void load_state0(const S* h0, int64_t b, int64_t channels, int64_t n0, int64_t nc, int K,
                 T (*st)[W]) {
  for (int k = 0; k < K; ++k) {
    for (int64_t i = 0; i < W; ++i) {
      st[k][i] = (h0 && i < nc) ? Io<S>::load(h0[(b * channels + n0 + i) * K + k]) : T(0);
    }
  }
}

template <class Cell, typename S>
FP_CPU_CLONES void sequential_unit(const S* pre, const typename Io<S>::T* params, const S* h0,
                                   S* states, const CellShape& s, int64_t b, int64_t n0,
                                   int64_t nc) {
  using T = typename Io<S>::T;
  constexpr int K = Cell::kState, P = Cell::kParams, W = kSeqTile;
  T st[K][W], a[P][W], q[3][W];
  load_params(params, s.channels, n0, nc, P, a);
  load_state0(h0, b, s.channels, n0, nc, K, st);
  for (int64_t t = 0; t < s.time; ++t) {
    load_pre(pre + ((b * s.time + t) * 3) * s.channels + n0, s.channels, nc, q);
    for (int64_t i = 0; i < W; ++i) {
      const T qi[3] = {q[0][i], q[1][i], q[2][i]};
      T ai[P], si[K], nx[K];
      for (int e = 0; e < P; ++e) ai[e] = a[e][i];
      for (int k = 0; k < K; ++k) si[k] = st[k][i];
      Cell::step(qi, ai, si, nx);
      for (int k = 0; k < K; ++k) st[k][i] = nx[k];
    }
    S* out = states + ((b * s.time + t) * s.channels + n0) * K;
    for (int64_t i = 0; i < nc; ++i) {
      for (int k = 0; k < K; ++k) out[i * K + k] = Io<S>::store(st[k][i]);
    }
  }
}

// Newton on steps [t0, t0 + len) of one unit, from the state s0 ([K][kNewtonTile], fixed:
// the previous segment's solution or h0; on return the segment's last state); returns the
// iterations used, *converged whether it met the test. it_buf: the iterate, [len][K][tile].
template <class Cell, typename S>
FP_CPU_CLONES int32_t newton_segment(const S* pre, const typename Io<S>::T (*a)[kNewtonTile],
                                     S* states, const CellShape& s, const NewtonCfg& cfg,
                                     int64_t b, int64_t n0, int64_t nc, int64_t t0, int64_t len,
                                     typename Io<S>::T (*s0)[kNewtonTile],
                                     typename Io<S>::T* it_buf, bool* converged) {
  using T = typename Io<S>::T;
  constexpr int K = Cell::kState, P = Cell::kParams, W = kNewtonTile;
  T q[3][W];
  auto pre_at = [&](int64_t t) { return pre + ((b * s.time + t0 + t) * 3) * s.channels + n0; };
  // initial guess s^0_t = f(0, pre_t)
  for (int64_t t = 0; t < len; ++t) {
    load_pre(pre_at(t), s.channels, nc, q);
    T* cur = it_buf + t * K * W;
    for (int64_t i = 0; i < W; ++i) {
      const T qi[3] = {q[0][i], q[1][i], q[2][i]};
      T ai[P], zero[K] = {}, nx[K];
      for (int e = 0; e < P; ++e) ai[e] = a[e][i];
      Cell::step(qi, ai, zero, nx);
      for (int k = 0; k < K; ++k) cur[k * W + i] = nx[k];
    }
  }
  int32_t it = 0;
  bool conv = false;
  T old[K][W], delta[K][W], dmx[W], smx[W], ok[W];
  while (it < cfg.max_iters) {
    ++it;
    for (int k = 0; k < K; ++k) {
      for (int64_t i = 0; i < W; ++i) {
        old[k][i] = s0[k][i];  // s^k_{t-1}: where J_t and f are evaluated
        delta[k][i] = T(0);
      }
    }
    for (int64_t i = 0; i < W; ++i) dmx[i] = smx[i] = T(0), ok[i] = T(1);
    for (int64_t t = 0; t < len; ++t) {
      load_pre(pre_at(t), s.channels, nc, q);
      T* cur = it_buf + t * K * W;
      for (int64_t i = 0; i < W; ++i) {
        const T qi[3] = {q[0][i], q[1][i], q[2][i]};
        T ai[P], si[K], f[K], J[K * K], r[K], d[K];
        for (int e = 0; e < P; ++e) ai[e] = a[e][i];
        for (int k = 0; k < K; ++k) si[k] = old[k][i], d[k] = delta[k][i];
        Cell::step_jac(qi, ai, si, f, J);
        for (int k = 0; k < K; ++k) r[k] = f[k] - cur[k * W + i];
        affine_apply<K>(J, r, d);  // delta_t = J_t delta_{t-1} + r_t
        for (int k = 0; k < K; ++k) {
          const T v = cur[k * W + i] + d[k];
          old[k][i] = cur[k * W + i];
          delta[k][i] = d[k];
          cur[k * W + i] = v;
          const T ad = d[k] < T(0) ? -d[k] : d[k], av = v < T(0) ? -v : v;
          dmx[i] = ad > dmx[i] ? ad : dmx[i];
          smx[i] = av > smx[i] ? av : smx[i];
          // x - x == 0 exactly when x is finite (inf - inf and NaN are NaN); branch-free
          ok[i] = (d[k] - d[k] == T(0) && v - v == T(0)) ? ok[i] : T(0);
        }
      }
    }
    T dmax = 0, smax = 0;
    bool finite = true;
    for (int64_t i = 0; i < nc; ++i) {
      dmax = std::max(dmax, dmx[i]);
      smax = std::max(smax, smx[i]);
      finite = finite && ok[i] != T(0);
    }
    if (!finite) break;  // inf/NaN cannot recover
    if (it >= len || dmax <= T(cfg.atol) + T(cfg.rtol) * smax) {
      conv = true;
      break;
    }
  }
  for (int64_t t = 0; t < len; ++t) {
    S* out = states + ((b * s.time + t0 + t) * s.channels + n0) * K;
    const T* cur = it_buf + t * K * W;
    for (int64_t i = 0; i < nc; ++i) {
      for (int k = 0; k < K; ++k) out[i * K + k] = Io<S>::store(cur[k * W + i]);
    }
  }
  const T* last = it_buf + (len - 1) * K * W;
  for (int k = 0; k < K; ++k) {
    for (int64_t i = 0; i < W; ++i) s0[k][i] = last[k * W + i];
  }
  *converged = conv;
  return it;
}

// Newton on one unit, segment after segment (each seeded by the previous one's solution, as on
// CUDA; bounds the iterate buffer at kCpuSegment steps). Returns the most iterations any segment
// needed and adds the segments that did not converge to *failed.
template <class Cell, typename S>
int32_t newton_unit(const S* pre, const typename Io<S>::T* params, const S* h0, S* states,
                    const CellShape& s, const NewtonCfg& cfg, int64_t b, int64_t n0, int64_t nc,
                    typename Io<S>::T* it_buf, int32_t* failed) {
  using T = typename Io<S>::T;
  constexpr int K = Cell::kState, P = Cell::kParams, W = kNewtonTile;
  T a[P][W], s0[K][W];
  load_params(params, s.channels, n0, nc, P, a);
  load_state0(h0, b, s.channels, n0, nc, K, s0);
  int32_t its = 0;
  for (int64_t t0 = 0; t0 < s.time; t0 += kCpuSegment) {
    bool conv = false;
    const int64_t len = std::min(kCpuSegment, s.time - t0);
    its = std::max(its, newton_segment<Cell>(pre, a, states, s, cfg, b, n0, nc, t0, len, s0,
                                             it_buf, &conv));
    *failed += conv ? 0 : 1;
  }
  return its;
}

template <class Cell, typename S>
FP_CPU_CLONES void backward_unit(const S* pre, const typename Io<S>::T* params, const S* h0,
                                 const S* states, const S* grad, S* dpre, S* dh0,
                                 typename Io<S>::T* partial, const CellShape& s, int64_t b,
                                 int64_t n0, int64_t nc) {
  using T = typename Io<S>::T;
  constexpr int K = Cell::kState, P = Cell::kParams, W = kSeqTile;
  T a[P][W], da[P][W], mu[K][W], q[3][W], sp[K][W], g[K][W], dq[3][W];
  load_params(params, s.channels, n0, nc, P, a);
  for (int64_t i = 0; i < W; ++i) {
    for (int e = 0; e < P; ++e) da[e][i] = T(0);
    for (int k = 0; k < K; ++k) mu[k][i] = T(0);  // J_{t+1}^T lam_{t+1}, zero past the end
  }
  for (int64_t t = s.time - 1; t >= 0; --t) {
    const int64_t row = (b * s.time + t) * 3 * s.channels + n0;
    load_pre(pre + row, s.channels, nc, q);
    if (t > 0) {
      load_state0(states + (b * s.time + t - 1) * s.channels * K, 0, s.channels, n0, nc, K, sp);
    } else {
      load_state0(h0, b, s.channels, n0, nc, K, sp);
    }
    load_state0(grad + (b * s.time + t) * s.channels * K, 0, s.channels, n0, nc, K, g);
    for (int64_t i = 0; i < W; ++i) {
      const T qi[3] = {q[0][i], q[1][i], q[2][i]};
      T ai[P], dai[P], si[K], lam[K], dqi[3], ds[K];
      for (int e = 0; e < P; ++e) ai[e] = a[e][i], dai[e] = da[e][i];
      for (int k = 0; k < K; ++k) si[k] = sp[k][i], lam[k] = g[k][i] + mu[k][i];
      Cell::vjp(qi, ai, si, lam, dqi, ds, dai);
      for (int e = 0; e < P; ++e) da[e][i] = dai[e];
      for (int k = 0; k < K; ++k) mu[k][i] = ds[k];
      for (int e = 0; e < 3; ++e) dq[e][i] = dqi[e];
    }
    S* dp = dpre + row;
    for (int e = 0; e < 3; ++e) {
      for (int64_t i = 0; i < nc; ++i) dp[e * s.channels + i] = Io<S>::store(dq[e][i]);
    }
  }
  for (int64_t i = 0; i < nc; ++i) {
    if (dh0) {
      for (int k = 0; k < K; ++k) dh0[(b * s.channels + n0 + i) * K + k] = Io<S>::store(mu[k][i]);
    }
    for (int e = 0; e < P; ++e) partial[(b * P + e) * s.channels + n0 + i] = da[e][i];
  }
}

template <class Cell, typename S>
void run_sequential(const S* pre, const typename Io<S>::T* params, const S* h0, S* states,
                    const CellShape& s) {
  const int64_t tiles = (s.channels + kSeqTile - 1) / kSeqTile;
#pragma omp parallel for schedule(static) if (worth_threads(s))
  for (int64_t u = 0; u < s.batch * tiles; ++u) {
    const int64_t b = u / tiles, n0 = (u % tiles) * kSeqTile;
    sequential_unit<Cell>(pre, params, h0, states, s, b, n0, std::min(kSeqTile, s.channels - n0));
  }
}

template <class Cell, typename S>
void run_newton(const S* pre, const typename Io<S>::T* params, const S* h0, S* states,
                int32_t* info, const CellShape& s, const NewtonCfg& cfg) {
  using T = typename Io<S>::T;
  constexpr int K = Cell::kState;
  const int64_t tiles = (s.channels + kNewtonTile - 1) / kNewtonTile;
  int32_t max_it = 0, failed = 0;
#pragma omp parallel if (worth_threads(s))
  {
    std::vector<T> buf(static_cast<size_t>(std::min(s.time, kCpuSegment) * K * kNewtonTile));
    int32_t my_it = 0, my_failed = 0;
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < s.batch * tiles; ++u) {
      const int64_t b = u / tiles, n0 = (u % tiles) * kNewtonTile;
      const int32_t it = newton_unit<Cell>(pre, params, h0, states, s, cfg, b, n0,
                                           std::min(kNewtonTile, s.channels - n0), buf.data(),
                                           &my_failed);
      my_it = std::max(my_it, it);
    }
#pragma omp critical
    {
      max_it = std::max(max_it, my_it);
      failed += my_failed;
    }
  }
  info[0] = max_it;
  info[1] = failed;
}

template <class Cell, typename S>
void run_backward(const S* pre, const typename Io<S>::T* params, const S* h0, const S* states,
                  const S* grad, S* dpre, S* dh0, typename Io<S>::T* dparams,
                  typename Io<S>::T* workspace, const CellShape& s) {
  using T = typename Io<S>::T;
  constexpr int K = Cell::kState, P = Cell::kParams;
  const int64_t tiles = (s.channels + kSeqTile - 1) / kSeqTile;
#pragma omp parallel for schedule(static) if (worth_threads(s))
  for (int64_t u = 0; u < s.batch * tiles; ++u) {
    const int64_t b = u / tiles, n0 = (u % tiles) * kSeqTile;
    const int64_t nc = std::min(kSeqTile, s.channels - n0);
    if (s.time == 0) {  // no step: the state passes through untouched
      for (int64_t e = 0; e < nc * K; ++e) {
        if (dh0) dh0[(b * s.channels + n0) * K + e] = Io<S>::store(T(0));
      }
      for (int q = 0; q < P; ++q) {
        std::fill_n(workspace + (b * P + q) * s.channels + n0, nc, T(0));
      }
      continue;
    }
    backward_unit<Cell>(pre, params, h0, states, grad, dpre, dh0, workspace, s, b, n0, nc);
  }
  // dparams = sum over b of the partials, b = 0, 1, ... (fixed order)
  const int64_t pn = P * s.channels;
#pragma omp parallel for schedule(static) if (worth_threads(s))
  for (int64_t e = 0; e < pn; ++e) {
    T acc = 0;
    for (int64_t b = 0; b < s.batch; ++b) acc += workspace[b * pn + e];
    dparams[e] = acc;
  }
}

}  // namespace

template <typename S>
void cell_sequential(const S* pre, const typename Io<S>::T* params, const S* h0, S* states,
                     const CellShape& s) {
  using T = typename Io<S>::T;
  if (s.cell == Cell::gru) run_sequential<GruCell<T>>(pre, params, h0, states, s);
  else run_sequential<LstmCell<T>>(pre, params, h0, states, s);
}

template <typename S>
void cell_newton(const S* pre, const typename Io<S>::T* params, const S* h0, S* states,
                 int32_t* info, const CellShape& s, const NewtonCfg& cfg) {
  using T = typename Io<S>::T;
  if (s.cell == Cell::gru) run_newton<GruCell<T>>(pre, params, h0, states, info, s, cfg);
  else run_newton<LstmCell<T>>(pre, params, h0, states, info, s, cfg);
}

template <typename S>
void cell_backward(const S* pre, const typename Io<S>::T* params, const S* h0, const S* states,
                   const S* grad, S* dpre, S* dh0, typename Io<S>::T* dparams,
                   typename Io<S>::T* workspace, const CellShape& s) {
  using T = typename Io<S>::T;
  if (s.cell == Cell::gru) {
    run_backward<GruCell<T>>(pre, params, h0, states, grad, dpre, dh0, dparams, workspace, s);
  } else {
    run_backward<LstmCell<T>>(pre, params, h0, states, grad, dpre, dh0, dparams, workspace, s);
  }
}

#define FP_INSTANTIATE(S)                                                                         \
  template void cell_sequential(const S*, const Io<S>::T*, const S*, S*, const CellShape&);      \
  template void cell_newton(const S*, const Io<S>::T*, const S*, S*, int32_t*, const CellShape&, \
                            const NewtonCfg&);                                                   \
  template void cell_backward(const S*, const Io<S>::T*, const S*, const S*, const S*, S*, S*,    \
                              Io<S>::T*, Io<S>::T*, const CellShape&);
FP_INSTANTIATE(float)
FP_INSTANTIATE(double)
FP_INSTANTIATE(half_bits)
FP_INSTANTIATE(bf16_bits)
#undef FP_INSTANTIATE

}  // namespace fastpaper::pararnn::cpu
