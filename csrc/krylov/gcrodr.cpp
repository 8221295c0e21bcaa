// GCRO-DR(m, k) and GMRES(m) (k = 0) with right preconditioning; see fastpaper/krylov.h for the
// math. All arrays are column-major. W = [C | V] holds the recycled C (kc columns) followed by the
// Arnoldi basis, so Vhat = [C, V_{p+1}] is simply W's first kc + p + 1 columns.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "krylov/dense.h"
#include "krylov/internal.h"

namespace fastpaper::krylov {
namespace {

using fastpaper::detail::fail;
using detail::finite;
using detail::is_complex_v;
using detail::RealOf;
using RVec = std::vector<double>;

template <class T>
inline T conj_(const T& v) {
  if constexpr (is_complex_v<T>) {
    return std::conj(v);
  } else {
    return v;
  }
}

// Thresholds relative to the working precision: a happy breakdown (the new Arnoldi direction is
// this small relative to A v_j) and the rank tests of the QRs of A U (new system) and Ghat P
// (harmonic update). Single precision resolves about 1e-7, double about 1e-16.
template <class T>
struct Tol {
  static constexpr bool single = std::is_same_v<RealOf<T>, float>;
  static constexpr double breakdown = single ? 1e-6 : 1e-14;
  static constexpr double rank_new_system = single ? 1e-5 : 1e-12;
  static constexpr double rank_harmonic = single ? 1e-4 : 1e-10;
  // Loss of orthogonality accepted for a new Arnoldi vector before CGS2's second update runs:
  // after one classical pass it is typically 1e-14..1e-12 in double and 1e-6..1e-5 in single.
  // The iterate is refined against the true residual every cycle, so this only has to keep the
  // basis well conditioned; iteration counts were unchanged up to 1e-8 / 1e-3 on all four
  // PDE families of the benchmark.
  static constexpr double orthogonality = single ? 1e-4 : 1e-10;
};

struct SolveError {
  std::string message;
};

// Single precision runs mixed: the Krylov basis, the recycle space, A, M^{-1} and every BLAS call
// are in T, while the iterate x and the true residual b - A x are kept in double (D), so each
// restart cycle is one step of iterative refinement (GMRES-IR). The attainable residual is then
// set by double, not by float32 (whose own floor is 1e-5..1e-4 on high-contrast PDEs), at the
// single-precision cost per iteration. For double T, D = T and nothing changes.
template <class T>
class Solver {
  using Vec = std::vector<T>;
  using Real = RealOf<T>;
  using D = detail::WideOf<T>;

 public:
  // wide: A in D for the true residual of a mixed-precision solve (null: A itself).
  Solver(const OperatorT<T>& A, const Csr<D>* wide, detail::PrecondApply<T>& M, const Options& opt,
         Result& res, double* history, int64_t cap)
      : A_(A), wide_(wide), M_(M), opt_(opt), res_(res), hist_(history), cap_(cap),
        n_(A.csr ? A.csr->rows : A.n), tmp_(static_cast<size_t>(n_)) {}

