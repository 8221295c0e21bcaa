// GoogleTest tests of the ParaRNN linear scan (fastpaper/pararnn.h) against a sequential
// reference written here from the header's description, sharing no code with
// fastpaper/detail/pararnn_scan.h.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fastpaper/core.h"
#include "fastpaper/pararnn.h"

namespace {

using fastpaper::Device;
using fastpaper::Status;
namespace pararnn = fastpaper::pararnn;

struct Problem {
  int64_t batch, time, channels;
  int block;
  std::vector<double> J, r, h0;
};

// Random blocks scaled so each has max-abs row sum <= 0.95: the recurrence stays bounded.
Problem make_problem(int64_t batch, int64_t time, int64_t channels, int block, unsigned seed) {
  Problem p{batch, time, channels, block, {}, {}, {}};
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  p.J.resize(static_cast<size_t>(batch * time * channels * block));
  p.r.resize(static_cast<size_t>(batch * time * channels));
  p.h0.resize(static_cast<size_t>(batch * channels));
  for (double& v : p.J) v = u(rng) * 0.95 / block;
  for (double& v : p.r) v = u(rng);
  for (double& v : p.h0) v = u(rng);
  return p;
}

std::vector<double> reference(const Problem& p, bool use_h0, bool reverse) {
  const int64_t N = p.channels, K = p.block, G = N / K;
  std::vector<double> h(p.r.size());
  for (int64_t b = 0; b < p.batch; ++b) {
    std::vector<double> state(static_cast<size_t>(N), 0.0), next(static_cast<size_t>(N));
    if (use_h0) {
      for (int64_t n = 0; n < N; ++n) state[n] = p.h0[b * N + n];
    }
    for (int64_t s = 0; s < p.time; ++s) {
      const int64_t t = reverse ? p.time - 1 - s : s;
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t i = 0; i < K; ++i) {
          double acc = p.r[(b * p.time + t) * N + g * K + i];
          for (int64_t j = 0; j < K; ++j) {
            acc += p.J[(((b * p.time + t) * G + g) * K + i) * K + j] * state[g * K + j];
          }
          next[g * K + i] = acc;
        }
      }
      state = next;
      for (int64_t n = 0; n < N; ++n) h[(b * p.time + t) * N + n] = state[n];
    }
  }
  return h;
}

struct Case {
  int64_t batch, time, channels;
  int block;
};

class ScanTest : public ::testing::TestWithParam<Case> {};

