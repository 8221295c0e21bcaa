// GoogleTest tests of the expert-by-expert MoE MLP (fastpaper/moe.h) against a per-token
// reference written here from the header's description (no code shared with the kernels), plus
// the GELU math of fastpaper/detail/moe_math.h that the CUDA kernels use too.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fastpaper/core.h"
#include "fastpaper/detail/moe_math.h"
#include "fastpaper/moe.h"

namespace {

using fastpaper::Device;
using fastpaper::DType;
using fastpaper::Status;
namespace moe = fastpaper::moe;

struct Problem {
  moe::Shape s;
  std::vector<double> x, scores, W1, b1, W2, b2;
  std::vector<int64_t> idx;
};

// Distinct experts per token drawn from the first `used` experts (the rest stay empty).
Problem make_problem(int64_t n, int64_t d, int64_t h, int64_t e, int64_t k, int64_t used,
                     unsigned seed) {
  Problem p{{n, d, h, e, k}, {}, {}, {}, {}, {}, {}, {}};
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  auto fill = [&](std::vector<double>& v, size_t size, double scale) {
    v.resize(size);
    for (double& a : v) a = g(rng) * scale;
  };
  fill(p.x, n * d, 1.0);
  fill(p.W1, e * d * h, 1.0 / std::sqrt(double(d)));
  fill(p.b1, e * h, 0.1);
  fill(p.W2, e * h * d, 1.0 / std::sqrt(double(h)));
  fill(p.b2, e * d, 0.1);
  p.scores.resize(n * k);
  for (double& a : p.scores) a = u(rng);
  p.idx.resize(n * k);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<int64_t> pool(used);
    for (int64_t i = 0; i < used; ++i) pool[i] = i;
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int64_t j = 0; j < k; ++j) p.idx[t * k + j] = pool[j];
  }
  return p;
}

double gelu_ref(double z) { return 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0))); }

std::vector<double> reference(const Problem& p) {
  const auto& s = p.s;
  std::vector<double> y(s.tokens * s.dim, 0.0), hid(s.hidden);
  for (int64_t t = 0; t < s.tokens; ++t) {
    for (int64_t j = 0; j < s.k; ++j) {
      const int64_t e = p.idx[t * s.k + j];
      for (int64_t c = 0; c < s.hidden; ++c) {
        double z = p.b1[e * s.hidden + c];
        for (int64_t i = 0; i < s.dim; ++i) {
          z += p.x[t * s.dim + i] * p.W1[(e * s.dim + i) * s.hidden + c];
        }
        hid[c] = gelu_ref(z);
      }
      for (int64_t o = 0; o < s.dim; ++o) {
        double v = p.b2[e * s.dim + o];
        for (int64_t c = 0; c < s.hidden; ++c) v += hid[c] * p.W2[(e * s.hidden + c) * s.dim + o];
        y[t * s.dim + o] += p.scores[t * s.k + j] * v;
      }
    }
  }
  return y;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

Status run_forward(const Problem& p, std::vector<double>* y) {
  y->assign(p.s.tokens * p.s.dim, 0.0);
  return moe::moe_mlp_forward(p.x.data(), p.scores.data(), p.idx.data(), p.W1.data(),
                              p.b1.data(), p.W2.data(), p.b2.data(), y->data(), p.s, Device::cpu,
                              nullptr, 0, nullptr);
}

TEST(MoeMath, GeluAndDerivative) {
  using fastpaper::moe::detail::gelu;
  using fastpaper::moe::detail::gelu_grad;
  for (double z = -6.0; z <= 6.0; z += 0.37) {
    EXPECT_NEAR(gelu(z), gelu_ref(z), 1e-15);
    EXPECT_NEAR(gelu(float(z)), gelu_ref(z), 2e-6);
    const double num = (gelu_ref(z + 1e-6) - gelu_ref(z - 1e-6)) / 2e-6;
    EXPECT_NEAR(gelu_grad(z), num, 1e-7);
  }
}

TEST(MoeCpu, ForwardMatchesPerTokenReference) {
  for (int64_t k : {1, 2, 5}) {
    const Problem p = make_problem(41, 12, 9, 5, k, 5, 7u + unsigned(k));
    std::vector<double> y;
    ASSERT_EQ(run_forward(p, &y), Status::ok) << fastpaper::last_error();
    EXPECT_LT(max_abs_diff(y, reference(p)), 1e-12) << "k=" << k;
  }
}

TEST(MoeCpu, EmptyExpertsAndDeterminism) {
  const Problem p = make_problem(60, 8, 16, 10, 2, 3, 3u);  // experts 3..9 get no token
  std::vector<double> y1, y2;
  ASSERT_EQ(run_forward(p, &y1), Status::ok);
  ASSERT_EQ(run_forward(p, &y2), Status::ok);
  EXPECT_LT(max_abs_diff(y1, reference(p)), 1e-12);
  EXPECT_EQ(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(double)), 0);
}

