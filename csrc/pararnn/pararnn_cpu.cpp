// CPU kernel of the ParaRNN linear scan h_t = J_t h_{t-1} + r_t (or its reverse, or the adjoint
// of either, which is the same scan in the opposite direction reading J^T of the neighbouring
// step; float16/bfloat16 storage is widened to float32 on load).
//
// Work split: the channel groups of one batch element are cut into tiles of kTileChannels
// channels; a (batch element, tile) pair is a "unit" whose state fits in a few cache lines, and
// the inner loops run over the tile's contiguous channels (vectorized for block = 1).
// - Enough units for every OpenMP thread: each unit walks its whole time axis once (the
//   sequential recurrence is already optimal work; parallelism comes from channels).
// - Fewer units than threads (small batch x channels, long T): time is cut into chunks too, in
//   three phases: (1) chunk 0 runs the recurrence from h0 and every later chunk builds its
//   composed affine map (A, b) from the identity, in parallel; (2) per unit, the chunk carries
//   are propagated sequentially through the few chunk maps; (3) chunks 1.. re-run the recurrence
//   from their carry, writing h. This reads the inputs twice (not storing per-step prefix
//   products keeps memory at O(chunks x tile)), so it only pays off with 3+ threads per unit.
// The step math is fastpaper/detail/pararnn_scan.h, shared with the CUDA kernel.
#include <algorithm>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "fastpaper/detail/pararnn_scan.h"
#include "pararnn/pararnn_backends.h"

namespace fastpaper::pararnn::cpu {
namespace {

using namespace fastpaper::pararnn::detail;

constexpr int64_t kTileChannels = 64;
constexpr int64_t kParallelThreshold = 1 << 15;  // J elements; below this threads cost more than they save
constexpr int64_t kMinChunk = 16;                // time steps per chunk, at least

int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Adj: the adjoint recurrence (see fastpaper/pararnn.h): scan step `step` uses J^T of the
// previous scan step's time, and step 0 has no J (the state restarts at r).
template <int K, typename S, bool Adj>
struct Scanner {
  using T = typename Io<S>::T;  // compute type
  const S* J;
  const S* r;
  const S* h0;
  S* h;
  ScanShape s;
  int64_t groups;         // channels / K
  int64_t tile_groups;    // groups per unit
  int64_t tiles;          // units per batch element

  // physical time of scan step `step`: the adjoint runs against the direction of its primal
  int64_t phys(int64_t step) const { return s.reverse != Adj ? s.time - 1 - step : step; }
  // time index of the Jacobian used at scan step `step` (step >= 1 when Adj)
  int64_t jac_time(int64_t step) const { return Adj ? phys(step - 1) : phys(step); }
  const S* J_at(int64_t b, int64_t t, int64_t g) const {
    return J + ((b * s.time + t) * groups + g) * K * K;
  }
  int64_t vec_at(int64_t b, int64_t t, int64_t g) const { return (b * s.time + t) * s.channels + g * K; }
  int64_t group_count(int64_t tile) const {
    return std::min(tile_groups, groups - tile * tile_groups);
  }

  // state[0 .. n*K) <- h0 of the unit's groups (zeros without h0).
  void initial_state(int64_t b, int64_t g0, int64_t n, T* state) const {
    for (int64_t i = 0; i < n * K; ++i) {
      state[i] = h0 ? Io<S>::load(h0[b * s.channels + g0 * K + i]) : T(0);
    }
  }

