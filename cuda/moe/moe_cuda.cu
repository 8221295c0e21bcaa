// CUDA kernels of the expert-by-expert MoE MLP (fastpaper/moe.h).
//
// Forward, four launches on the caller's stream, no host synchronization:
//   1. sort_kernel: stable counting sort of the N*k (token, slot) pairs by expert (histogram,
//      exclusive scan, warp-ranked scatter) plus the grouped GEMM's tile table, all on the device;
//   2. grouped GEMM 1 (moe_gemm.cuh): tiles (expert, 64-row tile of its sorted pairs, 64-column
//      tile of H), A rows gathered from x by token, B = W1[e]; bias + exact GELU in the epilogue,
//      hidden rows stored in the storage type in sorted order;
//   3. grouped GEMM 2: tiles (expert, row tile, column tile of D), A = hidden rows, B = W2[e];
//      epilogue adds b2 and writes score * row to the pair's own fp32 row of a [N*k, D] buffer;
//   4. combine_kernel: y[t] = sum_j rows[t*k + j] in slot order (no atomics: deterministic).
// The grids are sized by the static bound ceil(N*k / 64) + E on the number of row tiles; blocks
// past the device-side tile count exit at once.
// Backward recomputes GEMM 1 (keeping the fp32 pre-activations), then: dh = dy W2^T per pair with
// the GELU derivative and score in the epilogue (and per-tile partial dot products for dscores),
// dx rows = dh W1^T, and the weight gradients dW1[e] = X_e^T dh_e, dW2[e] = H_e^T (s * dy)_e as
// per-expert GEMMs whose K loop runs over the expert's tokens (read on the device); bias gradients
// and dscores are reduced in fixed order. bf16/fp16 use tensor cores (WMMA, fp32 accumulate),
// fp32 uses TF32 tensor cores, fp64 an FMA kernel with the same tiling interface.
#include <cuda_runtime.h>

#include <string>

#include "core/cuda_launch.h"
#include "core/error.h"
#include "moe/moe_backends.h"
#include "moe_gemm.cuh"

