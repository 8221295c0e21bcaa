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
// forward_input (fused input projection): head n's packed B is [Wih_n; R_n]^T (I + DH rows) and
// step 1 multiplies [x_t | h_{t-1}], so Wx never goes through memory; backward_input then skips
// dWx: per step, right after the barrier that completes d pre_{t+1}, each thread computes its
// input columns of dx_{t+1} = d pre_{t+1} Wih (Wih packed once), and dWih comes from the same
// GEMM as dR. The LSTM caches its activated gates (rnn_cells.h, Lstm::forward_gates).
// Backward walks time in reverse with the same tasks: per step t, first dh_t += d pre_{t+1} R for
// the task's units (a panel of R^T over all G*DH gate rows), then the pointwise backward of step t
// for those units gives d pre_t (kept in `work`, also written to dWx and added to the db sums
// while in L1); then the barrier. Afterwards dR_n = sum_{t,b} d pre^T h_{t-1} is one GEMM per
// head over all B*T rows (hist stores h_{t-1} with a uniform row stride). Deterministic for any
// thread count: every value is computed by one thread in a fixed order (db: t descending, then b).

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
// The cell loops: one vector iteration of a cell is a long dependent chain (two exp/tanh levels,
// divisions) of ~230 instructions, more than the out-of-order window overlaps across iterations.
// Unrolled twice and with GCC's pre-register-allocation scheduler (off by default on x86), the
// instructions of two independent iterations are interleaved; pure scheduling: same operations,
// same results.
#define FP_CELL_SCHED __attribute__((optimize("schedule-insns", "sched-pressure")))

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

// The pointwise cell runs on blocks of up to kRows batch rows x kU units at once: the loop over
// those kRows * kU independent lanes gives the out-of-order core several vectors of work at a
// time, where one row (2 vectors) would leave it waiting on the latency of the exp/tanh chains.
constexpr int64_t kRows = 8, kLanes = kRows * kU;

// One task's rows for the cell forward: pointers to row 0 and element strides between rows (rs)
// and gates (gs).
template <typename S, typename T>
struct FwdBlock {
  const S* wx;
  int64_t wx_rs, wx_gs;
  const T* rec;  // [rows][G][kU]
  const T* bias;
  int64_t b_gs;
  T* prev[4];
  T* next[4];
  int64_t st_rs;
  T* cache;  // nullable
  int64_t cache_rs, cache_gs;
  S* out;
  int64_t out_rs;
  const bool* active;  // per row: false past the sequence's end (frozen states, zero output)
};

// The pointwise forward of rows x nu units (nu <= kU), through local arrays: the compute loop
// then touches only locals, which the compiler vectorizes without runtime alias checks between
// the many state/gate pointers. NU > 0: nu == NU, compile-time trip counts for the copies (they
// stay vector moves instead of becoming memcpy calls); NU = 0: a partial block.
template <typename S, typename T, typename C, int NU>
FP_CELL_SCHED FP_CPU_CLONES void cell_forward_block(const FwdBlock<S, T>& k, int64_t rows,
                                                    int64_t nu_) {
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  const int64_t nu = NU > 0 ? NU : nu_;
  T w[G][kLanes], r[G][kLanes], bb[GB][kLanes], p[NS][kLanes], pre[GB][kLanes], nx[NS][kLanes];
  if (NU == 0) {  // lanes past nu: defined inputs (their results are not stored)
    for (int g = 0; g < G; ++g) {
      std::fill(w[g], w[g] + kLanes, T(0));
      std::fill(r[g], r[g] + kLanes, T(0));
    }
    for (int g = 0; g < GB; ++g) std::fill(bb[g], bb[g] + kLanes, T(0));
    for (int s = 0; s < NS; ++s) std::fill(p[s], p[s] + kLanes, T(0));
  }
  if (!k.wx) {  // fused input projection: rec already holds x_t Wih^T + h_{t-1} R^T
    for (int g = 0; g < G; ++g) std::fill(w[g], w[g] + kLanes, T(0));
  }
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t o = i * kU;
    for (int g = 0; g < G; ++g) {
      if (k.wx) {
        for (int64_t j = 0; j < nu; ++j) w[g][o + j] = Io<S>::load(k.wx[i * k.wx_rs + g * k.wx_gs + j]);
      }
      for (int64_t j = 0; j < nu; ++j) r[g][o + j] = k.rec[(i * G + g) * kU + j];
    }
    for (int g = 0; g < GB; ++g)
      for (int64_t j = 0; j < nu; ++j) bb[g][o + j] = k.bias[g * k.b_gs + j];
    for (int s = 0; s < NS; ++s)
      for (int64_t j = 0; j < nu; ++j) p[s][o + j] = k.prev[s][i * k.st_rs + j];
  }
  const int64_t lanes = rows * kU;