TEST_P(ScanTest, MatchesSequentialReferenceInDoubleAndFloat) {
  const Case c = GetParam();
  const Problem p = make_problem(c.batch, c.time, c.channels, c.block, 17u + c.block);
  for (bool reverse : {false, true}) {
    for (bool use_h0 : {false, true}) {
      const std::vector<double> ref = reference(p, use_h0, reverse);
      std::vector<double> h(p.r.size());
      ASSERT_EQ(pararnn::linear_scan(p.J.data(), p.r.data(), use_h0 ? p.h0.data() : nullptr,
                                     h.data(), p.batch, p.time, p.channels, p.block, reverse,
                                     false, Device::cpu, nullptr),
                Status::ok)
          << fastpaper::last_error();
      for (size_t i = 0; i < h.size(); ++i) ASSERT_NEAR(h[i], ref[i], 1e-12) << "element " << i;

      std::vector<float> Jf(p.J.begin(), p.J.end()), rf(p.r.begin(), p.r.end()),
          h0f(p.h0.begin(), p.h0.end()), hf(p.r.size());
      ASSERT_EQ(pararnn::linear_scan(Jf.data(), rf.data(), use_h0 ? h0f.data() : nullptr,
                                     hf.data(), p.batch, p.time, p.channels, p.block, reverse,
                                     false, Device::cpu, nullptr),
                Status::ok);
      for (size_t i = 0; i < hf.size(); ++i) ASSERT_NEAR(hf[i], ref[i], 1e-4) << "element " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ScanTest,
    ::testing::Values(Case{1, 1, 1, 1}, Case{2, 3, 4, 2}, Case{1, 4097, 8, 1},
                      Case{1, 4097, 6, 3}, Case{1, 2000, 8, 4}, Case{1, 1000, 16, 8},
                      Case{3, 500, 130, 1}, Case{2, 300, 70, 5}, Case{1, 257, 7, 7}));

// float16 / bfloat16 storage with float32 arithmetic: equal to the float32 scan of the widened
// inputs, each output rounded once (to nearest-even; checked against an independent rounding).
uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(PararnnScan, Bfloat16StorageFloat32Math) {
  const Problem p = make_problem(2, 3000, 6, 3, 5);
  std::vector<uint16_t> J, r, h0, h(p.r.size());
  std::vector<float> Jf, rf, h0f, hf(p.r.size());
  for (double v : p.J) { J.push_back(to_bf16(static_cast<float>(v))); Jf.push_back(from_bf16(J.back())); }
  for (double v : p.r) { r.push_back(to_bf16(static_cast<float>(v))); rf.push_back(from_bf16(r.back())); }
  for (double v : p.h0) { h0.push_back(to_bf16(static_cast<float>(v))); h0f.push_back(from_bf16(h0.back())); }
  for (bool reverse : {false, true}) {
    ASSERT_EQ(pararnn::linear_scan(J.data(), r.data(), h0.data(), h.data(),
                                   fastpaper::DType::bfloat16, 2, 3000, 6, 3, reverse,
                                   false, Device::cpu, nullptr),
              Status::ok);
    ASSERT_EQ(pararnn::linear_scan(Jf.data(), rf.data(), h0f.data(), hf.data(), 2, 3000, 6, 3,
                                   reverse, false, Device::cpu, nullptr),
              Status::ok);
    for (size_t i = 0; i < h.size(); ++i) ASSERT_EQ(h[i], to_bf16(hf[i])) << "element " << i;
  }
  EXPECT_EQ(pararnn::linear_scan(J.data(), r.data(), nullptr, h.data(), static_cast<fastpaper::DType>(9),
                                 2, 3000, 6, 3, false, false, Device::cpu, nullptr),
            Status::invalid_argument);
}

// The adjoint recurrence against the forward/reverse reference run on an explicitly shifted and
// transposed copy of J (J_{T+1} = J_0 = 0).
TEST(PararnnScan, AdjointMatchesShiftedTransposedReference) {
  for (const Case c : {Case{2, 300, 6, 3}, Case{1, 4097, 8, 1}, Case{1, 3001, 8, 2}, Case{1, 5, 4, 4}}) {
    const Problem p = make_problem(c.batch, c.time, c.channels, c.block, 9);
    const int64_t K = c.block, G = c.channels / K, blk = K * K;
    for (bool reverse : {false, true}) {
      Problem q = p;
      for (int64_t b = 0; b < c.batch; ++b) {
        for (int64_t t = 0; t < c.time; ++t) {
          const int64_t src = reverse ? t - 1 : t + 1;  // J^T of the neighbouring step, or 0
          for (int64_t g = 0; g < G; ++g) {
            for (int64_t i = 0; i < K; ++i) {
              for (int64_t j = 0; j < K; ++j) {
                const double v = (src < 0 || src >= c.time)
                                     ? 0.0
                                     : p.J[((b * c.time + src) * G + g) * blk + j * K + i];
                q.J[((b * c.time + t) * G + g) * blk + i * K + j] = v;
              }
            }
          }
        }
      }
      const std::vector<double> ref = reference(q, false, !reverse);
      std::vector<double> h(p.r.size());
      ASSERT_EQ(pararnn::linear_scan(p.J.data(), p.r.data(), nullptr, h.data(), c.batch, c.time,
                                     c.channels, c.block, reverse, true, Device::cpu, nullptr),
                Status::ok);
      for (size_t i = 0; i < h.size(); ++i) ASSERT_NEAR(h[i], ref[i], 1e-12) << "element " << i;
    }
  }
  std::vector<double> buf(16, 0.0);
  EXPECT_EQ(pararnn::linear_scan(buf.data(), buf.data(), buf.data(), buf.data() + 8, 1, 2, 2, 1,
                                 false, true, Device::cpu, nullptr),
            Status::invalid_argument);  // adjoint with h0
}

TEST(PararnnScan, InPlaceOverResidual) {
  const Problem p = make_problem(1, 3000, 8, 2, 3);
  const std::vector<double> ref = reference(p, true, false);
  std::vector<double> hr = p.r;  // h == r
  ASSERT_EQ(pararnn::linear_scan(p.J.data(), hr.data(), p.h0.data(), hr.data(), 1, 3000, 8, 2,
                                 false, false, Device::cpu, nullptr),
            Status::ok);
  for (size_t i = 0; i < hr.size(); ++i) ASSERT_NEAR(hr[i], ref[i], 1e-12);
}

TEST(PararnnScan, RejectsBadArguments) {
  std::vector<double> buf(64, 0.0);
  const double* c = buf.data();
  double* h = buf.data() + 32;
  auto call = [&](int64_t b, int64_t t, int64_t n, int k, Device d = Device::cpu) {
    return pararnn::linear_scan(c, c, nullptr, h, b, t, n, k, false, false, d, nullptr);
  };
  EXPECT_EQ(call(-1, 2, 2, 1), Status::invalid_argument);
  EXPECT_EQ(call(1, -2, 2, 1), Status::invalid_argument);
  EXPECT_EQ(call(1, 2, 3, 2), Status::invalid_argument);  // channels % block
  EXPECT_EQ(call(1, 2, 9, 9), Status::invalid_argument);  // block > 8
  EXPECT_EQ(call(1, 2, 2, 0), Status::invalid_argument);
  EXPECT_EQ(call(1, 2, 2, 1, static_cast<Device>(7)), Status::invalid_argument);
  EXPECT_NE(std::string(fastpaper::last_error()), "");
  EXPECT_EQ(call(int64_t{1} << 40, int64_t{1} << 40, 2, 1), Status::invalid_argument);  // overflow
  EXPECT_EQ(pararnn::linear_scan(static_cast<const double*>(nullptr), c, nullptr, h, 1, 2, 2, 1,
                                 false, false, Device::cpu, nullptr),
            Status::invalid_argument);
  // empty problems are valid no-ops, even with null pointers
  EXPECT_EQ(pararnn::linear_scan(static_cast<const float*>(nullptr), nullptr, nullptr, nullptr, 0,
                                 5, 4, 2, false, false, Device::cpu, nullptr),
            Status::ok);
  // CUDA: block 5 is CPU-only (or the build has no CUDA at all)
  EXPECT_NE(call(1, 2, 5, 5, Device::cuda), Status::ok);
}

}  // namespace
