// Internal: the few dense kernels of the Krylov solver, on column-major arrays of one scalar type T
// (float, double, std::complex<float>, std::complex<double>), as thin wrappers of OpenBLAS/LAPACKE
// from scipy-openblas32 (32-bit integers, `scipy_` symbol prefix). Sizes passed to BLAS are the
// tall dimension n (checked to fit int32 by the solver) or the small Krylov dimensions (<= m + 1).
// For complex T, "trans" is the conjugate transpose. Scalars alpha / beta are taken in T whatever
// the caller passes (the non-deduced Same<T>), so `gemv(..., 1.0, float_ptr, ...)` works.
#pragma once

#include <complex>
#include <cstdint>
#include <vector>

namespace fastpaper::krylov::dense {

template <class T>
struct Id {
  using type = T;
};
template <class T>
using Same = typename Id<T>::type;

// Makes this library's OpenBLAS single-threaded (once per process). The solver's BLAS work is
// BLAS-2 on n x m panels, memory-bound, where OpenBLAS threads contending with OpenMP made small
// solves 10-30x slower; throughput comes from solving several systems at once instead. The copy
// of OpenBLAS is the one of scipy-openblas32, which numpy and scipy wheels do not share.
void single_threaded_blas();

template <class T>
double nrm2(int64_t n, const T* x);
template <class T>
void scal(int64_t n, Same<T> a, T* x);
template <class T>
void axpy(int64_t n, Same<T> a, const T* x, T* y);
// y = alpha * op(A) x + beta * y, A rows x cols with leading dimension lda.
template <class T>
void gemv(bool trans, int64_t rows, int64_t cols, Same<T> alpha, const T* A, int64_t lda,
          const T* x, Same<T> beta, T* y);
// The middle of classical Gram-Schmidt with reorthogonalization (CGS2) in one sweep over Q:
//   w <- w - Q h,  then  h2 = Q^H w      (Q rows x cols, column-major, leading dimension ldq)
// Two separate gemv calls would read Q twice from memory; here Q is walked in row blocks small
// enough to stay in cache between the update and the projection of the same block, so CGS2
// reads the basis three times per Arnoldi step instead of four. h2 is summed block by block in a
// fixed order (deterministic, not bitwise equal to one gemv).
template <class T>
void cgs_update_project(int64_t rows, int64_t cols, const T* Q, int64_t ldq, const T* h, T* w,
                        T* h2);
// C = alpha * op(A) op(B) + beta * C, C is m x n.
template <class T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, Same<T> alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, Same<T> beta, T* C, int64_t ldc);
// B = B R^{-1} for an upper triangular R (k x k), B rows x k.
template <class T>
void trsm_right_upper(int64_t rows, int64_t k, const T* R, int64_t ldr, T* B, int64_t ldb);
// B = R^{-1} B for an upper triangular R (k x k), B k x cols.
template <class T>
void trsm_left_upper(int64_t k, int64_t cols, const T* R, int64_t ldr, T* B, int64_t ldb);

// Householder QR of A (rows x cols, rows >= cols) in place: on return A holds Q (orthonormal
// columns) and R (cols x cols, column-major) the triangle. Returns false when LAPACK fails or R
// has a diagonal entry below rank_tol * max|R_ii| (rank deficient), with `bad` its column.
template <class T>
bool qr(int64_t rows, int64_t cols, T* A, int64_t lda, std::vector<T>& R, double rank_tol,
        int64_t& bad);

// Real T: eigenvalues wr + i wi and right eigenvectors (LAPACK's packed pairs) of a general n x n
// matrix (overwritten): ?geev.
template <class T>
bool geev(int64_t n, T* A, std::vector<T>& wr, std::vector<T>& wi, std::vector<T>& vr);
// Complex T: eigenvalues w and right eigenvectors: ?geev.
template <class T>
bool geev(int64_t n, T* A, std::vector<T>& w, std::vector<T>& vr);

// Generalized eigenproblem A z = theta B z (n x n, both overwritten) with right eigenvectors,
// theta = (alphar + i alphai) / beta for real T: ?ggev. Returns false when it did not converge.
template <class T>
bool ggev(int64_t n, T* A, T* B, std::vector<T>& alphar, std::vector<T>& alphai,
          std::vector<T>& beta, std::vector<T>& vr);
// Complex T: theta = alpha / beta.
template <class T>
bool ggev(int64_t n, T* A, T* B, std::vector<T>& alpha, std::vector<T>& beta, std::vector<T>& vr);

}  // namespace fastpaper::krylov::dense