namespace fastpaper::moe::cuda {
namespace {

using fastpaper::detail::fail;
using fastpaper::detail::launched;

constexpr int kMaxExperts = 256;  // shared-memory bound of the sort kernel
constexpr int kSortThreads = 1024;

template <typename S>
constexpr int row_tile() { return std::is_same<S, double>::value ? kSimtBM : kTcBM; }
template <typename S>
constexpr int col_tile() { return std::is_same<S, double>::value ? kSimtBN : kTcBN; }

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ------------------------------------------------------------------------------- counting sort
// One block of kSortThreads threads. Pass 1: per-expert histogram in shared memory (entries
// outside [0, E) are ignored). Then offsets (exclusive scan), and the tile table: thread e writes
// the (expert, first row) of each bm-row tile of expert e at its exclusive-scanned tile position.
// Pass 2 (stable scatter): the pairs are processed in chunks of blockDim; within a warp, pairs of
// the same expert are ranked with __match_any_sync; per-warp counts are scanned across warps per
// expert, so every pair lands at offsets[e] + (number of earlier pairs of e): the order within an
// expert is the pair order, which makes the weight-gradient sums deterministic.
__global__ void __launch_bounds__(kSortThreads)
sort_kernel(const int64_t* indices, int P, int E, int bm, int* offsets, int* sorted, int* tile_e,
            int* tile_m0, int* num_tiles) {
  extern __shared__ int smem[];
  int* s_count = smem;           // [E]
  int* s_cursor = smem + E;      // [E]
  int* s_tile = smem + 2 * E;    // [E] first tile of each expert
  int* s_warp = smem + 3 * E;    // [warps][E]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
  for (int i = tid; i < E; i += blockDim.x) s_count[i] = 0;
  __syncthreads();
  for (int p = tid; p < P; p += blockDim.x) {
    const int64_t e = indices[p];
    if (e >= 0 && e < E) atomicAdd(&s_count[e], 1);
  }
  __syncthreads();
  if (tid == 0) {
    int run = 0, tiles = 0;
    for (int e = 0; e < E; ++e) {
      offsets[e] = run;
      s_cursor[e] = run;
      s_tile[e] = tiles;
      run += s_count[e];
      tiles += (s_count[e] + bm - 1) / bm;
    }
    offsets[E] = run;
    *num_tiles = tiles;
  }
  __syncthreads();
  for (int e = tid; e < E; e += blockDim.x) {
    int t = s_tile[e];
    for (int m0 = 0; m0 < s_count[e]; m0 += bm, ++t) {
      tile_e[t] = e;
      tile_m0[t] = m0;
    }
  }
  for (int base = 0; base < P; base += blockDim.x) {
    const int p = base + tid;
    int key = -1;
    if (p < P) {
      const int64_t e = indices[p];
      key = (e >= 0 && e < E) ? static_cast<int>(e) : -1;
    }
    const unsigned peers = __match_any_sync(0xffffffffu, key);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    for (int i = tid; i < warps * E; i += blockDim.x) s_warp[i] = 0;
    __syncthreads();
    if (key >= 0 && rank == 0) s_warp[warp * E + key] = __popc(peers);
    __syncthreads();
    for (int e = tid; e < E; e += blockDim.x) {
      int run = s_cursor[e];
      for (int w = 0; w < warps; ++w) {
        const int c = s_warp[w * E + e];
        s_warp[w * E + e] = run;
        run += c;
      }
      s_cursor[e] = run;
    }
    __syncthreads();
    if (key >= 0) sorted[s_warp[warp * E + key] + rank] = p;
    __syncthreads();
  }
}

// ------------------------------------------------------------------------------ GEMM problems
template <typename S>
struct Ctx {
  using T = typename Io<S>::T;
  const S *x, *W1, *b1, *W2, *b2, *dy;
  const T* scores;
  int N, D, H, E, k, P;
  const int *offsets, *sorted, *tile_e, *tile_m0, *num_tiles;
  S* hidden;     // [P, H] GELU output, sorted order
  T* rows;       // [P, D] per-pair output rows, pair order
  T* hpre;       // [P, H] pre-activation (backward), sorted order
  S* dhpre;      // [P, H] gradient of the pre-activation (backward), sorted order
  S* dys;        // [P, D] score * dy rows (backward), sorted order
  T* dsc_part;   // [P, dsc_cols] per-column-tile partial dscores (backward), sorted order
  int dsc_cols;
  S *dW1, *dW2;

