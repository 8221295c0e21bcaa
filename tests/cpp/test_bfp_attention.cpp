// GoogleTest tests of decode attention over a packed KV cache (fastpaper/bfp_attention.h): against
// unpack-then-attend in double precision, and hostile arguments (Status, never a crash).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "fastpaper/bfp.h"
#include "fastpaper/bfp_attention.h"

namespace {

using fastpaper::Device;
using fastpaper::DType;
using fastpaper::Status;
namespace bfp = fastpaper::bfp;

struct Packed {
  std::vector<uint8_t> m, e;
  std::vector<float> dense;  // the unpacked values
};

Packed pack_rows(const std::vector<float>& x, int64_t rows, int64_t cols, bfp::Format f) {
  Packed p;
  p.m.resize(rows * bfp::mantissa_bytes_per_row(cols, f));
  p.e.resize(rows * bfp::exponent_bytes_per_row(cols, f));
  p.dense.resize(rows * cols);
  EXPECT_EQ(bfp::pack(x.data(), DType::float32, rows, cols, f, {}, p.m.data(), p.e.data(), Device::cpu, nullptr), Status::ok);
  EXPECT_EQ(bfp::unpack(p.m.data(), p.e.data(), rows, cols, f, p.dense.data(), DType::float32, Device::cpu, nullptr), Status::ok);
  return p;
}

TEST(BfpDecodeAttention, MatchesUnpackThenAttend) {
  const int64_t T = 77, B = 2, Hq = 6, Hkv = 2, d = 64, dv = 48;
  std::mt19937 rng(3);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> q(B * Hq * d), k(T * B * Hkv * d), v(T * B * Hkv * dv);
  for (auto& x : q) x = n(rng);
  for (size_t i = 0; i < k.size(); ++i) k[i] = n(rng) * (i % d == 5 ? 30.0f : 1.0f);
  for (auto& x : v) x = n(rng);
  const bfp::Format kf{32, 4}, vf{16, 8};
  const Packed pk = pack_rows(k, T * B * Hkv, d, kf), pv = pack_rows(v, T * B * Hkv, dv, vf);
  for (bool packed_v : {false, true}) {
    std::vector<float> out(B * Hq * dv);
    bfp::DecodeAttentionArgs a;
    a.batch = B; a.q_heads = Hq; a.kv_heads = Hkv; a.seq = T; a.head_dim = d; a.v_dim = dv;
    a.scale = 0.125f; a.q = q.data(); a.dtype = DType::float32;
    a.k_mantissas = pk.m.data(); a.k_exponents = pk.e.data(); a.k_format = kf;
    if (packed_v) {
      a.v_mantissas = pv.m.data(); a.v_exponents = pv.e.data(); a.v_format = vf;
    } else {
      a.v = v.data();
    }
    a.out = out.data();
    ASSERT_EQ(bfp::decode_attention(a, Device::cpu, nullptr), Status::ok);
    const std::vector<float>& vals = packed_v ? pv.dense : v;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t g = 0; g < Hq; ++g) {
        const int64_t h = g / (Hq / Hkv);
        std::vector<double> s(T);
        double mx = -1e300;
        for (int64_t t = 0; t < T; ++t) {
          double acc = 0;
          for (int64_t c = 0; c < d; ++c) acc += double(q[(b * Hq + g) * d + c]) * pk.dense[((t * B + b) * Hkv + h) * d + c];
          s[t] = acc * 0.125;
          mx = std::max(mx, s[t]);
        }
        double l = 0;
        for (auto& x : s) l += (x = std::exp(x - mx));
        for (int64_t c = 0; c < dv; ++c) {
          double o = 0;
          for (int64_t t = 0; t < T; ++t) o += s[t] * vals[((t * B + b) * Hkv + h) * dv + c];
          EXPECT_NEAR(out[(b * Hq + g) * dv + c], o / l, 2e-5) << "b " << b << " g " << g << " c " << c;
        }
      }
    }
  }
}

TEST(BfpDecodeAttention, RejectsBadArguments) {
  std::vector<uint8_t> m(64), e(4);
  std::vector<float> q(64), v(64), out(64);
  bfp::DecodeAttentionArgs a;
  a.batch = 1; a.q_heads = 1; a.kv_heads = 1; a.seq = 1; a.head_dim = 64; a.v_dim = 64;
  a.q = q.data(); a.k_mantissas = m.data(); a.k_exponents = e.data(); a.k_format = bfp::BFP12;
  a.v = v.data(); a.out = out.data();
  EXPECT_EQ(bfp::decode_attention(a, Device::cpu, nullptr), Status::ok);
  auto bad = [&](auto mutate) {
    bfp::DecodeAttentionArgs b = a;
    mutate(b);
    return bfp::decode_attention(b, Device::cpu, nullptr);
  };
  EXPECT_EQ(bad([](auto& b) { b.seq = 0; }), Status::invalid_argument);
  EXPECT_EQ(bad([](auto& b) { b.q_heads = 3; b.kv_heads = 2; }), Status::invalid_argument);
  EXPECT_EQ(bad([](auto& b) { b.head_dim = 257; }), Status::invalid_argument);
  EXPECT_EQ(bad([](auto& b) { b.v_dim = 0; }), Status::invalid_argument);
  EXPECT_EQ(bad([](auto& b) { b.q = nullptr; }), Status::invalid_argument);
  EXPECT_EQ(bad([](auto& b) { b.v = nullptr; }), Status::invalid_argument);
  EXPECT_EQ(bad([](auto& b) { b.k_format.block = 24; }), Status::invalid_argument);
  EXPECT_EQ(bad([](auto& b) { b.dtype = static_cast<DType>(9); }), Status::invalid_argument);
  EXPECT_EQ(bad([](auto& b) { b.seq = int64_t(1) << 62; }), Status::invalid_argument);
  EXPECT_EQ(bad([](auto& b) { b.v_mantissas = b.k_mantissas; }), Status::invalid_argument);  // no v_exponents
  EXPECT_EQ(bfp::decode_attention_workspace_bytes(1, 1, 1, 64, Device::cpu), 0);
  EXPECT_GT(bfp::decode_attention_workspace_bytes(1, 1, 1, 64, Device::cuda), 0);
}

}  // namespace