TEST(MoeCpu, Float32AndBfloat16Storage) {
  const Problem p = make_problem(33, 16, 8, 4, 2, 4, 11u);
  const std::vector<double> ref = reference(p);
  auto f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  const std::vector<float> x = f(p.x), sc = f(p.scores), W1 = f(p.W1), b1 = f(p.b1), W2 = f(p.W2),
                           b2 = f(p.b2);
  std::vector<float> y(ref.size());
  ASSERT_EQ(moe::moe_mlp_forward(x.data(), sc.data(), p.idx.data(), W1.data(), b1.data(),
                                 W2.data(), b2.data(), y.data(), DType::float32, p.s, Device::cpu,
                                 nullptr, 0, nullptr),
            Status::ok);
  for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], ref[i], 1e-4);
  using fastpaper::detail::bf16_to_float;
  using fastpaper::detail::float_to_bf16;
  auto b = [](const std::vector<float>& v) {
    std::vector<uint16_t> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = float_to_bf16(v[i]);
    return o;
  };
  const auto xb = b(x), W1b = b(W1), b1b = b(b1), W2b = b(W2), b2b = b(b2);
  std::vector<uint16_t> yb(ref.size());
  ASSERT_EQ(moe::moe_mlp_forward(xb.data(), sc.data(), p.idx.data(), W1b.data(), b1b.data(),
                                 W2b.data(), b2b.data(), yb.data(), DType::bfloat16, p.s,
                                 Device::cpu, nullptr, 0, nullptr),
            Status::ok);
  for (size_t i = 0; i < yb.size(); ++i) EXPECT_NEAR(bf16_to_float(yb[i]), ref[i], 0.05);
}

TEST(MoeCpu, BackwardMatchesFiniteDifferences) {
  Problem p = make_problem(7, 5, 6, 3, 2, 3, 5u);
  const auto& s = p.s;
  std::mt19937_64 rng(9);
  std::normal_distribution<double> g(0.0, 1.0);
  std::vector<double> dy(s.tokens * s.dim);
  for (double& v : dy) v = g(rng);
  std::vector<double> dx(p.x.size()), dsc(p.scores.size()), dW1(p.W1.size()), db1(p.b1.size()),
      dW2(p.W2.size()), db2(p.b2.size());
  ASSERT_EQ(moe::moe_mlp_backward(dy.data(), p.x.data(), p.scores.data(), p.idx.data(),
                                  p.W1.data(), p.b1.data(), p.W2.data(), p.b2.data(), dx.data(),
                                  dsc.data(), dW1.data(), db1.data(), dW2.data(), db2.data(), s,
                                  Device::cpu, nullptr, 0, nullptr),
            Status::ok)
      << fastpaper::last_error();
  auto loss = [&]() {
    const std::vector<double> y = reference(p);
    double l = 0;
    for (size_t i = 0; i < y.size(); ++i) l += y[i] * dy[i];
    return l;
  };
  std::vector<double>* params[] = {&p.x, &p.scores, &p.W1, &p.b1, &p.W2, &p.b2};
  const std::vector<double>* grads[] = {&dx, &dsc, &dW1, &db1, &dW2, &db2};
  for (int q = 0; q < 6; ++q) {
    std::vector<double>& v = *params[q];
    for (size_t i = 0; i < v.size(); i += 3) {
      const double keep = v[i];
      v[i] = keep + 1e-6;
      const double up = loss();
      v[i] = keep - 1e-6;
      const double down = loss();
      v[i] = keep;
      EXPECT_NEAR((*grads[q])[i], (up - down) / 2e-6, 1e-6) << "param " << q << " index " << i;
    }
  }
}

TEST(MoeCpu, EmptyTokensAndBadArguments) {
  Problem p = make_problem(0, 4, 4, 3, 2, 3, 1u);
  std::vector<double> y;
  EXPECT_EQ(run_forward(p, &y), Status::ok);
  std::vector<double> dW1(p.W1.size(), 1.0), db1(p.b1.size(), 1.0), dW2(p.W2.size(), 1.0),
      db2(p.b2.size(), 1.0);
  EXPECT_EQ(moe::moe_mlp_backward(nullptr, nullptr, nullptr, nullptr, p.W1.data(), p.b1.data(),
                                  p.W2.data(), p.b2.data(), nullptr, nullptr, dW1.data(),
                                  db1.data(), dW2.data(), db2.data(), p.s, Device::cpu, nullptr, 0,
                                  nullptr),
            Status::ok);
  for (double v : dW1) EXPECT_EQ(v, 0.0);
  for (double v : db2) EXPECT_EQ(v, 0.0);

  p = make_problem(5, 4, 4, 3, 2, 3, 2u);
  p.idx[3] = 3;  // outside [0, E)
  EXPECT_EQ(run_forward(p, &y), Status::invalid_argument);
  EXPECT_NE(std::string(fastpaper::last_error()).find("indices"), std::string::npos);
  p.idx[3] = 0;
  p.s.k = 4;  // k > E
  EXPECT_EQ(run_forward(p, &y), Status::invalid_argument);
  p.s.k = 2;
  p.s.dim = 0;
  EXPECT_EQ(run_forward(p, &y), Status::invalid_argument);
}

}  // namespace