  // Returns an error message, empty on success. X is T, or D for a mixed-precision solve.
  template <class X>
  std::string run(const X* b, X* x, Recycle* rec, int32_t k) {
    const int64_t n = n_;
    const int32_t m = opt_.m;
    xd_.assign(x, x + n);
    bd_.assign(b, b + n);
    rd_.resize(static_cast<size_t>(n));
    res_.b_norm = dense::nrm2(n, bd_.data());
    const double tol = std::max(opt_.rtol * res_.b_norm, opt_.atol);
    Vec r(static_cast<size_t>(n));
    if (!residual(r.data())) return "A: callback failed";
    double rnorm = dense::nrm2(n, rd_.data());
    push(rnorm);
    if (!std::isfinite(rnorm)) return "A produced non-finite values";

    // W: C (kc columns) then V; one extra column for v_{p+1}.
    W_.assign(static_cast<size_t>(n * (m + 1)), T(0));
    int32_t kc = 0;
    const bool recycling = rec != nullptr && k > 0;
    if (recycling && rec->dim > 0 && rnorm > tol) {
      if (rec->n != n) {
        return "recycle: the space was built for n = " + std::to_string(rec->n) +
               ", this system has n = " + std::to_string(n);
      }
      std::string e = new_system(*rec);
      if (!e.empty()) return e;
      kc = rec->dim;
    }

    double prev = rnorm;
    int stall = 0;
    bool r_true = true;  // r == b - A x (false right after a projection onto C)
    bool stop = false;
    while (rnorm > tol && !stop && res_.iterations < opt_.maxiter) {
      // Project out range(C): r <- (I - C C^T) r, x <- x + M^{-1} U C^T r.
      if (kc > 0) {
        Vec c(static_cast<size_t>(kc));
        dense::gemv(true, n, kc, 1.0, W_.data(), n, r.data(), 0.0, c.data());
        dense::gemv(false, n, kc, -1.0, W_.data(), n, c.data(), 1.0, r.data());
        Vec z(static_cast<size_t>(n));
        dense::gemv(false, n, kc, 1.0, rec->template vec<T>().data(), n, c.data(), 0.0, z.data());
        if (!update_x(z.data())) return "M: callback failed";
        rnorm = dense::nrm2(n, r.data());
        r_true = false;
        if (rnorm <= tol) break;  // converged on range(U) alone; checked against b - A x below
      }
      const int64_t pmax = std::min<int64_t>(m - kc, opt_.maxiter - res_.iterations);
      int64_t p = 0;
      Vec y;
      Vec Hbar;  // (m+1) x m, leading dimension m+1: the V block of the Arnoldi relation
      Vec B;     // kc x m: C^T A M^{-1} V
      bool broke = false;
      std::string e = arnoldi_cycle(r.data(), rnorm, kc, pmax, tol, p, y, Hbar, B, broke, stop);
      if (!e.empty()) return e;
      if (broke) res_.breakdown = 1;
      // x <- x + M^{-1} (V_p y - U B y)
      Vec z(static_cast<size_t>(n));
      dense::gemv(false, n, p, 1.0, W_.data() + kc * n, n, y.data(), 0.0, z.data());
      if (kc > 0) {
        Vec By(static_cast<size_t>(kc));
        dense::gemv(false, kc, p, 1.0, B.data(), kc, y.data(), 0.0, By.data());
        dense::gemv(false, n, kc, -1.0, rec->template vec<T>().data(), n, By.data(), 1.0, z.data());
      }
      if (!update_x(z.data())) return "M: callback failed";
      if (recycling && p > 0) kc = harmonic_update(*rec, kc, p, Hbar, B, k);
      ++res_.cycles;
      if (!residual(r.data())) return "A: callback failed";
      rnorm = dense::nrm2(n, rd_.data());
      r_true = true;
      push(rnorm);
      if (!std::isfinite(rnorm)) return "A or M produced non-finite values";
      stall = rnorm > prev * (1 - 1e-12) ? stall + 1 : 0;
      prev = rnorm;
      if (stall >= 3) {
        res_.stagnated = 1;
        break;
      }
    }
    // The final, true residual.
    if (!r_true) {
      if (!residual(r.data())) return "A: callback failed";
      rnorm = dense::nrm2(n, rd_.data());
    }
    for (int64_t i = 0; i < n; ++i) x[i] = static_cast<X>(xd_[i]);
    res_.residual_norm = rnorm;
    res_.converged = res_.residual_norm <= tol ? 1 : 0;
    res_.recycle_dim = rec ? rec->dim : 0;
    return {};
  }

 private:
  bool matvec(const T* v, T* y) {
    ++res_.matvecs;
    if (A_.csr) {
      detail::csr_matvec(*A_.csr, v, y);
      return true;
    }
    return A_.apply(A_.ctx, v, y) == 0;
  }
  // y = A M^{-1} v
  bool amv(const T* v, T* y) { return M_.apply(v, tmp_.data()) && matvec(tmp_.data(), y); }
  // rd = b - A x in D, and r = rd rounded to T (the next Arnoldi start).
  bool residual(T* r) {
    if (wide_) {
      ++res_.matvecs;
      detail::csr_matvec(*wide_, xd_.data(), rd_.data());
    } else if (A_.csr) {
      ++res_.matvecs;
      detail::csr_matvec(*A_.csr, xd_.data(), rd_.data());
    } else {
      // A user callback works in T: the residual is as accurate as its product.
      for (int64_t i = 0; i < n_; ++i) tmp_[i] = static_cast<T>(xd_[i]);
      if (!matvec(tmp_.data(), r)) return false;
      for (int64_t i = 0; i < n_; ++i) rd_[i] = static_cast<D>(r[i]);
    }
    for (int64_t i = 0; i < n_; ++i) {
      rd_[i] = bd_[i] - rd_[i];
      r[i] = static_cast<T>(rd_[i]);
    }
    return true;
  }
  // x <- x + M^{-1} z, accumulated in D.
  bool update_x(const T* z) {
    if (!M_.apply(z, tmp_.data())) return false;
    if constexpr (std::is_same_v<D, T>) {
      dense::axpy(n_, 1.0, tmp_.data(), xd_.data());
    } else {
      for (int64_t i = 0; i < n_; ++i) xd_[i] += static_cast<D>(tmp_[i]);
    }
    return true;
  }
  void push(double v) {
    if (hist_ && res_.history_length < cap_) hist_[res_.history_length] = v;
    if (res_.history_length < cap_) ++res_.history_length;
  }

