// Host emulation of the CUDA look-back scan kernel (cuda/pararnn/pararnn_cuda.cu, lookback_kernel)
// built from the same shared pieces (fastpaper/detail/pararnn_blocks.h: plan_lookback,
// ticket_block, chunk_map, chunk_run, lookback_take), against a sequential recurrence written
// here. CTAs run one after the other in ticket order; what a CTA's look-back sees of a finished
// predecessor is drawn at random (its INCLUSIVE state, or only its AGGREGATE map, as when the
// predecessor is still looking back itself), so walks of every length and both kinds of window
// entries are exercised. Block 0 always publishes INCLUSIVE, as in the kernel.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "fastpaper/detail/pararnn_blocks.h"

namespace {

using namespace fastpaper::pararnn::detail;

constexpr int kLanes = 32;
constexpr int kWarps = 8;

struct Case {
  int64_t batch, time, groups;
  bool reverse, adjoint, with_h0;
  int64_t target_ctas, min_chunk;
};

// h_t = J_t h_{t-1} + r_t forward or h_t = J_t h_{t+1} + r_t reverse, from h0; the adjoint:
// h_t = J_{t+1}^T h_{t+1} + r_t (J_{T+1} = 0) or h_t = J_{t-1}^T h_{t-1} + r_t (J_0 = 0).
template <int K>
std::vector<double> sequential(const std::vector<double>& J, const std::vector<double>& r,
                               const std::vector<double>& h0, const Case& c) {
  const int64_t T = c.time, N = c.groups * K;
  std::vector<double> h(r.size());
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t g = 0; g < c.groups; ++g) {
      double s[K];
      for (int i = 0; i < K; ++i) s[i] = c.with_h0 ? h0[b * N + g * K + i] : 0.0;
      const bool back = c.reverse != c.adjoint;
      for (int64_t n = 0; n < T; ++n) {
        const int64_t t = back ? T - 1 - n : n;
        double next[K];
        for (int i = 0; i < K; ++i) {
          double acc = r[(b * T + t) * N + g * K + i];
          if (!c.adjoint) {
            const double* Jt = &J[((b * T + t) * c.groups + g) * K * K];
            for (int j = 0; j < K; ++j) acc += Jt[i * K + j] * s[j];
          } else if (n > 0) {
            const int64_t tj = back ? t + 1 : t - 1;
            const double* Jt = &J[((b * T + tj) * c.groups + g) * K * K];
            for (int j = 0; j < K; ++j) acc += Jt[j * K + i] * s[j];  // J^T
          }
          next[i] = acc;
        }
        for (int i = 0; i < K; ++i) {
          s[i] = next[i];
          h[(b * T + t) * N + g * K + i] = s[i];
        }
      }
    }
  }
  return h;
}

template <int K, bool Adj>
std::vector<double> emulate(const std::vector<double>& J, const std::vector<double>& r,
                            const double* h0, const Case& c, std::mt19937_64& rng) {
  const ScanGeometry geo{c.time, c.groups * K, c.groups, c.reverse != Adj};
  const int64_t tiles = (c.groups + kLanes - 1) / kLanes, chains = c.batch * tiles;
  const LookbackPlan plan = plan_lookback(c.time, chains, kWarps, c.target_ctas, c.min_chunk);
  const int64_t slots = chains * plan.blocks, len = kWarps * plan.chunk;
  std::vector<double> aggregate(slots * kLanes * (K * K + K)), inclusive(slots * kLanes * K);
  std::vector<double> h(r.size());
  std::bernoulli_distribution hide(0.75);  // a predecessor seen only as AGGREGATE

  for (int64_t ticket = 0; ticket < slots; ++ticket) {
    int64_t chain, blk;
    ticket_block(ticket, chains, &chain, &blk);
    const int64_t b = chain / tiles, slot = chain * plan.blocks + blk;
    for (int lane = 0; lane < kLanes; ++lane) {
      const int64_t g = (chain % tiles) * kLanes + lane;
      if (g >= c.groups) continue;  // the kernel's inactive lanes carry identities
      // 1. chunk maps of the 8 warps, exclusive maps, aggregate
      double eA[kWarps][K * K], eb[kWarps][K], aA[K * K], ab[K];
      int64_t s0[kWarps], s1[kWarps];
      affine_identity<K>(aA, ab);
      for (int w = 0; w < kWarps; ++w) {
        const int64_t c0 = blk * len + w * plan.chunk;
        s0[w] = c0 < c.time ? c0 : c.time;
        s1[w] = s0[w] + plan.chunk < c.time ? s0[w] + plan.chunk : c.time;
        double A[K * K], bv[K];
        chunk_map<K, Adj>(J.data(), r.data(), geo, b, g, s0[w], s1[w], A, bv);
        for (int e = 0; e < K * K; ++e) eA[w][e] = aA[e];
        for (int i = 0; i < K; ++i) eb[w][i] = ab[i];
        affine_compose_after<K>(A, bv, aA, ab);
      }
      // 2. the incoming state: h0 for block 0, else the look-back in windows of kWarps
      double x[K];
      if (blk == 0) {
        for (int i = 0; i < K; ++i) x[i] = h0 ? h0[b * c.groups * K + g * K + i] : 0.0;
      } else {
        double* out = &aggregate[(slot * kLanes + lane) * (K * K + K)];
        for (int e = 0; e < K * K; ++e) out[e] = aA[e];
        for (int i = 0; i < K; ++i) out[K * K + i] = ab[i];
        double pA[K * K], pb[K];
        affine_identity<K>(pA, pb);
        bool found = false;
        for (int64_t j = blk - 1; !found; j -= kWarps) {
          for (int v = 0; v < kWarps && !found && j - v >= 0; ++v) {
            const int64_t ps = chain * plan.blocks + j - v;
            const bool incl = j - v == 0 || !hide(rng);
            const double* in = incl ? &inclusive[(ps * kLanes + lane) * K]
                                    : &aggregate[(ps * kLanes + lane) * (K * K + K)];
            found = lookback_take<K>(incl, in, incl ? in : in + K * K, pA, pb, x);
          }
        }
      }
      double y[K];
      for (int i = 0; i < K; ++i) y[i] = x[i];
      affine_apply<K>(aA, ab, y);
      for (int i = 0; i < K; ++i) inclusive[(slot * kLanes + lane) * K + i] = y[i];
      // 3. every warp's chunk from its exclusive map applied to the incoming state
      for (int w = 0; w < kWarps; ++w) {
        double state[K];
        for (int i = 0; i < K; ++i) state[i] = x[i];
        affine_apply<K>(eA[w], eb[w], state);
        chunk_run<K, Adj>(J.data(), r.data(), h.data(), geo, b, g, s0[w], s1[w], state);
      }
    }
  }
  return h;
}

