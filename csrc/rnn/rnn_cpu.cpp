// CPU kernels of the multi-head recurrent cells (fastpaper/rnn.h), forward and backward.
//
// Forward, per time step t:
//   1. rec = h_{t-1} R^T for every head: one single-threaded OpenBLAS GEMM per (head, column
//      slice) task, [B x DH] x [DH x G*DH] with R repacked once per call to [NH][G*DH][DH] (the
//      gate blocks of a head side by side), run as an OpenMP loop over the tasks so that one head
//      (NH = 1) still uses every thread; the batch is the GEMM's M dimension.
//   2. the pointwise cell (fastpaper/detail/rnn_cells.h) over batch x heads in an OpenMP loop,
//      reading Wx in storage precision and writing h_all, the next states and the pre-activations.
// States stay in the compute type (float or double) between steps; only h_all/last are rounded.
// Backward walks time in reverse: the pointwise backward gives d pre_t (kept in `work`), then
// dh_{t-1} += d pre_t[:, :G] R per head (GEMM). Afterwards dR_n = sum_{t,b} d pre^T h_{t-1} is one
// GEMM per head over all B*T rows (hist stores h_{t-1} with a uniform row stride), and db a
// fixed-order sum per (gate, head, unit): deterministic for any thread count.

#include <algorithm>
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

// The pointwise forward of one (batch, head) row of DH units, in chunks of kChunk units copied to
// local arrays: the compute loop then touches only locals, which the compiler can vectorize
// without runtime alias checks between the many state/gate pointers.
constexpr int64_t kChunk = 64;

