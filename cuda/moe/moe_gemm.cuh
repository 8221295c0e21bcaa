// Grouped GEMM tile kernels of the MoE MLP (cuda/moe/moe_cuda.cu). One kernel template computes
// one (expert, row tile, column tile) output tile C = A B of a "problem" (Prob) that says where the
// tile's expert and rows come from (a device-side tile table or blockIdx.z), how the operands are
// addressed (gathered token rows, expert weights, transposed views) and what the epilogue does
// with the finished fp32/fp64 tile (bias + GELU, score weighting, gradient bookkeeping). The
// per-expert row counts are read on the device, so the launch needs no host synchronization.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "fastpaper/detail/moe_math.h"

namespace fastpaper::moe::cuda {

using detail::bf16_bits;
using detail::half_bits;
using detail::Io;

// Storage type -> the element type staged in shared memory and fed to the MMA.
template <typename S> struct Mma;
template <> struct Mma<bf16_bits> {
  using type = __nv_bfloat16;
  static __device__ __forceinline__ type cvt(bf16_bits v) { return __ushort_as_bfloat16(v.v); }
  static __device__ __forceinline__ type zero() { return __ushort_as_bfloat16(0); }
};
template <> struct Mma<half_bits> {
  using type = __half;
  static __device__ __forceinline__ type cvt(half_bits v) { return __ushort_as_half(v.v); }
  static __device__ __forceinline__ type zero() { return __ushort_as_half(0); }
};
template <> struct Mma<float> {  // TF32 tensor cores (inputs rounded to tf32 in the fragments)
  using type = float;
  static __device__ __forceinline__ float cvt(float v) { return v; }
  static __device__ __forceinline__ float zero() { return 0.0f; }
};
template <> struct Mma<double> {  // float64: FMA path (simt_gemm_kernel)
  using type = double;
  static __device__ __forceinline__ double cvt(double v) { return v; }
  static __device__ __forceinline__ double zero() { return 0.0; }
};

constexpr int kTcThreads = 128;  // 4 warps, 2 x 2, each owning a 32 x 32 sub-tile
constexpr int kTcBM = 64, kTcBN = 64, kTcBK = 32;

// Load a BM x BK tile of A and a BK x BN tile of B into shared memory, iterating so that
// consecutive threads read consecutive addresses of the operand's contiguous dimension.
template <typename S, int BM, int BN, int BK, int THREADS, class Prob>
__device__ __forceinline__ void stage_tiles(const Prob& prob, int e, int m0, int M, int n0, int N,
                                            int k0, int K, typename Mma<S>::type (*As)[BK + 8],
                                            typename Mma<S>::type (*Bs)[BN + 8]) {
  const auto zero = Mma<S>::zero();
  for (int i = threadIdx.x; i < BM * BK; i += THREADS) {
    int r, c;
    if (Prob::kAMContig) { c = i / BM; r = i % BM; } else { r = i / BK; c = i % BK; }
    const int m = m0 + r, k = k0 + c;
    As[r][c] = (m < M && k < K) ? Mma<S>::cvt(prob.a(e, m, k)) : zero;
  }
  for (int i = threadIdx.x; i < BK * BN; i += THREADS) {
    int r, c;
    if (Prob::kBKContig) { c = i / BK; r = i % BK; } else { r = i / BN; c = i % BN; }
    const int k = k0 + r, n = n0 + c;
    Bs[r][c] = (k < K && n < N) ? Mma<S>::cvt(prob.b(e, k, n)) : zero;
  }
}

// Tensor-core tile kernel (bf16/fp16 via WMMA 16x16x16, fp32 via WMMA TF32 16x16x8; fp32
// accumulate). Grid: x = row tile (Prob::tile maps it to an expert and its first row), y = column
// tile of BN, z = expert for problems whose rows are a fixed dimension (weight gradients).
// 4 warps in a 2 x 2 layout each accumulate a 32 x 32 sub-tile as 2 x 2 fragments; the K loop
// stages BM x BK and BK x BN operand tiles in shared memory; the finished tile goes through shared
// memory to Prob::epilogue, which all threads of the block run together.
template <typename S, class Prob>
__global__ void __launch_bounds__(kTcThreads) tc_gemm_kernel(Prob prob) {
  using namespace nvcuda;
  using MT = typename Mma<S>::type;
  constexpr int BM = kTcBM, BN = kTcBN, BK = kTcBK;
  constexpr bool kTf32 = std::is_same<S, float>::value;
  constexpr int WK = kTf32 ? 8 : 16;
  using AType = typename std::conditional<kTf32, wmma::precision::tf32, MT>::type;
  __shared__ __align__(32) MT As[BM][BK + 8];
  __shared__ __align__(32) MT Bs[BK][BN + 8];
  __shared__ __align__(32) float Cs[BM][BN + 4];

  int e, m0, M, K;
  if (!prob.template tile<BM>(blockIdx.x, blockIdx.z, &e, &m0, &M, &K)) return;
  const int n0 = blockIdx.y * BN, N = prob.n_cols();
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;

  wmma::fragment<wmma::accumulator, 16, 16, WK, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int k0 = 0; k0 < K; k0 += BK) {
    stage_tiles<S, BM, BN, BK, kTcThreads>(prob, e, m0, M, n0, N, k0, K, As, Bs);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += WK) {
      wmma::fragment<wmma::matrix_a, 16, 16, WK, AType, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, WK, AType, wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(fa[i], &As[wm * 32 + i * 16][kk], BK + 8);
        wmma::load_matrix_sync(fb[i], &Bs[kk][wn * 32 + i * 16], BN + 8);
        if constexpr (kTf32) {
#pragma unroll
          for (int t = 0; t < fa[i].num_elements; ++t) fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);
#pragma unroll
          for (int t = 0; t < fb[i].num_elements; ++t) fb[i].x[t] = wmma::__float_to_tf32(fb[i].x[t]);
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&Cs[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j], BN + 4,
                              wmma::mem_row_major);
  __syncthreads();
  prob.template epilogue<BM, BN>(e, m0, M, n0, &Cs[0][0], BN + 4);
}