  // A new system for a carried U: C = A M^{-1} U, C = QR, U <- U R^{-1}. Columns of U that make C
  // rank deficient are dropped.
  std::string new_system(Recycle& rec) {
    const int64_t n = n_;
    int32_t kc = std::min<int32_t>(rec.dim, opt_.m - 1);
    Vec& U = rec.template vec<T>();
    U.resize(static_cast<size_t>(n * kc));
    while (kc > 0) {
      for (int32_t i = 0; i < kc; ++i) {
        if (!amv(U.data() + i * n, W_.data() + i * n)) return "A or M: callback failed";
      }
      Vec R;
      int64_t bad = -1;
      if (dense::qr(n, kc, W_.data(), n, R, Tol<T>::rank_new_system, bad)) {
        dense::trsm_right_upper(n, kc, R.data(), kc, U.data(), n);
        break;
      }
      if (bad < 0) return "LAPACK QR of A U failed";
      // drop column `bad` of U and try again
      std::copy(U.begin() + (bad + 1) * n, U.end(), U.begin() + bad * n);
      --kc;
      U.resize(static_cast<size_t>(n * kc));
    }
    rec.dim = kc;
    return {};
  }

  // p <= pmax Arnoldi steps of (I - C C^T) A M^{-1} from v_1 = r / beta, CGS2 against [C, V].
  // Returns y = argmin ||beta e1 - Hbar_p y|| (Givens rotations).
  std::string arnoldi_cycle(const T* r, double beta, int32_t kc, int64_t pmax, double tol,
                            int64_t& p, Vec& y, Vec& Hbar, Vec& B, bool& broke, bool& stop) {
    const int64_t n = n_;
    const int64_t m = opt_.m;
    const int64_t ldh = m + 1;
    Hbar.assign(static_cast<size_t>(ldh * m), T(0));
    B.assign(static_cast<size_t>(std::max<int64_t>(kc, 1) * m), T(0));
    Vec R(static_cast<size_t>(ldh * m), T(0));  // Hbar after the Givens rotations
    std::vector<Real> cs(static_cast<size_t>(m));  // rotations [[c, s], [-conj(s), c]], c real
    Vec sn(static_cast<size_t>(m)), g(static_cast<size_t>(m + 1), T(0));
    Vec h(static_cast<size_t>(kc + m + 1)), h2(h.size());
    T* V = W_.data() + kc * n;
    for (int64_t i = 0; i < n; ++i) V[i] = r[i] / static_cast<Real>(beta);
    g[0] = beta;
    p = 0;
    for (int64_t j = 0; j < pmax; ++j) {
      T* w = V + (j + 1) * n;
      if (!amv(V + j * n, w)) return "A or M: callback failed";
      ++res_.iterations;
      const double w0 = dense::nrm2(n, w);
      const int64_t cols = kc + j + 1;
      // CGS2 against [C, v_1..v_{j+1}] (BLAS-2): h = Q^H w, then in one sweep w <- w - Q h and
      // h2 = Q^H w. h2 is what the first pass left along Q; the second update w <- w - Q h2 (a
      // third sweep over the basis) runs only when that loss of orthogonality is above
      // Tol::orthogonality, which after one classical pass it rarely is.
      dense::gemv(true, n, cols, 1.0, W_.data(), n, w, 0.0, h.data());
      dense::cgs_update_project(n, cols, W_.data(), n, h.data(), w, h2.data());
      double hn = dense::nrm2(n, w);
      if (!(dense::nrm2(cols, h2.data()) <= Tol<T>::orthogonality * hn)) {
        dense::gemv(false, n, cols, -1.0, W_.data(), n, h2.data(), 1.0, w);
        for (int64_t i = 0; i < cols; ++i) h[i] += h2[i];
        hn = dense::nrm2(n, w);
      }
      for (int32_t i = 0; i < kc; ++i) B[i + j * kc] = h[i];
      for (int64_t i = 0; i <= j; ++i) Hbar[i + j * ldh] = h[kc + i];
      // Happy breakdown: the new direction vanished relative to A v_j; the Krylov space is
      // invariant and the least-squares solution below is exact on it.
      if (!(hn > Tol<T>::breakdown * w0) || w0 == 0.0) {
        broke = true;
        hn = 0.0;
        std::fill(w, w + n, T(0));
      } else {
        dense::scal(n, 1.0 / hn, w);
      }
      Hbar[j + 1 + j * ldh] = hn;
      // Givens: apply the previous rotations to column j, then annihilate its sub-diagonal.
      for (int64_t i = 0; i <= j + 1; ++i) R[i + j * ldh] = Hbar[i + j * ldh];
      for (int64_t i = 0; i < j; ++i) {
        const T a = R[i + j * ldh], c = R[i + 1 + j * ldh];
        R[i + j * ldh] = cs[i] * a + sn[i] * c;
        R[i + 1 + j * ldh] = -conj_(sn[i]) * a + cs[i] * c;
      }
      // New rotation: c = |a| / d, s = (a / |a|) conj(b) / d maps (a, b) to ((a / |a|) d, 0).
      const T a = R[j + j * ldh], c = R[j + 1 + j * ldh];
      const Real aa = std::abs(a);
      const Real d = std::hypot(aa, static_cast<Real>(std::abs(c)));
      if (d == 0.0) {
        cs[j] = 1.0;
        sn[j] = T(0);
      } else if (aa == 0.0) {
        cs[j] = 0.0;
        sn[j] = conj_(c) / std::abs(c);
      } else {
        cs[j] = aa / d;
        sn[j] = (a / aa) * conj_(c) / d;
      }
      R[j + j * ldh] = cs[j] * a + sn[j] * c;
      R[j + 1 + j * ldh] = T(0);
      g[j + 1] = -conj_(sn[j]) * g[j];
      g[j] = cs[j] * g[j];
      p = j + 1;
      const double est = std::abs(g[j + 1]);
      push(est);
      if (opt_.monitor && opt_.monitor(opt_.monitor_ctx, res_.iterations, est) != 0) stop = true;
      if (est <= tol || broke || stop) break;
    }
    // Back substitution R_p y = g; a zero pivot (singular Hessenberg after a true breakdown)
    // gets y_i = 0, the least-squares choice on that direction.
    y.assign(static_cast<size_t>(p), T(0));
    for (int64_t i = p - 1; i >= 0; --i) {
      T s = g[i];
      for (int64_t l = i + 1; l < p; ++l) s -= R[i + l * ldh] * y[l];
      const T d = R[i + i * ldh];
      y[i] = d != T(0) ? s / d : T(0);
    }
    return {};
  }