  __device__ int64_t token(int e, int r) const { return sorted[offsets[e] + r] / k; }
  __device__ bool token_tile(int bx, int* e, int* m0, int* M) const {
    if (bx >= *num_tiles) return false;
    *e = tile_e[bx];
    *m0 = tile_m0[bx];
    *M = offsets[*e + 1] - offsets[*e];
    return true;
  }
  __device__ bool weight_tile(int bx, int bz, int bm, int rows_dim, int* e, int* m0, int* M,
                              int* K) const {
    *e = bz;
    *m0 = bx * bm;
    *M = rows_dim;
    *K = offsets[bz + 1] - offsets[bz];
    return *m0 < rows_dim;
  }
};

// h = GELU(x W1[e] + b1[e]) for the expert's gathered tokens (forward, and backward recompute).
template <typename S>
struct Gemm1 {
  using T = typename Io<S>::T;
  Ctx<S> c;
  static constexpr bool kAMContig = false, kBKContig = false;
  template <int BM>
  __device__ bool tile(int bx, int, int* e, int* m0, int* M, int* K) const {
    *K = c.D;
    return c.token_tile(bx, e, m0, M);
  }
  __device__ int n_cols() const { return c.H; }
  __device__ S a(int e, int m, int kk) const { return c.x[c.token(e, m) * c.D + kk]; }
  __device__ S b(int e, int kk, int n) const { return c.W1[(int64_t(e) * c.D + kk) * c.H + n]; }
  template <int BM, int BN, typename C>
  __device__ void epilogue(int e, int m0, int M, int n0, const C* Cs, int ldc) const {
    for (int i = threadIdx.x; i < BM * BN; i += blockDim.x) {
      const int r = i / BN, col = i % BN, m = m0 + r, n = n0 + col;
      if (m >= M || n >= c.H) continue;
      const T z = T(Cs[r * ldc + col]) + Io<S>::load(c.b1[int64_t(e) * c.H + n]);
      const int64_t pos = c.offsets[e] + m;
      c.hidden[pos * c.H + n] = Io<S>::store(detail::gelu(z));
      if (c.hpre) c.hpre[pos * c.H + n] = z;
    }
  }
};

// rows[p] = score[p] * (h W2[e] + b2[e]) for each pair p of the expert.
template <typename S>
struct Gemm2 {
  using T = typename Io<S>::T;
  Ctx<S> c;
  static constexpr bool kAMContig = false, kBKContig = false;
  template <int BM>
  __device__ bool tile(int bx, int, int* e, int* m0, int* M, int* K) const {
    *K = c.H;
    return c.token_tile(bx, e, m0, M);
  }
  __device__ int n_cols() const { return c.D; }
  __device__ S a(int e, int m, int kk) const {
    return c.hidden[(int64_t(c.offsets[e]) + m) * c.H + kk];
  }
  __device__ S b(int e, int kk, int n) const { return c.W2[(int64_t(e) * c.H + kk) * c.D + n]; }
  template <int BM, int BN, typename C>
  __device__ void epilogue(int e, int m0, int M, int n0, const C* Cs, int ldc) const {
    for (int i = threadIdx.x; i < BM * BN; i += blockDim.x) {
      const int r = i / BN, col = i % BN, m = m0 + r, n = n0 + col;
      if (m >= M || n >= c.D) continue;
      const int p = c.sorted[c.offsets[e] + m];
      const T v = T(Cs[r * ldc + col]) + Io<S>::load(c.b2[int64_t(e) * c.D + n]);
      c.rows[int64_t(p) * c.D + n] = c.scores[p] * v;
    }
  }
};

// Backward: G = dy[t] W2[e]^T; dhpre = score * G * GELU'(hpre); partial dscores = sum_n G * h.
template <typename S>
struct GradHidden {
  using T = typename Io<S>::T;
  Ctx<S> c;
  static constexpr bool kAMContig = false, kBKContig = true;
  template <int BM>
  __device__ bool tile(int bx, int, int* e, int* m0, int* M, int* K) const {
    *K = c.D;
    return c.token_tile(bx, e, m0, M);
  }
  __device__ int n_cols() const { return c.H; }
  __device__ S a(int e, int m, int kk) const { return c.dy[c.token(e, m) * c.D + kk]; }
  __device__ S b(int e, int kk, int n) const { return c.W2[(int64_t(e) * c.H + n) * c.D + kk]; }
  template <int BM, int BN, typename C>
  __device__ void epilogue(int e, int m0, int M, int n0, const C* Cs, int ldc) const {
    for (int i = threadIdx.x; i < BM * BN; i += blockDim.x) {
      const int r = i / BN, col = i % BN, m = m0 + r, n = n0 + col;
      if (m >= M || n >= c.H) continue;
      const int64_t pos = c.offsets[e] + m;
      const T z = c.hpre[pos * c.H + n];
      const T sc = c.scores[c.sorted[pos]];
      c.dhpre[pos * c.H + n] = Io<S>::store(sc * T(Cs[r * ldc + col]) * detail::gelu_grad(z));
    }
    for (int r = threadIdx.x; r < BM; r += blockDim.x) {
      const int m = m0 + r;
      if (m >= M) continue;
      const int64_t pos = c.offsets[e] + m;
      T sum = 0;
      for (int col = 0; col < BN && n0 + col < c.H; ++col) {
        sum += T(Cs[r * ldc + col]) * detail::gelu(c.hpre[pos * c.H + n0 + col]);
      }
      c.dsc_part[pos * c.dsc_cols + blockIdx.y] = sum;
    }
  }
};

// Backward: per-pair dx rows = dhpre W1[e]^T, written to the pair's row for the combine.
template <typename S>
struct GradInput {
  using T = typename Io<S>::T;
  Ctx<S> c;
  static constexpr bool kAMContig = false, kBKContig = true;
  template <int BM>
  __device__ bool tile(int bx, int, int* e, int* m0, int* M, int* K) const {
    *K = c.H;
    return c.token_tile(bx, e, m0, M);
  }
  __device__ int n_cols() const { return c.D; }
  __device__ S a(int e, int m, int kk) const {
    return c.dhpre[(int64_t(c.offsets[e]) + m) * c.H + kk];
  }
  __device__ S b(int e, int kk, int n) const { return c.W1[(int64_t(e) * c.D + n) * c.H + kk]; }
  template <int BM, int BN, typename C>
  __device__ void epilogue(int e, int m0, int M, int n0, const C* Cs, int ldc) const {
    for (int i = threadIdx.x; i < BM * BN; i += blockDim.x) {
      const int r = i / BN, col = i % BN, m = m0 + r, n = n0 + col;
      if (m >= M || n >= c.D) continue;
      const int p = c.sorted[c.offsets[e] + m];
      c.rows[int64_t(p) * c.D + n] = T(Cs[r * ldc + col]);
    }
  }
};

// Backward: dW1[e] = X_e^T dhpre_e ([D, n_e] x [n_e, H]); K runs over the expert's tokens.
template <typename S>
struct GradW1 {
  Ctx<S> c;
  static constexpr bool kAMContig = true, kBKContig = false;
  template <int BM>
  __device__ bool tile(int bx, int bz, int* e, int* m0, int* M, int* K) const {
    return c.weight_tile(bx, bz, BM, c.D, e, m0, M, K);
  }
  __device__ int n_cols() const { return c.H; }
  __device__ S a(int e, int m, int kk) const { return c.x[c.token(e, kk) * c.D + m]; }
  __device__ S b(int e, int kk, int n) const {
    return c.dhpre[(int64_t(c.offsets[e]) + kk) * c.H + n];
  }
  template <int BM, int BN, typename C>
  __device__ void epilogue(int e, int m0, int M, int n0, const C* Cs, int ldc) const {
    for (int i = threadIdx.x; i < BM * BN; i += blockDim.x) {
      const int r = i / BN, col = i % BN, m = m0 + r, n = n0 + col;
      if (m >= M || n >= c.H) continue;
      c.dW1[(int64_t(e) * c.D + m) * c.H + n] = Io<S>::store(Cs[r * ldc + col]);
    }
  }
};

// Backward: dW2[e] = H_e^T (score * dy)_e ([H, n_e] x [n_e, D]).
template <typename S>
struct GradW2 {
  Ctx<S> c;
  static constexpr bool kAMContig = true, kBKContig = false;
  template <int BM>
  __device__ bool tile(int bx, int bz, int* e, int* m0, int* M, int* K) const {
    return c.weight_tile(bx, bz, BM, c.H, e, m0, M, K);
  }
  __device__ int n_cols() const { return c.D; }
  __device__ S a(int e, int m, int kk) const {
    return c.hidden[(int64_t(c.offsets[e]) + kk) * c.H + m];
  }
  __device__ S b(int e, int kk, int n) const {
    return c.dys[(int64_t(c.offsets[e]) + kk) * c.D + n];
  }
  template <int BM, int BN, typename C>
  __device__ void epilogue(int e, int m0, int M, int n0, const C* Cs, int ldc) const {
    for (int i = threadIdx.x; i < BM * BN; i += blockDim.x) {
      const int r = i / BN, col = i % BN, m = m0 + r, n = n0 + col;
      if (m >= M || n >= c.D) continue;
      c.dW2[(int64_t(e) * c.H + m) * c.D + n] = Io<S>::store(Cs[r * ldc + col]);
    }
  }
};

template <typename S, class Prob>
void launch_gemm(dim3 grid, cudaStream_t stream, const Prob& prob) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  if constexpr (std::is_same<S, double>::value) {
    simt_gemm_kernel<Prob><<<grid, kSimtThreads, 0, stream>>>(prob);
  } else {
    tc_gemm_kernel<S, Prob><<<grid, kTcThreads, 0, stream>>>(prob);
  }
}

// ------------------------------------------------------------------------------ small kernels
// out[t, d] = sum_j rows[(t k + j), d] over the token's valid slots, in slot order; one thread per
// output element (grid-stride), consecutive threads on consecutive d (coalesced rows).
template <typename S, typename T>
__global__ void combine_kernel(const T* rows, const int64_t* indices, S* out, int64_t N, int D,
                               int k, int E) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / D;
    const int d = static_cast<int>(i % D);
    T acc = 0;
    for (int j = 0; j < k; ++j) {
      const int64_t e = indices[t * k + j];
      if (e >= 0 && e < E) acc += rows[(t * k + j) * D + d];
    }
    out[i] = Io<S>::store(acc);
  }
}

