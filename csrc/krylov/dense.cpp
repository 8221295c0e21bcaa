// Dense kernels of the Krylov solver on OpenBLAS/LAPACKE (scipy-openblas32), one template per
// kernel over the four scalar types; Lib<T> maps each to its s/d/c/z routine.
#include "krylov/dense.h"

#include "core/blas.h"

#include <complex>
// LAPACKE's documented way to use std::complex in C++ (instead of C99 _Complex).
#define lapack_complex_float std::complex<float>
#define lapack_complex_double std::complex<double>
#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace fastpaper::krylov::dense {
namespace {

using Z = std::complex<double>;
using C = std::complex<float>;
template <class T>
inline constexpr bool is_complex_v = std::is_same_v<T, Z> || std::is_same_v<T, C>;

inline blasint I(int64_t v) { return static_cast<blasint>(v); }
template <class T>
inline CBLAS_TRANSPOSE Tr(bool t) {
  return t ? (is_complex_v<T> ? CblasConjTrans : CblasTrans) : CblasNoTrans;
}
// Real BLAS takes scalars by value, complex BLAS by pointer.
template <class T>
inline auto S(const T& v) {
  if constexpr (is_complex_v<T>) {
    return static_cast<const void*>(&v);
  } else {
    return v;
  }
}

template <class T>
struct Lib;
template <>
struct Lib<float> {
  static constexpr auto nrm2 = scipy_cblas_snrm2;
  static constexpr auto scal = scipy_cblas_sscal;
  static constexpr auto axpy = scipy_cblas_saxpy;
  static constexpr auto gemv = scipy_cblas_sgemv;
  static constexpr auto gemm = scipy_cblas_sgemm;
  static constexpr auto trsm = scipy_cblas_strsm;
  static constexpr auto geqrf = scipy_LAPACKE_sgeqrf;
  static constexpr auto orgqr = scipy_LAPACKE_sorgqr;
  static constexpr auto geev = scipy_LAPACKE_sgeev;
  static constexpr auto ggev = scipy_LAPACKE_sggev;
};
template <>
struct Lib<double> {
  static constexpr auto nrm2 = scipy_cblas_dnrm2;
  static constexpr auto scal = scipy_cblas_dscal;
  static constexpr auto axpy = scipy_cblas_daxpy;
  static constexpr auto gemv = scipy_cblas_dgemv;
  static constexpr auto gemm = scipy_cblas_dgemm;
  static constexpr auto trsm = scipy_cblas_dtrsm;
  static constexpr auto geqrf = scipy_LAPACKE_dgeqrf;
  static constexpr auto orgqr = scipy_LAPACKE_dorgqr;
  static constexpr auto geev = scipy_LAPACKE_dgeev;
  static constexpr auto ggev = scipy_LAPACKE_dggev;
};
template <>
struct Lib<C> {
  static constexpr auto nrm2 = scipy_cblas_scnrm2;
  static constexpr auto scal = scipy_cblas_cscal;
  static constexpr auto axpy = scipy_cblas_caxpy;
  static constexpr auto gemv = scipy_cblas_cgemv;
  static constexpr auto gemm = scipy_cblas_cgemm;
  static constexpr auto trsm = scipy_cblas_ctrsm;
  static constexpr auto geqrf = scipy_LAPACKE_cgeqrf;
  static constexpr auto orgqr = scipy_LAPACKE_cungqr;
  static constexpr auto geev = scipy_LAPACKE_cgeev;
  static constexpr auto ggev = scipy_LAPACKE_cggev;
};
template <>
struct Lib<Z> {
  static constexpr auto nrm2 = scipy_cblas_dznrm2;
  static constexpr auto scal = scipy_cblas_zscal;
  static constexpr auto axpy = scipy_cblas_zaxpy;
  static constexpr auto gemv = scipy_cblas_zgemv;
  static constexpr auto gemm = scipy_cblas_zgemm;
  static constexpr auto trsm = scipy_cblas_ztrsm;
  static constexpr auto geqrf = scipy_LAPACKE_zgeqrf;
  static constexpr auto orgqr = scipy_LAPACKE_zungqr;
  static constexpr auto geev = scipy_LAPACKE_zgeev;
  static constexpr auto ggev = scipy_LAPACKE_zggev;
};

// After geqrf: copy the upper triangle R out of A and report the first column whose |R_jj| is not
// above rank_tol * max|R_ii| (numerically dependent).
template <typename T>
bool copy_r_and_check_rank(int64_t cols, const T* A, int64_t lda, std::vector<T>& R,
                           double rank_tol, int64_t& bad) {
  double rmax = 0;
  for (int64_t j = 0; j < cols; ++j) {
    for (int64_t i = 0; i <= j; ++i) R[i + j * cols] = A[i + j * lda];
    rmax = std::max(rmax, static_cast<double>(std::abs(R[j + j * cols])));
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

// beta * y for an empty reduction (BLAS would leave y untouched).
template <class T>
void scale_only(int64_t len, T beta, T* y) {
  for (int64_t i = 0; i < len; ++i) y[i] = beta == T(0) ? T(0) : beta * y[i];
}

}  // namespace

void single_threaded_blas() { fastpaper::detail::single_threaded_blas(); }

template <class T>
double nrm2(int64_t n, const T* x) {
  return Lib<T>::nrm2(I(n), x, 1);
}

template <class T>
void scal(int64_t n, Same<T> a, T* x) {
  Lib<T>::scal(I(n), S(a), x, 1);
}

template <class T>
void axpy(int64_t n, Same<T> a, const T* x, T* y) {
  Lib<T>::axpy(I(n), S(a), x, 1, y, 1);
}

template <class T>
void gemv(bool trans, int64_t rows, int64_t cols, Same<T> alpha, const T* A, int64_t lda,
          const T* x, Same<T> beta, T* y) {
  if (rows == 0 || cols == 0) return scale_only(trans ? cols : rows, beta, y);
  Lib<T>::gemv(CblasColMajor, Tr<T>(trans), I(rows), I(cols), S(alpha), A, I(lda), x, 1, S(beta),
               y, 1);
}

template <class T>
void cgs_update_project(int64_t rows, int64_t cols, const T* Q, int64_t ldq, const T* h, T* w,
                        T* h2) {
  // A block of ~128 KiB of Q: a quarter of a 512 KiB L2, so the block read by the update
  // is still cached when the projection reads it again.
  constexpr int64_t kBlockBytes = 128 * 1024;
  const int64_t per_col = std::max<int64_t>(cols, 1) * static_cast<int64_t>(sizeof(T));
  const int64_t block = std::max<int64_t>(64, kBlockBytes / per_col / 16 * 16);
  scale_only(cols, T(0), h2);
  for (int64_t i0 = 0; i0 < rows; i0 += block) {
    const int64_t nb = std::min(block, rows - i0);
    gemv<T>(false, nb, cols, T(-1), Q + i0, ldq, h, T(1), w + i0);
    gemv<T>(true, nb, cols, T(1), Q + i0, ldq, w + i0, T(1), h2);
  }
}

template <class T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, Same<T> alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, Same<T> beta, T* Cm, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t j = 0; j < n; ++j) scale_only(m, beta, Cm + j * ldc);
    return;
  }
  Lib<T>::gemm(CblasColMajor, Tr<T>(ta), Tr<T>(tb), I(m), I(n), I(k), S(alpha), A, I(lda), B,
               I(ldb), S(beta), Cm, I(ldc));
}

