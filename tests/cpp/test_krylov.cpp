// GoogleTest checks of fastpaper/krylov.h: SpMV, GMRES and GCRO-DR on small convection-diffusion
// matrices (nonsymmetric), recycling across a sequence, preconditioners, edge cases, bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "fastpaper/krylov.h"

using namespace fastpaper;
using namespace fastpaper::krylov;

namespace {

// 2-D convection-diffusion on an s x s interior grid: -Lap u + c * du/dx, central differences
// (nonsymmetric for c != 0), scaled by h^2. `shift` perturbs the diagonal to make a sequence.
struct Grid {
  std::vector<int32_t> p, j;
  std::vector<double> v;
  int64_t n;
  CsrMatrix view() const {
    CsrMatrix A;
    A.rows = A.cols = n;
    A.index = Index::int32;
    A.indptr = p.data();
    A.indices = j.data();
    A.values = v.data();
    return A;
  }
};

Grid convdiff(int s, double c, double shift) {
  Grid A;
  A.n = static_cast<int64_t>(s) * s;
  const double h = 1.0 / (s + 1);
  A.p.push_back(0);
  for (int y = 0; y < s; ++y) {
    for (int x = 0; x < s; ++x) {
      auto add = [&](int xx, int yy, double val) {
        if (xx < 0 || yy < 0 || xx >= s || yy >= s) return;
        A.j.push_back(yy * s + xx);
        A.v.push_back(val);
      };
      add(x, y - 1, -1.0);
      add(x - 1, y, -1.0 - c * h / 2);
      add(x, y, 4.0 + shift * (1 + 0.1 * ((x * 7 + y * 3) % 5)));
      add(x + 1, y, -1.0 + c * h / 2);
      add(x, y + 1, -1.0);
      A.p.push_back(static_cast<int32_t>(A.j.size()));
    }
  }
  return A;
}

double true_residual(const Grid& A, const std::vector<double>& b, const std::vector<double>& x) {
  std::vector<double> ax(b.size());
  EXPECT_EQ(spmv(A.view(), x.data(), ax.data()), Status::ok);
  double s = 0;
  for (size_t i = 0; i < b.size(); ++i) s += (b[i] - ax[i]) * (b[i] - ax[i]);
  return std::sqrt(s);
}

std::vector<double> rhs(int64_t n) {
  std::vector<double> b(n);
  for (int64_t i = 0; i < n; ++i) b[i] = std::sin(0.37 * i) + 0.5;
  return b;
}

double norm(const std::vector<double>& v) {
  double s = 0;
  for (double e : v) s += e * e;
  return std::sqrt(s);
}

}  // namespace

TEST(Krylov, SpmvMatchesDense) {
  Grid A = convdiff(4, 10.0, 0.0);
  std::vector<double> x(A.n), y(A.n);
  for (int64_t i = 0; i < A.n; ++i) x[i] = i + 1.0;
  ASSERT_EQ(spmv(A.view(), x.data(), y.data()), Status::ok);
  for (int64_t r = 0; r < A.n; ++r) {
    double s = 0;
    for (int32_t e = A.p[r]; e < A.p[r + 1]; ++e) s += A.v[e] * x[A.j[e]];
    EXPECT_DOUBLE_EQ(y[r], s);
  }
}

TEST(Krylov, GmresAndGcrodrReachTolerance) {
  Grid A = convdiff(20, 30.0, 0.0);
  const auto b = rhs(A.n);
  Operator op;
  op.csr = nullptr;
  CsrMatrix view = A.view();
  op.csr = &view;
  Options opt;
  opt.m = 20;
  opt.k = 8;
  opt.rtol = 1e-10;
  for (int variant = 0; variant < 2; ++variant) {
    std::vector<double> x(A.n, 0.0);
    Result res;
    std::vector<double> hist(4000);
    Status s = variant == 0 ? gmres(op, {}, b.data(), x.data(), opt, &res, hist.data(), 4000)
                            : gcrodr(op, {}, b.data(), x.data(), opt, nullptr, &res, hist.data(), 4000);
    ASSERT_EQ(s, Status::ok) << last_error();
    EXPECT_TRUE(res.converged);
    EXPECT_LE(true_residual(A, b, x), 1e-10 * norm(b) * (1 + 1e-9));
    EXPECT_NEAR(res.residual_norm, true_residual(A, b, x), 1e-12 * norm(b));
    EXPECT_GT(res.history_length, 1);
  }
}

