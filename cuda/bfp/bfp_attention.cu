// CUDA kernels of decode attention over a packed BFP KV cache (fastpaper/bfp_attention.h).
//
// Split-K over the sequence (flash-decoding): the seq tokens are cut into S = decode_splits(seq)
// chunks. Pass 1 runs one warp per (batch, query head, chunk) — grid (batch * q_heads, S), 32
// threads. Lane l owns key channels l, l + 32, ... (< 8 per lane for head_dim <= 256), so for each
// token the warp reads the packed key row as one contiguous, coalesced segment, decodes its
// channels in registers with the shared codec math, forms the partial dot product with the
// pre-scaled query held in registers and reduces it with xor-shuffles; every lane then updates the
// same online-softmax state and its own value channels (packed values are decoded the same way).
// The chunk's (max, normaliser, weighted sum) go to the workspace. Pass 2 runs one warp per
// (batch, query head) and merges the S partial states (softmax_merge) into out. The math is in
// fastpaper/detail/bfp_attention.h, shared with the CPU kernel.
#include <cuda_runtime.h>

#include <string>

#include "bfp/bfp_attention_backends.h"
#include "core/cuda_launch.h"
#include "core/error.h"
#include "fastpaper/detail/bfp_attention.h"
#include "fastpaper/detail/float_convert.h"

namespace fastpaper::bfp::cuda {
namespace {

using namespace fastpaper::bfp::detail;
using fastpaper::detail::load_as_float;
using fastpaper::detail::store_from_float;

constexpr int kPerLane = 8;  // 256 / 32

struct Geometry {
  int64_t batch, q_heads, kv_heads, seq, rows_per_token, splits, chunk;
  int head_dim, v_dim, rep;
  int64_t k_mb, k_nb, v_mb, v_nb;
  float scale;
};

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <DType D, bool PackedV>
__global__ void decode_split_kernel(const void* __restrict__ q, const uint8_t* __restrict__ km,
                                    const uint8_t* __restrict__ ke, const uint8_t* __restrict__ vm,
                                    const uint8_t* __restrict__ ve, const void* __restrict__ v,
                                    const float* __restrict__ bias, Geometry g, Codec kc, Codec vc,
                                    float* __restrict__ ws) {
  const int lane = threadIdx.x;
  const int64_t bq = blockIdx.x;                 // b * q_heads + query head
  const int64_t b = bq / g.q_heads, hq = bq % g.q_heads;
  const int64_t group = b * g.kv_heads + hq / g.rep;
  const int64_t t0 = blockIdx.y * g.chunk;
  const int64_t t1 = t0 + g.chunk < g.seq ? t0 + g.chunk : g.seq;

  float qr[kPerLane], acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int c = lane + 32 * i;
    qr[i] = c < g.head_dim ? load_as_float<D>(q, bq * g.head_dim + c) * g.scale : 0.0f;
    acc[i] = 0.0f;
  }
  OnlineSoftmax st = softmax_init();
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t row = t * g.rows_per_token + group;
    const uint8_t* kmr = km + row * g.k_mb;
    const uint8_t* ker = ke + row * g.k_nb;
    float part = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int c = lane + 32 * i;
      if (c < g.head_dim) part += qr[i] * decode_at(kmr, ker, c, kc);
    }
    const float s = warp_sum(part) + (bias != nullptr ? bias[bq * g.seq + t] : 0.0f);
    float alpha, p;
    softmax_add(st, s, alpha, p);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int c = lane + 32 * i;
      if (c < g.v_dim) {
        const float x = PackedV ? decode_at(vm + row * g.v_mb, ve + row * g.v_nb, c, vc)
                                : load_as_float<D>(v, row * g.v_dim + c);
        acc[i] = acc[i] * alpha + p * x;
      }
    }
  }
  float* out = ws + (bq * g.splits + blockIdx.y) * (g.v_dim + 2);
  if (lane == 0) {
    out[0] = st.m;
    out[1] = st.l;
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int c = lane + 32 * i;
    if (c < g.v_dim) out[2 + c] = acc[i];
  }
}