  // Runs steps [s0, s1) of groups [g0, g0 + n) from `state`, writing h; state ends at step s1 - 1.
  void run(int64_t b, int64_t s0, int64_t s1, int64_t g0, int64_t n, T* state) const {
    for (int64_t step = s0; step < s1; ++step) {
      const int64_t t = phys(step);
      const int64_t off = vec_at(b, t, g0);
      const S* rp = r + off;
      S* hp = h + off;
      if (Adj && step == 0) {  // no Jacobian: h = r
        for (int64_t i = 0; i < n * K; ++i) {
          state[i] = Io<S>::load(rp[i]);
          hp[i] = Io<S>::store(state[i]);
        }
        continue;
      }
      const S* Jp = J_at(b, jac_time(step), g0);
      if constexpr (K == 1) {
        // h may alias r: each element is read before it is written
        for (int64_t i = 0; i < n; ++i) {
          const T v = Io<S>::load(Jp[i]) * state[i] + Io<S>::load(rp[i]);
          state[i] = v;
          hp[i] = Io<S>::store(v);
        }
      } else {
        for (int64_t g = 0; g < n; ++g) {
          affine_apply<K, Adj>(Jp + g * K * K, rp + g * K, state + g * K);
          for (int i = 0; i < K; ++i) hp[g * K + i] = Io<S>::store(state[g * K + i]);
        }
      }
    }
  }

  // (A, bv) <- composition of steps [s0, s1) of groups [g0, g0 + n).
  void aggregate(int64_t b, int64_t s0, int64_t s1, int64_t g0, int64_t n, T* A, T* bv) const {
    for (int64_t g = 0; g < n; ++g) affine_identity<K>(A + g * K * K, bv + g * K);
    for (int64_t step = s0; step < s1; ++step) {
      const S* rp = r + vec_at(b, phys(step), g0);
      if (Adj && step == 0) {
        for (int64_t g = 0; g < n; ++g) affine_restart<K>(rp + g * K, A + g * K * K, bv + g * K);
        continue;
      }
      const S* Jp = J_at(b, jac_time(step), g0);
      if constexpr (K == 1) {
        for (int64_t i = 0; i < n; ++i) {
          const T j = Io<S>::load(Jp[i]);
          A[i] = j * A[i];
          bv[i] = j * bv[i] + Io<S>::load(rp[i]);
        }
      } else {
        for (int64_t g = 0; g < n; ++g) {
          affine_compose_after<K, Adj>(Jp + g * K * K, rp + g * K, A + g * K * K, bv + g * K);
        }
      }
    }
  }
};

template <int K, typename S, bool Adj>
void scan(const S* J, const S* r, const S* h0, S* h, const ScanShape& s) {
  using T = typename Io<S>::T;
  Scanner<K, S, Adj> sc;
  sc.J = J;
  sc.r = r;
  sc.h0 = h0;
  sc.h = h;
  sc.s = s;
  sc.groups = s.channels / K;
  sc.tile_groups = std::max<int64_t>(1, kTileChannels / K);
  sc.tiles = (sc.groups + sc.tile_groups - 1) / sc.tile_groups;
  const int64_t units = s.batch * sc.tiles;
  const int64_t tg = sc.tile_groups;
  const bool parallel = s.batch * s.time * s.channels * K >= kParallelThreshold;
  const int threads = parallel ? max_threads() : 1;

  int64_t chunks = 1;
  if (units < threads) {
    chunks = std::min<int64_t>(2 * ((threads + units - 1) / units), s.time / kMinChunk);
    chunks = std::max<int64_t>(chunks, 1);
  }

  if (chunks == 1) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t b = u / sc.tiles, tile = u % sc.tiles, g0 = tile * tg, n = sc.group_count(tile);
      T state[kTileChannels];
      sc.initial_state(b, g0, n, state);
      sc.run(b, 0, s.time, g0, n, state);
    }
    return;
  }

  auto chunk_begin = [&](int64_t c) { return s.time * c / chunks; };
  // carry[u][c]: state entering chunk c; maps[u][c]: composed map of chunk c (c >= 1)
  const int64_t vk = tg * K, mk = tg * K * K;
  std::vector<T> carry(static_cast<size_t>(units * chunks * vk));
  std::vector<T> mapA(static_cast<size_t>(units * chunks * mk));
  std::vector<T> mapb(static_cast<size_t>(units * chunks * vk));

