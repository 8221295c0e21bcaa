// CUDA kernels of the multi-head recurrent cells (fastpaper/rnn.h), forward and backward. The
// pointwise math is fastpaper/detail/rnn_cells.h, shared with (and tested through) the CPU path.
//
// Forward and backward each run one of four kernel families; choose_path (below) picks the first
// that fits the call, or the one FASTPAPER_RNN_PATH / set_cuda_path forces:
// * fwd_persistent (R of a head fits in shared memory; 16-bit storage needs DH % 16 == 0): one CTA
//   of 256 threads per (head, tile of 16 batch rows) walks the whole sequence; no grid-wide
//   barrier, only __syncthreads. R_n ([G*DH][DH], storage type) and the tile's states (fp32) stay
//   in shared memory for all T steps. Per step: (1) rec = h R_n^T for the 16 rows: bf16/fp16 on
//   tensor cores (wmma 16x16x16, fp32 accumulate; warp w owns output column tiles w, w+8, ...),
//   fp32 by FMA (thread per output); (2) the pointwise cell for the tile's 16 x DH units (thread
//   per unit), which also writes h in the storage type for the next step's MMA (so on the GPU the
//   recurrent product sees h rounded to bf16/fp16; the carried states stay fp32).
// * fwd_sliced / bwd_sliced (rnn_sliced.cuh; R_n too large for one CTA): the head's units split
//   over P CTAs, each holding its G*DH/P rows of R_n in shared memory, coupled either as a Hopper
//   thread-block cluster (h exchanged through distributed shared memory, cluster.sync per step) or
//   as a cooperative grid (h through a global double buffer, grid.sync per step).
// * fwd_step (any DH; the fallback): one launch per time step, a thread per (b, n, j) computing
//   its G dot products over k from global memory (L2-resident R) and the cell.
// Backward, reverse time, the same families: bwd_persistent (a CTA per (head, batch tile) for all
// steps), bwd_sliced (cluster / cooperative) and bwd_step (one launch per step, a thread per
// (b, n, k)). All: dh_t gets sum_{g,j} dpre_{t+1}[g, j] R[g, n, j, k] (the R^T product), then
// the pointwise backward writes dpre_t (the work buffer) and the state gradients. Afterwards
// dR = per head dpre^T h_prev over
// all B*T rows (tiled shared-memory GEMM, fixed summation order), db by a per-(gate, unit)
// sequential sum and dWx by a gather: deterministic, no atomics.
// State buffers the API does not provide (no hist; backward's dS) are stream-ordered
// allocations (cudaMallocAsync), so the ops stay capturable in CUDA graphs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <array>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include "core/cuda_launch.h"
#include "core/error.h"
#include "rnn/rnn_backends.h"
#include "rnn_cuda_common.cuh"
#include "rnn_sliced.cuh"