#pragma GCC unroll 2
  for (int64_t m = 0; m < lanes; ++m) {
    T wj[G], rj[G], bj[GB], pj[NS], prej[GB], nxj[NS];
    for (int g = 0; g < G; ++g) {
      wj[g] = w[g][m];
      rj[g] = r[g][m];
    }
    for (int g = 0; g < GB; ++g) bj[g] = bb[g][m];
    for (int s = 0; s < NS; ++s) pj[s] = p[s][m];
    C::preact(wj, rj, bj, prej);
    if constexpr (C::kCachesGates) {  // cache the activated gates (rnn_cells.h)
      T act[GB];
      C::forward_gates(prej, pj, nxj, act);
      for (int g = 0; g < GB; ++g) pre[g][m] = act[g];
    } else {
      C::forward(prej, pj, nxj);
      for (int g = 0; g < GB; ++g) pre[g][m] = prej[g];
    }
    for (int s = 0; s < NS; ++s) nx[s][m] = nxj[s];
  }
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t o = i * kU;
    S* out = k.out + i * k.out_rs;
    if (k.active[i]) {
      for (int s = 0; s < NS; ++s) {
        T* dst = k.next[s] + i * k.st_rs;
        for (int64_t j = 0; j < nu; ++j) dst[j] = nx[s][o + j];
      }
      if (k.cache) {
        for (int g = 0; g < GB; ++g) {
          T* dst = k.cache + i * k.cache_rs + g * k.cache_gs;
          for (int64_t j = 0; j < nu; ++j) dst[j] = pre[g][o + j];
        }
      }
      for (int64_t j = 0; j < nu; ++j) out[j] = Io<S>::store(nx[0][o + j]);
    } else {  // past the end: frozen states, zero output
      for (int s = 0; s < NS; ++s) {
        T* dst = k.next[s] + i * k.st_rs;
        for (int64_t j = 0; j < nu; ++j) dst[j] = p[s][o + j];
      }
      if (k.cache) {
        for (int g = 0; g < GB; ++g)
          std::fill_n(k.cache + i * k.cache_rs + g * k.cache_gs, nu, T(0));
      }
      for (int64_t j = 0; j < nu; ++j) out[j] = Io<S>::store(T(0));
    }
  }
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
  // fused input projection: the first I packed rows of head n's B are Wih^T (rows (g, n, j) of
  // Wih), the next DH rows R^T, and the step GEMM multiplies [x_t | h_{t-1, n}]
  const bool fused = a.x != nullptr;
  const int64_t I = fused ? a.in_dim : 0;
  std::vector<Packed<T>> P(static_cast<size_t>(NH));
