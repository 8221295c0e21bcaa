// GoogleTest tests of the multi-head recurrent cells (fastpaper/rnn.h): forward against an LSTM
// and a GRU written here from the header's description (no code shared with rnn_cells.h),
// backward against central finite differences of the float64 forward, lengths, float32/bf16
// storage, and argument validation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "fastpaper/config.h"
#include "fastpaper/core.h"
#include "fastpaper/rnn.h"

namespace {

using fastpaper::Device;
using fastpaper::DType;
using fastpaper::Status;
namespace rnn = fastpaper::rnn;

struct Problem {
  rnn::Shape s;
  std::vector<double> Wx, R, b, st0;
  std::vector<int64_t> lengths;
};

Problem make(rnn::Cell cell, int64_t B, int64_t T, int64_t NH, int64_t DH, unsigned seed) {
  Problem p{{B, T, NH, DH, cell}, {}, {}, {}, {}, {}};
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  const int64_t G = rnn::gates(cell), GB = rnn::bias_rows(cell), S = rnn::state_count(cell);
  p.Wx.resize(B * T * G * NH * DH);
  p.R.resize(G * NH * DH * DH);
  p.b.resize(GB * NH * DH);
  p.st0.resize(S * B * NH * DH);
  for (double& v : p.Wx) v = nd(rng);
  for (double& v : p.R) v = nd(rng) / std::sqrt(static_cast<double>(DH));
  for (double& v : p.b) v = 0.5 * nd(rng);
  for (double& v : p.st0) v = 0.5 * nd(rng);
  return p;
}

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// h_all and last of an LSTM (gates i, f, g, o) or GRU (r, z, n; b = b_r, b_z, b_in, b_hn).
void reference(const Problem& p, std::vector<double>& h_all, std::vector<double>& last) {
  const auto& s = p.s;
  const int64_t B = s.batch, T = s.time, NH = s.heads, DH = s.head_dim, N = NH * DH;
  const int64_t G = rnn::gates(s.cell), S = rnn::state_count(s.cell);
  h_all.assign(B * T * N, 0.0);
  last = p.st0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = p.lengths.empty() ? T : p.lengths[b];
    for (int64_t t = 0; t < len; ++t) {
      std::vector<double> h(N), c(N);
      for (int64_t u = 0; u < N; ++u) {
        h[u] = last[b * N + u];
        if (S == 2) c[u] = last[B * N + b * N + u];
      }
      for (int64_t n = 0; n < NH; ++n) {
        for (int64_t j = 0; j < DH; ++j) {
          double rec[4] = {0, 0, 0, 0}, wx[4] = {0, 0, 0, 0}, bias[4] = {0, 0, 0, 0};
          for (int64_t g = 0; g < G; ++g) {
            for (int64_t k = 0; k < DH; ++k) rec[g] += p.R[((g * NH + n) * DH + j) * DH + k] * h[n * DH + k];
            wx[g] = p.Wx[((b * T + t) * G + g) * N + n * DH + j];
          }
          for (int64_t g = 0; g < rnn::bias_rows(s.cell); ++g) bias[g] = p.b[g * N + n * DH + j];
          const int64_t u = n * DH + j;
          double hn;
          if (s.cell == rnn::Cell::lstm) {
            const double cn = sig(wx[1] + rec[1] + bias[1]) * c[u] +
                              sig(wx[0] + rec[0] + bias[0]) * std::tanh(wx[2] + rec[2] + bias[2]);
            hn = sig(wx[3] + rec[3] + bias[3]) * std::tanh(cn);
            last[B * N + b * N + u] = cn;
          } else {
            const double r = sig(wx[0] + rec[0] + bias[0]), z = sig(wx[1] + rec[1] + bias[1]);
            const double nn = std::tanh(wx[2] + bias[2] + r * (rec[2] + bias[3]));
            hn = (1 - z) * nn + z * h[u];
          }
          last[b * N + u] = hn;
          h_all[(b * T + t) * N + u] = hn;
        }
      }
    }
  }
}

struct Out {
  std::vector<double> h_all, last, hist, cache;
};

Out run_forward(const Problem& p) {
  const auto& s = p.s;
  const int64_t BN = s.batch * s.heads * s.head_dim, S = rnn::state_count(s.cell);
  Out o;
  o.h_all.resize(BN * s.time);
  o.last.resize(S * BN);
  o.hist.resize(S * (s.time + 1) * BN);
  o.cache.resize(s.time * BN * rnn::bias_rows(s.cell));
  EXPECT_EQ(rnn::forward(p.Wx.data(), p.R.data(), p.b.data(), p.st0.data(),
                         p.lengths.empty() ? nullptr : p.lengths.data(), o.h_all.data(),
                         o.last.data(), o.hist.data(), o.cache.data(), s, Device::cpu, nullptr),
            Status::ok)
      << fastpaper::last_error();
  return o;
}