namespace fastpaper::rnn::cuda {
namespace {

using fastpaper::detail::fail;
using fastpaper::detail::launched;

template <typename S, int NS>
struct PersistentLayout {
  int64_t r_bytes, h_bytes, rec_bytes, st_bytes;
  __host__ __device__ PersistentLayout(int64_t G, int64_t DH) {
    r_bytes = align_up(G * DH * DH * static_cast<int64_t>(sizeof(S)), 128);
    h_bytes = align_up(kTile * DH * static_cast<int64_t>(sizeof(S)), 128);
    rec_bytes = align_up(kTile * G * DH * 4, 128);
    st_bytes = NS * kTile * DH * 4;
  }
  __host__ __device__ int64_t total() const { return r_bytes + h_bytes + rec_bytes + st_bytes; }
};

// ---- forward: persistent CTA per (head, batch tile) --------------------------------------------
template <typename S, typename C>
__global__ void __launch_bounds__(kThreads)
fwd_persistent(FwdArgs<S, float> a, Shape sh) {
  constexpr int G = C::G, NS = C::S;
  const int64_t DH = sh.head_dim, NH = sh.heads, B = sh.batch, Tn = sh.time;
  const int64_t N = NH * DH, BN = B * N, GD = G * DH;
  const int64_t n = blockIdx.x, b0 = static_cast<int64_t>(blockIdx.y) * kTile;
  extern __shared__ __align__(128) unsigned char smem[];
  const PersistentLayout<S, NS> L(G, DH);
  S* sR = reinterpret_cast<S*>(smem);                                   // [G*DH][DH]
  S* sH = reinterpret_cast<S*>(smem + L.r_bytes);                       // [kTile][DH]
  float* sRec = reinterpret_cast<float*>(smem + L.r_bytes + L.h_bytes);  // [kTile][G*DH]
  float* sSt = reinterpret_cast<float*>(smem + L.r_bytes + L.h_bytes + L.rec_bytes);  // [NS][kTile][DH]
  const int tid = threadIdx.x;
  for (int64_t i = tid; i < GD * DH; i += kThreads) {
    const int64_t c = i / DH, k = i % DH;
    sR[i] = a.R[(((c / DH) * NH + n) * DH + c % DH) * DH + k];
  }
  for (int64_t i = tid; i < kTile * DH; i += kThreads) {
    const int64_t bb = i / DH, j = i % DH, b = b0 + bb;
    for (int s = 0; s < NS; ++s) {
      float v = 0.f;
      if (b < B && a.states0) v = Io<S>::load(a.states0[s * BN + b * N + n * DH + j]);
      sSt[(s * kTile + bb) * DH + j] = v;
      if (b < B && a.hist) a.hist[s * (Tn + 1) * BN + b * N + n * DH + j] = v;
    }
    sH[i] = Io<S>::store(sSt[i]);
  }
  for (int64_t t = 0; t < Tn; ++t) {
    __syncthreads();
    // (1) rec[bb][c] = sum_k h[bb][k] R_n[c][k]
    if constexpr (std::is_same_v<S, float>) {
      rec_product_fma(sH, DH, sR, DH, DH, GD, sRec);
    } else {
      using namespace nvcuda;
      using E = typename Wmma<S>::type;
      const int warp = tid / 32;
      for (int64_t ct = warp; ct < GD / 16; ct += kThreads / 32) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.f);
        for (int64_t kk = 0; kk < DH; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> fa;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::col_major> fb;
          wmma::load_matrix_sync(fa, reinterpret_cast<const E*>(sH) + kk, static_cast<unsigned>(DH));
          wmma::load_matrix_sync(fb, reinterpret_cast<const E*>(sR) + ct * 16 * DH + kk,
                                 static_cast<unsigned>(DH));
          wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(sRec + ct * 16, acc, static_cast<unsigned>(GD), wmma::mem_row_major);
      }
    }
    __syncthreads();
    // (2) the pointwise cell, a thread per unit of the tile
    for (int64_t i = tid; i < kTile * DH; i += kThreads) {
      const int64_t bb = i / DH, j = i % DH, b = b0 + bb;
      if (b >= B) continue;
      float rec[G], prev[NS], next[NS];
      for (int g = 0; g < G; ++g) rec[g] = sRec[bb * GD + g * DH + j];
      for (int s = 0; s < NS; ++s) prev[s] = sSt[(s * kTile + bb) * DH + j];
      fwd_unit<S, C>(a, sh, t, b, n, j, rec, prev, next);
      for (int s = 0; s < NS; ++s) sSt[(s * kTile + bb) * DH + j] = next[s];
      sH[i] = Io<S>::store(next[0]);
    }
  }
  __syncthreads();
  for (int64_t i = tid; i < kTile * DH; i += kThreads) {
    const int64_t bb = i / DH, j = i % DH, b = b0 + bb;
    if (b >= B) continue;
    for (int s = 0; s < NS; ++s) {
      a.last[s * BN + b * N + n * DH + j] = Io<S>::store(sSt[(s * kTile + bb) * DH + j]);
    }
  }
}

// ---- forward: one launch per step (any DH) ------------------------------------------------------
// States of step t are read at prev + s * stride and written at next + s * stride.
template <typename S, typename C>
__global__ void __launch_bounds__(kThreads)
fwd_step(FwdArgs<S, float> a, Shape sh, int64_t t, const float* prev_st, float* next_st,
         int64_t stride) {
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  const int64_t DH = sh.head_dim, NH = sh.heads, B = sh.batch, Tn = sh.time, N = NH * DH;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= B * N) return;
  const int64_t b = idx / N, n = (idx % N) / DH, j = idx % DH;
  const bool active = a.lengths == nullptr || t < a.lengths[b];
  float prev[NS], next[NS], pre[GB];
  for (int s = 0; s < NS; ++s) prev[s] = prev_st[s * stride + idx];
  if (active) {
    float wx[G], r[G], bias[GB];
    const float* h = prev_st + b * N + n * DH;
    for (int g = 0; g < G; ++g) {
      const S* row = a.R + ((g * NH + n) * DH + j) * DH;
      float acc = 0.f;
      for (int64_t k = 0; k < DH; ++k) acc = fmaf(Io<S>::load(row[k]), h[k], acc);
      r[g] = acc;
      wx[g] = Io<S>::load(a.Wx[((b * Tn + t) * G + g) * N + n * DH + j]);
    }
    for (int g = 0; g < GB; ++g) bias[g] = Io<S>::load(a.b[g * N + n * DH + j]);
    C::preact(wx, r, bias, pre);
    C::forward(pre, prev, next);
  } else {
    for (int s = 0; s < NS; ++s) next[s] = prev[s];
    for (int g = 0; g < GB; ++g) pre[g] = 0.f;
  }
  for (int s = 0; s < NS; ++s) next_st[s * stride + idx] = next[s];
  if (a.cache) {
    float* cp = a.cache + ((t * B + b) * NH + n) * GB * DH + j;
    for (int g = 0; g < GB; ++g) cp[g * DH] = pre[g];
  }
  a.h_all[(b * Tn + t) * N + n * DH + j] = Io<S>::store(active ? next[0] : 0.f);
}

template <typename S>
__global__ void load_states(const S* src, float* dst, int64_t stride, int NS, int64_t BN) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= BN) return;
  for (int s = 0; s < NS; ++s) dst[s * stride + i] = src ? Io<S>::load(src[s * BN + i]) : 0.f;
}

template <typename S>
__global__ void store_states(const float* src, int64_t stride, S* dst, int NS, int64_t BN) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= BN) return;
  for (int s = 0; s < NS; ++s) dst[s * BN + i] = Io<S>::store(src[s * stride + i]);
}

