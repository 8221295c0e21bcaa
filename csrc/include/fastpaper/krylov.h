// fastpaper::krylov — restarted GMRES(m) and GCRO-DR(m, k) with a recycle space carried across a
// sequence of linear systems A_i x_i = b_i (Parks, de Sturler, Mackey, Johnson, Maiti 2006; used by
// SKR, Wang et al. 2024). Scalars float32, float64, complex64 and complex128 (transposes below are
// conjugate transposes for complex), CPU; BLAS/LAPACK from scipy-openblas32.
// Single precision is mixed precision: A, M^{-1}, the Krylov basis and the recycle space are in
// float32 / complex64 (half the memory traffic of SpMV and orthogonalization, which bound large
// solves), while the iterate x and the true residual b - A x (for a CSR A) are accumulated in
// double, so every restart refines the solution (GMRES-IR) and rtol can go below float32's own
// resolution (~1e-5 relative on high-contrast PDEs). x returns rounded to the scalar type;
// residual_norm is that of the double iterate. Reported norms are double.
//
// Operators. A is n x n, either a CSR matrix (int32 or int64 indices, values of the scalar type) or a callback
// y = A x. Right preconditioning: the solver works with A M^{-1} and returns x = M^{-1} y, so every
// residual it reports is the true residual ||b - A x||_2. M is none, Jacobi (M = diag(A)), ILU(0)
// of a CSR A (same sparsity pattern as A), or a callback y = M^{-1} x.
//
// Stopping: ||b - A x||_2 <= max(rtol * ||b||_2, atol). The recurrence's residual estimate decides
// when a cycle stops; the true residual b - A x is recomputed after every cycle (one matvec) and
// decides convergence, so drift in the updated residual never reports a false convergence.
//
// GCRO-DR cycle (k recycled vectors U (n x k), C = A M^{-1} U with C^T C = I):
//   r <- r - C C^T r, x <- x + M^{-1} U C^T r                  (project out range(C))
//   m - k Arnoldi steps with (I - C C^T) A M^{-1}, orthogonalized against [C, V] by CGS2 (the
//   second update skipped when the first pass left the new vector orthogonal to 1e-10 in double,
//   1e-4 in single precision; its projection is computed in the first pass's update sweep):
//     A M^{-1} V_p = C B_p + V_{p+1} Hbar_p
//   min ||beta e1 - Hbar_p y||  (Givens), x <- x + M^{-1} (V_p y - U B_p y)
//   harmonic Ritz vectors of A M^{-1} on range([U, V_p]): Ghat^T Ghat z = theta Ghat^T Vhat^T What z
//   (with Ghat = Qg Rg: LAPACK geev on Rg^{-1} Qg^T Vhat^T What, eigenvalues 1 / theta; ggev on
//   the pencil when Ghat is rank deficient), keep the k of smallest |theta| (both parts of a
//   complex pair, so k or k+1),
//   QR(Ghat P) = Q R, C <- Vhat Q, U <- What P R^{-1}.
// The first cycle without U is a GMRES(m) cycle; its harmonic Ritz problem is the same pencil with
// k = 0, Hbar^T Hbar z = theta H^T z, i.e. (H + h_{m+1,m}^2 H^{-T} e_m e_m^T) z = theta z.
// After a cycle of p < m - k steps (converged early) the update uses the p steps it has, so k
// shrinks to at most k_prev + p when a first solve converges in fewer than k steps.
// For a new system (new A or new M) the carried U is kept, C = A M^{-1} U is recomputed (k matvecs)
// and re-orthonormalized by Householder QR, U <- U R^{-1}.
// GMRES(m) is the same loop with k = 0 and no recycle space.
#pragma once

#include <complex>
#include <cstddef>
#include <cstdint>

#include "fastpaper/status.h"

