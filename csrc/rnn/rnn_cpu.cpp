// CPU kernels of the multi-head recurrent cells (fastpaper/rnn.h), forward and backward.
//
// Work split: the hidden units of every head are cut into blocks of kU = 16 units; a task is one
// (head, unit block), and each thread owns a fixed contiguous range of tasks for the whole
// sequence, so one barrier per time step is the only synchronization.
// Forward, per time step t and task (n, u):
//   1. rec = h_{t-1} R^T restricted to the task's units, for all G gates: one packed panel per
//      gate (R repacked once per call so that panel g * UB + u holds gate g of unit block u), run
//      by the register-blocked micro-kernel of rnn_gemm.h with the batch as its M dimension;
//   2. right away, while rec (B x G x 16) is still in L1, the pointwise cell
//      (fastpaper/detail/rnn_cells.h) on those units, reading Wx in storage precision and writing
//      h_all, the next states and the pre-activations; then the barrier (h_t is complete).
// States stay in the compute type (float or double) between steps; only h_all/last are rounded.
// Backward walks time in reverse with the same tasks: per step t, first dh_t += d pre_{t+1} R for
// the task's units (a panel of R^T over all G*DH gate rows), then the pointwise backward of step t
// for those units gives d pre_t (kept in `work`); then the barrier. Afterwards dR_n =
// sum_{t,b} d pre^T h_{t-1} is one GEMM per head over all B*T rows (hist stores h_{t-1} with a
// uniform row stride), and db a fixed-order sum per (gate, head, unit): deterministic for any
// thread count (each value is computed by one thread in a fixed order).

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "core/blas.h"
#include "rnn/rnn_backends.h"
#include "rnn/rnn_gemm.h"

