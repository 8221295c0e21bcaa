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
#include <cblas.h>

#include <algorithm>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "rnn/rnn_backends.h"

namespace fastpaper::rnn::cpu {
namespace {

using namespace fastpaper::rnn::detail;

inline blasint I(int64_t v) { return static_cast<blasint>(v); }

void single_threaded_blas() {
  // OpenMP provides the parallelism; OpenBLAS threads inside would oversubscribe the cores.
  static const bool once = [] {
    scipy_openblas_set_num_threads(1);
    return true;
  }();
  (void)once;
}

// Row-major C[M x N] = alpha op(A) op(B) + beta C.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    I(m), I(n), I(k), 1.0f, A, I(lda), B, I(ldb), beta, C, I(ldc));
}
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  scipy_cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    I(m), I(n), I(k), 1.0, A, I(lda), B, I(ldb), beta, C, I(ldc));
}

int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// R [G][NH][DH][DH] (storage) -> Rp [NH][G*DH][DH] (compute type).
template <typename S, typename T>
std::vector<T> repack_R(const S* R, int64_t G, int64_t NH, int64_t DH) {
  std::vector<T> Rp(static_cast<size_t>(G * NH * DH * DH));
  const int64_t blk = DH * DH;
#pragma omp parallel for schedule(static) if (G * NH * blk > (1 << 16))
  for (int64_t gn = 0; gn < G * NH; ++gn) {
    const int64_t g = gn / NH, n = gn % NH;
    const S* src = R + gn * blk;
    T* dst = Rp.data() + (n * G + g) * blk;
    for (int64_t i = 0; i < blk; ++i) dst[i] = Io<S>::load(src[i]);
  }
  return Rp;
}

// Column slices of the G*DH outputs of a head, so that heads x slices >= threads.
int64_t slices_for(int64_t NH, int64_t cols) {
  const int64_t want = (max_threads() + NH - 1) / NH;
  return std::max<int64_t>(1, std::min<int64_t>(want, cols / 32));
}

template <typename S, typename T, template <class> class CellT>
void forward_cell(const FwdArgs<S, T>& a, const Shape& sh) {
  using C = CellT<T>;
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  const int64_t B = sh.batch, Tn = sh.time, NH = sh.heads, DH = sh.head_dim;
  const int64_t N = NH * DH, BN = B * N, GD = G * DH;
  single_threaded_blas();
  const std::vector<T> Rp = repack_R<S, T>(a.R, G, NH, DH);
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
  const int64_t slices = slices_for(NH, GD);
  const int64_t slice_cols = (GD + slices - 1) / slices;
  const bool par_gemm = B * NH * GD * DH > (1 << 14);
  const bool par_cell = BN * G > (1 << 12);
  for (int64_t t = 0; t < Tn; ++t) {
    const T* h = state(0, t);
#pragma omp parallel for schedule(static) if (par_gemm)
    for (int64_t task = 0; task < NH * slices; ++task) {
      const int64_t n = task / slices, c0 = (task % slices) * slice_cols;
      const int64_t cols = std::min(slice_cols, GD - c0);
      if (cols <= 0) continue;
      gemm(false, true, B, cols, DH, h + n * DH, N, Rp.data() + (n * GD + c0) * DH, DH, T(0),
           rec.data() + n * GD + c0, NH * GD);
    }
#pragma omp parallel for schedule(static) if (par_cell)
    for (int64_t bn = 0; bn < B * NH; ++bn) {
      const int64_t b = bn / NH, n = bn % NH;
      const bool active = a.lengths == nullptr || t < a.lengths[b];
      const S* wx_base = a.Wx + ((b * Tn + t) * G * NH + n) * DH;
      S* out = a.h_all + ((b * Tn + t) * NH + n) * DH;
      T* cache = a.cache ? a.cache + ((t * B + b) * NH + n) * GB * DH : nullptr;
      for (int64_t j = 0; j < DH; ++j) {
        const int64_t idx = bn * DH + j;
        T prev[NS], next[NS], pre[GB];
        for (int s = 0; s < NS; ++s) prev[s] = state(s, t)[idx];
        if (active) {
          T wx[G], r[G], bb[GB];
          for (int g = 0; g < G; ++g) {
            wx[g] = Io<S>::load(wx_base[g * N + j]);
            r[g] = rec[(bn * G + g) * DH + j];
          }
          for (int g = 0; g < GB; ++g) bb[g] = bias[g * N + n * DH + j];
          C::preact(wx, r, bb, pre);
          C::forward(pre, prev, next);
          out[j] = Io<S>::store(next[0]);
        } else {
          for (int s = 0; s < NS; ++s) next[s] = prev[s];
          for (int g = 0; g < GB; ++g) pre[g] = T(0);
          out[j] = Io<S>::store(T(0));
        }
        for (int s = 0; s < NS; ++s) state(s, t + 1)[idx] = next[s];
        if (cache) {
          for (int g = 0; g < GB; ++g) cache[g * DH + j] = pre[g];
        }
      }
    }
  }
  for (int s = 0; s < NS; ++s) {
    const T* st = state(s, Tn);
    for (int64_t i = 0; i < BN; ++i) a.last[s * BN + i] = Io<S>::store(st[i]);
  }
}