// dys[pos] = score[p] * dy[token(p)] for every sorted pair position (one thread per element).
template <typename S, typename T>
__global__ void scale_rows_kernel(const S* dy, const T* scores, const int* sorted,
                                  const int* offsets, int E, int D, int k, S* dys) {
  const int64_t total = int64_t(offsets[E]) * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pos = i / D;
    const int d = static_cast<int>(i % D);
    const int p = sorted[pos];
    dys[i] = Io<S>::store(scores[p] * Io<S>::load(dy[int64_t(p / k) * D + d]));
  }
}

// db[e, c] = sum over the expert's sorted rows of buf[row, c], in row order. Grid (columns / 128,
// E); one thread per (expert, column), reading a column strip (coalesced across threads).
template <typename S, typename T>
__global__ void bias_grad_kernel(const S* buf, const int* offsets, int C, S* db) {
  const int e = blockIdx.y, col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= C) return;
  T acc = 0;
  for (int r = offsets[e]; r < offsets[e + 1]; ++r) acc += Io<S>::load(buf[int64_t(r) * C + col]);
  db[int64_t(e) * C + col] = Io<S>::store(acc);
}

// dscores[p] = sum of the column-tile partials + <dy[t], b2[e]>; one warp per sorted pair, lanes
// striding over D and combined by a fixed shuffle tree (deterministic).
template <typename S, typename T>
__global__ void dscores_kernel(const T* part, int cols, const S* dy, const S* b2,
                               const int* sorted, const int* offsets, const int64_t* indices,
                               int E, int D, int k, T* dscores) {
  const int64_t pos = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (pos >= offsets[E]) return;
  const int p = sorted[pos];
  const int64_t e = indices[p];
  const int64_t t = p / k;
  T acc = 0;
  for (int d = lane; d < D; d += 32) {
    acc += Io<S>::load(dy[t * D + d]) * Io<S>::load(b2[e * D + d]);
  }
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) {
    T sum = 0;
    for (int c = 0; c < cols; ++c) sum += part[pos * cols + c];
    dscores[p] = sum + acc;
  }
}

unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = cdiv(n, threads);
  return static_cast<unsigned>(b < 65535 * 8 ? b : 65535 * 8);
}

// --------------------------------------------------------------------------- workspace layout
struct Layout {
  size_t offsets, sorted, tile_e, tile_m0, num_tiles, hidden, rows, hpre, dhpre, dys, dsc, total;
};

Layout layout(const Shape& s, bool backward, size_t elem, size_t acc, int bm, int bn) {
  const int64_t P = s.tokens * s.k;
  const int64_t tiles = cdiv(P, bm) + s.experts;
  Layout L{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += (bytes + 255) / 256 * 256;
    return here;
  };
  L.offsets = take(sizeof(int) * (s.experts + 1));
  L.sorted = take(sizeof(int) * P);
  L.tile_e = take(sizeof(int) * tiles);
  L.tile_m0 = take(sizeof(int) * tiles);
  L.num_tiles = take(sizeof(int));
  L.hidden = take(elem * P * s.hidden);
  L.rows = take(acc * P * s.dim);
  if (backward) {
    L.hpre = take(acc * P * s.hidden);
    L.dhpre = take(elem * P * s.hidden);
    L.dys = take(elem * P * s.dim);
    L.dsc = take(acc * P * cdiv(s.hidden, bn));
  }
  L.total = at;
  return L;
}