namespace fastpaper::rnn::cpu {
namespace {

using namespace fastpaper::rnn::detail;

// OpenMP provides the parallelism, with the core's OpenBLAS single-threaded (core/blas.h).
using fastpaper::detail::gemm_row_major;
using fastpaper::detail::single_threaded_blas;

int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

#define FP_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))

int thread_id() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

int thread_count() {
#if defined(_OPENMP)
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Hidden units per task: one packed panel (kNR columns) of one gate.
constexpr int64_t kU = kNR;

// The pointwise forward of n <= kU units of one (batch, head) row, copied to local arrays first:
// the compute loop then touches only locals, which the compiler can vectorize without runtime
// alias checks between the many state/gate pointers. *_gs: the element stride between gates.
// NU > 0: exactly NU = n_ units (compile-time trip counts for the copies: they stay vector moves
// instead of becoming memcpy calls); NU = 0: n_ units (a partial block).
template <typename S, typename T, typename C, int NU>
FP_CPU_CLONES void cell_forward_units(int64_t n_, const S* wx, int64_t wx_gs, const T* rec,
                                      int64_t rec_gs, const T* bias, int64_t b_gs,
                                      T* const* prev, T* const* next, T* cache, int64_t cache_gs,
                                      S* out) {
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  const int64_t n = NU > 0 ? NU : n_;
  T w[G][kU], r[G][kU], bb[GB][kU], p[NS][kU], pre[GB][kU], nx[NS][kU];
  for (int g = 0; g < G; ++g)
    for (int64_t j = 0; j < n; ++j) {
      w[g][j] = Io<S>::load(wx[g * wx_gs + j]);
      r[g][j] = rec[g * rec_gs + j];
    }
  for (int g = 0; g < GB; ++g)
    for (int64_t j = 0; j < n; ++j) bb[g][j] = bias[g * b_gs + j];
  for (int s = 0; s < NS; ++s)
    for (int64_t j = 0; j < n; ++j) p[s][j] = prev[s][j];
  for (int64_t j = 0; j < n_; ++j) {
    T wj[G], rj[G], bj[GB], pj[NS], prej[GB], nxj[NS];
    for (int g = 0; g < G; ++g) {
      wj[g] = w[g][j];
      rj[g] = r[g][j];
    }
    for (int g = 0; g < GB; ++g) bj[g] = bb[g][j];
    for (int s = 0; s < NS; ++s) pj[s] = p[s][j];
    C::preact(wj, rj, bj, prej);
    C::forward(prej, pj, nxj);
    for (int g = 0; g < GB; ++g) pre[g][j] = prej[g];
    for (int s = 0; s < NS; ++s) nx[s][j] = nxj[s];
  }
  for (int s = 0; s < NS; ++s)
    for (int64_t j = 0; j < n; ++j) next[s][j] = nx[s][j];
  if (cache) {
    for (int g = 0; g < GB; ++g)
      for (int64_t j = 0; j < n; ++j) cache[g * cache_gs + j] = pre[g][j];
  }
  for (int64_t j = 0; j < n; ++j) out[j] = Io<S>::store(nx[0][j]);
}

// Below ~1 MFLOP per step the barrier per step costs more than a second thread saves.
inline bool worth_threads(int64_t flops_per_step) { return flops_per_step >= (int64_t(1) << 20); }

template <typename S, typename T, template <class> class CellT>
void forward_cell(const FwdArgs<S, T>& a, const Shape& sh) {
  using C = CellT<T>;
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  const int64_t B = sh.batch, Tn = sh.time, NH = sh.heads, DH = sh.head_dim;
  const int64_t N = NH * DH, BN = B * N;
  const int64_t UB = (DH + kU - 1) / kU, DHp = UB * kU;  // unit blocks per head, padded DH
  // per head: B(k, g * DHp + j) = R[g, n, j, k] (0 for j >= DH), so panel g * UB + u of
  // h_n B holds gate g of unit block u
  std::vector<Packed<T>> P(static_cast<size_t>(NH));
#pragma omp parallel for schedule(static) if (NH > 1 && G * N * DH > (1 << 16))
  for (int64_t n = 0; n < NH; ++n) {
    P[n].pack(DH, G * DHp, [&](int64_t k, int64_t c) {
      const int64_t g = c / DHp, j = c % DHp;
      return j < DH ? Io<S>::load(a.R[((g * NH + n) * DH + j) * DH + k]) : T(0);
    });
  }
  std::vector<T> bias(static_cast<size_t>(GB * N));
  for (int64_t i = 0; i < GB * N; ++i) bias[i] = Io<S>::load(a.b[i]);
  // states at time t (t = 0: initial): hist when saved, else a two-slot ring
  std::vector<T> ring(a.hist ? 0 : static_cast<size_t>(NS * 2 * BN));
  auto state = [&](int s, int64_t t) -> T* {
    return a.hist ? a.hist + (s * (Tn + 1) + t) * BN : ring.data() + (s * 2 + (t & 1)) * BN;
  };
  for (int s = 0; s < NS; ++s) {
    T* st = state(s, 0);
    for (int64_t i = 0; i < BN; ++i) st[i] = a.states0 ? Io<S>::load(a.states0[s * BN + i]) : T(0);
  }
  const int64_t tasks = NH * UB;
  // One parallel region for the whole sequence. A thread writes only its own units of the next
  // states and reads h_{t-1} whole, so one barrier per step suffices (also with the ring: slot
  // t + 1 was last read in step t - 1, which every thread has left at the barrier).
#pragma omp parallel if (tasks > 1 && worth_threads(2 * B * G * N * DH))
  {
    const int tid = thread_id(), nt = thread_count();
    const int64_t task0 = tasks * tid / nt, task1 = tasks * (tid + 1) / nt;
    std::vector<T> rec(static_cast<size_t>(B * G * kU));  // [B][G][kU]: one task's h R^T
    for (int64_t t = 0; t < Tn; ++t) {
      const T* h = state(0, t);
      for (int64_t task = task0; task < task1; ++task) {
        const int64_t n = task / UB, u = task % UB, j0 = u * kU;
        const int64_t nu = std::min(kU, DH - j0);
        for (int g = 0; g < G; ++g)
          panel_gemm(h + n * DH, N, B, P[n], g * UB + u, rec.data() + g * kU, G * kU, false);
        for (int64_t b = 0; b < B; ++b) {
          const int64_t bn = b * NH + n;
          const bool active = a.lengths == nullptr || t < a.lengths[b];
          S* out = a.h_all + ((b * Tn + t) * NH + n) * DH + j0;
          T* cache = a.cache ? a.cache + ((t * B + b) * NH + n) * GB * DH + j0 : nullptr;
          T* prev[NS];
          T* next[NS];
          for (int s = 0; s < NS; ++s) {
            prev[s] = state(s, t) + bn * DH + j0;
            next[s] = state(s, t + 1) + bn * DH + j0;
          }
          if (active) {
            const S* wx = a.Wx + ((b * Tn + t) * G * NH + n) * DH + j0;
            const T* r = rec.data() + b * G * kU;
            const T* bj = bias.data() + n * DH + j0;
            // (GCC 12 leaves the GRU's loop scalar in the fixed-size build: run-time size there)
            if (nu == kU && !std::is_same_v<C, Gru<T>>) {
              cell_forward_units<S, T, C, kU>(nu, wx, N, r, kU, bj, N, prev, next, cache, DH, out);
            } else {
              cell_forward_units<S, T, C, 0>(nu, wx, N, r, kU, bj, N, prev, next, cache, DH, out);
            }
          } else {  // past the end: frozen states, zero output
            for (int s = 0; s < NS; ++s) std::copy(prev[s], prev[s] + nu, next[s]);
            if (cache) {
              for (int g = 0; g < GB; ++g) std::fill(cache + g * DH, cache + g * DH + nu, T(0));
            }
            for (int64_t j = 0; j < nu; ++j) out[j] = Io<S>::store(T(0));
          }
        }
      }
#pragma omp barrier
    }
  }
  for (int s = 0; s < NS; ++s) {
    const T* st = state(s, Tn);
    for (int64_t i = 0; i < BN; ++i) a.last[s * BN + i] = Io<S>::store(st[i]);
  }
}

// The pointwise backward of n <= kU units of one (batch, head) row (locals as in
// cell_forward_units); pre_in and w have gate stride gs.
template <typename S, typename T, typename C, int NU>
FP_CPU_CLONES void cell_backward_units(int64_t n_, const T* pre_in, int64_t gs, T* const* prev,
                                       T* const* dS, const S* dh, T* w) {
  constexpr int GB = C::GB, NS = C::S;
  const int64_t n = NU > 0 ? NU : n_;
  T pre[GB][kU], p[NS][kU], dn[NS][kU], dp[NS][kU], dpre[GB][kU];
  for (int g = 0; g < GB; ++g)
    for (int64_t j = 0; j < n; ++j) pre[g][j] = pre_in[g * gs + j];
  for (int s = 0; s < NS; ++s)
    for (int64_t j = 0; j < n; ++j) {
      p[s][j] = prev[s][j];
      dn[s][j] = dS[s][j];
    }
  if (dh) {
    for (int64_t j = 0; j < n; ++j) dn[0][j] += Io<S>::load(dh[j]);
  }
  for (int64_t j = 0; j < n_; ++j) {
    T prej[GB], pj[NS], dnj[NS], dpj[NS], dprej[GB];
    for (int g = 0; g < GB; ++g) prej[g] = pre[g][j];
    for (int s = 0; s < NS; ++s) {
      pj[s] = p[s][j];
      dnj[s] = dn[s][j];
    }
    C::backward(prej, pj, dnj, dpj, dprej);
    for (int s = 0; s < NS; ++s) dp[s][j] = dpj[s];
    for (int g = 0; g < GB; ++g) dpre[g][j] = dprej[g];
  }
  for (int s = 0; s < NS; ++s)
    for (int64_t j = 0; j < n; ++j) dS[s][j] = dp[s][j];
  for (int g = 0; g < GB; ++g)
    for (int64_t j = 0; j < n; ++j) w[g * gs + j] = dpre[g][j];
}

template <typename S, typename T, template <class> class CellT>
void backward_cell(const BwdArgs<S, T>& a, const Shape& sh) {
  using C = CellT<T>;
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  const int64_t B = sh.batch, Tn = sh.time, NH = sh.heads, DH = sh.head_dim;
  const int64_t N = NH * DH, BN = B * N, GD = G * DH, GBD = GB * DH;
  single_threaded_blas();
  // per head: B(g * DH + j, k) = R[g, n, j, k], so dh_prev += d pre_n[:, :G*DH] B; panel u is
  // unit block u of dh_prev
  std::vector<Packed<T>> P(static_cast<size_t>(NH));
#pragma omp parallel for schedule(static) if (NH > 1 && G * N * DH > (1 << 16))
  for (int64_t n = 0; n < NH; ++n) {
    P[n].pack(GD, DH, [&](int64_t c, int64_t k) {
      return Io<S>::load(a.R[(((c / DH) * NH + n) * DH + c % DH) * DH + k]);
    });
  }
  // dS: gradient of the states entering the current step (walking backwards)
  std::vector<T> dS(static_cast<size_t>(NS * BN));
  for (int64_t i = 0; i < NS * BN; ++i) dS[i] = a.dlast ? Io<S>::load(a.dlast[i]) : T(0);
  const int64_t UB = (DH + kU - 1) / kU, tasks = NH * UB;
  auto hist = [&](int s, int64_t t) { return a.hist + (s * (Tn + 1) + t) * BN; };
  auto work = [&](int64_t t) { return a.work + t * B * NH * GBD; };
  // Per step and task: dh_t += d pre_{t+1} R on the task's units (needs every unit's d pre_{t+1}:
  // the barrier of the previous iteration), then the cell backward of step t on them.
#pragma omp parallel if (tasks > 1 && worth_threads(2 * B * G * N * DH))
  {
    const int tid = thread_id(), nt = thread_count();
    const int64_t task0 = tasks * tid / nt, task1 = tasks * (tid + 1) / nt;
    for (int64_t t = Tn - 1; t >= 0; --t) {
      for (int64_t task = task0; task < task1; ++task) {
        const int64_t n = task / UB, u = task % UB, j0 = u * kU;
        const int64_t nu = std::min(kU, DH - j0);
        if (t + 1 < Tn) {
          panel_gemm(work(t + 1) + n * GBD, NH * GBD, B, P[n], u, dS.data() + n * DH + j0, N,
                     true);
        }
        for (int64_t b = 0; b < B; ++b) {
          const int64_t bn = b * NH + n;
          T* w = work(t) + bn * GBD + j0;
          if (a.lengths != nullptr && t >= a.lengths[b]) {
            // frozen step: states pass through, no gate gradient
            for (int g = 0; g < GB; ++g) std::fill(w + g * DH, w + g * DH + nu, T(0));
            continue;
          }
          T* prev[NS];
          T* ds[NS];
          for (int s = 0; s < NS; ++s) {
            prev[s] = const_cast<T*>(hist(s, t)) + bn * DH + j0;
            ds[s] = dS.data() + s * BN + bn * DH + j0;
          }
          const T* pre = a.cache + ((t * B + b) * NH + n) * GBD + j0;
          const S* dh = a.dh_all ? a.dh_all + ((b * Tn + t) * NH + n) * DH + j0 : nullptr;
          if (nu == kU) {
            cell_backward_units<S, T, C, kU>(nu, pre, DH, prev, ds, dh, w);
          } else {
            cell_backward_units<S, T, C, 0>(nu, pre, DH, prev, ds, dh, w);
          }
        }
      }
#pragma omp barrier
    }
    // the R path of the first step into the initial h
    if (a.dstates0 && Tn > 0) {
      for (int64_t task = task0; task < task1; ++task) {
        const int64_t n = task / UB, u = task % UB;
        panel_gemm(work(0) + n * GBD, NH * GBD, B, P[n], u, dS.data() + n * DH + u * kU, N, true);
      }
    }
  }
  if (a.dstates0) {
    for (int64_t i = 0; i < NS * BN; ++i) a.dstates0[i] = Io<S>::store(dS[i]);
  }
  // dR_n [G*DH x DH] = sum over the B*T rows of d pre_n^T h_prev_n
  std::vector<T> dRp(static_cast<size_t>(NH * GD * DH));
  const int64_t rows = Tn * B;
  // tasks: (head, slice of the G*DH output rows), so that a single head still uses every thread
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>((max_threads() + NH - 1) / NH, GD / 16));
  const int64_t slice_rows = (GD + slices - 1) / slices;
#pragma omp parallel for schedule(static) if (NH * slices > 1 && rows * GD * DH > (1 << 15))
  for (int64_t task = 0; task < NH * slices; ++task) {
    const int64_t n = task / slices, r0 = (task % slices) * slice_rows;
    const int64_t m = std::min(slice_rows, GD - r0);
    if (rows == 0 || m <= 0) continue;  // T = 0: dR stays zero
    gemm_row_major(true, false, m, DH, rows, a.work + n * GBD + r0, NH * GBD, a.hist + n * DH, N, T(0),
         dRp.data() + (n * GD + r0) * DH, DH);
  }
#pragma omp parallel for schedule(static)
  for (int64_t gn = 0; gn < G * NH; ++gn) {
    const int64_t g = gn / NH, n = gn % NH;
    const T* src = dRp.data() + (n * GD + g * DH) * DH;
    S* dst = a.dR + gn * DH * DH;
    for (int64_t i = 0; i < DH * DH; ++i) dst[i] = Io<S>::store(src[i]);
  }
  // db: fixed-order sums over (t, b) per (gate row, head, unit)
#pragma omp parallel for schedule(static)
  for (int64_t gn = 0; gn < GB * NH; ++gn) {
    const int64_t gb = gn / NH, n = gn % NH;
    const int64_t row = C::b_row(static_cast<int>(gb));
    std::vector<T> acc(static_cast<size_t>(DH), T(0));
    for (int64_t tb = 0; tb < rows; ++tb) {
      const T* w = a.work + (tb * NH + n) * GBD + row * DH;
      for (int64_t j = 0; j < DH; ++j) acc[j] += w[j];
    }
    for (int64_t j = 0; j < DH; ++j) a.db[gn * DH + j] = Io<S>::store(acc[j]);
  }
  // dWx[b, t, g, n, :] = d pre_t[b, n, wx_row(g), :]
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < B * Tn; ++bt) {
    const int64_t b = bt / Tn, t = bt % Tn;
    for (int g = 0; g < G; ++g) {
      for (int64_t n = 0; n < NH; ++n) {
        const T* w = a.work + ((t * B + b) * NH + n) * GBD + C::wx_row(g) * DH;
        S* dst = a.dWx + ((bt * G + g) * NH + n) * DH;
        for (int64_t j = 0; j < DH; ++j) dst[j] = Io<S>::store(w[j]);
      }
    }
  }
}

}  // namespace

