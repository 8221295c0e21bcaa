// CPU kernels of the expert-by-expert MoE MLP (fastpaper/moe.h), on OpenBLAS sgemm/dgemm.
//
// Forward: (1) counting sort of the N*k (token, slot) pairs by expert (histogram, exclusive scan,
// stable scatter); (2) each expert's pair list is cut into tiles of kTileRows pairs and the tiles
// are shared among the OpenMP threads (dynamic schedule): a tile gathers its tokens (widened to
// the compute type), runs GEMM -> +b1 -> GELU -> GEMM -> +b2 on them and writes each pair's
// score-weighted row to that pair's own row of a [N*k, D] buffer; (3) each token sums its k rows
// in slot order. Every output element is written by one thread in a fixed order, so the result
// does not depend on the thread count. BLAS runs single-threaded, parallelism being over tiles.
//
// Backward recomputes the hidden activations (no state is kept from the forward; 5 GEMMs per
// tile: x W1, dy W2^T, h^T g, x^T dh, dh W1^T) and runs one
// expert per OpenMP task, its tiles in order, so the weight-gradient sums are accumulated in a
// fixed order too; dx is combined from per-pair rows like the forward output.
#include <algorithm>
#include <type_traits>
#include <string>
#include <vector>


#if defined(_OPENMP)
#include <omp.h>
#endif

#include "core/blas.h"
#include "core/error.h"
#include "moe/moe_backends.h"

namespace fastpaper::moe::cpu {
namespace {

using detail::Io;

// Rows (pairs) per GEMM tile: forward tiles are shared among threads; a backward thread owns a
// whole expert, and larger tiles make its weight-gradient GEMMs (K = tile rows) efficient.
constexpr int64_t kTileRows = 256;
constexpr int64_t kBackwardTileRows = 1024;
// Below this many multiply-adds per call, threads cost more than they save (fork/join, and on a
// shared machine waiting for a descheduled peer).
constexpr int64_t kParallelWork = int64_t(1) << 20;

// Parallelism is over tiles (OpenMP), with the core's OpenBLAS single-threaded (core/blas.h).
using fastpaper::detail::gemm_row_major;
using fastpaper::detail::single_threaded_blas;

// Pairs grouped by expert: pairs[offsets[e] .. offsets[e+1]) are expert e's, in increasing p.
struct Sorted {
  std::vector<int64_t> offsets;
  std::vector<int32_t> pairs;
};

Status sort_pairs(const int64_t* indices, const Shape& s, Sorted& out) {
  const int64_t P = s.tokens * s.k;
  out.offsets.assign(s.experts + 1, 0);
  for (int64_t p = 0; p < P; ++p) {
    const int64_t e = indices[p];
    if (e < 0 || e >= s.experts) {
      return fastpaper::detail::fail(
          Status::invalid_argument,
          "indices: entry " + std::to_string(p) + " is " + std::to_string(e) +
              ", outside [0, experts=" + std::to_string(s.experts) + ")");
    }
    ++out.offsets[e + 1];
  }
  for (int64_t e = 0; e < s.experts; ++e) out.offsets[e + 1] += out.offsets[e];
  std::vector<int64_t> cursor(out.offsets.begin(), out.offsets.end() - 1);
  out.pairs.resize(P);
  for (int64_t p = 0; p < P; ++p) out.pairs[cursor[indices[p]]++] = static_cast<int32_t>(p);
  return Status::ok;
}

struct Tile {
  int64_t expert, begin, rows;  // pairs[begin .. begin + rows) of `expert`
};

std::vector<Tile> make_tiles(const Sorted& sorted, int64_t experts) {
  std::vector<Tile> tiles;
  for (int64_t e = 0; e < experts; ++e) {
    for (int64_t b = sorted.offsets[e]; b < sorted.offsets[e + 1]; b += kTileRows) {
      tiles.push_back({e, b, std::min(kTileRows, sorted.offsets[e + 1] - b)});
    }
  }
  return tiles;
}

// The parameters in the compute type A: the caller's arrays when S == A, else widened copies.
template <typename S>
struct Params {
  using A = typename Io<S>::T;
  const A *W1, *b1, *W2, *b2;
  std::vector<A> store;