// ---- backward ---------------------------------------------------------------------------------
// Step t (t = -1: only the R^T product of step 0, for the initial-state gradient).
template <typename S, typename C>
__global__ void __launch_bounds__(kThreads)
bwd_step(BwdArgs<S, float> a, Shape sh, int64_t t, float* dS) {
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  const int64_t DH = sh.head_dim, NH = sh.heads, B = sh.batch, Tn = sh.time, N = NH * DH;
  const int64_t BN = B * N, GBD = GB * DH;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= BN) return;
  const int64_t b = idx / N, n = (idx % N) / DH, k = idx % DH;
  if (t + 1 < Tn) {  // dh_t += sum_{g, j} dpre_{t+1}[g, j] R[g, n, j, k]
    const float* w = a.work + (((t + 1) * B + b) * NH + n) * GBD;
    float acc = 0.f;
    for (int g = 0; g < G; ++g) {
      const S* col = a.R + (g * NH + n) * DH * DH + k;
      for (int64_t j = 0; j < DH; ++j) acc = fmaf(w[g * DH + j], Io<S>::load(col[j * DH]), acc);
    }
    dS[idx] += acc;
  }
  if (t < 0) return;
  float* wt = a.work + ((t * B + b) * NH + n) * GBD + k;
  const bool active = a.lengths == nullptr || t < a.lengths[b];
  if (!active) {  // frozen step: the state gradients pass through
    for (int g = 0; g < GB; ++g) wt[g * DH] = 0.f;
    return;
  }
  float pre[GB], prev[NS], dnext[NS], dprev[NS], dpre[GB];
  const float* cp = a.cache + ((t * B + b) * NH + n) * GBD + k;
  for (int g = 0; g < GB; ++g) pre[g] = cp[g * DH];
  for (int s = 0; s < NS; ++s) {
    prev[s] = a.hist[(s * (Tn + 1) + t) * BN + idx];
    dnext[s] = dS[s * BN + idx];
  }
  if (a.dh_all) dnext[0] += Io<S>::load(a.dh_all[(b * Tn + t) * N + n * DH + k]);
  C::backward(pre, prev, dnext, dprev, dpre);
  for (int s = 0; s < NS; ++s) dS[s * BN + idx] = dprev[s];
  for (int g = 0; g < GB; ++g) wt[g * DH] = dpre[g];
}

// Backward, persistent: one CTA per (head, tile of 16 batch rows) walks time in reverse with R_n
// (storage type), the tile's state gradients and the previous step's d pre (fp32) in shared
// memory. Per step: (1) dh += d pre_{t+1} R_n (a thread per (row, k): G*DH FMAs from shared
// memory); (2) the pointwise backward (a thread per unit), which writes d pre_t to `work` (for
// dR, db, dWx afterwards) and to shared memory for the next (earlier) step.
template <typename S, int NS>
struct BwdLayout {
  int64_t r_bytes, w_bytes, st_bytes;
  __host__ __device__ BwdLayout(int64_t G, int64_t DH) {
    r_bytes = align_up(G * DH * DH * static_cast<int64_t>(sizeof(S)), 128);
    w_bytes = align_up(kTile * G * DH * 4, 128);
    st_bytes = NS * kTile * DH * 4;
  }
  __host__ __device__ int64_t total() const { return r_bytes + w_bytes + st_bytes; }
};

template <typename S, typename C>
__global__ void __launch_bounds__(kThreads)
bwd_persistent(BwdArgs<S, float> a, Shape sh) {
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  const int64_t DH = sh.head_dim, NH = sh.heads, B = sh.batch, Tn = sh.time;
  const int64_t N = NH * DH, BN = B * N, GD = G * DH;
  const int64_t n = blockIdx.x, b0 = static_cast<int64_t>(blockIdx.y) * kTile;
  extern __shared__ __align__(128) unsigned char smem[];
  const BwdLayout<S, NS> L(G, DH);
  S* sR = reinterpret_cast<S*>(smem);                                  // [G*DH][DH]
  float* sW = reinterpret_cast<float*>(smem + L.r_bytes);              // [kTile][G*DH]
  float* sD = reinterpret_cast<float*>(smem + L.r_bytes + L.w_bytes);  // [NS][kTile][DH]
  const int tid = threadIdx.x;
  for (int64_t i = tid; i < GD * DH; i += kThreads) {
    const int64_t c = i / DH, k = i % DH;
    sR[i] = a.R[(((c / DH) * NH + n) * DH + c % DH) * DH + k];
  }
  for (int64_t i = tid; i < kTile * GD; i += kThreads) sW[i] = 0.f;
  for (int64_t i = tid; i < kTile * DH; i += kThreads) {
    const int64_t bb = i / DH, j = i % DH, b = b0 + bb;
    for (int s = 0; s < NS; ++s) {
      sD[(s * kTile + bb) * DH + j] =
          (b < B && a.dlast) ? Io<S>::load(a.dlast[s * BN + b * N + n * DH + j]) : 0.f;
    }
  }
  for (int64_t t = Tn - 1; t >= -1; --t) {
    __syncthreads();
    // (1) dh_t += sum_c d pre_{t+1}[c] R_n[c][k]  (sW is zero before the last step)
    for (int64_t i = tid; i < kTile * DH; i += kThreads) {
      const int64_t bb = i / DH, k = i % DH;
      const float* w = sW + bb * GD;
      float acc = 0.f;
      for (int64_t c = 0; c < GD; ++c) acc = fmaf(w[c], Io<S>::load(sR[c * DH + k]), acc);
      sD[bb * DH + k] += acc;
    }
    if (t < 0) break;  // uniform across the CTA
    __syncthreads();
    // (2) the pointwise backward of step t
    for (int64_t i = tid; i < kTile * DH; i += kThreads) {
      const int64_t bb = i / DH, k = i % DH, b = b0 + bb;
      if (b >= B) continue;
      float d[NS], dpre[GB];
      for (int s = 0; s < NS; ++s) d[s] = sD[(s * kTile + bb) * DH + k];
      bwd_unit<S, C>(a, sh, t, b, n, k, d, dpre);
      for (int s = 0; s < NS; ++s) sD[(s * kTile + bb) * DH + k] = d[s];
      for (int g = 0; g < G; ++g) sW[bb * GD + g * DH + k] = dpre[g];
    }
  }
  __syncthreads();
  if (a.dstates0) {
    for (int64_t i = tid; i < kTile * DH; i += kThreads) {
      const int64_t bb = i / DH, j = i % DH, b = b0 + bb;
      if (b >= B) continue;
      for (int s = 0; s < NS; ++s) {
        a.dstates0[s * BN + b * N + n * DH + j] = Io<S>::store(sD[(s * kTile + bb) * DH + j]);
      }
    }
  }
}