template <typename S>
Status prepare(const Shape& s, bool backward, void* ws, size_t ws_bytes, Ctx<S>* c,
               cudaStream_t stream, const int64_t* indices) {
  using T = typename Io<S>::T;
  if (s.experts > kMaxExperts) {
    return fail(Status::invalid_argument, "experts must be <= " + std::to_string(kMaxExperts) +
                                              " on CUDA, got " + std::to_string(s.experts));
  }
  const Layout L = layout(s, backward, sizeof(S), sizeof(T), row_tile<S>(), col_tile<S>());
  if (ws == nullptr || ws_bytes < L.total) {
    return fail(Status::invalid_argument, "workspace: need " + std::to_string(L.total) +
                                              " bytes (workspace_size), got " +
                                              std::to_string(ws_bytes));
  }
  char* base = static_cast<char*>(ws);
  c->N = static_cast<int>(s.tokens);
  c->D = static_cast<int>(s.dim);
  c->H = static_cast<int>(s.hidden);
  c->E = static_cast<int>(s.experts);
  c->k = static_cast<int>(s.k);
  c->P = static_cast<int>(s.tokens * s.k);
  c->offsets = reinterpret_cast<int*>(base + L.offsets);
  c->sorted = reinterpret_cast<int*>(base + L.sorted);
  c->tile_e = reinterpret_cast<int*>(base + L.tile_e);
  c->tile_m0 = reinterpret_cast<int*>(base + L.tile_m0);
  c->num_tiles = reinterpret_cast<int*>(base + L.num_tiles);
  c->hidden = reinterpret_cast<S*>(base + L.hidden);
  c->rows = reinterpret_cast<T*>(base + L.rows);
  c->hpre = backward ? reinterpret_cast<T*>(base + L.hpre) : nullptr;
  c->dhpre = backward ? reinterpret_cast<S*>(base + L.dhpre) : nullptr;
  c->dys = backward ? reinterpret_cast<S*>(base + L.dys) : nullptr;
  c->dsc_part = backward ? reinterpret_cast<T*>(base + L.dsc) : nullptr;
  c->dsc_cols = static_cast<int>(cdiv(s.hidden, col_tile<S>()));
  const int E = c->E;
  const size_t smem = sizeof(int) * (3 * E + (kSortThreads / 32) * E);
  sort_kernel<<<1, kSortThreads, smem, stream>>>(
      indices, c->P, E, row_tile<S>(), const_cast<int*>(c->offsets), const_cast<int*>(c->sorted),
      const_cast<int*>(c->tile_e), const_cast<int*>(c->tile_m0), const_cast<int*>(c->num_tiles));
  return launched("moe::sort_kernel");
}

}  // namespace

size_t workspace_size(const Shape& s, bool backward, size_t elem_bytes) {
  const bool dbl = elem_bytes == 8;
  return layout(s, backward, elem_bytes, dbl ? 8 : 4, dbl ? kSimtBM : kTcBM,
                dbl ? kSimtBN : kTcBN).total;
}

template <typename S>
Status forward(const S* x, const typename Io<S>::T* scores, const int64_t* indices, const S* W1,
               const S* b1, const S* W2, const S* b2, S* y, const Shape& s, void* workspace,
               size_t workspace_bytes, void* stream_ptr) {
  using T = typename Io<S>::T;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  Ctx<S> c{};
  c.x = x, c.W1 = W1, c.b1 = b1, c.W2 = W2, c.b2 = b2, c.scores = scores;
  if (Status st = prepare(s, false, workspace, workspace_bytes, &c, stream, indices);
      st != Status::ok) {
    return st;
  }
  const int bm = row_tile<S>(), bn = col_tile<S>();
  const unsigned tiles = static_cast<unsigned>(cdiv(c.P, bm) + c.E);
  launch_gemm<S>(dim3(tiles, cdiv(c.H, bn), 1), stream, Gemm1<S>{c});
  launch_gemm<S>(dim3(tiles, cdiv(c.D, bn), 1), stream, Gemm2<S>{c});
  combine_kernel<S, T><<<blocks_for(s.tokens * s.dim, 256), 256, 0, stream>>>(
      c.rows, indices, y, s.tokens, c.D, c.k, c.E);
  return launched("moe::moe_mlp_forward");
}

