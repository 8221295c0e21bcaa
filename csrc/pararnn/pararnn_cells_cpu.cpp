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
// - cell_newton: the ParaRNN algorithm on a unit of kNewtonTile channels (the CUDA CTA's tile):
//   the iterate lives in a per-unit float/double buffer [T][tile][K]; each iteration recomputes
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
constexpr int64_t kParallelThreshold = 1 << 14;    // elements; below this one thread is faster

bool worth_threads(const CellShape& s) { return s.batch * s.time * s.channels >= kParallelThreshold; }

// The unit's pre-activations at one step: gate g of channel n0 + i is p[g * channels + i].
template <typename S, typename T>
FP_HD void load_pre(const S* p, int64_t channels, int64_t i, T* pre) {
  for (int g = 0; g < 3; ++g) pre[g] = Io<S>::load(p[g * channels + i]);
}

template <typename T>
void load_params(const T* params, int64_t channels, int64_t n, int np, T* a) {
  for (int q = 0; q < np; ++q) a[q] = params[q * channels + n];
}

template <class Cell, typename S>
FP_CPU_CLONES void sequential_unit(const S* pre, const typename Io<S>::T* params, const S* h0,
                                   S* states, const CellShape& s, int64_t b, int64_t n0,
                                   int64_t nc) {
  using T = typename Io<S>::T;
  constexpr int K = Cell::kState, P = Cell::kParams;
  T st[kSeqTile * K], a[kSeqTile * P];
  for (int64_t i = 0; i < nc; ++i) {
    load_params(params, s.channels, n0 + i, P, a + i * P);
    for (int k = 0; k < K; ++k) st[i * K + k] = h0 ? Io<S>::load(h0[(b * s.channels + n0 + i) * K + k]) : T(0);
  }
  for (int64_t t = 0; t < s.time; ++t) {
    const S* p = pre + ((b * s.time + t) * 3) * s.channels + n0;
    S* out = states + ((b * s.time + t) * s.channels + n0) * K;
    for (int64_t i = 0; i < nc; ++i) {
      T q[3], nx[K];
      load_pre(p, s.channels, i, q);
      Cell::step(q, a + i * P, st + i * K, nx);
      for (int k = 0; k < K; ++k) {
        st[i * K + k] = nx[k];
        out[i * K + k] = Io<S>::store(nx[k]);
      }
    }
  }
}

template <typename T>
T abs_of(T v) { return v < T(0) ? -v : v; }

// Newton on one unit; returns the iterations used, *converged whether it met the test.
template <class Cell, typename S>
FP_CPU_CLONES int32_t newton_unit(const S* pre, const typename Io<S>::T* params, const S* h0,
                                  S* states, const CellShape& s, const NewtonCfg& cfg, int64_t b,
                                  int64_t n0, int64_t nc, typename Io<S>::T* it_buf,
                                  bool* converged) {
  using T = typename Io<S>::T;
  constexpr int K = Cell::kState, P = Cell::kParams;
  const int64_t w = nc * K;  // iterate entries per step
  T a[kNewtonTile * P], s0[kNewtonTile * K];
  for (int64_t i = 0; i < nc; ++i) {
    load_params(params, s.channels, n0 + i, P, a + i * P);
    for (int k = 0; k < K; ++k) s0[i * K + k] = h0 ? Io<S>::load(h0[(b * s.channels + n0 + i) * K + k]) : T(0);
  }
  auto pre_at = [&](int64_t t) { return pre + ((b * s.time + t) * 3) * s.channels + n0; };
  // initial guess s^0_t = f(0, pre_t)
  for (int64_t t = 0; t < s.time; ++t) {
    const S* p = pre_at(t);
    for (int64_t i = 0; i < nc; ++i) {
      T q[3], zero[K] = {};
      load_pre(p, s.channels, i, q);
      Cell::step(q, a + i * P, zero, it_buf + t * w + i * K);
    }
  }
  int32_t it = 0;
  bool conv = false;
  T old[kNewtonTile * K], delta[kNewtonTile * K];
  while (it < cfg.max_iters) {
    ++it;
    std::copy(s0, s0 + w, old);  // s^k_{t-1}, the point J_t and f are evaluated at
    std::fill(delta, delta + w, T(0));
    T dmax = 0, smax = 0;
    bool finite = true;
    for (int64_t t = 0; t < s.time; ++t) {
      const S* p = pre_at(t);
      T* cur = it_buf + t * w;
      for (int64_t i = 0; i < nc; ++i) {
        T q[3], f[K], J[K * K], d[K];
        load_pre(p, s.channels, i, q);
        Cell::step_jac(q, a + i * P, old + i * K, f, J);
        T r[K];
        for (int k = 0; k < K; ++k) r[k] = f[k] - cur[i * K + k];
        small_affine<K>(J, delta + i * K, r, d);
        for (int k = 0; k < K; ++k) {
          old[i * K + k] = cur[i * K + k];
          delta[i * K + k] = d[k];
          const T v = cur[i * K + k] + d[k];
          cur[i * K + k] = v;
          dmax = std::max(dmax, abs_of(d[k]));
          smax = std::max(smax, abs_of(v));
          finite = finite && std::isfinite(d[k]) && std::isfinite(v);
        }
      }
    }
    if (!finite) break;  // inf/NaN cannot recover
    if (it >= s.time || dmax <= T(cfg.atol) + T(cfg.rtol) * smax) {
      conv = true;
      break;
    }
  }
  for (int64_t t = 0; t < s.time; ++t) {
    S* out = states + ((b * s.time + t) * s.channels + n0) * K;
    for (int64_t e = 0; e < w; ++e) out[e] = Io<S>::store(it_buf[t * w + e]);
  }
  *converged = conv;
  return it;
}