namespace fastpaper::krylov {

enum class Index : int32_t { int32 = 0, int64 = 1 };
enum class Scalar : int32_t { float32 = 0, float64 = 1, complex64 = 2, complex128 = 3 };

// A read-only CSR matrix with values of type T (float, double, std::complex<float> or
// std::complex<double>). indptr has
// rows + 1 entries, indices and values have indptr[rows] entries; column indices must lie in
// [0, cols). For ILU(0) the diagonal must be present in every row and the indices of a row sorted.
template <class T>
struct Csr {
  int64_t rows = 0;
  int64_t cols = 0;
  Index index = Index::int32;
  const void* indptr = nullptr;   // int32_t* or int64_t*
  const void* indices = nullptr;  // int32_t* or int64_t*
  const T* values = nullptr;
};
using CsrMatrix = Csr<double>;
using CsrMatrixZ = Csr<std::complex<double>>;
using CsrMatrixF = Csr<float>;
using CsrMatrixC = Csr<std::complex<float>>;

// y = op(x) for vectors of length n. Returns 0 on success; anything else aborts the solve with
// Status::invalid_argument ("callback failed"), e.g. to propagate a Python exception.
template <class T>
using ApplyFnT = int (*)(void* ctx, const T* x, T* y);
using ApplyFn = ApplyFnT<double>;

template <class T>
struct OperatorT {
  const Csr<T>* csr = nullptr;  // used when not null ...
  ApplyFnT<T> apply = nullptr;  // ... else this callback, with n = `n`
  void* ctx = nullptr;
  int64_t n = 0;
};
using Operator = OperatorT<double>;
using OperatorZ = OperatorT<std::complex<double>>;
using OperatorF = OperatorT<float>;
using OperatorC = OperatorT<std::complex<float>>;

enum class Precond : int32_t { none = 0, jacobi = 1, ilu0 = 2, callback = 3 };

template <class T>
struct PreconditionerT {
  Precond kind = Precond::none;
  ApplyFnT<T> apply = nullptr;  // for Precond::callback: y = M^{-1} x
  void* ctx = nullptr;
};
using Preconditioner = PreconditionerT<double>;
using PreconditionerZ = PreconditionerT<std::complex<double>>;
using PreconditionerF = PreconditionerT<float>;
using PreconditionerC = PreconditionerT<std::complex<float>>;

// Called after every Arnoldi step with the running iteration count and the residual estimate;
// return non-zero to stop the solve early (Result::converged then reflects the true residual).
using MonitorFn = int (*)(void* ctx, int64_t iteration, double residual_norm);

struct Options {
  int32_t m = 40;            // Arnoldi steps per cycle (the restart length), >= 1
  int32_t k = 20;            // recycle dimension for GCRO-DR, 0 <= k < m (0 = GMRES(m))
  double rtol = 1e-8;
  double atol = 0.0;
  int64_t maxiter = 10000;   // cap on Arnoldi steps (iterations) over the whole solve, >= 0
  MonitorFn monitor = nullptr;
  void* monitor_ctx = nullptr;
};

struct Result {
  int64_t iterations = 0;     // Arnoldi steps
  int64_t matvecs = 0;        // applications of A (Arnoldi, C = A M^{-1} U, residual checks)
  int64_t cycles = 0;
  double residual_norm = 0;   // true ||b - A x||_2 at exit
  double b_norm = 0;
  int32_t converged = 0;
  int32_t stagnated = 0;      // three cycles in a row without progress
  int32_t breakdown = 0;      // an Arnoldi step produced a (numerically) zero vector
  int32_t recycle_dim = 0;    // columns of U after the solve
  int64_t history_length = 0; // entries written to the history buffer (<= history_capacity)
};

// The recycle space U (n x k, column-major) carried from one solve to the next. Opaque; create with
// recycle_create, free with recycle_destroy. A fresh space is empty (dim 0). A space holds real or
// complex vectors, fixed by the first solve or set that fills it; the other kind is rejected.
struct Recycle;
FASTPAPER_API Status recycle_create(Recycle** out);
FASTPAPER_API void recycle_destroy(Recycle* r);
FASTPAPER_API int64_t recycle_n(const Recycle* r);
FASTPAPER_API int32_t recycle_dim(const Recycle* r);
FASTPAPER_API bool recycle_is_complex(const Recycle* r);
FASTPAPER_API Scalar recycle_scalar(const Recycle* r);
// Copies U into out[n * dim] (column-major); the scalar type must be the space's.
FASTPAPER_API Status recycle_get(const Recycle* r, float* out);
FASTPAPER_API Status recycle_get(const Recycle* r, double* out);
FASTPAPER_API Status recycle_get(const Recycle* r, std::complex<float>* out);
FASTPAPER_API Status recycle_get(const Recycle* r, std::complex<double>* out);
// Replaces U by u[n * dim] (column-major) of that scalar type; dim = 0 empties the space.
FASTPAPER_API Status recycle_set(Recycle* r, int64_t n, int32_t dim, const float* u);
FASTPAPER_API Status recycle_set(Recycle* r, int64_t n, int32_t dim, const double* u);
FASTPAPER_API Status recycle_set(Recycle* r, int64_t n, int32_t dim, const std::complex<float>* u);
FASTPAPER_API Status recycle_set(Recycle* r, int64_t n, int32_t dim, const std::complex<double>* u);

// y = A x for a CSR matrix (OpenMP over rows).
FASTPAPER_API Status spmv(const CsrMatrixF& A, const float* x, float* y);
FASTPAPER_API Status spmv(const CsrMatrix& A, const double* x, double* y);
FASTPAPER_API Status spmv(const CsrMatrixC& A, const std::complex<float>* x, std::complex<float>* y);
FASTPAPER_API Status spmv(const CsrMatrixZ& A, const std::complex<double>* x, std::complex<double>* y);

// Solves A x = b by GCRO-DR(opt.m, opt.k). x holds x0 on entry and the solution on exit.
// `recycle` (may be null: a fresh space used for this solve only) is read and updated.
// history (may be null) receives the residual estimate after every Arnoldi step and the true
// residual after every cycle, up to history_capacity entries.
FASTPAPER_API Status gcrodr(const Operator& A, const Preconditioner& M, const double* b, double* x,
                            const Options& opt, Recycle* recycle, Result* result,
                            double* history, int64_t history_capacity);

FASTPAPER_API Status gcrodr(const OperatorZ& A, const PreconditionerZ& M,
                            const std::complex<double>* b, std::complex<double>* x,
                            const Options& opt, Recycle* recycle, Result* result,
                            double* history, int64_t history_capacity);
FASTPAPER_API Status gcrodr(const OperatorF& A, const PreconditionerF& M, const float* b, float* x,
                            const Options& opt, Recycle* recycle, Result* result,
                            double* history, int64_t history_capacity);
FASTPAPER_API Status gcrodr(const OperatorC& A, const PreconditionerC& M,
                            const std::complex<float>* b, std::complex<float>* x,
                            const Options& opt, Recycle* recycle, Result* result,
                            double* history, int64_t history_capacity);

// Restarted GMRES(opt.m) on the same code path (opt.k is ignored, no recycling).
FASTPAPER_API Status gmres(const Operator& A, const Preconditioner& M, const double* b, double* x,
                           const Options& opt, Result* result, double* history,
                           int64_t history_capacity);
FASTPAPER_API Status gmres(const OperatorZ& A, const PreconditionerZ& M,
                           const std::complex<double>* b, std::complex<double>* x,
                           const Options& opt, Result* result, double* history,
                           int64_t history_capacity);
FASTPAPER_API Status gmres(const OperatorF& A, const PreconditionerF& M, const float* b, float* x,
                           const Options& opt, Result* result, double* history,
                           int64_t history_capacity);
FASTPAPER_API Status gmres(const OperatorC& A, const PreconditionerC& M,
                           const std::complex<float>* b, std::complex<float>* x,
                           const Options& opt, Result* result, double* history,
                           int64_t history_capacity);

// Mixed precision (GMRES-IR): solves the double system A x = b (real or complex) to rtol / atol
// on its own true residual b - A x, computed in double every cycle against the double iterate x,
// while the Krylov basis, the recycle space (float32 / complex64; `recycle` must hold that kind),
// the preconditioner (built from A rounded to single once per call) and the Arnoldi products run
// in single precision: half the memory traffic of the double solve, the same answer. An entry of A
// beyond single precision's range is an invalid_argument error.
FASTPAPER_API Status gcrodr_mixed(const CsrMatrix& A, const PreconditionerF& M, const double* b,
                                  double* x, const Options& opt, Recycle* recycle, Result* result,
                                  double* history, int64_t history_capacity);
FASTPAPER_API Status gcrodr_mixed(const CsrMatrixZ& A, const PreconditionerC& M,
                                  const std::complex<double>* b, std::complex<double>* x,
                                  const Options& opt, Recycle* recycle, Result* result,
                                  double* history, int64_t history_capacity);
FASTPAPER_API Status gmres_mixed(const CsrMatrix& A, const PreconditionerF& M, const double* b,
                                 double* x, const Options& opt, Result* result, double* history,
                                 int64_t history_capacity);
FASTPAPER_API Status gmres_mixed(const CsrMatrixZ& A, const PreconditionerC& M,
                                 const std::complex<double>* b, std::complex<double>* x,
                                 const Options& opt, Result* result, double* history,
                                 int64_t history_capacity);

}  // namespace fastpaper::krylov
