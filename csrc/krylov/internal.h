// Internal pieces of the Krylov solver shared by the files in csrc/krylov/: validated operators
// (A and M^{-1} behind one calling convention) and the recycle space.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fastpaper/krylov.h"

namespace fastpaper::krylov {

struct Recycle {
  int64_t n = 0;
  int32_t dim = 0;
  std::vector<double> u;  // n x dim, column-major
};

namespace detail {

// Checks a CSR matrix: sizes, monotone indptr, column indices in range, finite values. Returns an
// empty string when valid, else the reason. O(nnz).
std::string check_csr(const CsrMatrix& A);

// y = A x (OpenMP over rows). A must have passed check_csr.
void csr_matvec(const CsrMatrix& A, const double* x, double* y);

// A right preconditioner prepared for one operator: y = M^{-1} x.
class PrecondApply {
 public:
  virtual ~PrecondApply() = default;
  // Returns false when a user callback failed.
  virtual bool apply(const double* x, double* y) const = 0;
};

// Builds M^{-1} for `M` and operator A; on invalid input (no CSR for Jacobi/ILU(0), zero or
// missing diagonal, zero pivot, unsorted row) returns null and sets `error`.
std::unique_ptr<PrecondApply> make_precond(const Operator& A, const Preconditioner& M,
                                           std::string& error);

}  // namespace detail
}  // namespace fastpaper::krylov