  static const A* widen(const S* src, int64_t n, A* dst) {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) dst[i] = Io<S>::load(src[i]);
    return dst;
  }

  Params(const S* w1, const S* bb1, const S* w2, const S* bb2, const Shape& s) {
    if constexpr (std::is_same_v<S, A>) {
      W1 = w1, b1 = bb1, W2 = w2, b2 = bb2;
    } else {
      const int64_t nw = s.experts * s.dim * s.hidden;
      store.resize(2 * nw + s.experts * (s.hidden + s.dim));
      A* p = store.data();
      W1 = widen(w1, nw, p);
      W2 = widen(w2, nw, p + nw);
      b1 = widen(bb1, s.experts * s.hidden, p + 2 * nw);
      b2 = widen(bb2, s.experts * s.dim, p + 2 * nw + s.experts * s.hidden);
    }
  }
};

// Elementwise parts of a tile, cloned for AVX2 (the GELU math is call-free, so they vectorize).
#define FP_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define FP_MOE_ELEMENTWISE(A)                                                                   \
  /* h[i, c] = GELU(h[i, c] + bias[c]) */                                                       \
  FP_CPU_CLONES void bias_gelu(A* h, const A* bias, int64_t m, int64_t H) {                     \
    for (int64_t i = 0; i < m; ++i)                                                             \
      for (int64_t c = 0; c < H; ++c) h[i * H + c] = detail::gelu(h[i * H + c] + bias[c]);      \
  }                                                                                             \
  /* z[i, c] += bias[c] (the pre-activation, kept); g[i, c] = GELU(z[i, c]) */                  \
  FP_CPU_CLONES void bias_gelu_keep(A* z, A* g, const A* bias, int64_t m, int64_t H) {          \
    for (int64_t i = 0; i < m; ++i)                                                             \
      for (int64_t c = 0; c < H; ++c) {                                                         \
        z[i * H + c] += bias[c];                                                                \
        g[i * H + c] = detail::gelu(z[i * H + c]);                                              \
      }                                                                                         \
  }                                                                                             \
  /* d[c] = sc * G[c] * GELU'(z[c]); db[c] += d[c]  (one row) */                                \
  FP_CPU_CLONES void dgelu_row(A* d, const A* G, const A* z, A sc, A* db, int64_t H) {          \
    for (int64_t c = 0; c < H; ++c) {                                                           \
      d[c] = sc * G[c] * detail::gelu_grad(z[c]);                                               \
      db[c] += d[c];                                                                            \
    }                                                                                           \
  }
FP_MOE_ELEMENTWISE(float)
FP_MOE_ELEMENTWISE(double)
#undef FP_MOE_ELEMENTWISE

template <typename S>
void gather_rows(const S* src, const int32_t* pairs, int64_t rows, int64_t k, int64_t width,
                 typename Io<S>::T* dst) {
  for (int64_t i = 0; i < rows; ++i) {
    const S* row = src + detail::pair_token(pairs[i], k) * width;
    typename Io<S>::T* out = dst + i * width;
    for (int64_t c = 0; c < width; ++c) out[c] = Io<S>::load(row[c]);
  }
}

// out[t] = sum_j rows[t * k + j] in slot order, rounded once to S.
template <typename S>
void combine(const typename Io<S>::T* rows, const Shape& s, S* out) {
  using A = typename Io<S>::T;
  const int64_t D = s.dim, k = s.k;
#pragma omp parallel if (s.tokens * k * D > kParallelWork / 8)
  {
    std::vector<A> acc(D);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < s.tokens; ++t) {
      const A* r = rows + t * k * D;
      std::copy(r, r + D, acc.begin());
      for (int64_t j = 1; j < k; ++j) {
        for (int64_t c = 0; c < D; ++c) acc[c] += r[j * D + c];
      }
      for (int64_t c = 0; c < D; ++c) out[t * D + c] = Io<S>::store(acc[c]);
    }
  }
}

}  // namespace