template <typename S, typename T>
void forward(const FwdArgs<S, T>& a, const Shape& s) {
  switch (s.cell) {
    case Cell::lstm: return forward_cell<S, T, Lstm>(a, s);
    case Cell::gru: return forward_cell<S, T, Gru>(a, s);
    case Cell::elman: return forward_cell<S, T, Elman>(a, s);
    case Cell::slstm: return forward_cell<S, T, Slstm>(a, s);
  }
}

template <typename S, typename T>
void backward(const BwdArgs<S, T>& a, const Shape& s) {
  switch (s.cell) {
    case Cell::lstm: return backward_cell<S, T, Lstm>(a, s);
    case Cell::gru: return backward_cell<S, T, Gru>(a, s);
    case Cell::elman: return backward_cell<S, T, Elman>(a, s);
    case Cell::slstm: return backward_cell<S, T, Slstm>(a, s);
  }
}

template void forward(const FwdArgs<float, float>&, const Shape&);
template void forward(const FwdArgs<double, double>&, const Shape&);
template void forward(const FwdArgs<half_t, float>&, const Shape&);
template void forward(const FwdArgs<bf16_t, float>&, const Shape&);
template void backward(const BwdArgs<float, float>&, const Shape&);
template void backward(const BwdArgs<double, double>&, const Shape&);
template void backward(const BwdArgs<half_t, float>&, const Shape&);
template void backward(const BwdArgs<bf16_t, float>&, const Shape&);

}  // namespace fastpaper::rnn::cpu