// dR[g, n, j, k] = sum_r dpre[r, n, g*DH + j] h_prev[r, n, k] over the rows r = (t, b): a 16 x 16
// output tile per CTA (grid: G*DH/16 x DH/16 x NH), rows in chunks of 16 through shared memory.
template <typename S>
__global__ void __launch_bounds__(256)
bwd_dR(const float* work, const float* hist_h, S* dR, int64_t rows, int64_t G, int64_t GB,
       int64_t NH, int64_t DH) {
  __shared__ float As[16][17], Bs[16][17];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t n = blockIdx.z, c = blockIdx.x * 16 + ty, k = blockIdx.y * 16 + tx;
  const int64_t GD = G * DH, ldw = NH * GB * DH, ldh = NH * DH;
  float acc = 0.f;
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    // As[rr][cc] = work[r0 + rr][n][blockIdx.x*16 + cc], Bs[rr][kk] = h[r0 + rr][n][blockIdx.y*16 + kk]
    const int64_t r = r0 + ty;
    const int64_t ca = blockIdx.x * 16 + tx;
    As[ty][tx] = (r < rows && ca < GD) ? work[r * ldw + n * GB * DH + ca] : 0.f;
    Bs[ty][tx] = (r < rows && k < DH) ? hist_h[r * ldh + n * DH + k] : 0.f;
    __syncthreads();
    for (int rr = 0; rr < 16; ++rr) acc = fmaf(As[rr][ty], Bs[rr][tx], acc);
    __syncthreads();
  }
  if (c < GD && k < DH) {
    const int64_t g = c / DH, j = c % DH;
    dR[((g * NH + n) * DH + j) * DH + k] = Io<S>::store(acc);
  }
}

template <typename S, typename C>
__global__ void bwd_db(const float* work, S* db, int64_t rows, int64_t NH, int64_t DH) {
  constexpr int GB = C::GB;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= GB * NH * DH) return;
  const int64_t gb = i / (NH * DH), n = (i / DH) % NH, j = i % DH;
  const float* w = work + n * GB * DH + C::b_row(static_cast<int>(gb)) * DH + j;
  float acc = 0.f;
  for (int64_t r = 0; r < rows; ++r) acc += w[r * NH * GB * DH];
  db[i] = Io<S>::store(acc);
}

template <typename S, typename C>
__global__ void bwd_dwx(const float* work, S* dWx, Shape sh) {
  constexpr int G = C::G, GB = C::GB;
  const int64_t DH = sh.head_dim, NH = sh.heads, B = sh.batch, Tn = sh.time;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= B * Tn * G * NH * DH) return;
  const int64_t j = i % DH, n = (i / DH) % NH, g = (i / (DH * NH)) % G, bt = i / (DH * NH * G);
  const int64_t b = bt / Tn, t = bt % Tn;
  dWx[i] = Io<S>::store(work[((t * B + b) * NH + n) * GB * DH + C::wx_row(static_cast<int>(g)) * DH + j]);
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

Status device_alloc(float** p, int64_t elems, cudaStream_t st) {
  if (cudaMallocAsync(reinterpret_cast<void**>(p), static_cast<size_t>(elems) * sizeof(float), st) !=
      cudaSuccess) {
    return fail(Status::cuda_error, std::string("rnn: cudaMallocAsync: ") +
                                        cudaGetErrorString(cudaGetLastError()));
  }
  return Status::ok;
}

// ---- the choice among the kernel families ---------------------------------------------------------
enum class Path { persistent, cluster, cooperative, step };
const char* path_name(Path p) {
  switch (p) {
    case Path::persistent: return "persistent";
    case Path::cluster: return "cluster";
    case Path::cooperative: return "cooperative";
    case Path::step: return "step";
  }
  return "?";
}