TEST(Krylov, RecyclingCarriesAcrossSystemsAndSavesMatvecs) {
  Options opt;
  opt.m = 30;
  opt.k = 10;
  opt.rtol = 1e-9;
  Recycle* rec = nullptr;
  ASSERT_EQ(recycle_create(&rec), Status::ok);
  int64_t fresh_total = 0, recycled_total = 0;
  for (int i = 0; i < 4; ++i) {
    Grid A = convdiff(24, 20.0, 0.01 * i);
    CsrMatrix view = A.view();
    Operator op;
    op.csr = &view;
    const auto b = rhs(A.n);
    std::vector<double> x(A.n, 0.0), x2(A.n, 0.0);
    Result r1, r2;
    ASSERT_EQ(gcrodr(op, {}, b.data(), x.data(), opt, rec, &r1, nullptr, 0), Status::ok);
    ASSERT_EQ(gcrodr(op, {}, b.data(), x2.data(), opt, nullptr, &r2, nullptr, 0), Status::ok);
    EXPECT_TRUE(r1.converged && r2.converged);
    EXPECT_GT(recycle_dim(rec), 0);
    EXPECT_EQ(recycle_n(rec), A.n);
    if (i > 0) {
      recycled_total += r1.matvecs;
      fresh_total += r2.matvecs;
    }
  }
  EXPECT_LT(recycled_total, fresh_total);
  recycle_destroy(rec);
}

TEST(Krylov, PreconditionersConvergeWithTrueResidual) {
  Grid A = convdiff(20, 30.0, 0.0);
  CsrMatrix view = A.view();
  Operator op;
  op.csr = &view;
  const auto b = rhs(A.n);
  Options opt;
  opt.m = 20;
  opt.k = 5;
  int64_t none_mv = 0;
  for (Precond kind : {Precond::none, Precond::jacobi, Precond::ilu0}) {
    Preconditioner M;
    M.kind = kind;
    std::vector<double> x(A.n, 0.0);
    Result res;
    ASSERT_EQ(gcrodr(op, M, b.data(), x.data(), opt, nullptr, &res, nullptr, 0), Status::ok);
    EXPECT_TRUE(res.converged);
    EXPECT_LE(true_residual(A, b, x), 1e-8 * norm(b) * (1 + 1e-9));
    if (kind == Precond::none) none_mv = res.matvecs;
    if (kind == Precond::ilu0) {
      EXPECT_LT(res.matvecs, none_mv);
    }
  }
}

TEST(Krylov, HappyBreakdownAndAlreadyConverged) {
  // A diagonal matrix with 3 distinct eigenvalues: the Krylov space is invariant after 3 steps.
  Grid D;
  D.n = 30;
  D.p.push_back(0);
  for (int i = 0; i < 30; ++i) {
    D.j.push_back(i);
    D.v.push_back(1.0 + i % 3);
    D.p.push_back(i + 1);
  }
  CsrMatrix view = D.view();
  Operator op;
  op.csr = &view;
  const auto b = rhs(D.n);
  std::vector<double> x(D.n, 0.0);
  Result res;
  Options opt;
  opt.m = 10;
  opt.k = 4;
  opt.rtol = 1e-12;
  ASSERT_EQ(gcrodr(op, {}, b.data(), x.data(), opt, nullptr, &res, nullptr, 0), Status::ok);
  EXPECT_TRUE(res.converged);
  EXPECT_LE(res.iterations, 3);
  // x is now the solution: a second solve does no Arnoldi step.
  Result res2;
  ASSERT_EQ(gmres(op, {}, b.data(), x.data(), opt, &res2, nullptr, 0), Status::ok);
  EXPECT_TRUE(res2.converged);
  EXPECT_EQ(res2.iterations, 0);
  EXPECT_EQ(res2.matvecs, 1);
}