  // Harmonic Ritz update after a cycle of p steps with kc recycled vectors (mm = kc + p):
  //   Ghat = [[D, B], [0, Hbar]] ((mm+1) x mm), D = diag(1/||u_i||), What = [U D, V_p],
  //   Ghat^H Ghat z = theta Ghat^H (Vhat^H What) z, keep the k smallest |theta| -> P (mm x knew),
  //   QR(Ghat P) = Q R, C <- Vhat Q, U <- What P R^{-1}.
  // Returns the new recycle dimension; on a LAPACK failure the old (still consistent) U and C
  // are kept.
  int32_t harmonic_update(Recycle& rec, int32_t kc, int64_t p, const Vec& Hbar, const Vec& B,
                          int32_t k) {
    const int64_t n = n_;
    const int64_t m = opt_.m;
    const int64_t ldh = m + 1;
    const int64_t mm = kc + p;
    const int64_t ld = mm + 1;
    Vec& U = rec.template vec<T>();
    std::vector<Real> D(static_cast<size_t>(kc));
    for (int32_t i = 0; i < kc; ++i) D[i] = static_cast<Real>(1.0 / dense::nrm2(n, U.data() + i * n));
    Vec G(static_cast<size_t>(ld * mm), T(0));
    for (int32_t i = 0; i < kc; ++i) G[i + i * ld] = D[i];
    for (int64_t j = 0; j < p; ++j) {
      for (int32_t i = 0; i < kc; ++i) G[i + (kc + j) * ld] = B[i + j * kc];
      for (int64_t i = 0; i <= j + 1; ++i) G[kc + i + (kc + j) * ld] = Hbar[i + j * ldh];
    }
    // Vhat^H What = [[C^H U D, 0], [V_{p+1}^H U D, [I; 0]]]
    Vec VW(static_cast<size_t>(ld * mm), T(0));
    if (kc > 0) {
      dense::gemm(true, false, ld, kc, n, 1.0, W_.data(), n, U.data(), n, 0.0, VW.data(), ld);
      for (int32_t j = 0; j < kc; ++j)
        for (int64_t i = 0; i < ld; ++i) VW[i + j * ld] *= D[j];
    }
    for (int64_t j = 0; j < p; ++j) VW[kc + j + (kc + j) * ld] = T(1);
    // The pencil (Ghat^H Ghat, Ghat^H VW) is reduced to a standard eigenproblem when Ghat has full
    // column rank (always, short of a breakdown on a singular Hessenberg): with Ghat = Qg Rg,
    //   Rg^H Rg z = theta Rg^H Qg^H VW z  <=>  Rg^{-1} Qg^H VW z = mu z,  mu = 1 / theta,
    // which LAPACK geev solves in about a third of ggev's time. Otherwise ggev on the pencil.
    Vec Mx(static_cast<size_t>(mm * mm));
    bool reduced = false;
    {
      Vec Gq = G, Rg;
      int64_t bad = -1;
      if (dense::qr(ld, mm, Gq.data(), ld, Rg, Tol<T>::rank_new_system, bad)) {
        dense::gemm(true, false, mm, mm, ld, 1.0, Gq.data(), ld, VW.data(), ld, 0.0, Mx.data(), mm);
        dense::trsm_left_upper(mm, mm, Rg.data(), mm, Mx.data(), mm);
        reduced = true;
        for (const T& v : Mx) reduced = reduced && finite(v);
      }
    }
    Vec Ag, Bg;
    if (!reduced) {
      Ag.resize(static_cast<size_t>(mm * mm));
      Bg.resize(static_cast<size_t>(mm * mm));
      dense::gemm(true, false, mm, mm, ld, 1.0, G.data(), ld, G.data(), ld, 0.0, Ag.data(), mm);
      dense::gemm(true, false, mm, mm, ld, 1.0, G.data(), ld, VW.data(), ld, 0.0, Bg.data(), mm);
    }
    const double inf = std::numeric_limits<double>::infinity();

    const int64_t target = std::min<int64_t>({static_cast<int64_t>(k), m - 1, mm});
    Vec P;
    int64_t knew = 0;
    if constexpr (!is_complex_v<T>) {
      RVec mag(static_cast<size_t>(mm)), im(static_cast<size_t>(mm));
      Vec vr;
      if (reduced) {
        Vec wr, wi;
        if (!dense::geev(mm, Mx.data(), wr, wi, vr)) return kc;
        for (int64_t i = 0; i < mm; ++i) {
          const double a = std::hypot(static_cast<double>(wr[i]), static_cast<double>(wi[i]));
          mag[i] = a > 0 ? 1.0 / a : inf;  // |theta| = 1 / |mu|
          im[i] = wi[i];
        }
      } else {
        Vec ar, ai, be;
        if (!dense::ggev(mm, Ag.data(), Bg.data(), ar, ai, be, vr)) return kc;
        for (int64_t i = 0; i < mm; ++i) {
          mag[i] = be[i] != T(0) ? std::hypot(static_cast<double>(ar[i]), static_cast<double>(ai[i])) /
                                       std::abs(static_cast<double>(be[i]))
                                 : inf;
          im[i] = ai[i];
        }
      }
      // Select by |theta| ascending; a complex pair contributes its real and imaginary parts
      // (LAPACK stores a pair in consecutive columns, the one with positive imaginary part first).
      const int64_t limit = std::min<int64_t>({static_cast<int64_t>(k) + 1, m - 1, mm});
      std::vector<int64_t> order = by_magnitude(mm, [&](int64_t i) { return mag[i]; });
      std::vector<int64_t> cols;
      std::vector<char> taken(static_cast<size_t>(mm), 0);
      for (int64_t i : order) {
        if (static_cast<int64_t>(cols.size()) >= target) break;
        if (taken[i]) continue;
        if (im[i] == 0.0) {
          cols.push_back(i);
          taken[i] = 1;
          continue;
        }
        const int64_t first = im[i] > 0 ? i : i - 1;
        if (first < 0 || first + 1 >= mm) continue;
        if (static_cast<int64_t>(cols.size()) + 2 > limit) continue;
        cols.push_back(first);
        cols.push_back(first + 1);
        taken[first] = taken[first + 1] = 1;
      }
      knew = static_cast<int64_t>(cols.size());
      P.resize(static_cast<size_t>(mm * knew));
      for (int64_t j = 0; j < knew; ++j)
        std::copy(vr.begin() + cols[j] * mm, vr.begin() + (cols[j] + 1) * mm, P.begin() + j * mm);
    } else {
      RVec mag(static_cast<size_t>(mm));
      Vec vr;
      if (reduced) {
        Vec w;
        if (!dense::geev(mm, Mx.data(), w, vr)) return kc;
        for (int64_t i = 0; i < mm; ++i) {
          const double a = std::abs(w[i]);
          mag[i] = a > 0 ? 1.0 / a : inf;
        }
      } else {
        Vec al, be;
        if (!dense::ggev(mm, Ag.data(), Bg.data(), al, be, vr)) return kc;
        for (int64_t i = 0; i < mm; ++i)
          mag[i] = be[i] != T(0) ? static_cast<double>(std::abs(al[i])) / std::abs(be[i]) : inf;
      }
      std::vector<int64_t> order = by_magnitude(mm, [&](int64_t i) { return mag[i]; });
      knew = std::min<int64_t>(target, static_cast<int64_t>(order.size()));
      P.resize(static_cast<size_t>(mm * knew));
      for (int64_t j = 0; j < knew; ++j)
        std::copy(vr.begin() + order[j] * mm, vr.begin() + (order[j] + 1) * mm, P.begin() + j * mm);
    }
    // QR(Ghat P); drop columns of P that are (numerically) dependent.
    Vec GP, R;
    while (knew > 0) {
      GP.assign(static_cast<size_t>(ld * knew), T(0));
      dense::gemm(false, false, ld, knew, mm, 1.0, G.data(), ld, P.data(), mm, 0.0, GP.data(), ld);
      int64_t bad = -1;
      if (dense::qr(ld, knew, GP.data(), ld, R, Tol<T>::rank_harmonic, bad)) break;
      if (bad < 0) return kc;
      P.erase(P.begin() + bad * mm, P.begin() + (bad + 1) * mm);
      --knew;
    }
    if (knew == 0) {
      U.clear();
      rec.dim = 0;
      return 0;
    }
    // C_new = Vhat Q, U_new = [U D, V_p] P R^{-1}. R^{-1} is applied to the small mm x knew
    // coefficients (rows of U scaled by D first), not to the n x knew result: one triangular
    // solve on mm rows instead of n. The n-row buffers persist across cycles (no reallocation).
    for (int64_t j = 0; j < knew; ++j)
      for (int32_t i = 0; i < kc; ++i) P[i + j * mm] *= D[i];
    dense::trsm_right_upper(mm, knew, R.data(), knew, P.data(), mm);
    cn_.resize(static_cast<size_t>(n * knew));
    un_.resize(static_cast<size_t>(n * knew));
    dense::gemm(false, false, n, knew, ld, 1.0, W_.data(), n, GP.data(), ld, 0.0, cn_.data(), n);
    dense::gemm(false, false, n, knew, kc, 1.0, U.data(), n, P.data(), mm, 0.0, un_.data(), n);
    dense::gemm(false, false, n, knew, p, 1.0, W_.data() + kc * n, n, P.data() + kc, mm,
                kc > 0 ? 1.0 : 0.0, un_.data(), n);
    std::copy(cn_.begin(), cn_.end(), W_.begin());
    U.swap(un_);
    rec.dim = static_cast<int32_t>(knew);
    rec.n = n;
    rec.kind = detail::ScalarOf<T>::kind;
    return rec.dim;
  }

