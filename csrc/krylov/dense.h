// Internal: the few dense kernels of the Krylov solver, on column-major float64 arrays, as thin
// wrappers of OpenBLAS/LAPACKE from scipy-openblas32 (32-bit integers, `scipy_` symbol prefix).
// Sizes passed to BLAS are the tall dimension n (checked to fit int32 by the solver) or the small
// Krylov dimensions (<= m + 1).
#pragma once

#include <complex>
#include <cstdint>
#include <vector>

namespace fastpaper::krylov::dense {

// Makes this library's OpenBLAS single-threaded (once per process). The solver's BLAS work is
// BLAS-2 on n x m panels, memory-bound, where OpenBLAS threads contending with OpenMP made small
// solves 10-30x slower; throughput comes from solving several systems at once instead. The copy
// of OpenBLAS is the one of scipy-openblas32, which numpy and scipy wheels do not share.
void single_threaded_blas();

double nrm2(int64_t n, const double* x);
void scal(int64_t n, double a, double* x);
void axpy(int64_t n, double a, const double* x, double* y);
// y = alpha * op(A) x + beta * y, A rows x cols with leading dimension lda.
void gemv(bool trans, int64_t rows, int64_t cols, double alpha, const double* A, int64_t lda,
          const double* x, double beta, double* y);
// C = alpha * op(A) op(B) + beta * C, C is m x n.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc);
// B = B R^{-1} for an upper triangular R (k x k), B rows x k.
void trsm_right_upper(int64_t rows, int64_t k, const double* R, int64_t ldr, double* B,
                      int64_t ldb);

// Householder QR of A (rows x cols, rows >= cols) in place: on return A holds Q (orthonormal
// columns) and R (cols x cols, column-major) the triangle. Returns false when LAPACK fails or R
// has a diagonal entry below rank_tol * max|R_ii| (rank deficient), with `bad` its column.
bool qr(int64_t rows, int64_t cols, double* A, int64_t lda, std::vector<double>& R,
        double rank_tol, int64_t& bad);

// B = R^{-1} B for an upper triangular R (k x k), B k x cols.
void trsm_left_upper(int64_t k, int64_t cols, const double* R, int64_t ldr, double* B, int64_t ldb);
// Eigenvalues wr + i wi and right eigenvectors of a general n x n matrix (overwritten): dgeev.
bool geev(int64_t n, double* A, std::vector<double>& wr, std::vector<double>& wi,
          std::vector<double>& vr);

// complex128 versions: "trans" is the conjugate transpose.
using Z = std::complex<double>;
double nrm2(int64_t n, const Z* x);
void scal(int64_t n, Z a, Z* x);
void axpy(int64_t n, Z a, const Z* x, Z* y);
void gemv(bool trans, int64_t rows, int64_t cols, Z alpha, const Z* A, int64_t lda, const Z* x,
          Z beta, Z* y);
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, Z alpha, const Z* A, int64_t lda,
          const Z* B, int64_t ldb, Z beta, Z* C, int64_t ldc);
void trsm_right_upper(int64_t rows, int64_t k, const Z* R, int64_t ldr, Z* B, int64_t ldb);
bool qr(int64_t rows, int64_t cols, Z* A, int64_t lda, std::vector<Z>& R, double rank_tol,
        int64_t& bad);
void trsm_left_upper(int64_t k, int64_t cols, const Z* R, int64_t ldr, Z* B, int64_t ldb);
bool geev(int64_t n, Z* A, std::vector<Z>& w, std::vector<Z>& vr);
// A z = theta B z with theta = alpha / beta: LAPACK zggev.
bool ggev(int64_t n, Z* A, Z* B, std::vector<Z>& alpha, std::vector<Z>& beta,
          std::vector<Z>& vr);

// Generalized eigenproblem A z = theta B z (n x n, both overwritten) with right eigenvectors:
// LAPACK dggev. Returns false when it did not converge.
bool ggev(int64_t n, double* A, double* B, std::vector<double>& alphar,
          std::vector<double>& alphai, std::vector<double>& beta, std::vector<double>& vr);

}  // namespace fastpaper::krylov::dense