TEST(Krylov, RejectsBadInput) {
  Grid A = convdiff(5, 1.0, 0.0);
  CsrMatrix view = A.view();
  Operator op;
  op.csr = &view;
  auto b = rhs(A.n);
  std::vector<double> x(A.n, 0.0);
  Result res;
  Options opt;
  opt.m = 10;
  opt.k = 10;  // k must be < m
  EXPECT_EQ(gcrodr(op, {}, b.data(), x.data(), opt, nullptr, &res, nullptr, 0), Status::invalid_argument);
  opt.k = 3;
  b[3] = std::nan("");
  EXPECT_EQ(gcrodr(op, {}, b.data(), x.data(), opt, nullptr, &res, nullptr, 0), Status::invalid_argument);
  EXPECT_NE(std::string(last_error()).find("b contains NaN"), std::string::npos);
  b = rhs(A.n);
  CsrMatrix rect = view;
  rect.cols = view.cols + 1;
  op.csr = &rect;
  EXPECT_EQ(gcrodr(op, {}, b.data(), x.data(), opt, nullptr, &res, nullptr, 0), Status::invalid_argument);
  std::vector<int32_t> badj = A.j;
  badj[2] = 1000;
  CsrMatrix oob = view;
  oob.indices = badj.data();
  op.csr = &oob;
  EXPECT_EQ(gcrodr(op, {}, b.data(), x.data(), opt, nullptr, &res, nullptr, 0), Status::invalid_argument);
  // ILU(0) needs the diagonal
  Grid Z = convdiff(3, 0.0, 0.0);
  for (size_t e = 0; e < Z.j.size(); ++e)
    if (Z.v[e] == 4.0) Z.v[e] = 0.0;
  CsrMatrix zv = Z.view();
  op.csr = &zv;
  Preconditioner M;
  M.kind = Precond::jacobi;
  std::vector<double> bz(Z.n, 1.0), xz(Z.n, 0.0);
  EXPECT_EQ(gcrodr(op, M, bz.data(), xz.data(), opt, nullptr, &res, nullptr, 0), Status::invalid_argument);
}

TEST(Krylov, ComplexShiftedSystemWithRecycling) {
  // (A + i s I) x = b, A the convection-diffusion matrix: complex non-Hermitian.
  Grid R = convdiff(16, 10.0, 0.0);
  using Zc = std::complex<double>;
  std::vector<Zc> v(R.v.begin(), R.v.end());
  for (int64_t r = 0; r < R.n; ++r)
    for (int32_t e = R.p[r]; e < R.p[r + 1]; ++e)
      if (R.j[e] == r) v[e] += Zc(0.0, 0.3);
  CsrMatrixZ A;
  A.rows = A.cols = R.n;
  A.indptr = R.p.data();
  A.indices = R.j.data();
  A.values = v.data();
  OperatorZ op;
  op.csr = &A;
  std::vector<Zc> b(R.n);
  for (int64_t i = 0; i < R.n; ++i) b[i] = Zc(std::sin(0.3 * i), std::cos(0.7 * i));
  Options opt;
  opt.m = 20;
  opt.k = 6;
  opt.rtol = 1e-10;
  Recycle* rec = nullptr;
  ASSERT_EQ(recycle_create(&rec), Status::ok);
  for (int solve = 0; solve < 2; ++solve) {
    std::vector<Zc> x(R.n, Zc(0)), ax(R.n);
    Result res;
    ASSERT_EQ(gcrodr(op, PreconditionerZ{}, b.data(), x.data(), opt, rec, &res, nullptr, 0), Status::ok)
        << last_error();
    EXPECT_TRUE(res.converged);
    ASSERT_EQ(spmv(A, x.data(), ax.data()), Status::ok);
    double rn = 0, bn = 0;
    for (int64_t i = 0; i < R.n; ++i) {
      rn += std::norm(b[i] - ax[i]);
      bn += std::norm(b[i]);
    }
    EXPECT_LE(std::sqrt(rn), 1e-10 * std::sqrt(bn) * (1 + 1e-9));
    EXPECT_TRUE(recycle_is_complex(rec));
  }
  // a complex space cannot serve a real system
  Grid Rr = convdiff(16, 10.0, 0.0);
  CsrMatrix view = Rr.view();
  Operator rop;
  rop.csr = &view;
  std::vector<double> br(Rr.n, 1.0), xr(Rr.n, 0.0);
  Result res;
  EXPECT_EQ(gcrodr(rop, {}, br.data(), xr.data(), opt, rec, &res, nullptr, 0), Status::invalid_argument);
  recycle_destroy(rec);
}