template <typename S, typename T, template <class> class CellT>
void backward_cell(const BwdArgs<S, T>& a, const Shape& sh) {
  using C = CellT<T>;
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  const int64_t B = sh.batch, Tn = sh.time, NH = sh.heads, DH = sh.head_dim;
  const int64_t N = NH * DH, BN = B * N, GD = G * DH, GBD = GB * DH;
  single_threaded_blas();
  const std::vector<T> Rp = repack_R<S, T>(a.R, G, NH, DH);
  // dS: gradient of the states entering the current step (walking backwards)
  std::vector<T> dS(static_cast<size_t>(NS * BN));
  for (int64_t i = 0; i < NS * BN; ++i) dS[i] = a.dlast ? Io<S>::load(a.dlast[i]) : T(0);
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>((max_threads() + NH - 1) / NH, DH / 32));
  const int64_t slice_cols = (DH + slices - 1) / slices;
  const bool par_gemm = B * NH * GD * DH > (1 << 14);
  const bool par_cell = BN * G > (1 << 12);
  auto hist = [&](int s, int64_t t) { return a.hist + (s * (Tn + 1) + t) * BN; };
  for (int64_t t = Tn - 1; t >= 0; --t) {
    T* work_t = a.work + t * B * NH * GBD;
#pragma omp parallel for schedule(static) if (par_cell)
    for (int64_t bn = 0; bn < B * NH; ++bn) {
      const int64_t b = bn / NH, n = bn % NH;
      const bool active = a.lengths == nullptr || t < a.lengths[b];
      T* w = work_t + bn * GBD;
      if (!active) {  // frozen step: states pass through, no gate gradient
        for (int64_t i = 0; i < GBD; ++i) w[i] = T(0);
        continue;
      }
      const T* pre_base = a.cache + ((t * B + b) * NH + n) * GBD;
      const S* dh = a.dh_all ? a.dh_all + ((b * Tn + t) * NH + n) * DH : nullptr;
      for (int64_t j = 0; j < DH; ++j) {
        const int64_t idx = bn * DH + j;
        T pre[GB], prev[NS], dnext[NS], dprev[NS], dpre[GB];
        for (int g = 0; g < GB; ++g) pre[g] = pre_base[g * DH + j];
        for (int s = 0; s < NS; ++s) {
          prev[s] = hist(s, t)[idx];
          dnext[s] = dS[s * BN + idx];
        }
        if (dh) dnext[0] += Io<S>::load(dh[j]);
        C::backward(pre, prev, dnext, dprev, dpre);
        for (int s = 0; s < NS; ++s) dS[s * BN + idx] = dprev[s];
        for (int g = 0; g < GB; ++g) w[g * DH + j] = dpre[g];
      }
    }
    // dh_{t-1} += d pre_t[:, :G] R  (per head: [B x G*DH] x [G*DH x DH])
#pragma omp parallel for schedule(static) if (par_gemm)
    for (int64_t task = 0; task < NH * slices; ++task) {
      const int64_t n = task / slices, c0 = (task % slices) * slice_cols;
      const int64_t cols = std::min(slice_cols, DH - c0);
      if (cols <= 0) continue;
      gemm(false, false, B, cols, GD, work_t + n * GBD, NH * GBD, Rp.data() + n * GD * DH + c0, DH,
           T(1), dS.data() + n * DH + c0, N);
    }
  }
  if (a.dstates0) {
    for (int64_t i = 0; i < NS * BN; ++i) a.dstates0[i] = Io<S>::store(dS[i]);
  }
  // dR_n [G*DH x DH] = sum over the B*T rows of d pre_n^T h_prev_n
  std::vector<T> dRp(static_cast<size_t>(NH * GD * DH));
  const int64_t rows = Tn * B;
#pragma omp parallel for schedule(static) if (NH > 1)
  for (int64_t n = 0; n < NH; ++n) {
    if (rows == 0) continue;  // T = 0: dR stays zero
    gemm(true, false, GD, DH, rows, a.work + n * GBD, NH * GBD, a.hist + n * DH, N, T(0),
         dRp.data() + n * GD * DH, DH);
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
