// Right preconditioners y = M^{-1} x: identity, Jacobi (M = diag A), ILU(0) (incomplete LU on the
// sparsity pattern of A, Saad, Iterative Methods, Alg. 10.4), and a user callback.
#include <cmath>
#include <complex>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "krylov/internal.h"

namespace fastpaper::krylov::detail {
namespace {

template <class T>
class Identity final : public PrecondApply<T> {
 public:
  explicit Identity(int64_t n) : n_(n) {}
  bool apply(const T* x, T* y) const override {
    std::memcpy(static_cast<void*>(y), x, sizeof(T) * static_cast<size_t>(n_));
    return true;
  }

 private:
  int64_t n_;
};

template <class T>
class Callback final : public PrecondApply<T> {
 public:
  Callback(ApplyFnT<T> f, void* ctx) : f_(f), ctx_(ctx) {}
  bool apply(const T* x, T* y) const override { return f_(ctx_, x, y) == 0; }

 private:
  ApplyFnT<T> f_;
  void* ctx_;
};

template <class T>
class Jacobi final : public PrecondApply<T> {
 public:
  explicit Jacobi(std::vector<T> inv_diag) : inv_(std::move(inv_diag)) {}
  bool apply(const T* x, T* y) const override {
    const int64_t n = static_cast<int64_t>(inv_.size());
    for (int64_t i = 0; i < n; ++i) y[i] = inv_[i] * x[i];
    return true;
  }

 private:
  std::vector<T> inv_;
};

// L (unit lower) and U stored together in A's pattern; diag[i] is the position of a_ii.
template <class T>
class Ilu0 final : public PrecondApply<T> {
 public:
  Ilu0(std::vector<int64_t> p, std::vector<int64_t> j, std::vector<T> lu,
       std::vector<int64_t> diag)
      : p_(std::move(p)), j_(std::move(j)), lu_(std::move(lu)), diag_(std::move(diag)) {}
  bool apply(const T* x, T* y) const override {
    const int64_t n = static_cast<int64_t>(diag_.size());
    // The triangular solves are sequential by nature; at n ~ 1e4-1e5 they cost about one SpMV each.
    for (int64_t i = 0; i < n; ++i) {  // L z = x
      T s = x[i];
      for (int64_t e = p_[i]; e < diag_[i]; ++e) s -= lu_[e] * y[j_[e]];
      y[i] = s;
    }
    for (int64_t i = n - 1; i >= 0; --i) {  // U y = z
      T s = y[i];
      for (int64_t e = diag_[i] + 1; e < p_[i + 1]; ++e) s -= lu_[e] * y[j_[e]];
      y[i] = s / lu_[diag_[i]];
    }
    return true;
  }

 private:
  std::vector<int64_t> p_, j_;
  std::vector<T> lu_;
  std::vector<int64_t> diag_;
};

template <class I, class T>
void copy_pattern(const Csr<T>& A, std::vector<int64_t>& p, std::vector<int64_t>& j) {
  const I* ip = static_cast<const I*>(A.indptr);
  const I* ij = static_cast<const I*>(A.indices);
  p.assign(ip, ip + A.rows + 1);
  j.assign(ij, ij + ip[A.rows]);
}

template <class T>
std::unique_ptr<PrecondApply<T>> make_jacobi(const std::vector<int64_t>& p,
                                             const std::vector<int64_t>& j, const T* v,
                                             int64_t n, std::string& error) {
  std::vector<T> inv(static_cast<size_t>(n), T(0));
  for (int64_t i = 0; i < n; ++i) {
    T d = 0;
    for (int64_t e = p[i]; e < p[i + 1]; ++e) {
      if (j[e] == i) d += v[e];
    }
    if (d == T(0)) {
      error = "M: Jacobi needs a non-zero diagonal, A[" + std::to_string(i) + ", " +
              std::to_string(i) + "] is 0";
      return nullptr;
    }
    inv[i] = T(1) / d;
  }
  return std::make_unique<Jacobi<T>>(std::move(inv));
}

template <class T>
std::unique_ptr<PrecondApply<T>> make_ilu0(std::vector<int64_t> p, std::vector<int64_t> j,
                                           const T* v, int64_t n, std::string& error) {
  std::vector<T> lu(v, v + p[n]);
  std::vector<int64_t> diag(static_cast<size_t>(n), -1);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t e = p[i]; e < p[i + 1]; ++e) {
      if (e > p[i] && j[e] <= j[e - 1]) {
        error = "M: ILU(0) needs sorted, duplicate-free column indices (row " + std::to_string(i) +
                "); call A.sort_indices() / A.sum_duplicates()";
        return nullptr;
      }
      if (j[e] == i) diag[i] = e;
    }
    if (diag[i] < 0) {
      error = "M: ILU(0) needs every diagonal entry in the pattern, row " + std::to_string(i) +
              " has none";
      return nullptr;
    }
  }
  // IKJ variant: row i is eliminated with the already factored rows k < i, dropping fill-in.
  std::vector<int64_t> pos(static_cast<size_t>(n), -1);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t e = p[i]; e < p[i + 1]; ++e) pos[j[e]] = e;
    for (int64_t e = p[i]; e < diag[i]; ++e) {
      const int64_t k = j[e];
      const T piv = lu[diag[k]];
      lu[e] /= piv;
      for (int64_t f = diag[k] + 1; f < p[k + 1]; ++f) {
        const int64_t q = pos[j[f]];
        if (q >= 0) lu[q] -= lu[e] * lu[f];
      }
    }
    for (int64_t e = p[i]; e < p[i + 1]; ++e) pos[j[e]] = -1;
    const T d = lu[diag[i]];
    if (d == T(0) || !finite(d)) {
      error = "M: ILU(0) hit a zero pivot in row " + std::to_string(i);
      return nullptr;
    }
  }
  return std::make_unique<Ilu0<T>>(std::move(p), std::move(j), std::move(lu), std::move(diag));
}

}  // namespace

template <class T>
std::unique_ptr<PrecondApply<T>> make_precond(const OperatorT<T>& A, const PreconditionerT<T>& M,
                                              std::string& error) {
  const int64_t n = A.csr ? A.csr->rows : A.n;
  switch (M.kind) {
    case Precond::none:
      return std::make_unique<Identity<T>>(n);
    case Precond::callback:
      if (M.apply == nullptr) {
        error = "M: Precond::callback needs an apply function";
        return nullptr;
      }
      return std::make_unique<Callback<T>>(M.apply, M.ctx);
    case Precond::jacobi:
    case Precond::ilu0: {
      if (A.csr == nullptr) {
        error = "M: Jacobi and ILU(0) need A as a CSR matrix";
        return nullptr;
      }
      std::vector<int64_t> p, j;
      if (A.csr->index == Index::int32) {
        copy_pattern<int32_t>(*A.csr, p, j);
      } else {
        copy_pattern<int64_t>(*A.csr, p, j);
      }
      if (M.kind == Precond::jacobi) return make_jacobi(p, j, A.csr->values, n, error);
      return make_ilu0(std::move(p), std::move(j), A.csr->values, n, error);
    }
  }
  error = "M: unknown preconditioner kind";
  return nullptr;
}

#define FP_PRECOND_ALL(T)                                                                  \
  template std::unique_ptr<PrecondApply<T>> make_precond(const OperatorT<T>&,            \
                                                         const PreconditionerT<T>&, std::string&);
FP_PRECOND_ALL(float)
FP_PRECOND_ALL(double)
FP_PRECOND_ALL(C)
FP_PRECOND_ALL(Z)
#undef FP_PRECOND_ALL

}  // namespace fastpaper::krylov::detail