  // Indices 0..count-1 with a finite magnitude, sorted by it (stable).
  template <class F>
  static std::vector<int64_t> by_magnitude(int64_t count, F mag) {
    std::vector<int64_t> order;
    RVec v(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      v[i] = mag(i);
      if (std::isfinite(v[i])) order.push_back(i);
    }
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return v[a] < v[b]; });
    return order;
  }

  const OperatorT<T>& A_;
  const Csr<D>* wide_;
  detail::PrecondApply<T>& M_;
  const Options& opt_;
  Result& res_;
  double* hist_;
  int64_t cap_;
  int64_t n_;
  Vec tmp_;
  Vec W_;
  Vec cn_, un_;  // harmonic_update's n x k results, kept to reuse their memory
  std::vector<D> xd_, bd_, rd_;  // x, b and b - A x in D
};

template <class T>
bool all_finite(const T* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!finite(v[i])) return false;
  return true;
}

// B is T, or WideOf<T> with `wide` (A in that precision, A.csr its rounding) for mixed precision.
template <class T, class B>
Status solve(const OperatorT<T>& A, const PreconditionerT<T>& M, const B* b, B* x,
             const Options& opt, Recycle* rec, int32_t k, Result* result, double* history,
             int64_t cap, const Csr<detail::WideOf<T>>* wide = nullptr) {
  if (result == nullptr) return fail(Status::invalid_argument, "null result");
  *result = Result{};
  int64_t n = 0;
  if (A.csr) {
    if (std::string e = detail::check_csr(*A.csr); !e.empty()) {
      return fail(Status::invalid_argument, "A: " + e);
    }
    if (A.csr->rows != A.csr->cols) {
      return fail(Status::invalid_argument, "A must be square, got " + std::to_string(A.csr->rows) +
                                                " x " + std::to_string(A.csr->cols));
    }
    n = A.csr->rows;
  } else {
    if (A.apply == nullptr) return fail(Status::invalid_argument, "A: needs a CSR matrix or a callback");
    if (A.n < 0) return fail(Status::invalid_argument, "A: n must be >= 0");
    n = A.n;
  }
  if (n > std::numeric_limits<int32_t>::max() / 2) {
    return fail(Status::invalid_argument, "n is too large for 32-bit BLAS");
  }
  if (opt.m < 1 || opt.m > 10000) return fail(Status::invalid_argument, "m must be in [1, 10000]");
  if (k < 0 || (k > 0 && k >= opt.m)) {
    return fail(Status::invalid_argument, "k must satisfy 0 <= k < m, got k = " + std::to_string(k) +
                                              ", m = " + std::to_string(opt.m));
  }
  if (!(opt.rtol >= 0) || !(opt.atol >= 0) || !std::isfinite(opt.rtol) || !std::isfinite(opt.atol)) {
    return fail(Status::invalid_argument, "rtol and atol must be finite and >= 0");
  }
  if (opt.maxiter < 0) return fail(Status::invalid_argument, "maxiter must be >= 0");
  if (cap < 0 || (cap > 0 && history == nullptr)) {
    return fail(Status::invalid_argument, "history: null buffer or negative capacity");
  }
  if (n > 0 && (b == nullptr || x == nullptr)) return fail(Status::invalid_argument, "null b or x");
  if (!all_finite(b, n)) return fail(Status::invalid_argument, "b contains NaN or infinity");
  if (!all_finite(x, n)) return fail(Status::invalid_argument, "x0 contains NaN or infinity");
  constexpr Scalar kind = detail::ScalarOf<T>::kind;
  if (rec && rec->dim > 0 && rec->kind != kind) {
    return fail(Status::invalid_argument, std::string("recycle: the space holds ") +
                                              detail::scalar_name(rec->kind) +
                                              " vectors, this system is " +
                                              detail::scalar_name(kind));
  }
  if (rec && rec->dim > 0 && rec->n != n) {
    return fail(Status::invalid_argument, "recycle: the space was built for n = " +
                                              std::to_string(rec->n) + ", this system has n = " +
                                              std::to_string(n));
  }
  std::string err;
  std::unique_ptr<detail::PrecondApply<T>> Mi = detail::make_precond(A, M, err);
  if (!Mi) return fail(Status::invalid_argument, err);
  if (n == 0) {
    result->converged = 1;
    return fastpaper::detail::succeed();
  }
  dense::single_threaded_blas();
  Solver<T> s(A, wide, *Mi, opt, *result, history, cap);
  err = s.run(b, x, rec, k);
  if (!err.empty()) return fail(Status::invalid_argument, err);
  return fastpaper::detail::succeed();
}