template <typename S>
Status forward(const S* x, const typename Io<S>::T* scores, const int64_t* indices, const S* W1,
               const S* b1, const S* W2, const S* b2, S* y, const Shape& s) {
  using A = typename Io<S>::T;
  single_threaded_blas();
  Sorted sorted;
  if (Status st = sort_pairs(indices, s, sorted); st != Status::ok) return st;
  const Params<S> w(W1, b1, W2, b2, s);
  const std::vector<Tile> tiles = make_tiles(sorted, s.experts);
  const int64_t D = s.dim, H = s.hidden;
  std::vector<A> rows(s.tokens * s.k * D);
  const bool parallel = tiles.size() > 1 && s.tokens * s.k * D * H > kParallelWork;
#pragma omp parallel if (parallel)
  {
    std::vector<A> xg(kTileRows * D), hg(kTileRows * H), yg(kTileRows * D);
#pragma omp for schedule(dynamic, 1)
    for (size_t ti = 0; ti < tiles.size(); ++ti) {
      const Tile& tile = tiles[ti];
      const int64_t e = tile.expert, m = tile.rows;
      const int32_t* pairs = sorted.pairs.data() + tile.begin;
      gather_rows(x, pairs, m, s.k, D, xg.data());
      gemm_row_major(false, false, m, H, D, xg.data(), D, w.W1 + e * D * H, H, A(0), hg.data(), H);
      bias_gelu(hg.data(), w.b1 + e * H, m, H);
      gemm_row_major(false, false, m, D, H, hg.data(), H, w.W2 + e * H * D, D, A(0), yg.data(), D);
      const A* bias2 = w.b2 + e * D;
      for (int64_t i = 0; i < m; ++i) {
        const A sc = scores[pairs[i]];
        const A* yr = yg.data() + i * D;
        A* out = rows.data() + static_cast<int64_t>(pairs[i]) * D;
        for (int64_t c = 0; c < D; ++c) out[c] = sc * (yr[c] + bias2[c]);
      }
    }
  }
  combine<S>(rows.data(), s, y);
  return Status::ok;
}

