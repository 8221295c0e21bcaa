// CUDA kernels of the BFP codec: pack, unpack and fused quantize (pack + unpack).
//
// Work split: a row of padded_cols elements is cut into chunks of 8 consecutive elements; one
// thread owns one chunk, so a BFP block of B elements is owned by B/8 adjacent lanes of a warp
// (2 lanes for B = 16 ... 16 lanes for B = 128; B/8 divides 32, so a block never straddles warps).
// The lanes of a block reduce max|x| and the non-finite flag with xor-shuffles, each lane encodes
// its 8 elements with the shared codec math (fastpaper/detail/bfp_codec.h) and writes 4 bytes
// (W = 4) or 8 bytes (W = 8) of mantissas; the first lane writes the exponent byte. Consecutive
// threads touch consecutive 16/32-byte input chunks and 4/8-byte output words, so every global
// access is coalesced. Chunks are visited with a warp-uniform grid-stride loop so that whole warps
// take part in every shuffle. The kernels are memory-bound: one read of the input, one write of
// ~(W/8 + 1/B) bytes per element.
#include <cuda_runtime.h>

#include <string>

#include "bfp/bfp_backends.h"
#include "core/error.h"
#include "core/cuda_launch.h"
#include "fastpaper/detail/float_convert.h"

namespace fastpaper::bfp::cuda {
namespace {

using namespace fastpaper::bfp::detail;
using fastpaper::detail::load_as_float;
using fastpaper::detail::store_from_float;

constexpr int kChunk = 8;
constexpr int kThreads = 256;

struct Geometry {
  int64_t rows, cols, padded, chunks_per_row, total_chunks, blocks_per_row, row_bytes;
};

Geometry geometry(int64_t rows, int64_t cols, const Codec& c) {
  Geometry g;
  g.rows = rows;
  g.cols = cols;
  g.blocks_per_row = (cols + c.block - 1) / c.block;
  g.padded = g.blocks_per_row * c.block;
  g.chunks_per_row = g.padded / kChunk;
  g.total_chunks = rows * g.chunks_per_row;
  g.row_bytes = g.padded * c.field_bits / 8;
  return g;
}

// Elements of the chunk starting at col0 that lie inside the row (0 for a padding-only chunk).
__device__ __forceinline__ int valid_in_chunk(int64_t cols, int64_t col0) {
  const int64_t v = cols - col0;
  return v <= 0 ? 0 : (v >= kChunk ? kChunk : static_cast<int>(v));
}

// Loads the 8 elements of a chunk (zeros past the end of the row).
template <DType D, bool Vec>
__device__ __forceinline__ void load_chunk(const void* x, int64_t offset, int valid, float (&v)[kChunk]) {
  if constexpr (Vec) {
    if constexpr (D == DType::float32) {
      const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(x) + offset);
      const float4 a = __ldg(p), b = __ldg(p + 1);
      v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
      v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else {
      const uint4 a = __ldg(reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(x) + offset));
      const uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint16_t lo = static_cast<uint16_t>(w[i] & 0xffffu), hi = static_cast<uint16_t>(w[i] >> 16);
        if constexpr (D == DType::float16) {
          v[2 * i] = fastpaper::detail::half_to_float(lo);
          v[2 * i + 1] = fastpaper::detail::half_to_float(hi);
        } else {
          v[2 * i] = fastpaper::detail::bf16_to_float(lo);
          v[2 * i + 1] = fastpaper::detail::bf16_to_float(hi);
        }
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) v[i] = i < valid ? load_as_float<D>(x, offset + i) : 0.0f;
  }
}

template <DType D, bool Vec>
__device__ __forceinline__ void store_chunk(void* out, int64_t offset, int valid, const float (&v)[kChunk]) {
  if constexpr (Vec && D == DType::float32) {
    float4* p = reinterpret_cast<float4*>(static_cast<float*>(out) + offset);
    p[0] = make_float4(v[0], v[1], v[2], v[3]);
    p[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else if constexpr (Vec) {
    uint16_t h[kChunk];
#pragma unroll
    for (int i = 0; i < kChunk; ++i) {
      h[i] = D == DType::float16 ? fastpaper::detail::float_to_half(v[i])
                                 : fastpaper::detail::float_to_bf16(v[i]);
    }
    uint4 w;
    w.x = h[0] | (uint32_t(h[1]) << 16); w.y = h[2] | (uint32_t(h[3]) << 16);
    w.z = h[4] | (uint32_t(h[5]) << 16); w.w = h[6] | (uint32_t(h[7]) << 16);
    *reinterpret_cast<uint4*>(static_cast<uint16_t*>(out) + offset) = w;
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) {
      if (i < valid) store_from_float<D>(out, offset + i, v[i]);
    }
  }
}

// The lanes that own one BFP block agree on its exponent byte; fields receives the 8 encodings.
__device__ __forceinline__ uint8_t encode_chunk(const float (&v)[kChunk], const Codec& c,
                                                int64_t first_index, uint32_t (&fields)[kChunk]) {
  float amax = 0.0f;
  unsigned nonfinite = 0;
#pragma unroll
  for (int i = 0; i < kChunk; ++i) {
    amax = fmaxf(amax, fabsf(v[i]));
    nonfinite |= is_nonfinite(v[i]) ? 1u : 0u;
  }
  for (int lanes = c.block / kChunk / 2; lanes > 0; lanes >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, lanes));
    nonfinite |= __shfl_xor_sync(0xffffffffu, nonfinite, lanes);
  }
  if (nonfinite) {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) fields[i] = 0;
    return kNonFiniteByte;
  }
  const int e = choose_exponent(amax, c);
  const BlockScale s = encode_scale(e, c);