struct Plan {
  Path path = Path::step;
  SliceLayout slice;  // cluster / cooperative: slices and shared-memory layout
  int64_t smem = 0;   // dynamic shared memory of the chosen kernel (persistent / sliced)
};

template <typename S, typename C, bool kBackward, bool kCluster>
constexpr auto sliced_kernel() {
  if constexpr (kBackward) {
    return bwd_sliced<S, C, kCluster>;
  } else {
    return fwd_sliced<S, C, kCluster>;
  }
}

// Sets the kernel's shared-memory (and, above 8 CTAs, non-portable cluster size) attributes.
template <typename K>
bool set_sliced_attributes(K kernel, int64_t smem, int cluster) {
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem)) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  if (cluster > 8 && cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed,
                                          1) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return true;
}

template <typename S, typename C, bool kBackward, bool kCluster, typename Args>
Status launch_sliced(const Args& a, const Shape& sh, const SliceLayout& L, float* buf,
                     cudaStream_t st) {
  const auto kernel = sliced_kernel<S, C, kBackward, kCluster>();
  const char* what = kBackward ? (kCluster ? "rnn::backward (cluster)" : "rnn::backward (cooperative)")
                               : (kCluster ? "rnn::forward (cluster)" : "rnn::forward (cooperative)");
  // (again: choose_path's search may have left another candidate's size set)
  if (!set_sliced_attributes(kernel, L.total, kCluster ? L.parts : 0)) {
    return fail(Status::cuda_error, std::string(what) + ": cannot set the shared-memory attribute");
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(sh.heads * L.parts),
                     static_cast<unsigned>((sh.batch + kTile - 1) / kTile));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = static_cast<size_t>(L.total);
  cfg.stream = st;
  cudaLaunchAttribute attr = {};
  if constexpr (kCluster) {
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = static_cast<unsigned>(L.parts);
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
  } else {
    attr.id = cudaLaunchAttributeCooperative;
    attr.val.cooperative = 1;
  }
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, a, sh, L, buf);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return fail(Status::cuda_error, std::string(what) + ": " + cudaGetErrorString(err));
  }
  return launched(what);
}