class RnnCells : public ::testing::TestWithParam<rnn::Cell> {};

TEST_P(RnnCells, ForwardMatchesReference) {
  Problem p = make(GetParam(), 3, 6, 2, 5, 1);
  p.lengths = {6, 2, 0};
  std::vector<double> h_ref, last_ref;
  reference(p, h_ref, last_ref);
  const Out o = run_forward(p);
  for (size_t i = 0; i < h_ref.size(); ++i) ASSERT_NEAR(o.h_all[i], h_ref[i], 1e-12) << i;
  for (size_t i = 0; i < last_ref.size(); ++i) ASSERT_NEAR(o.last[i], last_ref[i], 1e-12) << i;
}

// d/dx of L = sum(wh * h_all) + sum(wl * last) by central differences vs backward().
TEST_P(RnnCells, BackwardMatchesFiniteDifferences) {
  Problem p = make(GetParam(), 2, 4, 2, 3, 2);
  p.lengths = {4, 3};
  const auto& s = p.s;
  std::mt19937_64 rng(7);
  std::normal_distribution<double> nd(0.0, 1.0);
  const int64_t BN = s.batch * s.heads * s.head_dim, S = rnn::state_count(s.cell);
  std::vector<double> wh(BN * s.time), wl(S * BN);
  for (double& v : wh) v = nd(rng);
  for (double& v : wl) v = nd(rng);
  auto loss = [&](const Problem& q) {
    std::vector<double> h, l;
    reference(q, h, l);
    double acc = 0;
    for (size_t i = 0; i < h.size(); ++i) acc += wh[i] * h[i];
    for (size_t i = 0; i < l.size(); ++i) acc += wl[i] * l[i];
    return acc;
  };
  const Out o = run_forward(p);
  std::vector<double> dWx(p.Wx.size()), dR(p.R.size()), db(p.b.size()), ds(p.st0.size());
  std::vector<double> work(rnn::backward_workspace(s));
  ASSERT_EQ(rnn::backward(wh.data(), wl.data(), p.R.data(), o.hist.data(), o.cache.data(),
                          p.lengths.data(), dWx.data(), dR.data(), db.data(), ds.data(),
                          work.data(), s, Device::cpu, nullptr),
            Status::ok);
  std::vector<double>* params[] = {&p.Wx, &p.R, &p.b, &p.st0};
  const std::vector<double>* grads[] = {&dWx, &dR, &db, &ds};
  for (int which = 0; which < 4; ++which) {
    std::vector<double>& x = *params[which];
    for (size_t i = 0; i < x.size(); i += 3) {
      const double keep = x[i], eps = 1e-6;
      x[i] = keep + eps;
      const double up = loss(p);
      x[i] = keep - eps;
      const double down = loss(p);
      x[i] = keep;
      ASSERT_NEAR((*grads[which])[i], (up - down) / (2 * eps), 1e-6) << which << " " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(LstmGru, RnnCells, ::testing::Values(rnn::Cell::lstm, rnn::Cell::gru));

TEST(Rnn, Float32AndBfloat16Storage) {
  const Problem p = make(rnn::Cell::lstm, 2, 5, 1, 16, 3);
  std::vector<double> h_ref, last_ref;
  reference(p, h_ref, last_ref);
  auto conv = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  const auto Wx = conv(p.Wx), R = conv(p.R), b = conv(p.b), st0 = conv(p.st0);
  std::vector<float> h(h_ref.size()), last(last_ref.size());
  ASSERT_EQ(rnn::forward(Wx.data(), R.data(), b.data(), st0.data(), nullptr, h.data(), last.data(),
                         nullptr, nullptr, DType::float32, p.s, Device::cpu, nullptr),
            Status::ok);
  for (size_t i = 0; i < h.size(); ++i) ASSERT_NEAR(h[i], h_ref[i], 1e-5);
  // bfloat16: the top 16 bits of float32 (inputs truncated; the output tolerance covers it)
  auto bf = [](const std::vector<float>& v) {
    std::vector<uint16_t> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      uint32_t u;
      std::memcpy(&u, &v[i], 4);
      o[i] = static_cast<uint16_t>(u >> 16);
    }
    return o;
  };
  const auto Wx16 = bf(Wx), R16 = bf(R), b16 = bf(b), st16 = bf(st0);
  std::vector<uint16_t> h16(h.size()), last16(last.size());
  ASSERT_EQ(rnn::forward(Wx16.data(), R16.data(), b16.data(), st16.data(), nullptr, h16.data(),
                         last16.data(), nullptr, nullptr, DType::bfloat16, p.s, Device::cpu, nullptr),
            Status::ok);
  for (size_t i = 0; i < h16.size(); ++i) {
    const uint32_t u = static_cast<uint32_t>(h16[i]) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    ASSERT_NEAR(f, h_ref[i], 0.1);
  }
}

// forward_input / backward_input (the input projection fused into the step GEMM) against
// forward / backward on Wx = x Wih^T, with the chain rule for dx = dWx Wih and dWih = dWx^T x.
TEST(Rnn, ForwardInputMatchesForwardOnProjection) {
  for (rnn::Cell cell : {rnn::Cell::lstm, rnn::Cell::elman, rnn::Cell::slstm}) {
    Problem p = make(cell, 3, 5, 2, 5, 9);
    p.lengths = {5, 1, 3};
    if (cell == rnn::Cell::slstm) {  // n >= 1: a state after at least one step
      const int64_t BN = 3 * 2 * 5;
      for (int64_t i = 0; i < BN; ++i) p.st0[2 * BN + i] = 1.0 + std::fabs(p.st0[2 * BN + i]);
    }
    const auto& s = p.s;
    const int64_t I = 7, B = s.batch, T = s.time, GN = rnn::gates(cell) * s.heads * s.head_dim;
    std::mt19937_64 rng(3);
    std::normal_distribution<double> nd(0.0, 1.0);
    std::vector<double> x(B * T * I), W(GN * I);
    for (double& v : x) v = nd(rng);
    for (double& v : W) v = nd(rng) / std::sqrt(static_cast<double>(I));
    for (int64_t r = 0; r < B * T; ++r)  // Wx rows (b, t), columns (g, n, j) = Wih rows
      for (int64_t c = 0; c < GN; ++c) {
        double acc = 0;
        for (int64_t k = 0; k < I; ++k) acc += x[r * I + k] * W[c * I + k];
        p.Wx[r * GN + c] = acc;
      }
    const Out o = run_forward(p);
    const int64_t BN = B * s.heads * s.head_dim, S = rnn::state_count(cell);
    Out f;
    f.h_all.resize(BN * T);
    f.last.resize(S * BN);
    f.hist.resize(S * (T + 1) * BN);
    f.cache.resize(T * BN * rnn::bias_rows(cell));
    ASSERT_EQ(rnn::forward_input(x.data(), W.data(), I, p.R.data(), p.b.data(), p.st0.data(),
                                 p.lengths.data(), f.h_all.data(), f.last.data(), f.hist.data(),
                                 f.cache.data(), s, Device::cpu, nullptr),
              Status::ok)
        << fastpaper::last_error();
    for (size_t i = 0; i < o.h_all.size(); ++i) ASSERT_NEAR(f.h_all[i], o.h_all[i], 1e-12) << i;
    for (size_t i = 0; i < o.last.size(); ++i) ASSERT_NEAR(f.last[i], o.last[i], 1e-12) << i;

    std::vector<double> wh(BN * T), wl(S * BN);
    for (double& v : wh) v = nd(rng);
    for (double& v : wl) v = nd(rng);
    std::vector<double> dWx(p.Wx.size()), dR(p.R.size()), db(p.b.size()), ds(p.st0.size());
    std::vector<double> work(rnn::backward_workspace(s));
    ASSERT_EQ(rnn::backward(wh.data(), wl.data(), p.R.data(), o.hist.data(), o.cache.data(),
                            p.lengths.data(), dWx.data(), dR.data(), db.data(), ds.data(),
                            work.data(), s, Device::cpu, nullptr),
              Status::ok);
    std::vector<double> dx(x.size()), dW(W.size()), dR2(dR.size()), db2(db.size()),
        ds2(ds.size());
    ASSERT_EQ(rnn::backward_input(wh.data(), wl.data(), x.data(), W.data(), I, p.R.data(),
                                  f.hist.data(), f.cache.data(), p.lengths.data(), dx.data(),
                                  dW.data(), dR2.data(), db2.data(), ds2.data(), work.data(), s,
                                  Device::cpu, nullptr),
              Status::ok)
        << fastpaper::last_error();
    for (size_t i = 0; i < dR.size(); ++i) ASSERT_NEAR(dR2[i], dR[i], 1e-11) << i;
    for (size_t i = 0; i < db.size(); ++i) ASSERT_NEAR(db2[i], db[i], 1e-11) << i;
    for (size_t i = 0; i < ds.size(); ++i) ASSERT_NEAR(ds2[i], ds[i], 1e-11) << i;
    for (int64_t r = 0; r < B * T; ++r)
      for (int64_t k = 0; k < I; ++k) {
        double acc = 0;
        for (int64_t c = 0; c < GN; ++c) acc += dWx[r * GN + c] * W[c * I + k];
        ASSERT_NEAR(dx[r * I + k], acc, 1e-11) << r << " " << k;
      }
    for (int64_t c = 0; c < GN; ++c)
      for (int64_t k = 0; k < I; ++k) {
        double acc = 0;
        for (int64_t r = 0; r < B * T; ++r) acc += dWx[r * GN + c] * x[r * I + k];
        ASSERT_NEAR(dW[c * I + k], acc, 1e-11) << c << " " << k;
      }
  }
  // refused: the GRU, in_dim <= 0, a missing Wih, other devices
  const Problem g = make(rnn::Cell::gru, 1, 2, 1, 4, 4);
  std::vector<double> x(2 * 3), W(12 * 3), h(8), last(4);
  EXPECT_EQ(rnn::forward_input(x.data(), W.data(), 3, g.R.data(), g.b.data(), nullptr, nullptr,
                               h.data(), last.data(), nullptr, nullptr, g.s, Device::cpu, nullptr),
            Status::invalid_argument);
  const Problem l = make(rnn::Cell::lstm, 1, 2, 1, 4, 4);
  std::vector<double> Wl(16 * 3), last2(8);
  EXPECT_EQ(rnn::forward_input(x.data(), Wl.data(), 0, l.R.data(), l.b.data(), nullptr, nullptr,
                               h.data(), last2.data(), nullptr, nullptr, l.s, Device::cpu, nullptr),
            Status::invalid_argument);
  EXPECT_EQ(rnn::forward_input(x.data(), nullptr, 3, l.R.data(), l.b.data(), nullptr, nullptr,
                               h.data(), last2.data(), nullptr, nullptr, l.s, Device::cpu, nullptr),
            Status::invalid_argument);
  EXPECT_NE(rnn::forward_input(x.data(), Wl.data(), 3, l.R.data(), l.b.data(), nullptr, nullptr,
                               h.data(), last2.data(), nullptr, nullptr, l.s, Device::cuda, nullptr),
            Status::ok);
}

TEST(Rnn, InvalidArguments) {
  const Problem p = make(rnn::Cell::lstm, 1, 2, 1, 4, 4);
  std::vector<double> h(8), last(8);
  rnn::Shape bad = p.s;
  bad.batch = -1;
  EXPECT_EQ(rnn::forward(p.Wx.data(), p.R.data(), p.b.data(), nullptr, nullptr, h.data(),
                         last.data(), nullptr, nullptr, bad, Device::cpu, nullptr),
            Status::invalid_argument);
  bad = p.s;
  bad.cell = static_cast<rnn::Cell>(9);
  EXPECT_EQ(rnn::forward(p.Wx.data(), p.R.data(), p.b.data(), nullptr, nullptr, h.data(),
                         last.data(), nullptr, nullptr, bad, Device::cpu, nullptr),
            Status::invalid_argument);
  EXPECT_EQ(rnn::forward(nullptr, p.R.data(), p.b.data(), nullptr, nullptr, h.data(), last.data(),
                         nullptr, nullptr, p.s, Device::cpu, nullptr),
            Status::invalid_argument);
  std::vector<double> hist(2 * 3 * 4);
  EXPECT_EQ(rnn::forward(p.Wx.data(), p.R.data(), p.b.data(), nullptr, nullptr, h.data(),
                         last.data(), hist.data(), nullptr, p.s, Device::cpu, nullptr),
            Status::invalid_argument);  // hist without cache
  EXPECT_NE(std::string(fastpaper::last_error()), "");
#if !FASTPAPER_HAS_CUDA
  EXPECT_EQ(rnn::forward(p.Wx.data(), p.R.data(), p.b.data(), nullptr, nullptr, h.data(),
                         last.data(), nullptr, nullptr, p.s, Device::cuda, nullptr),
            Status::not_built_with_cuda);
#endif
  EXPECT_EQ(rnn::backward_workspace(p.s), 2 * 1 * 1 * 4 * 4);
}

}  // namespace