template <class T>
void trsm_right_upper(int64_t rows, int64_t k, const T* R, int64_t ldr, T* B, int64_t ldb) {
  if (rows == 0 || k == 0) return;
  const T one(1);
  Lib<T>::trsm(CblasColMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, I(rows), I(k),
               S(one), R, I(ldr), B, I(ldb));
}

template <class T>
void trsm_left_upper(int64_t k, int64_t cols, const T* R, int64_t ldr, T* B, int64_t ldb) {
  if (k == 0 || cols == 0) return;
  const T one(1);
  Lib<T>::trsm(CblasColMajor, CblasLeft, CblasUpper, CblasNoTrans, CblasNonUnit, I(k), I(cols),
               S(one), R, I(ldr), B, I(ldb));
}

template <class T>
bool qr(int64_t rows, int64_t cols, T* A, int64_t lda, std::vector<T>& R, double rank_tol,
        int64_t& bad) {
  bad = -1;
  R.assign(static_cast<size_t>(cols * cols), T(0));
  if (cols == 0) return true;
  std::vector<T> tau(static_cast<size_t>(cols));
  if (Lib<T>::geqrf(LAPACK_COL_MAJOR, I(rows), I(cols), A, I(lda), tau.data()) != 0) return false;
  if (!copy_r_and_check_rank(cols, A, lda, R, rank_tol, bad)) return false;
  return Lib<T>::orgqr(LAPACK_COL_MAJOR, I(rows), I(cols), I(cols), A, I(lda), tau.data()) == 0;
}