constexpr int kSimtThreads = 128;  // 16 x 8 threads, each a 2 x 4 micro-tile of a 32 x 32 tile
constexpr int kSimtBM = 32, kSimtBN = 32, kSimtBK = 16;

// float64 tile kernel (no tensor cores for float64 here): same grid, tiles and Prob interface as
// tc_gemm_kernel with 32 x 32 tiles; each thread accumulates a 2 x 4 micro-tile with FMAs in
// float64, then the tile goes through shared memory to the epilogue.
template <class Prob>
__global__ void __launch_bounds__(kSimtThreads) simt_gemm_kernel(Prob prob) {
  constexpr int BM = kSimtBM, BN = kSimtBN, BK = kSimtBK;
  __shared__ double As[BM][BK + 8];
  __shared__ double Bs[BK][BN + 8];
  __shared__ double Cs[BM][BN + 1];
  int e, m0, M, K;
  if (!prob.template tile<BM>(blockIdx.x, blockIdx.z, &e, &m0, &M, &K)) return;
  const int n0 = blockIdx.y * BN, N = prob.n_cols();
  const int tr = threadIdx.x / 8, tc = threadIdx.x % 8;  // rows 2 tr, 2 tr + 1; cols tc + 8 j
  double acc[2][4] = {};
  for (int k0 = 0; k0 < K; k0 += BK) {
    stage_tiles<double, BM, BN, BK, kSimtThreads>(prob, e, m0, M, n0, N, k0, K, As, Bs);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fma(As[2 * tr + i][kk], Bs[kk][tc + 8 * j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) Cs[2 * tr + i][tc + 8 * j] = acc[i][j];
  __syncthreads();
  prob.template epilogue<BM, BN>(e, m0, M, n0, &Cs[0][0], BN + 1);
}

}  // namespace fastpaper::moe::cuda