// The one place (with its memo, choose_path below) that decides which kernel family runs a
// forward (kBackward = false) or backward call on the current device, and with which slices. In
// order, the first that fits:
//  1. persistent: R_n, the 16-row tile's h / products / states fit one CTA's opt-in shared memory
//     (227 KB on H100/H200: bf16 LSTM up to DH = 128 forward, fp32 up to DH = 64); one CTA per
//     (head, batch tile), no inter-CTA synchronisation.
//  2. cluster (sm_90+): a thread-block cluster of P in {2, 4, 8, 16} CTAs per (head, tile), each
//     with G*DH/P rows of R_n (slice_layout). Among the P whose slice fits, prefer the fewest CTAs
//     with at most 128 R rows each (one 16-column MMA tile per warp), then the others smallest
//     first; P = 16 needs the non-portable cluster attribute; a P the device cannot schedule
//     (cudaOccupancyMaxActiveClusters == 0) is skipped, so 16 falls back to 8 and so on.
//  3. cooperative: the same slicing with P any divisor of DH, all NH * P * tiles CTAs co-resident
//     (cudaOccupancyMaxActiveBlocksPerMultiprocessor x SMs) for grid.sync(): same preference.
//  4. step: one launch per time step (any shape).
// 16-bit forward slices need G*DH/P and DH to be multiples of 16 (wmma tiles). FASTPAPER_RNN_PATH
// (or set_cuda_path) forces one family: when it cannot run the call, the call fails with
// invalid_argument and the reason instead of silently taking another path.
template <typename S, typename C, bool kBackward>
Status choose_path_uncached(const Shape& sh, Plan* plan) {
  constexpr int G = C::G, NS = C::S;
  constexpr bool f32 = std::is_same_v<S, float>;
  const int64_t B = sh.batch, NH = sh.heads, DH = sh.head_dim;
  const int64_t tiles = (B + kTile - 1) / kTile;
  const CudaPath forced = forced_cuda_path();
  const char* forced_name = forced == CudaPath::persistent ? "persistent"
                            : forced == CudaPath::cluster  ? "cluster"
                            : forced == CudaPath::cooperative ? "cooperative"
                                                             : "step";
  auto refuse = [&](const std::string& why) {
    return fail(Status::invalid_argument, std::string("rnn: the forced CUDA path '") + forced_name +
                                              "' (FASTPAPER_RNN_PATH / set_cuda_path) cannot run " +
                                              (kBackward ? "this backward: " : "this forward: ") + why);
  };
  auto allowed = [&](CudaPath p) { return forced == CudaPath::automatic || forced == p; };
  int dev = 0, optin = 0, major = 0, sms = 0, coop = 0, cluster_ok = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
  cudaDeviceGetAttribute(&cluster_ok, cudaDevAttrClusterLaunch, dev);
  cudaGetLastError();
  if (tiles >= 65536) {  // grid.y of every family but step
    if (allowed(CudaPath::step)) {
      plan->path = Path::step;
      return Status::ok;
    }
    return refuse("more than 65535 tiles of 16 batch rows");
  }
  // 1. persistent
  if (allowed(CudaPath::persistent)) {
    int64_t total = 0;
    bool shape_ok = true;
    if constexpr (kBackward) {
      total = BwdLayout<S, NS>(G, DH).total();
    } else {
      total = PersistentLayout<S, NS>(G, DH).total();
      shape_ok = f32 || DH % 16 == 0;
    }
    if (shape_ok && total <= optin) {
      plan->path = Path::persistent;
      plan->smem = total;
      return Status::ok;
    }
    if (forced == CudaPath::persistent) {
      return refuse(shape_ok ? "R_n and the tile need " + std::to_string(total) +
                                   " bytes of shared memory, the device allows " +
                                   std::to_string(optin)
                             : std::string("16-bit storage needs head_dim % 16 == 0"));
    }
  }
  const int64_t elem = sizeof(S);
  constexpr bool bf16 = std::is_same_v<S, bf16_t>;
  auto slice_ok = [&](int64_t P) {
    if (P < 1 || DH % P != 0) return false;
    if (!f32 && !kBackward && ((G * (DH / P)) % 16 != 0 || DH % 16 != 0)) return false;
    return true;
  };
  // 2. cluster
  if (allowed(CudaPath::cluster)) {
    if (major >= 9 && cluster_ok) {
      // the fitting sizes: the first with <= 128 rows per CTA first, then the others ascending
      int order[4], count = 0;
      for (int P = 2; P <= 16; P *= 2) {
        if (!slice_ok(P) || slice_layout(kBackward, true, G, NS, DH, P, elem, bf16).total > optin) {
          continue;
        }
        order[count++] = P;
        for (int i = count - 1;
             i > 0 && G * (DH / order[i]) <= 128 && G * (DH / order[i - 1]) > 128; --i) {
          std::swap(order[i], order[i - 1]);
        }
      }
      const auto kernel = sliced_kernel<S, C, kBackward, true>();
      for (int i = 0; i < count; ++i) {
        const SliceLayout L = slice_layout(kBackward, true, G, NS, DH, order[i], elem, bf16);
        if (!set_sliced_attributes(kernel, L.total, L.parts)) continue;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(static_cast<unsigned>(NH * L.parts), static_cast<unsigned>(tiles));
        cfg.blockDim = dim3(kThreads);
        cfg.dynamicSmemBytes = static_cast<size_t>(L.total);
        cudaLaunchAttribute attr = {};
        attr.id = cudaLaunchAttributeClusterDimension;
        attr.val.clusterDim.x = static_cast<unsigned>(L.parts);
        attr.val.clusterDim.y = 1;
        attr.val.clusterDim.z = 1;
        cfg.attrs = &attr;
        cfg.numAttrs = 1;
        int clusters = 0;
        if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) {
          cudaGetLastError();
          continue;
        }
        if (clusters >= 1) {
          plan->path = Path::cluster;
          plan->slice = L;
          plan->smem = L.total;
          return Status::ok;
        }
      }
      if (forced == CudaPath::cluster) {
        return refuse("no cluster of 2, 4, 8 or 16 CTAs holds a slice of R_n (" +
                      std::to_string(G * DH * DH * elem) + " bytes) in " + std::to_string(optin) +
                      " bytes of shared memory per CTA");
      }
    } else if (forced == CudaPath::cluster) {
      return refuse("thread-block clusters need compute capability 9.0 or newer");
    }
  }
  // 3. cooperative
  if (allowed(CudaPath::cooperative)) {
    if (coop) {
      const auto kernel = sliced_kernel<S, C, kBackward, false>();
      SliceLayout fallback, preferred;
      for (int64_t P = 1; P <= DH && preferred.parts == 0; ++P) {
        if (!slice_ok(P) || NH * P * tiles > int64_t{sms} * 32) continue;
        const SliceLayout L =
            slice_layout(kBackward, false, G, NS, DH, static_cast<int>(P), elem, bf16);
        if (L.total > optin || !set_sliced_attributes(kernel, L.total, 0)) continue;
        int per_sm = 0;
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                &per_sm, kernel, kThreads, static_cast<size_t>(L.total)) != cudaSuccess) {
          cudaGetLastError();
          continue;
        }
        if (NH * P * tiles > int64_t{per_sm} * sms) continue;  // not co-resident
        if (fallback.parts == 0) fallback = L;
        if (G * L.units <= 128) preferred = L;
      }
      const SliceLayout L = preferred.parts ? preferred : fallback;
      if (L.parts) {
        plan->path = Path::cooperative;
        plan->slice = L;
        plan->smem = L.total;
        return Status::ok;
      }
      if (forced == CudaPath::cooperative) {
        return refuse("no slicing of head_dim " + std::to_string(DH) + " puts R_n's slices in " +
                      std::to_string(optin) + " bytes of shared memory with all " +
                      std::to_string(NH) + " x " + std::to_string(tiles) +
                      " (head, tile) groups co-resident on " + std::to_string(sms) + " SMs");
      }
    } else if (forced == CudaPath::cooperative) {
      return refuse("the device does not support cooperative launches");
    }
  }
  // 4. step
  if (allowed(CudaPath::step)) {
    plan->path = Path::step;
    return Status::ok;
  }
  return refuse("no kernel fits");
}

