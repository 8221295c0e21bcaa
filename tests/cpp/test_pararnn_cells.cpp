// GoogleTest tests of the fused ParaGRU / ParaLSTM API (fastpaper/pararnn.h, cell_*) against a
// sequential reference written here from the header's description (sharing no code with
// fastpaper/detail/pararnn_cells.h), and the backward against central finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "fastpaper/core.h"
#include "fastpaper/pararnn.h"

namespace {

using fastpaper::Device;
using fastpaper::DType;
using fastpaper::Status;
namespace pararnn = fastpaper::pararnn;
using pararnn::Cell;

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct Problem {
  Cell cell;
  int64_t batch, time, channels, k, np;
  std::vector<double> pre, params, h0;
};

Problem make(Cell cell, int64_t b, int64_t t, int64_t n, unsigned seed) {
  Problem p{cell, b, t, n, cell == Cell::lstm ? 2 : 1, cell == Cell::lstm ? 5 : 3, {}, {}, {}};
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  p.pre.resize(static_cast<size_t>(b * t * 3 * n));
  p.params.resize(static_cast<size_t>(p.np * n));
  p.h0.resize(static_cast<size_t>(b * n * p.k));
  for (double& v : p.pre) v = g(rng);
  for (double& v : p.params) v = 0.8 * g(rng);
  for (double& v : p.h0) v = 0.5 * g(rng);
  return p;
}

// The recurrence, step by step, from the formulas in fastpaper/pararnn.h / the Python cells.
std::vector<double> reference(const Problem& p) {
  const int64_t N = p.channels, K = p.k;
  std::vector<double> out(static_cast<size_t>(p.batch * p.time * N * K));
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t n = 0; n < N; ++n) {
      const double* a = &p.params[0];
      auto A = [&](int q) { return a[q * N + n]; };
      double c = p.h0[(b * N + n) * K], h = p.h0[(b * N + n) * K + K - 1];
      for (int64_t t = 0; t < p.time; ++t) {
        const double* pr = &p.pre[((b * p.time + t) * 3) * N + n];
        const double x0 = pr[0], x1 = pr[N], x2 = pr[2 * N];
        if (p.cell == Cell::gru) {
          const double z = sig(A(0) * h + x0), r = sig(A(1) * h + x1);
          const double cc = std::tanh(A(2) * (h * r) + x2);
          h = z * cc + (1 - z) * h;
          out[(b * p.time + t) * N + n] = h;
        } else {
          const double f = sig(A(0) * h + x0 + A(3) * c);
          c = f * c + (1 - f) * std::tanh(A(1) * h + x1);
          const double o = sig(A(2) * h + x2 + A(4) * c);
          h = o * std::tanh(c);
          out[((b * p.time + t) * N + n) * 2] = c;
          out[((b * p.time + t) * N + n) * 2 + 1] = h;
        }
      }
    }
  }
  return out;
}

class PararnnCells : public ::testing::TestWithParam<Cell> {};

TEST_P(PararnnCells, SequentialAndNewtonMatchReference) {
  for (int64_t t : {1, 2, 3, 300}) {
    const Problem p = make(GetParam(), 2, t, 35, static_cast<unsigned>(t));
    const std::vector<double> ref = reference(p);
    std::vector<double> seq(ref.size()), nwt(ref.size());
    ASSERT_EQ(pararnn::cell_sequential(p.cell, p.pre.data(), p.params.data(), p.h0.data(),
                                       seq.data(), p.batch, p.time, p.channels, Device::cpu,
                                       nullptr),
              Status::ok);
    int32_t info[2] = {-1, -1};
    ASSERT_EQ(pararnn::cell_newton(p.cell, p.pre.data(), p.params.data(), p.h0.data(), nwt.data(),
                                   info, p.batch, p.time, p.channels, 50, 1e-12, 1e-12,
                                   Device::cpu, nullptr),
              Status::ok);
    EXPECT_EQ(info[1], 0);
    EXPECT_GE(info[0], 1);
    for (size_t i = 0; i < ref.size(); ++i) {
      ASSERT_NEAR(seq[i], ref[i], 1e-12) << "t=" << t << " i=" << i;
      ASSERT_NEAR(nwt[i], ref[i], 1e-10) << "t=" << t << " i=" << i;
    }
    // float32 through the DType overload
    std::vector<float> pf(p.pre.begin(), p.pre.end()), af(p.params.begin(), p.params.end()),
        hf(p.h0.begin(), p.h0.end()), sf(ref.size());
    ASSERT_EQ(pararnn::cell_newton(p.cell, pf.data(), af.data(), hf.data(), sf.data(), info,
                                   DType::float32, p.batch, p.time, p.channels, 50, 1e-6, 1e-6,
                                   Device::cpu, nullptr),
              Status::ok);
    for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(sf[i], ref[i], 1e-4);
  }
}