template <DType D>
__global__ void decode_combine_kernel(const float* __restrict__ ws, Geometry g, void* __restrict__ out) {
  const int lane = threadIdx.x;
  const int64_t bq = blockIdx.x;
  OnlineSoftmax st = softmax_init();
  float acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) acc[i] = 0.0f;
  for (int64_t s = 0; s < g.splits; ++s) {
    const float* part = ws + (bq * g.splits + s) * (g.v_dim + 2);
    float fa, fb;
    softmax_merge(st, OnlineSoftmax{part[0], part[1]}, fa, fb);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int c = lane + 32 * i;
      if (c < g.v_dim) acc[i] = acc[i] * fa + part[2 + c] * fb;
    }
  }
  const float inv = 1.0f / st.l;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int c = lane + 32 * i;
    if (c < g.v_dim) store_from_float<D>(out, bq * g.v_dim + c, acc[i] * inv);
  }
}

int64_t row_bytes(int64_t n, const Codec& c) { return (n + c.block - 1) / c.block * c.block * c.field_bits / 8; }

template <DType D>
Status launch(const DecodeAttentionArgs& a, const DecodeCodecs& cd, cudaStream_t stream) {
  Geometry g;
  g.batch = a.batch;
  g.q_heads = a.q_heads;
  g.kv_heads = a.kv_heads;
  g.seq = a.seq;
  g.rows_per_token = a.batch * a.kv_heads;
  g.splits = decode_splits(a.seq);
  g.chunk = (a.seq + g.splits - 1) / g.splits;
  g.splits = (a.seq + g.chunk - 1) / g.chunk;  // no empty chunk
  g.head_dim = static_cast<int>(a.head_dim);
  g.v_dim = static_cast<int>(a.v_dim);
  g.rep = static_cast<int>(a.q_heads / a.kv_heads);
  g.k_mb = row_bytes(a.head_dim, cd.k);
  g.k_nb = (a.head_dim + cd.k.block - 1) / cd.k.block;
  g.v_mb = cd.packed_v ? row_bytes(a.v_dim, cd.v) : 0;
  g.v_nb = cd.packed_v ? (a.v_dim + cd.v.block - 1) / cd.v.block : 0;
  g.scale = a.scale;
  const int64_t bq = a.batch * a.q_heads;
  if (bq > 0x7fffffffLL) {
    return fastpaper::detail::fail(Status::invalid_argument, "batch * q_heads too large for the CUDA grid");
  }
  float* ws = static_cast<float*>(a.workspace);
  const dim3 grid1(static_cast<unsigned>(bq), static_cast<unsigned>(g.splits));
  if (cd.packed_v) {
    decode_split_kernel<D, true><<<grid1, 32, 0, stream>>>(a.q, a.k_mantissas, a.k_exponents, a.v_mantissas,
                                                         a.v_exponents, nullptr, a.bias, g, cd.k,
                                                         cd.v, ws);
  } else {
    decode_split_kernel<D, false><<<grid1, 32, 0, stream>>>(a.q, a.k_mantissas, a.k_exponents, nullptr,
                                                          nullptr, a.v, a.bias, g, cd.k, cd.k,
                                                          ws);
  }
  decode_combine_kernel<D><<<static_cast<unsigned>(bq), 32, 0, stream>>>(ws, g, a.out);
  return fastpaper::detail::launched("bfp::decode_attention");
}

}  // namespace

Status decode_attention(const DecodeAttentionArgs& a, const DecodeCodecs& c, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case DType::float32: return launch<DType::float32>(a, c, s);
    case DType::float16: return launch<DType::float16>(a, c, s);
    case DType::bfloat16: return launch<DType::bfloat16>(a, c, s);
  }
  return Status::invalid_argument;
}

}  // namespace fastpaper::bfp::cuda