#pragma unroll
  for (int i = 0; i < kChunk; ++i) fields[i] = encode_element(v[i], s, c, static_cast<uint64_t>(first_index + i));
  return exponent_byte(e);
}

template <DType D, bool Vec, bool AlignedOut>
__global__ void pack_kernel(const void* __restrict__ x, Geometry g, Codec c,
                            uint8_t* __restrict__ mantissas, uint8_t* __restrict__ exponents) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int lanes_per_block = c.block / kChunk;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x - lane;
       base < g.total_chunks; base += stride) {
    const int64_t chunk = base + lane;
    const bool active = chunk < g.total_chunks;
    const int64_t r = active ? chunk / g.chunks_per_row : 0;
    const int64_t col0 = active ? (chunk % g.chunks_per_row) * kChunk : 0;
    // valid <= 0: an inactive lane or a chunk made only of row padding (loads nothing, zeros)
    const int valid = active ? valid_in_chunk(g.cols, col0) : 0;
    float v[kChunk];
    if (Vec && valid == kChunk) load_chunk<D, true>(x, r * g.cols + col0, valid, v);
    else load_chunk<D, false>(x, r * g.cols + col0, valid, v);
    uint32_t fields[kChunk];
    const uint8_t ebyte = encode_chunk(v, c, r * g.cols + col0, fields);
    if (!active) continue;
    uint8_t* dst = mantissas + r * g.row_bytes + col0 * c.field_bits / 8;
    if (c.field_bits == 4) {
      uint32_t word = 0;
#pragma unroll
      for (int i = 0; i < kChunk; ++i) word |= fields[i] << (4 * i);
      if constexpr (AlignedOut) {
        *reinterpret_cast<uint32_t*>(dst) = word;
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) dst[i] = static_cast<uint8_t>(word >> (8 * i));
      }
    } else {
      if constexpr (AlignedOut) {
        uint2 w;
        w.x = fields[0] | (fields[1] << 8) | (fields[2] << 16) | (fields[3] << 24);
        w.y = fields[4] | (fields[5] << 8) | (fields[6] << 16) | (fields[7] << 24);
        *reinterpret_cast<uint2*>(dst) = w;
      } else {
#pragma unroll
        for (int i = 0; i < kChunk; ++i) dst[i] = static_cast<uint8_t>(fields[i]);
      }
    }
    if (lane % lanes_per_block == 0) exponents[r * g.blocks_per_row + col0 / c.block] = ebyte;
  }
}