// Single precision: the same operator in float32 and complex64, checked against the float64 solve
// of the same system (both solve to the float32-reachable tolerance 1e-5).
template <class T>
void single_precision_case(std::complex<float> shift) {
  Grid R = convdiff(20, 10.0, 0.0);
  std::vector<T> v(R.v.size());
  for (size_t e = 0; e < v.size(); ++e) v[e] = static_cast<float>(R.v[e]);
  if constexpr (!std::is_same_v<T, float>) {
    for (int64_t r = 0; r < R.n; ++r)
      for (int32_t e = R.p[r]; e < R.p[r + 1]; ++e)
        if (R.j[e] == r) v[e] += shift;
  }
  Csr<T> A;
  A.rows = A.cols = R.n;
  A.indptr = R.p.data();
  A.indices = R.j.data();
  A.values = v.data();
  OperatorT<T> op;
  op.csr = &A;
  std::vector<T> b(R.n);
  for (int64_t i = 0; i < R.n; ++i) b[i] = static_cast<float>(std::sin(0.37 * i) + 0.5);
  Options opt;
  opt.m = 30;
  opt.k = 8;
  opt.rtol = 1e-5;
  Recycle* rec = nullptr;
  ASSERT_EQ(recycle_create(&rec), Status::ok);
  int64_t first = 0;
  for (int solve = 0; solve < 2; ++solve) {
    for (auto& M : {Precond::none, Precond::ilu0}) {
      std::vector<T> x(R.n, T(0)), ax(R.n);
      PreconditionerT<T> P;
      P.kind = M;
      Result res;
      ASSERT_EQ(gcrodr(op, P, b.data(), x.data(), opt, rec, &res, nullptr, 0), Status::ok)
          << last_error();
      EXPECT_TRUE(res.converged);
      ASSERT_EQ(spmv(A, x.data(), ax.data()), Status::ok);
      double rn = 0, bn = 0;
      for (int64_t i = 0; i < R.n; ++i) {
        rn += std::norm(std::complex<double>(b[i] - ax[i]));
        bn += std::norm(std::complex<double>(b[i]));
      }
      EXPECT_LE(std::sqrt(rn), 1.5e-5 * std::sqrt(bn));
      if (solve == 0 && M == Precond::none) first = res.matvecs;
      if (solve == 1 && M == Precond::none) {
        EXPECT_LT(res.matvecs, first);  // U was recycled
      }
    }
  }
  const Scalar want = std::is_same_v<T, float> ? Scalar::float32 : Scalar::complex64;
  EXPECT_EQ(recycle_scalar(rec), want);
  std::vector<T> U(static_cast<size_t>(recycle_n(rec) * recycle_dim(rec)));
  EXPECT_EQ(recycle_get(rec, U.data()), Status::ok);
  std::vector<double> wrong(U.size());
  EXPECT_EQ(recycle_get(rec, wrong.data()), Status::invalid_argument);  // not a float64 space
  recycle_destroy(rec);
}

TEST(Krylov, Float32SolveWithRecycling) { single_precision_case<float>({}); }
TEST(Krylov, Complex64SolveWithRecycling) {
  single_precision_case<std::complex<float>>({0.0f, 0.3f});
}

