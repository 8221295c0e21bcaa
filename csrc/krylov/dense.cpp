// Dense kernels of the Krylov solver on OpenBLAS/LAPACKE (scipy-openblas32).
#include "krylov/dense.h"

#include <complex>
// LAPACKE's documented way to use std::complex in C++ (instead of C99 _Complex).
#define lapack_complex_float std::complex<float>
#define lapack_complex_double std::complex<double>
#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <complex>

namespace fastpaper::krylov::dense {
namespace {
inline blasint I(int64_t v) { return static_cast<blasint>(v); }
inline CBLAS_TRANSPOSE T(bool t) { return t ? CblasTrans : CblasNoTrans; }

// After geqrf: copy the upper triangle R out of A and report the first column whose |R_jj| is not
// above rank_tol * max|R_ii| (numerically dependent), for the real and the complex QR alike.
template <typename S>
bool copy_r_and_check_rank(int64_t cols, const S* A, int64_t lda, std::vector<S>& R,
                           double rank_tol, int64_t& bad) {
  double rmax = 0;
  for (int64_t j = 0; j < cols; ++j) {
    for (int64_t i = 0; i <= j; ++i) R[i + j * cols] = A[i + j * lda];
    rmax = std::max(rmax, std::abs(R[j + j * cols]));
  }
  for (int64_t j = 0; j < cols; ++j) {
    const double d = std::abs(R[j + j * cols]);
    if (!(d > rank_tol * rmax) || !std::isfinite(d)) {
      bad = j;
      return false;
    }
  }
  return true;
}
}  // namespace

void single_threaded_blas() {
  static const bool once = [] {
    scipy_openblas_set_num_threads(1);
    return true;
  }();
  (void)once;
}

double nrm2(int64_t n, const double* x) { return scipy_cblas_dnrm2(I(n), x, 1); }
void scal(int64_t n, double a, double* x) { scipy_cblas_dscal(I(n), a, x, 1); }
void axpy(int64_t n, double a, const double* x, double* y) {
  scipy_cblas_daxpy(I(n), a, x, 1, y, 1);
}

void gemv(bool trans, int64_t rows, int64_t cols, double alpha, const double* A, int64_t lda,
          const double* x, double beta, double* y) {
  if (rows == 0 || cols == 0) {
    // BLAS would leave y untouched when the reduction is empty; make beta apply.
    const int64_t len = trans ? cols : rows;
    for (int64_t i = 0; i < len; ++i) y[i] = beta == 0.0 ? 0.0 : beta * y[i];
    return;
  }
  scipy_cblas_dgemv(CblasColMajor, T(trans), I(rows), I(cols), alpha, A, I(lda), x, 1, beta, y, 1);
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < m; ++i) C[i + j * ldc] = beta == 0.0 ? 0.0 : beta * C[i + j * ldc];
    return;
  }
  scipy_cblas_dgemm(CblasColMajor, T(ta), T(tb), I(m), I(n), I(k), alpha, A, I(lda), B, I(ldb),
                    beta, C, I(ldc));
}

void trsm_right_upper(int64_t rows, int64_t k, const double* R, int64_t ldr, double* B,
                      int64_t ldb) {
  if (rows == 0 || k == 0) return;
  scipy_cblas_dtrsm(CblasColMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, I(rows),
                    I(k), 1.0, R, I(ldr), B, I(ldb));
}

void trsm_left_upper(int64_t k, int64_t cols, const double* R, int64_t ldr, double* B,
                     int64_t ldb) {
  if (k == 0 || cols == 0) return;
  scipy_cblas_dtrsm(CblasColMajor, CblasLeft, CblasUpper, CblasNoTrans, CblasNonUnit, I(k),
                    I(cols), 1.0, R, I(ldr), B, I(ldb));
}

bool geev(int64_t n, double* A, std::vector<double>& wr, std::vector<double>& wi,
          std::vector<double>& vr) {
  wr.assign(static_cast<size_t>(n), 0.0);
  wi.assign(static_cast<size_t>(n), 0.0);
  vr.assign(static_cast<size_t>(n * n), 0.0);
  double vl_dummy = 0;
  return scipy_LAPACKE_dgeev(LAPACK_COL_MAJOR, 'N', 'V', I(n), A, I(n), wr.data(), wi.data(),
                             &vl_dummy, 1, vr.data(), I(n)) == 0;
}

bool qr(int64_t rows, int64_t cols, double* A, int64_t lda, std::vector<double>& R,
        double rank_tol, int64_t& bad) {
  bad = -1;
  R.assign(static_cast<size_t>(cols * cols), 0.0);
  if (cols == 0) return true;
  std::vector<double> tau(static_cast<size_t>(cols));
  if (scipy_LAPACKE_dgeqrf(LAPACK_COL_MAJOR, I(rows), I(cols), A, I(lda), tau.data()) != 0) {
    return false;
  }
  if (!copy_r_and_check_rank(cols, A, lda, R, rank_tol, bad)) return false;
  return scipy_LAPACKE_dorgqr(LAPACK_COL_MAJOR, I(rows), I(cols), I(cols), A, I(lda),
                              tau.data()) == 0;
}

