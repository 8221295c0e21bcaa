// Internal pieces of the Krylov solver shared by the files in csrc/krylov/: validated operators
// (A and M^{-1} behind one calling convention) and the recycle space. T is double or
// std::complex<double>.
#pragma once

#include <complex>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "fastpaper/krylov.h"

namespace fastpaper::krylov {

using Z = std::complex<double>;

struct Recycle {
  int64_t n = 0;
  int32_t dim = 0;
  bool is_complex = false;  // which of u / uz holds U
  std::vector<double> u;    // n x dim, column-major
  std::vector<Z> uz;

  template <class T>
  std::vector<T>& vec() {
    if constexpr (std::is_same_v<T, double>) {
      return u;
    } else {
      return uz;
    }
  }
};

namespace detail {

// Checks a CSR matrix: sizes, monotone indptr, column indices in range, finite values. Returns an
// empty string when valid, else the reason. O(nnz).
template <class T>
std::string check_csr(const Csr<T>& A);

// y = A x (OpenMP over rows for large matrices). A must have passed check_csr.
template <class T>
void csr_matvec(const Csr<T>& A, const T* x, T* y);

// A right preconditioner prepared for one operator: y = M^{-1} x.
template <class T>
class PrecondApply {
 public:
  virtual ~PrecondApply() = default;
  // Returns false when a user callback failed.
  virtual bool apply(const T* x, T* y) const = 0;
};

// Builds M^{-1} for `M` and operator A; on invalid input (no CSR for Jacobi/ILU(0), zero or
// missing diagonal, zero pivot, unsorted row) returns null and sets `error`.
template <class T>
std::unique_ptr<PrecondApply<T>> make_precond(const OperatorT<T>& A, const PreconditionerT<T>& M,
                                              std::string& error);

}  // namespace detail
}  // namespace fastpaper::krylov