template <class Cell, typename S>
FP_CPU_CLONES void backward_unit(const S* pre, const typename Io<S>::T* params, const S* h0,
                                 const S* states, const S* grad, S* dpre, S* dh0,
                                 typename Io<S>::T* partial, const CellShape& s, int64_t b,
                                 int64_t n0, int64_t nc) {
  using T = typename Io<S>::T;
  constexpr int K = Cell::kState, P = Cell::kParams;
  T a[kSeqTile * P], da[kSeqTile * P], mu[kSeqTile * K];
  for (int64_t i = 0; i < nc; ++i) load_params(params, s.channels, n0 + i, P, a + i * P);
  std::fill(da, da + nc * P, T(0));
  std::fill(mu, mu + nc * K, T(0));  // J_{t+1}^T lam_{t+1}, zero past the end
  for (int64_t t = s.time - 1; t >= 0; --t) {
    const int64_t row = (b * s.time + t) * 3 * s.channels + n0;
    const S* p = pre + row;
    S* dp = dpre + row;
    const S* g = grad + ((b * s.time + t) * s.channels + n0) * K;
    const S* prev = t > 0 ? states + ((b * s.time + t - 1) * s.channels + n0) * K
                          : (h0 ? h0 + (b * s.channels + n0) * K : nullptr);
    for (int64_t i = 0; i < nc; ++i) {
      T q[3], sp[K], lam[K], dq[3], ds[K];
      load_pre(p, s.channels, i, q);
      for (int k = 0; k < K; ++k) {
        sp[k] = prev ? Io<S>::load(prev[i * K + k]) : T(0);
        lam[k] = Io<S>::load(g[i * K + k]) + mu[i * K + k];
      }
      Cell::vjp(q, a + i * P, sp, lam, dq, ds, da + i * P);
      for (int gi = 0; gi < 3; ++gi) dp[gi * s.channels + i] = Io<S>::store(dq[gi]);
      for (int k = 0; k < K; ++k) mu[i * K + k] = ds[k];
    }
  }
  for (int64_t i = 0; i < nc; ++i) {
    if (dh0) {
      for (int k = 0; k < K; ++k) dh0[(b * s.channels + n0 + i) * K + k] = Io<S>::store(mu[i * K + k]);
    }
    for (int q = 0; q < P; ++q) partial[(b * P + q) * s.channels + n0 + i] = da[i * P + q];
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
    std::vector<T> buf(static_cast<size_t>(s.time * kNewtonTile * K));
    int32_t my_it = 0, my_failed = 0;
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < s.batch * tiles; ++u) {
      const int64_t b = u / tiles, n0 = (u % tiles) * kNewtonTile;
      bool conv = false;
      const int32_t it = newton_unit<Cell>(pre, params, h0, states, s, cfg, b, n0,
                                           std::min(kNewtonTile, s.channels - n0), buf.data(),
                                           &conv);
      my_it = std::max(my_it, it);
      my_failed += conv ? 0 : 1;
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