template <typename S>
Status backward(const S* dy, const S* x, const typename Io<S>::T* scores, const int64_t* indices,
                const S* W1, const S* b1, const S* W2, const S* b2, S* dx,
                typename Io<S>::T* dscores, S* dW1, S* db1, S* dW2, S* db2, const Shape& s) {
  using A = typename Io<S>::T;
  const int64_t D = s.dim, H = s.hidden, E = s.experts;
  const int64_t nw = E * D * H;
  single_threaded_blas();
  Sorted sorted;
  if (Status st = sort_pairs(indices, s, sorted); st != Status::ok) return st;
  const Params<S> w(W1, b1, W2, b2, s);
  // weight gradients in the compute type: the outputs themselves when S == A
  std::vector<A> gstore;
  A *gW1, *gb1, *gW2, *gb2;
  if constexpr (std::is_same_v<S, A>) {
    gW1 = dW1, gb1 = db1, gW2 = dW2, gb2 = db2;
  } else {
    gstore.resize(2 * nw + E * (H + D));
    gW1 = gstore.data(), gW2 = gW1 + nw, gb1 = gW2 + nw, gb2 = gb1 + E * H;
  }
  std::vector<A> rows(s.tokens * s.k * D);
#pragma omp parallel if (E > 1 && s.tokens * s.k * D * H > kParallelWork)
  {
    constexpr int64_t R = kBackwardTileRows;
    std::vector<A> xg(R * D), gg(R * D), hp(R * H), hg(R * H), gh(R * H), yg(R * D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t e = 0; e < E; ++e) {
      A* gw1 = gW1 + e * D * H;
      A* gw2 = gW2 + e * H * D;
      A* gbias1 = gb1 + e * H;
      A* gbias2 = gb2 + e * D;
      std::fill(gw1, gw1 + D * H, A(0));
      std::fill(gw2, gw2 + H * D, A(0));
      std::fill(gbias1, gbias1 + H, A(0));
      std::fill(gbias2, gbias2 + D, A(0));
      const A* w1 = w.W1 + e * D * H;
      const A* w2 = w.W2 + e * H * D;
      const A* bias1 = w.b1 + e * H;
      const A* bias2 = w.b2 + e * D;
      for (int64_t b = sorted.offsets[e]; b < sorted.offsets[e + 1]; b += kBackwardTileRows) {
        const int64_t m = std::min(kBackwardTileRows, sorted.offsets[e + 1] - b);
        const int32_t* pairs = sorted.pairs.data() + b;
        gather_rows(x, pairs, m, s.k, D, xg.data());
        gather_rows(dy, pairs, m, s.k, D, gg.data());
        // recompute: hp = x W1 + b1 (pre-activation), hg = GELU(hp)
        gemm_row_major(false, false, m, H, D, xg.data(), D, w1, H, A(0), hp.data(), H);
        bias_gelu_keep(hp.data(), hg.data(), bias1, m, H);
        // G = dy W2^T (unscaled): dscores[p] = <dy[t], h W2 + b2> = <G, h> + <dy[t], b2>, so the
        // expert output itself is never recomputed
        gemm_row_major(false, true, m, H, D, gg.data(), D, w2, D, A(0), gh.data(), H);
        for (int64_t i = 0; i < m; ++i) {
          const A sc = scores[pairs[i]];
          A* g = gg.data() + i * D;
          const A* gr = gh.data() + i * H;
          const A* hr = hg.data() + i * H;
          A dot = 0;
          for (int64_t c = 0; c < H; ++c) dot += gr[c] * hr[c];
          for (int64_t c = 0; c < D; ++c) dot += g[c] * bias2[c];
          dscores[pairs[i]] = dot;
          for (int64_t c = 0; c < D; ++c) {  // g <- d(expert output) = score * dy[t]
            g[c] *= sc;
            gbias2[c] += g[c];
          }
        }
        gemm_row_major(true, false, H, D, m, hg.data(), H, gg.data(), D, A(1), gw2, D);      // dW2 += h^T g
        for (int64_t i = 0; i < m; ++i) {                                          // dh in hg
          dgelu_row(hg.data() + i * H, gh.data() + i * H, hp.data() + i * H, scores[pairs[i]],
                    gbias1, H);
        }
        gemm_row_major(true, false, D, H, m, xg.data(), D, hg.data(), H, A(1), gw1, H);      // dW1 += x^T dh
        gemm_row_major(false, true, m, D, H, hg.data(), H, w1, H, A(0), yg.data(), D);       // dx_p = dh W1^T
        for (int64_t i = 0; i < m; ++i) {
          std::copy(yg.data() + i * D, yg.data() + (i + 1) * D,
                    rows.data() + static_cast<int64_t>(pairs[i]) * D);
        }
      }
    }
  }
  combine<S>(rows.data(), s, dx);
  if constexpr (!std::is_same_v<S, A>) {
    S* outs[4] = {dW1, dW2, db1, db2};
    const int64_t sizes[4] = {nw, nw, E * H, E * D};
    const A* src = gstore.data();
    for (int q = 0; q < 4; ++q) {
#pragma omp parallel for schedule(static) if (sizes[q] > (1 << 16))
      for (int64_t i = 0; i < sizes[q]; ++i) outs[q][i] = Io<S>::store(src[i]);
      src += sizes[q];
    }
  }
  return Status::ok;
}

#define FP_MOE_CPU(S)                                                                          \
  template Status forward<S>(const S*, const Io<S>::T*, const int64_t*, const S*, const S*,     \
                             const S*, const S*, S*, const Shape&);                             \
  template Status backward<S>(const S*, const S*, const Io<S>::T*, const int64_t*, const S*,    \
                              const S*, const S*, const S*, S*, Io<S>::T*, S*, S*, S*, S*,      \
                              const Shape&);
FP_MOE_CPU(float)
FP_MOE_CPU(double)
FP_MOE_CPU(detail::half_bits)
FP_MOE_CPU(detail::bf16_bits)
#undef FP_MOE_CPU

}  // namespace fastpaper::moe::cpu