template <int K>
void check(const Case& c, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  const int64_t N = c.groups * K;
  std::vector<double> J(c.batch * c.time * c.groups * K * K), r(c.batch * c.time * N);
  std::vector<double> h0(c.batch * N);
  for (double& v : J) v = u(rng) * 0.95 / K;  // max row sum < 1: bounded for any T
  for (double& v : r) v = u(rng);
  for (double& v : h0) v = u(rng);
  const std::vector<double> want = sequential<K>(J, r, h0, c);
  const double* init = c.with_h0 ? h0.data() : nullptr;
  const std::vector<double> got = c.adjoint ? emulate<K, true>(J, r, init, c, rng)
                                            : emulate<K, false>(J, r, init, c, rng);
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) worst = std::fmax(worst, std::fabs(got[i] - want[i]));
  EXPECT_LE(worst, 1e-12) << "K=" << K << " T=" << c.time << " reverse=" << c.reverse
                          << " adjoint=" << c.adjoint << " target=" << c.target_ctas;
}

TEST(PararnnLookback, EmulationMatchesSequential) {
  unsigned seed = 1;
  for (int64_t time : std::vector<int64_t>{1, 2, 7, 64, 65, 1001}) {
    for (bool reverse : {false, true}) {
      for (bool adjoint : {false, true}) {
        // (target CTAs, min chunk): one block per chain; short blocks with long look-back walks
        for (auto [target, min_chunk] : {std::pair<int64_t, int64_t>{1, 8}, {4096, 1}, {64, 8}}) {
          // 40 groups: two tiles per batch element, the second one partly inactive
          const Case c{2, time, 40, reverse, adjoint, !adjoint, target, min_chunk};
          check<1>(c, ++seed);
          check<2>(c, ++seed);
          check<3>(c, ++seed);
          check<4>(c, ++seed);
        }
      }
    }
  }
}

TEST(PararnnLookback, PlanCoversTimeAndTicketsOrderPredecessors) {
  const std::vector<int64_t> times{1, 2, 100, 4097, 100003, int64_t{1} << 20};
  const std::vector<int64_t> chain_counts{1, 2, 7, 264, 100000};
  for (int64_t time : times) {
    for (int64_t chains : chain_counts) {
      const LookbackPlan p = plan_lookback(time, chains, kWarps, 8 * 132, 8);
      const int64_t len = kWarps * p.chunk;
      EXPECT_GE(p.chunk, 8);
      EXPECT_GE(p.blocks, 1);
      EXPECT_GE(p.blocks * len, time);           // covers [0, T)
      EXPECT_LT((p.blocks - 1) * len, time);     // no empty block
      EXPECT_LE(chains * p.blocks, std::max<int64_t>(chains, 8 * 132) + chains);  // ~target CTAs
      if (chains * p.blocks > 50000) continue;
      std::vector<char> seen(chains * p.blocks, 0);
      for (int64_t t = 0; t < chains * p.blocks; ++t) {
        int64_t chain, blk;
        ticket_block(t, chains, &chain, &blk);
        ASSERT_LT(blk, p.blocks);
        ASSERT_FALSE(seen[chain * p.blocks + blk]);
        seen[chain * p.blocks + blk] = 1;
        if (blk > 0) {  // the predecessor's ticket is smaller
          ASSERT_TRUE(seen[chain * p.blocks + blk - 1]);
        }
      }
    }
  }
}

}  // namespace