  // phase 1: chunk 0 is final already (its carry is h0); later chunks build their maps
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < units * chunks; ++i) {
    const int64_t u = i / chunks, c = i % chunks;
    const int64_t b = u / sc.tiles, tile = u % sc.tiles, g0 = tile * tg, n = sc.group_count(tile);
    if (c == 0) {
      T* state = &carry[static_cast<size_t>(u * chunks * vk)];
      sc.initial_state(b, g0, n, state);
      T end[kTileChannels];
      std::copy(state, state + n * K, end);
      sc.run(b, 0, chunk_begin(1), g0, n, end);
      if (chunks > 1) std::copy(end, end + n * K, state + vk);  // carry into chunk 1
    } else if (c + 1 < chunks) {  // the last chunk's map is never needed
      sc.aggregate(b, chunk_begin(c), chunk_begin(c + 1), g0, n,
                   &mapA[static_cast<size_t>((u * chunks + c) * mk)],
                   &mapb[static_cast<size_t>((u * chunks + c) * vk)]);
    }
  }

  // phase 2: carry[c + 1] = A_c carry[c] + b_c, sequential in c (chunks is small)
#pragma omp parallel for schedule(static)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t n = sc.group_count(u % sc.tiles);
    for (int64_t c = 1; c + 1 < chunks; ++c) {
      T* in = &carry[static_cast<size_t>((u * chunks + c) * vk)];
      T* out = in + vk;
      std::copy(in, in + n * K, out);
      const T* A = &mapA[static_cast<size_t>((u * chunks + c) * mk)];
      const T* bv = &mapb[static_cast<size_t>((u * chunks + c) * vk)];
      for (int64_t g = 0; g < n; ++g) affine_apply<K>(A + g * K * K, bv + g * K, out + g * K);
    }
  }

  // phase 3: chunks 1.. re-run from their carry, writing h
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < units * (chunks - 1); ++i) {
    const int64_t u = i / (chunks - 1), c = 1 + i % (chunks - 1);
    const int64_t b = u / sc.tiles, tile = u % sc.tiles, g0 = tile * tg, n = sc.group_count(tile);
    T state[kTileChannels];
    const T* in = &carry[static_cast<size_t>((u * chunks + c) * vk)];
    std::copy(in, in + n * K, state);
    sc.run(b, chunk_begin(c), chunk_begin(c + 1), g0, n, state);
  }
}

template <typename S, bool Adj>
void dispatch(const S* J, const S* r, const S* h0, S* h, const ScanShape& s) {
  switch (s.block) {
    case 1: return scan<1, S, Adj>(J, r, h0, h, s);
    case 2: return scan<2, S, Adj>(J, r, h0, h, s);
    case 3: return scan<3, S, Adj>(J, r, h0, h, s);
    case 4: return scan<4, S, Adj>(J, r, h0, h, s);
    case 5: return scan<5, S, Adj>(J, r, h0, h, s);
    case 6: return scan<6, S, Adj>(J, r, h0, h, s);
    case 7: return scan<7, S, Adj>(J, r, h0, h, s);
    case 8: return scan<8, S, Adj>(J, r, h0, h, s);
    default: return;  // unreachable: validated by the dispatcher
  }
}

}  // namespace

template <typename S>
void linear_scan(const S* J, const S* r, const S* h0, S* h, const ScanShape& s) {
  if (s.adjoint) dispatch<S, true>(J, r, h0, h, s);
  else dispatch<S, false>(J, r, h0, h, s);
}

template void linear_scan(const float*, const float*, const float*, float*, const ScanShape&);
template void linear_scan(const double*, const double*, const double*, double*, const ScanShape&);
template void linear_scan(const half_bits*, const half_bits*, const half_bits*, half_bits*,
                          const ScanShape&);
template void linear_scan(const bf16_bits*, const bf16_bits*, const bf16_bits*, bf16_bits*,
                          const ScanShape&);

}  // namespace fastpaper::pararnn::cpu