template <typename S, typename T, typename C>
FP_CPU_CLONES void cell_forward_row(int64_t DH, int64_t N, const S* wx, const T* rec,
                                    const T* bias, T* const* prev, T* const* next, T* cache,
                                    S* out) {
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  for (int64_t j0 = 0; j0 < DH; j0 += kChunk) {
    const int64_t n = std::min(kChunk, DH - j0);
    T w[G][kChunk], r[G][kChunk], bb[GB][kChunk], p[NS][kChunk], pre[GB][kChunk], nx[NS][kChunk];
    for (int g = 0; g < G; ++g)
      for (int64_t j = 0; j < n; ++j) {
        w[g][j] = Io<S>::load(wx[g * N + j0 + j]);
        r[g][j] = rec[g * DH + j0 + j];
      }
    for (int g = 0; g < GB; ++g)
      for (int64_t j = 0; j < n; ++j) bb[g][j] = bias[g * N + j0 + j];
    for (int s = 0; s < NS; ++s)
      for (int64_t j = 0; j < n; ++j) p[s][j] = prev[s][j0 + j];
    for (int64_t j = 0; j < n; ++j) {
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
      for (int64_t j = 0; j < n; ++j) next[s][j0 + j] = nx[s][j];
    if (cache) {
      for (int g = 0; g < GB; ++g)
        for (int64_t j = 0; j < n; ++j) cache[g * DH + j0 + j] = pre[g][j];
    }
    for (int64_t j = 0; j < n; ++j) out[j0 + j] = Io<S>::store(nx[0][j]);
  }
}

template <typename S, typename T, template <class> class CellT>
void forward_cell(const FwdArgs<S, T>& a, const Shape& sh) {
  using C = CellT<T>;
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  const int64_t B = sh.batch, Tn = sh.time, NH = sh.heads, DH = sh.head_dim;
  const int64_t N = NH * DH, BN = B * N, GD = G * DH;
  // per head: B(k, g * DH + j) = R[g, n, j, k], so rec = h_n B
  std::vector<Packed<T>> P(static_cast<size_t>(NH));
#pragma omp parallel for schedule(static) if (NH > 1 && G * N * DH > (1 << 16))
  for (int64_t n = 0; n < NH; ++n) {
    P[n].pack(DH, GD, [&](int64_t k, int64_t c) {
      return Io<S>::load(a.R[(((c / DH) * NH + n) * DH + c % DH) * DH + k]);
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
  std::vector<T> rec(static_cast<size_t>(B * NH * GD));
  const int64_t panels = P[0].panels;
  // one parallel region for the whole sequence: two work-shared loops (with their barriers) per
  // step instead of a fork/join per step
// below ~1 MFLOP per step the two barriers per step cost more than the second thread saves
#pragma omp parallel if (B * NH * GD * DH >= (1 << 19))
  for (int64_t t = 0; t < Tn; ++t) {
    const T* h = state(0, t);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < NH * panels; ++task) {
      const int64_t n = task / panels, p = task % panels;
      packed_gemm(h + n * DH, N, B, P[n], p, p + 1, rec.data() + n * GD, NH * GD, false);
    }
#pragma omp for schedule(static)
    for (int64_t bn = 0; bn < B * NH; ++bn) {
      const int64_t b = bn / NH, n = bn % NH;
      const bool active = a.lengths == nullptr || t < a.lengths[b];
      S* out = a.h_all + ((b * Tn + t) * NH + n) * DH;
      T* cache = a.cache ? a.cache + ((t * B + b) * NH + n) * GB * DH : nullptr;
      T* prev[NS];
      T* next[NS];
      for (int s = 0; s < NS; ++s) {
        prev[s] = state(s, t) + bn * DH;
        next[s] = state(s, t + 1) + bn * DH;
      }
      if (active) {
        cell_forward_row<S, T, C>(DH, N, a.Wx + ((b * Tn + t) * G * NH + n) * DH,
                                  rec.data() + bn * GD, bias.data() + n * DH, prev, next, cache,
                                  out);
      } else {  // past the end: frozen states, zero output
        for (int s = 0; s < NS; ++s) std::copy(prev[s], prev[s] + DH, next[s]);
        if (cache) std::fill(cache, cache + GB * DH, T(0));
        for (int64_t j = 0; j < DH; ++j) out[j] = Io<S>::store(T(0));
      }
    }
  }
  for (int s = 0; s < NS; ++s) {
    const T* st = state(s, Tn);
    for (int64_t i = 0; i < BN; ++i) a.last[s * BN + i] = Io<S>::store(st[i]);
  }
}

// The pointwise backward of one (batch, head) row (chunked like cell_forward_row).
template <typename S, typename T, typename C>
FP_CPU_CLONES void cell_backward_row(int64_t DH, const T* pre_in, T* const* prev, T* const* dS,
                                     const S* dh, T* w) {
  constexpr int GB = C::GB, NS = C::S;
  for (int64_t j0 = 0; j0 < DH; j0 += kChunk) {
    const int64_t n = std::min(kChunk, DH - j0);
    T pre[GB][kChunk], p[NS][kChunk], dn[NS][kChunk], dp[NS][kChunk], dpre[GB][kChunk];
    for (int g = 0; g < GB; ++g)
      for (int64_t j = 0; j < n; ++j) pre[g][j] = pre_in[g * DH + j0 + j];
    for (int s = 0; s < NS; ++s)
      for (int64_t j = 0; j < n; ++j) {
        p[s][j] = prev[s][j0 + j];
        dn[s][j] = dS[s][j0 + j];
      }
    if (dh) {
      for (int64_t j = 0; j < n; ++j) dn[0][j] += Io<S>::load(dh[j0 + j]);
    }
    for (int64_t j = 0; j < n; ++j) {
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
      for (int64_t j = 0; j < n; ++j) dS[s][j0 + j] = dp[s][j];
    for (int g = 0; g < GB; ++g)
      for (int64_t j = 0; j < n; ++j) w[g * DH + j0 + j] = dpre[g][j];
  }
}

template <typename S, typename T, template <class> class CellT>
void backward_cell(const BwdArgs<S, T>& a, const Shape& sh) {
  using C = CellT<T>;
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  const int64_t B = sh.batch, Tn = sh.time, NH = sh.heads, DH = sh.head_dim;
  const int64_t N = NH * DH, BN = B * N, GD = G * DH, GBD = GB * DH;
  single_threaded_blas();
  // per head: B(g * DH + j, k) = R[g, n, j, k], so dh_prev += d pre_n[:, :G*DH] B
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
  const int64_t panels = P[0].panels;
  auto hist = [&](int s, int64_t t) { return a.hist + (s * (Tn + 1) + t) * BN; };
// below ~1 MFLOP per step the two barriers per step cost more than the second thread saves
#pragma omp parallel if (B * NH * GD * DH >= (1 << 19))
  for (int64_t t = Tn - 1; t >= 0; --t) {
    T* work_t = a.work + t * B * NH * GBD;
#pragma omp for schedule(static)
    for (int64_t bn = 0; bn < B * NH; ++bn) {
      const int64_t b = bn / NH, n = bn % NH;
      const bool active = a.lengths == nullptr || t < a.lengths[b];
      T* w = work_t + bn * GBD;
      if (!active) {  // frozen step: states pass through, no gate gradient
        std::fill(w, w + GBD, T(0));
        continue;
      }
      T* prev[NS];
      T* ds[NS];
      for (int s = 0; s < NS; ++s) {
        prev[s] = const_cast<T*>(hist(s, t)) + bn * DH;
        ds[s] = dS.data() + s * BN + bn * DH;
      }
      cell_backward_row<S, T, C>(DH, a.cache + ((t * B + b) * NH + n) * GBD, prev, ds,
                                 a.dh_all ? a.dh_all + ((b * Tn + t) * NH + n) * DH : nullptr, w);
    }
    // dh_{t-1} += d pre_t[:, :G] R  (per head: [B x G*DH] x [G*DH x DH])
#pragma omp for schedule(static)
    for (int64_t task = 0; task < NH * panels; ++task) {
      const int64_t n = task / panels, p = task % panels;
      packed_gemm(work_t + n * GBD, NH * GBD, B, P[n], p, p + 1, dS.data() + n * DH, N, true);
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