template <DType D, bool Vec, bool AlignedIn>
__global__ void unpack_kernel(const uint8_t* __restrict__ mantissas, const uint8_t* __restrict__ exponents,
                              Geometry g, Codec c, void* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t chunk = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       chunk < g.total_chunks; chunk += stride) {
    const int64_t r = chunk / g.chunks_per_row;
    const int64_t col0 = (chunk % g.chunks_per_row) * kChunk;
    if (col0 >= g.cols) continue;  // a chunk made only of padding
    const int valid = valid_in_chunk(g.cols, col0);
    const uint8_t ebyte = __ldg(exponents + r * g.blocks_per_row + col0 / c.block);
    const uint8_t* src = mantissas + r * g.row_bytes + col0 * c.field_bits / 8;
    uint32_t lo, hi = 0;
    if constexpr (AlignedIn) {
      if (c.field_bits == 4) {
        lo = __ldg(reinterpret_cast<const uint32_t*>(src));
      } else {
        const uint2 w = __ldg(reinterpret_cast<const uint2*>(src));
        lo = w.x;
        hi = w.y;
      }
    } else {
      const int nbytes = c.field_bits == 4 ? 4 : 8;
      lo = 0;
      for (int i = 0; i < nbytes; ++i) {
        const uint32_t byte = src[i];
        if (i < 4) lo |= byte << (8 * i); else hi |= byte << (8 * (i - 4));
      }
    }
    float v[kChunk];
#pragma unroll
    for (int i = 0; i < kChunk; ++i) {
      const uint32_t field = c.field_bits == 4 ? (lo >> (4 * i)) & 0xfu
                                               : ((i < 4 ? lo : hi) >> (8 * (i & 3))) & 0xffu;
      v[i] = decode_element(field, ebyte, c);
    }
    if (Vec && valid == kChunk) {
      store_chunk<D, Vec>(out, r * g.cols + col0, valid, v);
    } else {
      store_chunk<D, false>(out, r * g.cols + col0, valid, v);
    }
  }
}

template <DType D, DType O, bool Vec>
__global__ void quantize_kernel(const void* __restrict__ x, Geometry g, Codec c, void* out) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x - lane;
       base < g.total_chunks; base += stride) {
    const int64_t chunk = base + lane;
    const bool active = chunk < g.total_chunks;
    const int64_t r = active ? chunk / g.chunks_per_row : 0;
    const int64_t col0 = active ? (chunk % g.chunks_per_row) * kChunk : 0;
    // valid <= 0: an inactive lane or a chunk made only of row padding (loads nothing, zeros)
    const int valid = active ? valid_in_chunk(g.cols, col0) : 0;
    float v[kChunk];
    if (Vec && valid == kChunk) load_chunk<D, true>(x, r * g.cols + col0, valid, v);
    else load_chunk<D, false>(x, r * g.cols + col0, valid, v);
    uint32_t fields[kChunk];
    const uint8_t ebyte = encode_chunk(v, c, r * g.cols + col0, fields);
    if (!active || valid == 0) continue;
#pragma unroll
    for (int i = 0; i < kChunk; ++i) v[i] = decode_element(fields[i], ebyte, c);
    if (Vec && valid == kChunk) store_chunk<O, true>(out, r * g.cols + col0, valid, v);
    else store_chunk<O, false>(out, r * g.cols + col0, valid, v);
  }
}

bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

int grid_for(int64_t chunks) {
  const int64_t blocks = (chunks + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < (1 << 20) ? blocks : (1 << 20));
}

using fastpaper::detail::launched;

int elem_bytes(DType d) { return d == DType::float32 ? 4 : 2; }

// The 8-wide vector path needs whole chunks inside each row and 16-byte aligned rows.
bool vector_ok(const void* p, DType d, int64_t cols) {
  return cols % kChunk == 0 && aligned(p, 16) && elem_bytes(d) * kChunk % 16 == 0;
}