TEST_P(PararnnCells, BackwardMatchesFiniteDifferences) {
  Problem p = make(GetParam(), 2, 7, 3, 11);
  std::mt19937_64 rng(5);
  std::normal_distribution<double> g(0.0, 1.0);
  std::vector<double> grad(reference(p).size());
  for (double& v : grad) v = g(rng);
  auto loss = [&](const Problem& q) {
    const std::vector<double> s = reference(q);
    double l = 0;
    for (size_t i = 0; i < s.size(); ++i) l += s[i] * grad[i];
    return l;
  };
  std::vector<double> states = reference(p), dpre(p.pre.size()), dh0(p.h0.size()),
                      dparams(p.params.size()), work(static_cast<size_t>(p.batch) * p.params.size());
  ASSERT_EQ(pararnn::cell_backward(p.cell, p.pre.data(), p.params.data(), p.h0.data(),
                                   states.data(), grad.data(), dpre.data(), dh0.data(),
                                   dparams.data(), work.data(), p.batch, p.time, p.channels,
                                   Device::cpu, nullptr),
            Status::ok);
  const double eps = 1e-6;
  auto check = [&](std::vector<double> Problem::*field, const std::vector<double>& got) {
    for (size_t i = 0; i < got.size(); ++i) {
      Problem up = p, dn = p;
      (up.*field)[i] += eps;
      (dn.*field)[i] -= eps;
      ASSERT_NEAR(got[i], (loss(up) - loss(dn)) / (2 * eps), 1e-7) << i;
    }
  };
  check(&Problem::pre, dpre);
  check(&Problem::h0, dh0);
  check(&Problem::params, dparams);
}

INSTANTIATE_TEST_SUITE_P(Cells, PararnnCells, ::testing::Values(Cell::gru, Cell::lstm),
                         [](const auto& info) {
                           return std::string(info.param == Cell::gru ? "gru" : "lstm");
                         });

TEST(PararnnCellsApi, ReportsNonConvergenceAndRejectsBadArguments) {
  Problem p = make(Cell::gru, 1, 400, 4, 3);
  for (double& v : p.pre) v *= 3;
  std::vector<double> s(static_cast<size_t>(400 * 4));
  int32_t info[2];
  ASSERT_EQ(pararnn::cell_newton(p.cell, p.pre.data(), p.params.data(), nullptr, s.data(), info, 1,
                                 400, 4, 1, 0.0, 0.0, Device::cpu, nullptr),
            Status::ok);
  EXPECT_EQ(info[0], 1);
  EXPECT_EQ(info[1], 1);
  auto newton = [&](int64_t b, int32_t its, double atol, Device d = Device::cpu) {
    return pararnn::cell_newton(p.cell, p.pre.data(), p.params.data(), nullptr, s.data(), info, b,
                                400, 4, its, atol, 0.0, d, nullptr);
  };
  EXPECT_EQ(newton(-1, 5, 0.0), Status::invalid_argument);
  EXPECT_EQ(newton(1, 0, 0.0), Status::invalid_argument);
  EXPECT_EQ(newton(1, 5, -1.0), Status::invalid_argument);
  EXPECT_EQ(newton(1, 5, 0.0, static_cast<Device>(7)), Status::invalid_argument);
  EXPECT_NE(std::string(fastpaper::last_error()), "");
  EXPECT_EQ(pararnn::cell_sequential(static_cast<Cell>(4), p.pre.data(), p.params.data(), nullptr,
                                     s.data(), 1, 400, 4, Device::cpu, nullptr),
            Status::invalid_argument);
  EXPECT_EQ(pararnn::cell_sequential(Cell::gru, static_cast<const double*>(nullptr),
                                     p.params.data(), nullptr, s.data(), 1, 400, 4, Device::cpu,
                                     nullptr),
            Status::invalid_argument);
  // empty problems are valid no-ops
  EXPECT_EQ(pararnn::cell_sequential(Cell::lstm, static_cast<const double*>(nullptr), nullptr,
                                     nullptr, nullptr, 0, 5, 4, Device::cpu, nullptr),
            Status::ok);
}

}  // namespace