template <class T>
bool geev(int64_t n, T* A, std::vector<T>& wr, std::vector<T>& wi, std::vector<T>& vr) {
  static_assert(!is_complex_v<T>);
  wr.assign(static_cast<size_t>(n), T(0));
  wi.assign(static_cast<size_t>(n), T(0));
  vr.assign(static_cast<size_t>(n * n), T(0));
  T vl_dummy = 0;
  return Lib<T>::geev(LAPACK_COL_MAJOR, 'N', 'V', I(n), A, I(n), wr.data(), wi.data(), &vl_dummy,
                      1, vr.data(), I(n)) == 0;
}

template <class T>
bool geev(int64_t n, T* A, std::vector<T>& w, std::vector<T>& vr) {
  static_assert(is_complex_v<T>);
  w.assign(static_cast<size_t>(n), T(0));
  vr.assign(static_cast<size_t>(n * n), T(0));
  T vl_dummy(0);
  return Lib<T>::geev(LAPACK_COL_MAJOR, 'N', 'V', I(n), A, I(n), w.data(), &vl_dummy, 1,
                      vr.data(), I(n)) == 0;
}

template <class T>
bool ggev(int64_t n, T* A, T* B, std::vector<T>& alphar, std::vector<T>& alphai,
          std::vector<T>& beta, std::vector<T>& vr) {
  static_assert(!is_complex_v<T>);
  alphar.assign(static_cast<size_t>(n), T(0));
  alphai.assign(static_cast<size_t>(n), T(0));
  beta.assign(static_cast<size_t>(n), T(0));
  vr.assign(static_cast<size_t>(n * n), T(0));
  T vl_dummy = 0;
  return Lib<T>::ggev(LAPACK_COL_MAJOR, 'N', 'V', I(n), A, I(n), B, I(n), alphar.data(),
                      alphai.data(), beta.data(), &vl_dummy, 1, vr.data(), I(n)) == 0;
}

template <class T>
bool ggev(int64_t n, T* A, T* B, std::vector<T>& alpha, std::vector<T>& beta, std::vector<T>& vr) {
  static_assert(is_complex_v<T>);
  alpha.assign(static_cast<size_t>(n), T(0));
  beta.assign(static_cast<size_t>(n), T(0));
  vr.assign(static_cast<size_t>(n * n), T(0));
  T vl_dummy(0);
  return Lib<T>::ggev(LAPACK_COL_MAJOR, 'N', 'V', I(n), A, I(n), B, I(n), alpha.data(),
                      beta.data(), &vl_dummy, 1, vr.data(), I(n)) == 0;
}

#define FP_DENSE_ALL(T)                                                                           \
  template double nrm2<T>(int64_t, const T*);                                                    \
  template void scal<T>(int64_t, Same<T>, T*);                                                   \
  template void axpy<T>(int64_t, Same<T>, const T*, T*);                                         \
  template void cgs_update_project<T>(int64_t, int64_t, const T*, int64_t, const T*, T*, T*);     \
  template void gemv<T>(bool, int64_t, int64_t, Same<T>, const T*, int64_t, const T*, Same<T>,   \
                        T*);                                                                     \
  template void gemm<T>(bool, bool, int64_t, int64_t, int64_t, Same<T>, const T*, int64_t,       \
                        const T*, int64_t, Same<T>, T*, int64_t);                                \
  template void trsm_right_upper<T>(int64_t, int64_t, const T*, int64_t, T*, int64_t);           \
  template void trsm_left_upper<T>(int64_t, int64_t, const T*, int64_t, T*, int64_t);            \
  template bool qr<T>(int64_t, int64_t, T*, int64_t, std::vector<T>&, double, int64_t&);
FP_DENSE_ALL(float)
FP_DENSE_ALL(double)
FP_DENSE_ALL(C)
FP_DENSE_ALL(Z)
#undef FP_DENSE_ALL

template bool geev<float>(int64_t, float*, std::vector<float>&, std::vector<float>&,
                          std::vector<float>&);
template bool geev<double>(int64_t, double*, std::vector<double>&, std::vector<double>&,
                           std::vector<double>&);
template bool geev<C>(int64_t, C*, std::vector<C>&, std::vector<C>&);
template bool geev<Z>(int64_t, Z*, std::vector<Z>&, std::vector<Z>&);
template bool ggev<float>(int64_t, float*, float*, std::vector<float>&, std::vector<float>&,
                          std::vector<float>&, std::vector<float>&);
template bool ggev<double>(int64_t, double*, double*, std::vector<double>&, std::vector<double>&,
                           std::vector<double>&, std::vector<double>&);
template bool ggev<C>(int64_t, C*, C*, std::vector<C>&, std::vector<C>&, std::vector<C>&);
template bool ggev<Z>(int64_t, Z*, Z*, std::vector<Z>&, std::vector<Z>&, std::vector<Z>&);

}  // namespace fastpaper::krylov::dense