// Mixed precision: A rounded once to T (same pattern), the solve in T against A's true residual.
template <class T>
Status solve_mixed(const Csr<detail::WideOf<T>>& A, const PreconditionerT<T>& M,
                   const detail::WideOf<T>* b, detail::WideOf<T>* x, const Options& opt,
                   Recycle* rec, int32_t k, Result* result, double* history, int64_t cap) {
  if (result == nullptr) return fail(Status::invalid_argument, "null result");
  if (std::string e = detail::check_csr(A); !e.empty()) {
    return fail(Status::invalid_argument, "A: " + e);
  }
  const int64_t nnz = A.index == Index::int32
                          ? static_cast<const int32_t*>(A.indptr)[A.rows]
                          : static_cast<const int64_t*>(A.indptr)[A.rows];
  std::vector<T> low(static_cast<size_t>(nnz));
  // Checked before the conversion: rounding a double beyond float's range is undefined behaviour.
  constexpr double kMax = std::numeric_limits<float>::max();
  for (int64_t e = 0; e < nnz; ++e) {
    const auto& v = A.values[e];
    double big = 0;
    if constexpr (is_complex_v<T>) {
      big = std::max(std::abs(v.real()), std::abs(v.imag()));
    } else {
      big = std::abs(v);
    }
    if (big > kMax) {
      return fail(Status::invalid_argument,
                  "A: entry " + std::to_string(e) + " overflows single precision; use full precision");
    }
    low[e] = static_cast<T>(v);
  }
  Csr<T> a_low{A.rows, A.cols, A.index, A.indptr, A.indices, low.data()};
  OperatorT<T> op;
  op.csr = &a_low;
  return solve(op, M, b, x, opt, rec, k, result, history, cap, &A);
}

}  // namespace