#pragma omp parallel for schedule(static) if (NH > 1 && G * N * (DH + I) > (1 << 16))
  for (int64_t n = 0; n < NH; ++n) {
    // column c = g * DHp + j is row (g, n, j) of R (contiguous in k); the pointers are computed
    // once per column, not per element (no divisions in the packing loop)
    std::vector<const S*> col(static_cast<size_t>(G * DHp), nullptr);
    std::vector<const S*> wcol(static_cast<size_t>(G * DHp), nullptr);
    for (int g = 0; g < G; ++g)
      for (int64_t j = 0; j < DH; ++j) {
        col[g * DHp + j] = a.R + ((g * NH + n) * DH + j) * DH;
        if (fused) wcol[g * DHp + j] = a.Wih + ((g * NH + n) * DH + j) * I;
      }
    P[n].pack(I + DH, G * DHp, [&](int64_t k, int64_t c) {
      if (!col[c]) return T(0);
      return k < I ? Io<S>::load(wcol[c][k]) : Io<S>::load(col[c][k - I]);
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
      // fused: every task reads all B rows of x_t (each a contiguous row, but the rows are T * I
      // apart); request the next step's rows now, a whole step ahead
      if (fused && t + 1 < Tn) {
        for (int64_t b = 0; b < B; ++b)
          for (int64_t k = 0; k < I; k += 64 / int64_t(sizeof(S)))
            __builtin_prefetch(a.x + (b * Tn + t + 1) * I + k, 0, 2);
      }
      for (int64_t task = task0; task < task1; ++task) {
        const int64_t n = task / UB, u = task % UB, j0 = u * kU;
        const int64_t nu = std::min(kU, DH - j0);
        // This step's rows of these units that the cell reads or writes: B * G lines of Wx
        // 4 KiB .. 1 MiB apart and B of h_all (strides the hardware prefetcher does not follow),
        // requested now so that they arrive while the GEMM below runs.
        for (int64_t b = 0; b < B; ++b) {
          if (!fused) {
            for (int g = 0; g < G; ++g)
              __builtin_prefetch(a.Wx + ((b * Tn + t) * G + g) * N + n * DH + j0);
          }
          __builtin_prefetch(a.h_all + (b * Tn + t) * N + n * DH + j0, 1);
          if (a.cache) {
            for (int g = 0; g < GB; ++g)
              __builtin_prefetch(a.cache + (((t * B + b) * NH + n) * GB + g) * DH + j0, 1);
          }
        }
        if constexpr (std::is_same_v<S, T>) {
          // the A operand: [x_t rows | h_{t-1} rows of head n] (fused) or h_{t-1} alone
          const Seg<T> seg = fused ? Seg<T>{a.x + t * I, Tn * I, I, h + n * DH, N, DH}
                                   : Seg<T>{h + n * DH, N, DH, nullptr, 0, 0};
          for (int g = 0; g < G; ++g)
            panel_gemm(seg, B, P[n], g * UB + u, rec.data() + g * kU, G * kU, false);
        } else {
          for (int g = 0; g < G; ++g)
            panel_gemm(h + n * DH, N, B, P[n], g * UB + u, rec.data() + g * kU, G * kU, false);
        }
        for (int64_t b0 = 0; b0 < B; b0 += kRows) {
          const int64_t rows = std::min(kRows, B - b0);
          bool active[kRows];
          for (int64_t i = 0; i < rows; ++i)
            active[i] = a.lengths == nullptr || t < a.lengths[b0 + i];
          const int64_t bn = b0 * NH + n;
          FwdBlock<S, T> k{};
          k.wx = fused ? nullptr : a.Wx + ((b0 * Tn + t) * G * NH + n) * DH + j0;
          k.wx_rs = Tn * G * N;
          k.wx_gs = N;
          k.rec = rec.data() + b0 * G * kU;
          k.bias = bias.data() + n * DH + j0;
          k.b_gs = N;
          for (int s = 0; s < NS; ++s) {
            k.prev[s] = state(s, t) + bn * DH + j0;
            k.next[s] = state(s, t + 1) + bn * DH + j0;
          }
          k.st_rs = N;
          k.cache = a.cache ? a.cache + ((t * B + b0) * NH + n) * GB * DH + j0 : nullptr;
          k.cache_rs = NH * GB * DH;
          k.cache_gs = DH;
          k.out = a.h_all + ((b0 * Tn + t) * NH + n) * DH + j0;
          k.out_rs = Tn * N;
          k.active = active;
          if (nu == kU) {
            cell_forward_block<S, T, C, kU>(k, rows, nu);
          } else {
            cell_forward_block<S, T, C, 0>(k, rows, nu);
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

// One task's rows for the cell backward (strides as in FwdBlock; pre and w share gate stride gs).
template <typename S, typename T>
struct BwdBlock {
  const T* pre;  // the cache rows: pre, or the activated gates (C::kCachesGates)
  int64_t pre_rs, gs;
  const T* prev[4];
  const T* next[4];  // the states after the step (read when C::kCachesGates)
  T* dS[4];
  int64_t st_rs;
  const S* dh;  // nullable
  int64_t dh_rs;
  T* w;
  int64_t w_rs;
  S* dwx;  // dWx rows (gate g <- pre row wx_row(g))
  int64_t dwx_rs, dwx_gs;
  T* db;  // running sums of d pre rows b_row(gb), gate stride db_gs
  int64_t db_gs;
  const bool* active;  // per row: false past the end (no gate gradient, states pass through)
};

// The pointwise backward of rows x nu units (locals and NU as in cell_forward_block).
template <typename S, typename T, typename C, int NU>
FP_CELL_SCHED FP_CPU_CLONES void cell_backward_block(const BwdBlock<S, T>& k, int64_t rows,
                                                     int64_t nu_) {
  constexpr int GB = C::GB, NS = C::S;
  const int64_t nu = NU > 0 ? NU : nu_;
  constexpr int NN = C::kCachesGates ? NS : 1;  // next states read
  T pre[GB][kLanes], p[NS][kLanes], dn[NS][kLanes], dp[NS][kLanes], dpre[GB][kLanes];
  T nx[NN][kLanes];
  if (NU == 0) {
    for (int g = 0; g < GB; ++g) std::fill(pre[g], pre[g] + kLanes, T(0));
    for (int s = 0; s < NS; ++s) {
      std::fill(p[s], p[s] + kLanes, T(0));
      std::fill(dn[s], dn[s] + kLanes, T(0));
    }
    for (int s = 0; s < NN; ++s) std::fill(nx[s], nx[s] + kLanes, T(0));
  }
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t o = i * kU;
    for (int g = 0; g < GB; ++g)
      for (int64_t j = 0; j < nu; ++j) pre[g][o + j] = k.pre[i * k.pre_rs + g * k.gs + j];
    for (int s = 0; s < NS; ++s)
      for (int64_t j = 0; j < nu; ++j) {
        p[s][o + j] = k.prev[s][i * k.st_rs + j];
        dn[s][o + j] = k.dS[s][i * k.st_rs + j];
      }
    if constexpr (C::kCachesGates) {
      for (int s = 0; s < NS; ++s)
        for (int64_t j = 0; j < nu; ++j) nx[s][o + j] = k.next[s][i * k.st_rs + j];
    }
    if (k.dh) {
      for (int64_t j = 0; j < nu; ++j) dn[0][o + j] += Io<S>::load(k.dh[i * k.dh_rs + j]);
    }
  }
  const int64_t lanes = rows * kU;
#pragma GCC unroll 2
  for (int64_t m = 0; m < lanes; ++m) {
    T prej[GB], pj[NS], dnj[NS], dpj[NS], dprej[GB];
    for (int g = 0; g < GB; ++g) prej[g] = pre[g][m];
    for (int s = 0; s < NS; ++s) {
      pj[s] = p[s][m];
      dnj[s] = dn[s][m];
    }
    if constexpr (C::kCachesGates) {
      T nxj[NS];
      for (int s = 0; s < NS; ++s) nxj[s] = nx[s][m];
      C::backward_gates(prej, pj, nxj, dnj, dpj, dprej);
    } else {
      C::backward(prej, pj, dnj, dpj, dprej);
    }
    for (int s = 0; s < NS; ++s) dp[s][m] = dpj[s];
    for (int g = 0; g < GB; ++g) dpre[g][m] = dprej[g];
  }
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t o = i * kU;
    if (k.active[i]) {
      for (int s = 0; s < NS; ++s) {
        T* dst = k.dS[s] + i * k.st_rs;
        for (int64_t j = 0; j < nu; ++j) dst[j] = dp[s][o + j];
      }
      for (int g = 0; g < GB; ++g) {
        T* dst = k.w + i * k.w_rs + g * k.gs;
        for (int64_t j = 0; j < nu; ++j) dst[j] = dpre[g][o + j];
      }
      for (int g = 0; g < C::G && k.dwx; ++g) {  // null: backward_input (no dWx)
        S* dst = k.dwx + i * k.dwx_rs + g * k.dwx_gs;
        const T* src = dpre[C::wx_row(g)] + o;
        for (int64_t j = 0; j < nu; ++j) dst[j] = Io<S>::store(src[j]);
      }
      // db: rows in a fixed order (t descending, then b), whatever the thread count
      for (int g = 0; g < GB; ++g) {
        T* acc = k.db + g * k.db_gs;
        const T* src = dpre[C::b_row(g)] + o;
        for (int64_t j = 0; j < nu; ++j) acc[j] += src[j];
      }
    } else {  // past the end: no gate gradient, the state gradients pass through
      for (int g = 0; g < GB; ++g) std::fill_n(k.w + i * k.w_rs + g * k.gs, nu, T(0));
      for (int g = 0; g < C::G && k.dwx; ++g) {
        S* dst = k.dwx + i * k.dwx_rs + g * k.dwx_gs;
        for (int64_t j = 0; j < nu; ++j) dst[j] = Io<S>::store(T(0));
      }
    }
  }
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
    std::vector<const S*> row(static_cast<size_t>(GD));  // row c = g * DH + j of B: R[g, n, j, :]
    for (int g = 0; g < G; ++g)
      for (int64_t j = 0; j < DH; ++j) row[g * DH + j] = a.R + ((g * NH + n) * DH + j) * DH;
    P[n].pack(GD, DH, [&](int64_t c, int64_t k) { return Io<S>::load(row[c][k]); });
  }
  // backward_input: dx_t = d pre_t Wih, with d pre_t a row of work ([NH][G][DH], G == GB for
  // the cells forward_input runs) and Wih's rows ordered (g, n, j): Q packs Wih with its rows
  // permuted to work's (n, g, j) order, panel q = input columns 16 q ..; the panels are split
  // across threads (fixed ranges), each computes its columns of dx_{t+1} right after the barrier
  // that completes d pre_{t+1}
  const bool fused = a.x != nullptr;
  const int64_t I = fused ? a.in_dim : 0, IB = (I + kU - 1) / kU;
  Packed<T> Q;
  if (fused && a.dx) {
    std::vector<const S*> row(static_cast<size_t>(N * G));
    for (int64_t n = 0; n < NH; ++n)
      for (int g = 0; g < G; ++g)
        for (int64_t j = 0; j < DH; ++j)
          row[(n * G + g) * DH + j] = a.Wih + ((g * NH + n) * DH + j) * I;
    Q.pack(N * G, I, [&](int64_t k, int64_t c) { return Io<S>::load(row[k][c]); });
  }
  // dS: gradient of the states entering the current step (walking backwards)
  std::vector<T> db(static_cast<size_t>(GB * N), T(0));  // [GB][NH][DH] sums of d pre
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
    const int64_t q0 = IB * tid / nt, q1 = IB * (tid + 1) / nt;
    auto dx_step = [&](int64_t t) {  // dx_t = d pre_t Wih on this thread's input columns
      if constexpr (std::is_same_v<S, T>) {
        for (int64_t q = q0; q < q1; ++q)
          panel_gemm(work(t), NH * GBD, B, Q, q, a.dx + t * I + q * kU, Tn * I, false);
      }
    };
    for (int64_t t = Tn - 1; t >= 0; --t) {
      if (a.dx && t + 1 < Tn) dx_step(t + 1);
      for (int64_t task = task0; task < task1; ++task) {
        const int64_t n = task / UB, u = task % UB, j0 = u * kU;
        const int64_t nu = std::min(kU, DH - j0);
        // this step's strided rows of these units (as in the forward), before the GEMM
        for (int64_t b = 0; b < B; ++b) {
          if (a.dh_all) __builtin_prefetch(a.dh_all + (b * Tn + t) * N + n * DH + j0);
          if (!fused) {
            for (int g = 0; g < G; ++g)
              __builtin_prefetch(a.dWx + ((b * Tn + t) * G + g) * N + n * DH + j0, 1);
          }
          for (int g = 0; g < GB; ++g) {
            __builtin_prefetch(a.cache + (((t * B + b) * NH + n) * GB + g) * DH + j0);
            __builtin_prefetch(work(t) + ((b * NH + n) * GB + g) * DH + j0, 1);
          }
        }
        if (t + 1 < Tn) {
          panel_gemm(work(t + 1) + n * GBD, NH * GBD, B, P[n], u, dS.data() + n * DH + j0, N,
                     true);
        }
        for (int64_t b0 = 0; b0 < B; b0 += kRows) {
          const int64_t rows = std::min(kRows, B - b0);
          bool active[kRows];
          for (int64_t i = 0; i < rows; ++i)
            active[i] = a.lengths == nullptr || t < a.lengths[b0 + i];
          const int64_t bn = b0 * NH + n;
          BwdBlock<S, T> k{};
          k.pre = a.cache + ((t * B + b0) * NH + n) * GBD + j0;
          k.pre_rs = NH * GBD;
          k.gs = DH;
          for (int s = 0; s < NS; ++s) {
            k.prev[s] = hist(s, t) + bn * DH + j0;
            k.next[s] = hist(s, t + 1) + bn * DH + j0;
            k.dS[s] = dS.data() + s * BN + bn * DH + j0;
          }
          k.st_rs = N;
          k.dh = a.dh_all ? a.dh_all + ((b0 * Tn + t) * NH + n) * DH + j0 : nullptr;
          k.dh_rs = Tn * N;
          k.w = work(t) + bn * GBD + j0;
          k.w_rs = NH * GBD;
          k.dwx = fused ? nullptr : a.dWx + ((b0 * Tn + t) * G * NH + n) * DH + j0;
          k.dwx_rs = Tn * G * N;
          k.dwx_gs = N;
          k.db = db.data() + n * DH + j0;
          k.db_gs = N;
          k.active = active;
          if (nu == kU) {
            cell_backward_block<S, T, C, kU>(k, rows, nu);
          } else {
            cell_backward_block<S, T, C, 0>(k, rows, nu);
          }
        }
      }
#pragma omp barrier
    }
    if (a.dx && Tn > 0) dx_step(0);
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
  // dR_n [G*DH x DH] = sum over the T*B rows of d pre_n^T h_prev_n (and, backward_input, dWih_n
  // = d pre_n^T x), computed transposed: CT_n = [h_prev_n | x]^T d pre_n, [(DH + I) x G*DH], so
  // that OpenBLAS packs the narrow [h | x] operand and streams the wide d pre (measured ~10%
  // faster than d pre^T h here), with dR and dWih from one GEMM when NH = 1. Z holds the A
  // operand: hist's h rows (uniform stride over (t, b)), or for backward_input a copy
  // [h_prev | x] per (t, b) row.
  const int64_t rows = Tn * B, CR = DH + I;
  std::vector<T> Z;
  const T* zA = a.hist;
  int64_t ldz = N;
  if (fused && rows > 0) {
    Z.resize(static_cast<size_t>(rows * (N + I)));
#pragma omp parallel for schedule(static) if (rows * (N + I) > (1 << 16))
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t b = 0; b < B; ++b) {
        T* dst = Z.data() + (t * B + b) * (N + I);
        std::copy_n(a.hist + (t * B + b) * N, N, dst);
        if constexpr (std::is_same_v<S, T>) std::copy_n(a.x + (b * Tn + t) * I, I, dst + N);
      }
    zA = Z.data();
    ldz = N + I;
  }
  std::vector<T> CT(static_cast<size_t>(NH * CR * GD));
  // tasks: (head, slice of the G*DH output columns), so that a single head still uses every thread
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>((max_threads() + NH - 1) / NH, GD / 16));
  const int64_t slice_cols = (GD + slices - 1) / slices;
#pragma omp parallel for schedule(static) if (NH * slices > 1 && rows * GD * CR > (1 << 15))
  for (int64_t task = 0; task < NH * slices; ++task) {
    const int64_t n = task / slices, c0 = (task % slices) * slice_cols;
    const int64_t m = std::min(slice_cols, GD - c0);
    if (m <= 0) continue;
    T* ct = CT.data() + n * CR * GD + c0;
    if (rows == 0) {  // T = 0: zero gradients
      for (int64_t r = 0; r < CR; ++r) std::fill_n(ct + r * GD, m, T(0));
      continue;
    }
    const T* w = a.work + n * GBD + c0;
    if (fused && NH == 1) {  // [h | x] adjacent: one GEMM
      gemm_row_major(true, false, CR, m, rows, zA, ldz, w, NH * GBD, T(0), ct, GD);
    } else {
      gemm_row_major(true, false, DH, m, rows, zA + n * DH, ldz, w, NH * GBD, T(0), ct, GD);
      if (fused) {
        gemm_row_major(true, false, I, m, rows, zA + N, ldz, w, NH * GBD, T(0), ct + DH * GD, GD);
      }
    }
  }
  // dR[g, n, j, k] = CT_n[k][g * DH + j];  dWih[(g, n, j), c] = CT_n[DH + c][g * DH + j]
#pragma omp parallel for schedule(static)
  for (int64_t gn = 0; gn < G * NH; ++gn) {
    const int64_t g = gn / NH, n = gn % NH;
    const T* src = CT.data() + n * CR * GD + g * DH;
    S* dst = a.dR + gn * DH * DH;
    // transposes in 16 x 16 tiles (every cache line touched is used whole)
    auto transpose = [&](const T* from, S* to, int64_t ncols) {  // to[j][c] = from[c][j]
      for (int64_t j0 = 0; j0 < DH; j0 += 16)
        for (int64_t c0 = 0; c0 < ncols; c0 += 16) {
          const int64_t j1 = std::min(DH, j0 + 16), c1 = std::min(ncols, c0 + 16);
          for (int64_t c = c0; c < c1; ++c)
            for (int64_t j = j0; j < j1; ++j) to[j * ncols + c] = Io<S>::store(from[c * GD + j]);
        }
    };
    transpose(src, dst, DH);
    if (fused) transpose(src + DH * GD, a.dWih + gn * DH * I, I);
  }
  for (int64_t i = 0; i < GB * N; ++i) a.db[i] = Io<S>::store(db[i]);
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