// choose_path with a per-process memo: the occupancy queries cost tens of microseconds per call,
// and the answer only depends on the device, the shape (batch tiles, heads, head_dim) and the
// setting. Refusals are not memoized (they record their message).
template <typename S, typename C, bool kBackward>
Status choose_path(const Shape& sh, Plan* plan) {
  static std::mutex mutex;
  static std::map<std::array<int64_t, 5>, Plan> memo;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return launched("rnn: no usable CUDA device");
  const std::array<int64_t, 5> key{dev, (sh.batch + kTile - 1) / kTile, sh.heads, sh.head_dim,
                                   static_cast<int64_t>(forced_cuda_path())};
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (const auto it = memo.find(key); it != memo.end()) {
      *plan = it->second;
      return Status::ok;
    }
  }
  const Status st = choose_path_uncached<S, C, kBackward>(sh, plan);
  if (st == Status::ok) {
    std::lock_guard<std::mutex> lock(mutex);
    memo.emplace(key, *plan);
  }
  return st;
}

template <typename S, template <class> class CellT>
Status forward_cell(const FwdArgs<S, float>& a, const Shape& sh, cudaStream_t st) {
  using C = CellT<float>;
  constexpr int NS = C::S;
  const int64_t B = sh.batch, Tn = sh.time, NH = sh.heads, DH = sh.head_dim;
  const int64_t BN = B * NH * DH;
  const int64_t tiles = (B + kTile - 1) / kTile;
  Plan plan;
  if (Status s = choose_path<S, C, false>(sh, &plan); s != Status::ok) return s;
  if (plan.path == Path::persistent) {
    const auto kernel = fwd_persistent<S, C>;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(plan.smem)) != cudaSuccess) {
      return launched("rnn::forward (shared memory attribute)");
    }
    kernel<<<dim3(static_cast<unsigned>(NH), static_cast<unsigned>(tiles)), kThreads, plan.smem, st>>>(a, sh);
    return launched("rnn::forward (persistent)");
  }
  if (plan.path == Path::cluster) {
    return launch_sliced<S, C, false, true>(a, sh, plan.slice, nullptr, st);
  }
  if (plan.path == Path::cooperative) {  // h exchange buffer [2][B][NH*DH], fp32
    float* hbuf = nullptr;
    if (Status s = device_alloc(&hbuf, 2 * BN, st); s != Status::ok) return s;
    const Status s = launch_sliced<S, C, false, false>(a, sh, plan.slice, hbuf, st);
    cudaFreeAsync(hbuf, st);
    return s;
  }
  float* tmp = nullptr;
  const float* prev;
  int64_t stride;
  if (a.hist) {
    stride = (Tn + 1) * BN;
  } else {
    if (Status s = device_alloc(&tmp, 2 * NS * BN, st); s != Status::ok) return s;
    stride = BN;
  }
  auto slot = [&](int64_t t) -> float* {
    return a.hist ? a.hist + t * BN : tmp + (t & 1) * NS * BN;
  };
  load_states<S><<<blocks_for(BN), kThreads, 0, st>>>(a.states0, slot(0), stride, NS, BN);
  for (int64_t t = 0; t < Tn; ++t) {
    fwd_step<S, C><<<blocks_for(BN), kThreads, 0, st>>>(a, sh, t, slot(t), slot(t + 1), stride);
  }
  prev = slot(Tn);
  store_states<S><<<blocks_for(BN), kThreads, 0, st>>>(prev, stride, a.last, NS, BN);
  if (tmp) cudaFreeAsync(tmp, st);
  return launched("rnn::forward (per step)");
}

template <typename S, template <class> class CellT>
Status backward_cell(const BwdArgs<S, float>& a, const Shape& sh, cudaStream_t st) {
  using C = CellT<float>;
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  const int64_t B = sh.batch, Tn = sh.time, NH = sh.heads, DH = sh.head_dim;
  const int64_t BN = B * NH * DH, rows = Tn * B;
  const int64_t tiles = (B + kTile - 1) / kTile;
  float* dS = nullptr;
  Plan plan;
  if (Status s = choose_path<S, C, true>(sh, &plan); s != Status::ok) return s;
  if (plan.path == Path::persistent) {
    const auto kernel = bwd_persistent<S, C>;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(plan.smem)) != cudaSuccess) {
      return launched("rnn::backward (shared memory attribute)");
    }
    kernel<<<dim3(static_cast<unsigned>(NH), static_cast<unsigned>(tiles)), kThreads, plan.smem, st>>>(a, sh);
  } else if (plan.path == Path::cluster) {
    if (Status s = launch_sliced<S, C, true, true>(a, sh, plan.slice, nullptr, st); s != Status::ok) {
      return s;
    }
  } else if (plan.path == Path::cooperative) {
    // partial R^T products [2][tiles][NH][P][16][DH], fp32
    float* pbuf = nullptr;
    if (Status s = device_alloc(&pbuf, 2 * tiles * NH * plan.slice.parts * kTile * DH, st);
        s != Status::ok) {
      return s;
    }
    const Status s = launch_sliced<S, C, true, false>(a, sh, plan.slice, pbuf, st);
    cudaFreeAsync(pbuf, st);
    if (s != Status::ok) return s;
  } else {
    if (Status s = device_alloc(&dS, NS * BN, st); s != Status::ok) return s;
    load_states<S><<<blocks_for(BN), kThreads, 0, st>>>(a.dlast, dS, BN, NS, BN);
    for (int64_t t = Tn - 1; t >= -1; --t) {
      bwd_step<S, C><<<blocks_for(BN), kThreads, 0, st>>>(a, sh, t, dS);
    }
    if (a.dstates0) store_states<S><<<blocks_for(BN), kThreads, 0, st>>>(dS, BN, a.dstates0, NS, BN);
  }
  const dim3 grid(static_cast<unsigned>((G * DH + 15) / 16), static_cast<unsigned>((DH + 15) / 16),
                  static_cast<unsigned>(NH));
  bwd_dR<S><<<grid, 256, 0, st>>>(a.work, a.hist, a.dR, rows, G, GB, NH, DH);
  bwd_db<S, C><<<blocks_for(GB * NH * DH), kThreads, 0, st>>>(a.work, a.db, rows, NH, DH);
  if (Tn > 0) bwd_dwx<S, C><<<blocks_for(B * Tn * G * NH * DH), kThreads, 0, st>>>(a.work, a.dWx, sh);
  if (dS) cudaFreeAsync(dS, st);
  return launched("rnn::backward");
}

}  // namespace