// One overload per scalar type of the public API.
#define FP_KRYLOV_ENTRY(T)                                                                       \
  Status gcrodr(const OperatorT<T>& A, const PreconditionerT<T>& M, const T* b, T* x,            \
                const Options& opt, Recycle* recycle, Result* result, double* history,           \
                int64_t history_capacity) {                                                      \
    /* Without a caller's space, a local one still deflates across the restarts of this solve. */\
    Recycle local;                                                                               \
    return solve(A, M, b, x, opt, recycle ? recycle : &local, opt.k, result, history,            \
                 history_capacity);                                                              \
  }                                                                                              \
  Status gmres(const OperatorT<T>& A, const PreconditionerT<T>& M, const T* b, T* x,             \
               const Options& opt, Result* result, double* history, int64_t history_capacity) {  \
    return solve(A, M, b, x, opt, nullptr, 0, result, history, history_capacity);                \
  }
FP_KRYLOV_ENTRY(float)
FP_KRYLOV_ENTRY(double)
FP_KRYLOV_ENTRY(C)
FP_KRYLOV_ENTRY(Z)
#undef FP_KRYLOV_ENTRY

#define FP_KRYLOV_MIXED(T)                                                                       \
  Status gcrodr_mixed(const Csr<detail::WideOf<T>>& A, const PreconditionerT<T>& M,              \
                      const detail::WideOf<T>* b, detail::WideOf<T>* x, const Options& opt,      \
                      Recycle* recycle, Result* result, double* history,                         \
                      int64_t history_capacity) {                                                \
    Recycle local;                                                                               \
    return solve_mixed(A, M, b, x, opt, recycle ? recycle : &local, opt.k, result, history,      \
                       history_capacity);                                                        \
  }                                                                                              \
  Status gmres_mixed(const Csr<detail::WideOf<T>>& A, const PreconditionerT<T>& M,               \
                     const detail::WideOf<T>* b, detail::WideOf<T>* x, const Options& opt,       \
                     Result* result, double* history, int64_t history_capacity) {                \
    return solve_mixed(A, M, b, x, opt, nullptr, 0, result, history, history_capacity);          \
  }
FP_KRYLOV_MIXED(float)
FP_KRYLOV_MIXED(C)
#undef FP_KRYLOV_MIXED

}  // namespace fastpaper::krylov