bool ggev(int64_t n, double* A, double* B, std::vector<double>& alphar,
          std::vector<double>& alphai, std::vector<double>& beta, std::vector<double>& vr) {
  alphar.assign(static_cast<size_t>(n), 0.0);
  alphai.assign(static_cast<size_t>(n), 0.0);
  beta.assign(static_cast<size_t>(n), 0.0);
  vr.assign(static_cast<size_t>(n * n), 0.0);
  double vl_dummy = 0;
  return scipy_LAPACKE_dggev(LAPACK_COL_MAJOR, 'N', 'V', I(n), A, I(n), B, I(n), alphar.data(),
                             alphai.data(), beta.data(), &vl_dummy, 1, vr.data(), I(n)) == 0;
}

// ---- complex128 -------------------------------------------------------------------------------

namespace {
inline CBLAS_TRANSPOSE C(bool t) { return t ? CblasConjTrans : CblasNoTrans; }
inline lapack_complex_double* L(Z* p) { return reinterpret_cast<lapack_complex_double*>(p); }
}  // namespace

double nrm2(int64_t n, const Z* x) { return scipy_cblas_dznrm2(I(n), x, 1); }
void scal(int64_t n, Z a, Z* x) { scipy_cblas_zscal(I(n), &a, x, 1); }
void axpy(int64_t n, Z a, const Z* x, Z* y) { scipy_cblas_zaxpy(I(n), &a, x, 1, y, 1); }

void gemv(bool trans, int64_t rows, int64_t cols, Z alpha, const Z* A, int64_t lda, const Z* x,
          Z beta, Z* y) {
  if (rows == 0 || cols == 0) {
    const int64_t len = trans ? cols : rows;
    for (int64_t i = 0; i < len; ++i) y[i] = beta == Z(0) ? Z(0) : beta * y[i];
    return;
  }
  scipy_cblas_zgemv(CblasColMajor, C(trans), I(rows), I(cols), &alpha, A, I(lda), x, 1, &beta, y, 1);
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, Z alpha, const Z* A, int64_t lda,
          const Z* B, int64_t ldb, Z beta, Z* Cm, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < m; ++i) Cm[i + j * ldc] = beta == Z(0) ? Z(0) : beta * Cm[i + j * ldc];
    return;
  }
  scipy_cblas_zgemm(CblasColMajor, C(ta), C(tb), I(m), I(n), I(k), &alpha, A, I(lda), B, I(ldb),
                    &beta, Cm, I(ldc));
}

void trsm_right_upper(int64_t rows, int64_t k, const Z* R, int64_t ldr, Z* B, int64_t ldb) {
  if (rows == 0 || k == 0) return;
  const Z one(1.0);
  scipy_cblas_ztrsm(CblasColMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, I(rows),
                    I(k), &one, R, I(ldr), B, I(ldb));
}

void trsm_left_upper(int64_t k, int64_t cols, const Z* R, int64_t ldr, Z* B, int64_t ldb) {
  if (k == 0 || cols == 0) return;
  const Z one(1.0);
  scipy_cblas_ztrsm(CblasColMajor, CblasLeft, CblasUpper, CblasNoTrans, CblasNonUnit, I(k),
                    I(cols), &one, R, I(ldr), B, I(ldb));
}

bool geev(int64_t n, Z* A, std::vector<Z>& w, std::vector<Z>& vr) {
  w.assign(static_cast<size_t>(n), Z(0));
  vr.assign(static_cast<size_t>(n * n), Z(0));
  Z vl_dummy(0);
  return scipy_LAPACKE_zgeev(LAPACK_COL_MAJOR, 'N', 'V', I(n), L(A), I(n), L(w.data()),
                             L(&vl_dummy), 1, L(vr.data()), I(n)) == 0;
}

bool qr(int64_t rows, int64_t cols, Z* A, int64_t lda, std::vector<Z>& R, double rank_tol,
        int64_t& bad) {
  bad = -1;
  R.assign(static_cast<size_t>(cols * cols), Z(0));
  if (cols == 0) return true;
  std::vector<Z> tau(static_cast<size_t>(cols));
  if (scipy_LAPACKE_zgeqrf(LAPACK_COL_MAJOR, I(rows), I(cols), L(A), I(lda), L(tau.data())) != 0) {
    return false;
  }
  if (!copy_r_and_check_rank(cols, A, lda, R, rank_tol, bad)) return false;
  return scipy_LAPACKE_zungqr(LAPACK_COL_MAJOR, I(rows), I(cols), I(cols), L(A), I(lda),
                              L(tau.data())) == 0;
}

bool ggev(int64_t n, Z* A, Z* B, std::vector<Z>& alpha, std::vector<Z>& beta, std::vector<Z>& vr) {
  alpha.assign(static_cast<size_t>(n), Z(0));
  beta.assign(static_cast<size_t>(n), Z(0));
  vr.assign(static_cast<size_t>(n * n), Z(0));
  Z vl_dummy(0);
  return scipy_LAPACKE_zggev(LAPACK_COL_MAJOR, 'N', 'V', I(n), L(A), I(n), L(B), I(n),
                             L(alpha.data()), L(beta.data()), L(&vl_dummy), 1, L(vr.data()),
                             I(n)) == 0;
}

}  // namespace fastpaper::krylov::dense