template <typename S>
Status backward(const S* dy, const S* x, const typename Io<S>::T* scores, const int64_t* indices,
                const S* W1, const S* b1, const S* W2, const S* b2, S* dx,
                typename Io<S>::T* dscores, S* dW1, S* db1, S* dW2, S* db2, const Shape& s,
                void* workspace, size_t workspace_bytes, void* stream_ptr) {
  using T = typename Io<S>::T;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  Ctx<S> c{};
  c.x = x, c.W1 = W1, c.b1 = b1, c.W2 = W2, c.b2 = b2, c.dy = dy, c.scores = scores;
  c.dW1 = dW1, c.dW2 = dW2;
  if (Status st = prepare(s, true, workspace, workspace_bytes, &c, stream, indices);
      st != Status::ok) {
    return st;
  }
  const int bm = row_tile<S>(), bn = col_tile<S>();
  const unsigned tiles = static_cast<unsigned>(cdiv(c.P, bm) + c.E);
  if (c.P > 0) {
    // pairs with an out-of-range expert are skipped by every kernel: their dscores stay 0
    cudaMemsetAsync(dscores, 0, sizeof(T) * c.P, stream);
  }
  launch_gemm<S>(dim3(tiles, cdiv(c.H, bn), 1), stream, Gemm1<S>{c});
  if (c.P > 0) {
    scale_rows_kernel<S, T><<<blocks_for(int64_t(c.P) * c.D, 256), 256, 0, stream>>>(
        dy, scores, c.sorted, c.offsets, c.E, c.D, c.k, c.dys);
  }
  launch_gemm<S>(dim3(tiles, cdiv(c.H, bn), 1), stream, GradHidden<S>{c});
  if (c.P > 0) {
    dscores_kernel<S, T><<<blocks_for(int64_t(c.P) * 32, 256), 256, 0, stream>>>(
        c.dsc_part, c.dsc_cols, dy, b2, c.sorted, c.offsets, indices, c.E, c.D, c.k, dscores);
  }
  launch_gemm<S>(dim3(tiles, cdiv(c.D, bn), 1), stream, GradInput<S>{c});
  if (s.tokens > 0) {
    combine_kernel<S, T><<<blocks_for(s.tokens * s.dim, 256), 256, 0, stream>>>(
        c.rows, indices, dx, s.tokens, c.D, c.k, c.E);
  }
  launch_gemm<S>(dim3(cdiv(c.D, bm), cdiv(c.H, bn), c.E), stream, GradW1<S>{c});
  launch_gemm<S>(dim3(cdiv(c.H, bm), cdiv(c.D, bn), c.E), stream, GradW2<S>{c});
  bias_grad_kernel<S, T><<<dim3(cdiv(c.H, 128), c.E), 128, 0, stream>>>(c.dhpre, c.offsets, c.H,
                                                                        db1);
  bias_grad_kernel<S, T><<<dim3(cdiv(c.D, 128), c.E), 128, 0, stream>>>(c.dys, c.offsets, c.D,
                                                                        db2);
  return launched("moe::moe_mlp_backward");
}

#define FP_MOE_CUDA(S)                                                                         \
  template Status forward<S>(const S*, const Io<S>::T*, const int64_t*, const S*, const S*,     \
                             const S*, const S*, S*, const Shape&, void*, size_t, void*);       \
  template Status backward<S>(const S*, const S*, const Io<S>::T*, const int64_t*, const S*,    \
                              const S*, const S*, const S*, S*, Io<S>::T*, S*, S*, S*, S*,      \
                              const Shape&, void*, size_t, void*);
FP_MOE_CUDA(float)
FP_MOE_CUDA(double)
FP_MOE_CUDA(half_bits)
FP_MOE_CUDA(bf16_bits)
#undef FP_MOE_CUDA

}  // namespace fastpaper::moe::cuda