template <typename S, typename T>
Status forward(const FwdArgs<S, T>& a, const Shape& s, void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  if constexpr (std::is_same_v<S, double>) {
    return fail(Status::invalid_argument, "rnn::forward: float64 runs on the CPU only");
  } else {
    if (s.heads > 65535 || s.batch * s.heads * s.head_dim / kThreads >= (int64_t{1} << 31)) {
      return fail(Status::invalid_argument, "rnn::forward: shape exceeds the CUDA grid limits");
    }
    switch (s.cell) {
      case Cell::lstm: return forward_cell<S, Lstm>(a, s, st);
      case Cell::gru: return forward_cell<S, Gru>(a, s, st);
      case Cell::elman: return forward_cell<S, Elman>(a, s, st);
      case Cell::slstm: return forward_cell<S, Slstm>(a, s, st);
    }
    return fail(Status::invalid_argument, "rnn::forward: unknown cell");
  }
}

template <typename S, typename T>
Status backward(const BwdArgs<S, T>& a, const Shape& s, void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  if constexpr (std::is_same_v<S, double>) {
    return fail(Status::invalid_argument, "rnn::backward: float64 runs on the CPU only");
  } else {
    if (s.heads > 65535 || s.batch * s.heads * s.head_dim / kThreads >= (int64_t{1} << 31) ||
        s.batch * s.time * 4 * s.heads * s.head_dim / kThreads >= (int64_t{1} << 31)) {
      return fail(Status::invalid_argument, "rnn::backward: shape exceeds the CUDA grid limits");
    }
    switch (s.cell) {
      case Cell::lstm: return backward_cell<S, Lstm>(a, s, st);
      case Cell::gru: return backward_cell<S, Gru>(a, s, st);
      case Cell::elman: return backward_cell<S, Elman>(a, s, st);
      case Cell::slstm: return backward_cell<S, Slstm>(a, s, st);
    }
    return fail(Status::invalid_argument, "rnn::backward: unknown cell");
  }
}

namespace {
template <typename S, bool kBackward>
Status describe_as(const Shape& s, const char** name) {
  Plan plan;
  Status st = Status::invalid_argument;
  switch (s.cell) {
    case Cell::lstm: st = choose_path<S, Lstm<float>, kBackward>(s, &plan); break;
    case Cell::gru: st = choose_path<S, Gru<float>, kBackward>(s, &plan); break;
    case Cell::elman: st = choose_path<S, Elman<float>, kBackward>(s, &plan); break;
    case Cell::slstm: st = choose_path<S, Slstm<float>, kBackward>(s, &plan); break;
  }
  if (st == Status::ok) *name = path_name(plan.path);
  return st;
}
template <bool kBackward>
Status describe_dtype(DType dtype, const Shape& s, const char** name) {
  switch (dtype) {
    case DType::float32: return describe_as<float, kBackward>(s, name);
    case DType::float16: return describe_as<half_t, kBackward>(s, name);
    case DType::bfloat16: return describe_as<bf16_t, kBackward>(s, name);
  }
  return fail(Status::invalid_argument, "dtype must be float32, float16 or bfloat16");
}
}  // namespace

Status describe_path(DType dtype, const Shape& s, bool backward, const char** name) {
  return backward ? describe_dtype<true>(dtype, s, name) : describe_dtype<false>(dtype, s, name);
}

template Status forward(const FwdArgs<float, float>&, const Shape&, void*);
template Status forward(const FwdArgs<double, double>&, const Shape&, void*);
template Status forward(const FwdArgs<half_t, float>&, const Shape&, void*);
template Status forward(const FwdArgs<bf16_t, float>&, const Shape&, void*);
template Status backward(const BwdArgs<float, float>&, const Shape&, void*);
template Status backward(const BwdArgs<double, double>&, const Shape&, void*);
template Status backward(const BwdArgs<half_t, float>&, const Shape&, void*);
template Status backward(const BwdArgs<bf16_t, float>&, const Shape&, void*);

}  // namespace fastpaper::rnn::cuda