// Mixed precision: a double system solved to 1e-11 on its own (double) residual, far below what a
// float32 solve resolves, with a float32 basis and recycle space carried to a second system.
TEST(Krylov, MixedPrecisionReachesDoubleToleranceAndRecyclesInFloat32) {
  Options opt;
  opt.m = 30;
  opt.k = 8;
  opt.rtol = 1e-11;
  Recycle* rec = nullptr;
  ASSERT_EQ(recycle_create(&rec), Status::ok);
  for (int i = 0; i < 2; ++i) {
    Grid A = convdiff(24, 20.0, 0.01 * i);
    const auto b = rhs(A.n);
    for (Precond kind : {Precond::none, Precond::ilu0}) {
      PreconditionerF M;
      M.kind = kind;
      std::vector<double> x(A.n, 0.0), x2(A.n, 0.0);
      Result res, res2;
      ASSERT_EQ(gcrodr_mixed(A.view(), M, b.data(), x.data(), opt, rec, &res, nullptr, 0), Status::ok)
          << last_error();
      EXPECT_TRUE(res.converged);
      EXPECT_LE(true_residual(A, b, x), 1e-11 * norm(b) * (1 + 1e-9));
      EXPECT_NEAR(res.residual_norm, true_residual(A, b, x), 1e-13 * norm(b));
      ASSERT_EQ(gmres_mixed(A.view(), M, b.data(), x2.data(), opt, &res2, nullptr, 0), Status::ok);
      EXPECT_TRUE(res2.converged);
      EXPECT_LE(true_residual(A, b, x2), 1e-11 * norm(b) * (1 + 1e-9));
    }
    EXPECT_EQ(recycle_scalar(rec), Scalar::float32);
    EXPECT_GT(recycle_dim(rec), 0);
  }
  // the float32 space cannot serve a full-precision double solve
  Grid A = convdiff(24, 20.0, 0.0);
  CsrMatrix view = A.view();
  Operator op;
  op.csr = &view;
  const auto b = rhs(A.n);
  std::vector<double> x(A.n, 0.0);
  Result res;
  EXPECT_EQ(gcrodr(op, {}, b.data(), x.data(), opt, rec, &res, nullptr, 0), Status::invalid_argument);
  recycle_destroy(rec);
  // an entry beyond float32's range is rejected, not silently turned into infinity
  A.v[3] = 1e300;
  EXPECT_EQ(gcrodr_mixed(A.view(), {}, b.data(), x.data(), opt, nullptr, &res, nullptr, 0),
            Status::invalid_argument);
  EXPECT_NE(std::string(last_error()).find("single precision"), std::string::npos);
}

// ILU(0) of a tridiagonal matrix has no fill to drop: it is the exact LU, so the preconditioned
// operator is the identity and GMRES converges in one step (checks both triangular solves,
// including their register-carried neighbour links).
TEST(Krylov, Ilu0OfTridiagonalIsExact) {
  Grid T;
  T.n = 200;
  T.p.push_back(0);
  for (int64_t i = 0; i < T.n; ++i) {
    if (i > 0) {
      T.j.push_back(static_cast<int32_t>(i - 1));
      T.v.push_back(-1.0 - 0.3 * std::sin(0.1 * i));
    }
    T.j.push_back(static_cast<int32_t>(i));
    T.v.push_back(3.0 + std::cos(0.2 * i));
    if (i + 1 < T.n) {
      T.j.push_back(static_cast<int32_t>(i + 1));
      T.v.push_back(-1.2 + 0.2 * std::cos(0.3 * i));
    }
    T.p.push_back(static_cast<int32_t>(T.j.size()));
  }
  CsrMatrix view = T.view();
  Operator op;
  op.csr = &view;
  Preconditioner M;
  M.kind = Precond::ilu0;
  const auto b = rhs(T.n);
  std::vector<double> x(T.n, 0.0);
  Options opt;
  opt.rtol = 1e-12;
  Result res;
  ASSERT_EQ(gmres(op, M, b.data(), x.data(), opt, &res, nullptr, 0), Status::ok);
  EXPECT_TRUE(res.converged);
  EXPECT_EQ(res.iterations, 1);
  EXPECT_LE(true_residual(T, b, x), 1e-12 * norm(b));
}