template <DType D>
void launch_pack(const void* x, const Geometry& g, const Codec& c, uint8_t* m, uint8_t* e, cudaStream_t s) {
  const bool vec = vector_ok(x, D, g.cols);
  const bool al = aligned(m, c.field_bits == 4 ? 4 : 8);
  const int grid = grid_for(g.total_chunks);
  if (vec && al) pack_kernel<D, true, true><<<grid, kThreads, 0, s>>>(x, g, c, m, e);
  else if (vec) pack_kernel<D, true, false><<<grid, kThreads, 0, s>>>(x, g, c, m, e);
  else if (al) pack_kernel<D, false, true><<<grid, kThreads, 0, s>>>(x, g, c, m, e);
  else pack_kernel<D, false, false><<<grid, kThreads, 0, s>>>(x, g, c, m, e);
}

template <DType D>
void launch_unpack(const uint8_t* m, const uint8_t* e, const Geometry& g, const Codec& c, void* out, cudaStream_t s) {
  const bool vec = vector_ok(out, D, g.cols);
  const bool al = aligned(m, c.field_bits == 4 ? 4 : 8);
  const int grid = grid_for(g.total_chunks);
  if (vec && al) unpack_kernel<D, true, true><<<grid, kThreads, 0, s>>>(m, e, g, c, out);
  else if (vec) unpack_kernel<D, true, false><<<grid, kThreads, 0, s>>>(m, e, g, c, out);
  else if (al) unpack_kernel<D, false, true><<<grid, kThreads, 0, s>>>(m, e, g, c, out);
  else unpack_kernel<D, false, false><<<grid, kThreads, 0, s>>>(m, e, g, c, out);
}

template <DType D, DType O>
void launch_quantize(const void* x, const Geometry& g, const Codec& c, void* out, cudaStream_t s) {
  const bool vec = vector_ok(x, D, g.cols) && vector_ok(out, O, g.cols);
  const int grid = grid_for(g.total_chunks);
  if (vec) quantize_kernel<D, O, true><<<grid, kThreads, 0, s>>>(x, g, c, out);
  else quantize_kernel<D, O, false><<<grid, kThreads, 0, s>>>(x, g, c, out);
}

template <DType D>
void launch_quantize_in(const void* x, const Geometry& g, const Codec& c, void* out, DType o, cudaStream_t s) {
  switch (o) {
    case DType::float32: launch_quantize<D, DType::float32>(x, g, c, out, s); break;
    case DType::float16: launch_quantize<D, DType::float16>(x, g, c, out, s); break;
    case DType::bfloat16: launch_quantize<D, DType::bfloat16>(x, g, c, out, s); break;
  }
}

}  // namespace

Status pack(const void* x, DType dtype, int64_t rows, int64_t cols, const Codec& c,
            uint8_t* mantissas, uint8_t* exponents, void* stream) {
  const Geometry g = geometry(rows, cols, c);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::float32: launch_pack<DType::float32>(x, g, c, mantissas, exponents, s); break;
    case DType::float16: launch_pack<DType::float16>(x, g, c, mantissas, exponents, s); break;
    case DType::bfloat16: launch_pack<DType::bfloat16>(x, g, c, mantissas, exponents, s); break;
  }
  return launched("bfp::pack");
}

Status unpack(const uint8_t* mantissas, const uint8_t* exponents, int64_t rows, int64_t cols,
              const Codec& c, void* out, DType out_dtype, void* stream) {
  const Geometry g = geometry(rows, cols, c);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (out_dtype) {
    case DType::float32: launch_unpack<DType::float32>(mantissas, exponents, g, c, out, s); break;
    case DType::float16: launch_unpack<DType::float16>(mantissas, exponents, g, c, out, s); break;
    case DType::bfloat16: launch_unpack<DType::bfloat16>(mantissas, exponents, g, c, out, s); break;
  }
  return launched("bfp::unpack");
}

Status quantize(const void* x, DType dtype, int64_t rows, int64_t cols, const Codec& c, void* out,
                DType out_dtype, void* stream) {
  const Geometry g = geometry(rows, cols, c);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::float32: launch_quantize_in<DType::float32>(x, g, c, out, out_dtype, s); break;
    case DType::float16: launch_quantize_in<DType::float16>(x, g, c, out, out_dtype, s); break;
    case DType::bfloat16: launch_quantize_in<DType::bfloat16>(x, g, c, out, out_dtype, s); break;
  }
  return launched("bfp::quantize");
}

}  // namespace fastpaper::bfp::cuda
