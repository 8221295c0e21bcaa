// Internal pieces of the Krylov solver shared by the files in csrc/krylov/: validated operators
// (A and M^{-1} behind one calling convention), the recycle space and the scalar traits. T is
// float, double, std::complex<float> or std::complex<double>.
#pragma once

#include <cmath>
#include <complex>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "fastpaper/krylov.h"

namespace fastpaper::krylov {

using Z = std::complex<double>;
using C = std::complex<float>;

namespace detail {

// Real type and Scalar tag of each solver scalar.
template <class T>
struct ScalarOf;
template <>
struct ScalarOf<float> {
  using Real = float;
  static constexpr Scalar kind = Scalar::float32;
};
template <>
struct ScalarOf<double> {
  using Real = double;
  static constexpr Scalar kind = Scalar::float64;
};
template <>
struct ScalarOf<C> {
  using Real = float;
  static constexpr Scalar kind = Scalar::complex64;
};
template <>
struct ScalarOf<Z> {
  using Real = double;
  static constexpr Scalar kind = Scalar::complex128;
};
template <class T>
using RealOf = typename ScalarOf<T>::Real;
// The double-precision type of the same kind, in which solutions and residuals are accumulated.
template <class T>
using WideOf = std::conditional_t<std::is_same_v<T, float>, double,
                                  std::conditional_t<std::is_same_v<T, C>, Z, T>>;
template <class T>
inline constexpr bool is_complex_v = !std::is_same_v<T, RealOf<T>>;

template <class T>
inline bool finite(const T& v) {
  if constexpr (is_complex_v<T>) {
    return std::isfinite(v.real()) && std::isfinite(v.imag());
  } else {
    return std::isfinite(v);
  }
}

const char* scalar_name(Scalar s);

}  // namespace detail

struct Recycle {
  int64_t n = 0;
  int32_t dim = 0;
  Scalar kind = Scalar::float64;  // which vector below holds U (n x dim, column-major)
  std::vector<float> u32;
  std::vector<double> u64;
  std::vector<C> c64;
  std::vector<Z> c128;

  template <class T>
  std::vector<T>& vec() {
    if constexpr (std::is_same_v<T, float>) {
      return u32;
    } else if constexpr (std::is_same_v<T, double>) {
      return u64;
    } else if constexpr (std::is_same_v<T, C>) {
      return c64;
    } else {
      return c128;
    }
  }
  void clear() {
    u32.clear();
    u64.clear();
    c64.clear();
    c128.clear();
  }
};

namespace detail {

// Checks a CSR matrix: sizes, monotone indptr, column indices in range, finite values. Returns an
// empty string when valid, else the reason. O(nnz).
template <class T>
std::string check_csr(const Csr<T>& A);

// y = A x (OpenMP over rows for large matrices). A must have passed check_csr. X is T, or
// WideOf<T> to accumulate a single-precision matrix's product with a double vector in double.
template <class T, class X = T>
void csr_matvec(const Csr<T>& A, const X* x, X* y);

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
