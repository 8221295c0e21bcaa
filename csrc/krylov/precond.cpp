// Right preconditioners y = M^{-1} x: identity, Jacobi (M = diag A), ILU(0) (incomplete LU on the
// sparsity pattern of A, Saad, Iterative Methods, Alg. 10.4), and a user callback.
#include <cmath>
#include <cstdint>
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

// The ILU(0) factors in A's pattern, laid out for the two triangular solves: per row the strictly
// lower entries (L, unit diagonal implied) and the strictly upper ones (U without its diagonal),
// each in its own CSR, with the reciprocals of U's diagonal. The solves are sequential chains
// through y, so what is on the chain matters: a multiply by 1 / u_ii instead of a division (about
// 4 instead of 13 cycles of latency per row), and 32-bit column indices (half the index traffic).
template <class T>
class Ilu0 final : public PrecondApply<T> {
 public:
  Ilu0(const std::vector<int64_t>& p, const std::vector<int64_t>& j, const std::vector<T>& lu,
       const std::vector<int64_t>& diag) {
    const int64_t n = static_cast<int64_t>(diag.size());
    lp_.assign(1, 0);
    up_.assign(1, 0);
    inv_diag_.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t e = p[i]; e < diag[i]; ++e) {
        lj_.push_back(static_cast<int32_t>(j[e]));
        lv_.push_back(lu[e]);
      }
      for (int64_t e = diag[i] + 1; e < p[i + 1]; ++e) {
        uj_.push_back(static_cast<int32_t>(j[e]));
        uv_.push_back(lu[e]);
      }
      lp_.push_back(static_cast<int64_t>(lj_.size()));
      up_.push_back(static_cast<int64_t>(uj_.size()));
      inv_diag_[i] = T(1) / lu[diag[i]];
    }
  }
  bool apply(const T* x, T* y) const override {
    const int64_t n = static_cast<int64_t>(inv_diag_.size());
    // In banded and stencil matrices row i couples to its neighbour i -+ 1, the chain's link:
    // that value is taken from a register (`next`) rather than reloaded from y just after its
    // store, which would add a store-to-load forwarding delay to every row.
    T next = T(0);
    for (int64_t i = 0; i < n; ++i) {  // L z = x
      int64_t e = lp_[i], end = lp_[i + 1];
      const bool link = end > e && lj_[end - 1] == i - 1;
      end -= link;
      T s = x[i];
      for (; e < end; ++e) s -= lv_[e] * y[lj_[e]];
      if (link) s -= lv_[end] * next;
      y[i] = next = s;
    }
    for (int64_t i = n - 1; i >= 0; --i) {  // U y = z
      int64_t e = up_[i];
      const int64_t end = up_[i + 1];
      const bool link = end > e && uj_[e] == i + 1;
      T s = y[i];
      if (link) s -= uv_[e++] * next;
      for (; e < end; ++e) s -= uv_[e] * y[uj_[e]];
      y[i] = next = s * inv_diag_[i];
    }
    return true;
  }

 private:
  std::vector<int64_t> lp_, up_;
  std::vector<int32_t> lj_, uj_;
  std::vector<T> lv_, uv_, inv_diag_;
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
  return std::make_unique<Ilu0<T>>(p, j, lu, diag);
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
      if (A.csr->cols > INT32_MAX) {
        error = "M: ILU(0) stores 32-bit column indices; A has more than 2^31 - 1 columns";
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
