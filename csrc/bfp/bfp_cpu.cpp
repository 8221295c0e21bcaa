// CPU kernels of the BFP codec.
//
// Work split: the rows x blocks_per_row blocks are cut into one contiguous range per OpenMP
// thread; a thread walks its blocks in memory order. Each block is three short loops over its B
// elements (widen + max|x|, encode, pack nibbles/bytes) with every format choice hoisted into
// template parameters, so the compiler vectorizes them without per-element branches. The range
// functions are compiled twice (x86-64-v3 with AVX2, and the baseline) and picked at load time
// (GCC/Clang target_clones). The math is in fastpaper/detail/bfp_codec.h, shared with CUDA.
#include <algorithm>
#include <cstring>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "bfp/bfp_backends.h"
#include "fastpaper/detail/float_convert.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(FASTPAPER_NO_CLONES)
#define FP_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FP_CPU_CLONES
#endif

// The block loops must be inlined into each target clone to be compiled for its instruction set.
#if defined(__GNUC__)
#define FP_INLINE inline __attribute__((always_inline))
#else
#define FP_INLINE inline
#endif

namespace fastpaper::bfp::cpu {
namespace {

using namespace fastpaper::bfp::detail;
using fastpaper::detail::bits_float;
using fastpaper::detail::float_bits;
using fastpaper::detail::load_as_float;
using fastpaper::detail::store_exact;
using fastpaper::detail::store_from_float;

constexpr int kMaxBlock = 128;
constexpr int64_t kParallelThreshold = 1 << 16;  // elements; below this threads cost more than they save

// Calls f(first_block, end_block) on contiguous ranges covering [0, n_blocks), one per thread.
template <typename F>
void for_block_ranges(int64_t n_blocks, int64_t elements, F&& f) {
#if defined(_OPENMP)
  if (elements >= kParallelThreshold && omp_get_max_threads() > 1) {
#pragma omp parallel
    {
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      f(n_blocks * t / nt, n_blocks * (t + 1) / nt);
    }
    return;
  }
#endif
  f(0, n_blocks);
}

struct Geometry {
  int64_t rows, cols, blocks_per_row, row_bytes;
};

// Walks blocks [b0, b1) in memory order, tracking (row, first column) without a 64-bit division
// per block (which would cost as much as encoding a dozen elements).
struct BlockCursor {
  int64_t blk, r, col0;
  const int64_t blocks_per_row, block;
  BlockCursor(int64_t b0, int64_t blocks_per_row_, int64_t block_)
      : blk(b0), r(b0 / blocks_per_row_), col0((b0 % blocks_per_row_) * block_),
        blocks_per_row(blocks_per_row_), block(block_) {}
  void next() {
    ++blk;
    col0 += block;
    if (col0 == blocks_per_row * block) {
      col0 = 0;
      ++r;
    }
  }
};

Geometry geometry(int64_t rows, int64_t cols, const Codec& c) {
  const int64_t nb = (cols + c.block - 1) / c.block;
  return Geometry{rows, cols, nb, nb * c.block * c.field_bits / 8};
}

// max |x| over n elements, on the bit patterns: for non-negative floats integer order is float
// order, NaN and Inf sort above every finite value, and an integer max reduction vectorizes.
template <DType D>
FP_INLINE uint32_t block_amax_bits(const void* x, int64_t offset, int n) {
  if constexpr (D == DType::bfloat16) {
    // bfloat16 is the top half of a float32: reduce 16-bit lanes, twice as many per vector
    const uint16_t* h = static_cast<const uint16_t*>(x) + offset;
    uint16_t amax = 0;
    for (int i = 0; i < n; ++i) {
      const uint16_t a = static_cast<uint16_t>(h[i] & 0x7fffu);
      amax = a > amax ? a : amax;
    }
    return static_cast<uint32_t>(amax) << 16;
  }
  uint32_t amax_bits = 0;
  for (int i = 0; i < n; ++i) {
    const uint32_t a = float_bits(load_as_float<D>(x, offset + i)) & 0x7fffffffu;
    amax_bits = a > amax_bits ? a : amax_bits;
  }
  return amax_bits;
}

// Encodes one full block of B elements at x[offset] into mantissa bytes dst and returns its
// exponent byte. Stochastic/Twos/W are compile-time, so the loop has no per-element branches.
template <DType D, int W, bool Stochastic, bool Twos>
FP_INLINE uint8_t pack_block(const void* x, int64_t offset, const Codec c, uint64_t first_index,
                             uint8_t* dst) {
  const int block = c.block;
  const uint32_t amax_bits = block_amax_bits<D>(x, offset, block);
  if (amax_bits >= 0x7f800000u) {
    std::memset(dst, 0, static_cast<size_t>(block * W / 8));
    return kNonFiniteByte;
  }
  const int e = choose_exponent(bits_float(amax_bits), c);
  const BlockScale s = encode_scale(e, c);
  const int qmax = c.qmax;
  const uint64_t seed = c.seed;
  if constexpr (W == 4) {
    // Encode to one byte per element (a contiguous loop that vectorizes), then merge byte pairs:
    // with lo, hi < 16 in the 16-bit word w = lo | hi << 8, the low byte of w | w >> 4 is
    // lo | hi << 4.
    alignas(64) uint8_t fields[kMaxBlock];
    for (int i = 0; i < block; ++i) {
      fields[i] = static_cast<uint8_t>(encode_element<Stochastic, Twos>(
          load_as_float<D>(x, offset + i), s, qmax, W, seed, first_index + i));
    }
    for (int i = 0; i < block / 2; ++i) {
      uint16_t w;
      std::memcpy(&w, fields + 2 * i, sizeof w);
      dst[i] = static_cast<uint8_t>(w | (w >> 4));
    }
  } else {
    for (int i = 0; i < block; ++i) {
      dst[i] = static_cast<uint8_t>(encode_element<Stochastic, Twos>(
          load_as_float<D>(x, offset + i), s, qmax, W, seed, first_index + i));
    }
  }
  return exponent_byte(e);
}

// quantize of one full block: encode and decode fused per element, written to out[offset...].
template <DType D, DType O, bool Stochastic, bool Twos>
FP_INLINE void quantize_block(const void* x, int64_t offset, const Codec c, uint64_t first_index,
                              void* out, int64_t out_offset) {
  const int block = c.block;
  const uint32_t amax_bits = block_amax_bits<D>(x, offset, block);
  if (amax_bits >= 0x7f800000u) {
    for (int i = 0; i < block; ++i) store_exact<O>(out, out_offset + i, nan_value());
    return;
  }
  const int e = choose_exponent(bits_float(amax_bits), c);
  const BlockScale s = encode_scale(e, c);
  const BlockScale d = decode_scale(exponent_byte(e), c);
  const int qmax = c.qmax, field_bits = c.field_bits;
  const uint64_t seed = c.seed;
  for (int i = 0; i < block; ++i) {
    const uint32_t f = encode_element<Stochastic, Twos>(load_as_float<D>(x, offset + i), s, qmax,
                                                        field_bits, seed, first_index + i);
    store_exact<O>(out, out_offset + i, decode_element<Twos>(f, d, field_bits));
  }
}

// Decodes n elements of one block from mantissa bytes src into out[offset...].
template <DType O, int W, bool Twos>
FP_INLINE void unpack_block(const uint8_t* src, uint8_t ebyte, int n, const Codec c, void* out,
                            int64_t offset) {
  if (ebyte == kNonFiniteByte) {
    for (int i = 0; i < n; ++i) store_exact<O>(out, offset + i, nan_value());
    return;
  }
  const BlockScale s = decode_scale(ebyte, c);
  if constexpr (W == 4) {
    for (int i = 0; i < n / 2; ++i) {
      const uint32_t byte = src[i];
      store_exact<O>(out, offset + 2 * i, decode_element<Twos>(byte & 0xfu, s, W));
      store_exact<O>(out, offset + 2 * i + 1, decode_element<Twos>(byte >> 4, s, W));
    }
    if (n & 1) store_exact<O>(out, offset + n - 1, decode_element<Twos>(src[n / 2] & 0xfu, s, W));
  } else {
    for (int i = 0; i < n; ++i) store_exact<O>(out, offset + i, decode_element<Twos>(src[i], s, W));
  }
}

// The last block of a row may be partial: widen it into a zero-padded float buffer and encode
// that, so that the hot loops above only ever see full blocks.
template <DType D>
FP_INLINE void widen_partial(const void* x, int64_t offset, int n, int block, float* buf) {
  for (int i = 0; i < n; ++i) buf[i] = load_as_float<D>(x, offset + i);
  for (int i = n; i < block; ++i) buf[i] = 0.0f;
}

template <DType D, int W, bool Stochastic, bool Twos>
FP_INLINE void pack_range(const void* x, const Geometry g, const Codec c, uint8_t* mantissas,
                          uint8_t* exponents, int64_t b0, int64_t b1) {
  alignas(64) float buf[kMaxBlock];
  for (BlockCursor cur(b0, g.blocks_per_row, c.block); cur.blk < b1; cur.next()) {
    const int64_t blk = cur.blk, r = cur.r, col0 = cur.col0;
    const int n = static_cast<int>(std::min<int64_t>(c.block, g.cols - col0));
    const int64_t o = r * g.cols + col0;
    uint8_t* dst = mantissas + r * g.row_bytes + col0 * W / 8;
    if (n == c.block) {
      exponents[blk] = pack_block<D, W, Stochastic, Twos>(x, o, c, static_cast<uint64_t>(o), dst);
    } else {
      widen_partial<D>(x, o, n, c.block, buf);
      exponents[blk] = pack_block<DType::float32, W, Stochastic, Twos>(buf, 0, c, static_cast<uint64_t>(o), dst);
    }
  }
}

template <DType O, int W, bool Twos>
FP_INLINE void unpack_range(const uint8_t* mantissas, const uint8_t* exponents, const Geometry g,
                            const Codec c, void* out, int64_t b0, int64_t b1) {
  for (BlockCursor cur(b0, g.blocks_per_row, c.block); cur.blk < b1; cur.next()) {
    const int64_t blk = cur.blk, r = cur.r, col0 = cur.col0;
    const int n = static_cast<int>(std::min<int64_t>(c.block, g.cols - col0));
    unpack_block<O, W, Twos>(mantissas + r * g.row_bytes + col0 * W / 8, exponents[blk], n, c, out,
                             r * g.cols + col0);
  }
}

template <DType D, DType O, bool Stochastic, bool Twos>
FP_INLINE void quantize_range(const void* x, const Geometry g, const Codec c, void* out, int64_t b0,
                              int64_t b1) {
  alignas(64) float buf[kMaxBlock];
  alignas(64) float res[kMaxBlock];
  for (BlockCursor cur(b0, g.blocks_per_row, c.block); cur.blk < b1; cur.next()) {
    const int64_t r = cur.r, col0 = cur.col0;
    const int n = static_cast<int>(std::min<int64_t>(c.block, g.cols - col0));
    const int64_t o = r * g.cols + col0;
    if (n == c.block) {
      quantize_block<D, O, Stochastic, Twos>(x, o, c, static_cast<uint64_t>(o), out, o);
    } else {
      widen_partial<D>(x, o, n, c.block, buf);
      quantize_block<DType::float32, DType::float32, Stochastic, Twos>(buf, 0, c, static_cast<uint64_t>(o), res, 0);
      for (int i = 0; i < n; ++i) store_exact<O>(out, o + i, res[i]);
    }
  }
}

// ---- runtime dispatch onto the template instances (each compiled once per target clone) ----

#define FP_FOR_DTYPES(X) X(float32) X(float16) X(bfloat16)

#define FP_DEFINE_PACK(DT)                                                                        \
  FP_CPU_CLONES void pack_##DT(const void* x, const Geometry g, const Codec c, uint8_t* m,        \
                               uint8_t* e, int64_t b0, int64_t b1) {                              \
    if (c.twos) {                                                                                 \
      if (c.stochastic) pack_range<DType::DT, 8, true, true>(x, g, c, m, e, b0, b1);              \
      else pack_range<DType::DT, 8, false, true>(x, g, c, m, e, b0, b1);                          \
    } else if (c.field_bits == 4) {                                                               \
      if (c.stochastic) pack_range<DType::DT, 4, true, false>(x, g, c, m, e, b0, b1);             \
      else pack_range<DType::DT, 4, false, false>(x, g, c, m, e, b0, b1);                         \
    } else {                                                                                      \
      if (c.stochastic) pack_range<DType::DT, 8, true, false>(x, g, c, m, e, b0, b1);             \
      else pack_range<DType::DT, 8, false, false>(x, g, c, m, e, b0, b1);                         \
    }                                                                                             \
  }
FP_FOR_DTYPES(FP_DEFINE_PACK)

#define FP_DEFINE_UNPACK(DT)                                                                      \
  FP_CPU_CLONES void unpack_##DT(const uint8_t* m, const uint8_t* e, const Geometry g,            \
                                 const Codec c, void* out, int64_t b0, int64_t b1) {              \
    if (c.twos) unpack_range<DType::DT, 8, true>(m, e, g, c, out, b0, b1);                        \
    else if (c.field_bits == 4) unpack_range<DType::DT, 4, false>(m, e, g, c, out, b0, b1);       \
    else unpack_range<DType::DT, 8, false>(m, e, g, c, out, b0, b1);                              \
  }
FP_FOR_DTYPES(FP_DEFINE_UNPACK)

template <DType D, DType O>
FP_INLINE void quantize_any(const void* x, const Geometry& g, const Codec& c, void* out, int64_t b0,
                         int64_t b1) {
  if (c.stochastic) {
    if (c.twos) quantize_range<D, O, true, true>(x, g, c, out, b0, b1);
    else quantize_range<D, O, true, false>(x, g, c, out, b0, b1);
  } else {
    if (c.twos) quantize_range<D, O, false, true>(x, g, c, out, b0, b1);
    else quantize_range<D, O, false, false>(x, g, c, out, b0, b1);
  }
}

#define FP_DEFINE_QUANTIZE(DT)                                                                    \
  FP_CPU_CLONES void quantize_##DT(const void* x, const Geometry g, const Codec c, void* out,     \
                                   DType o, int64_t b0, int64_t b1) {                             \
    switch (o) {                                                                                  \
      case DType::float32: quantize_any<DType::DT, DType::float32>(x, g, c, out, b0, b1); break;  \
      case DType::float16: quantize_any<DType::DT, DType::float16>(x, g, c, out, b0, b1); break;  \
      case DType::bfloat16: quantize_any<DType::DT, DType::bfloat16>(x, g, c, out, b0, b1); break;\
    }                                                                                             \
  }
FP_FOR_DTYPES(FP_DEFINE_QUANTIZE)

}  // namespace

void pack(const void* x, DType dtype, int64_t rows, int64_t cols, const Codec& c,
          uint8_t* mantissas, uint8_t* exponents) {
  const Geometry g = geometry(rows, cols, c);
  for_block_ranges(rows * g.blocks_per_row, rows * cols, [&](int64_t b0, int64_t b1) {
    switch (dtype) {
      case DType::float32: pack_float32(x, g, c, mantissas, exponents, b0, b1); break;
      case DType::float16: pack_float16(x, g, c, mantissas, exponents, b0, b1); break;
      case DType::bfloat16: pack_bfloat16(x, g, c, mantissas, exponents, b0, b1); break;
    }
  });
}

void unpack(const uint8_t* mantissas, const uint8_t* exponents, int64_t rows, int64_t cols,
            const Codec& c, void* out, DType out_dtype) {
  const Geometry g = geometry(rows, cols, c);
  for_block_ranges(rows * g.blocks_per_row, rows * cols, [&](int64_t b0, int64_t b1) {
    switch (out_dtype) {
      case DType::float32: unpack_float32(mantissas, exponents, g, c, out, b0, b1); break;
      case DType::float16: unpack_float16(mantissas, exponents, g, c, out, b0, b1); break;
      case DType::bfloat16: unpack_bfloat16(mantissas, exponents, g, c, out, b0, b1); break;
    }
  });
}

void quantize(const void* x, DType dtype, int64_t rows, int64_t cols, const Codec& c, void* out,
              DType out_dtype) {
  const Geometry g = geometry(rows, cols, c);
  for_block_ranges(rows * g.blocks_per_row, rows * cols, [&](int64_t b0, int64_t b1) {
    switch (dtype) {
      case DType::float32: quantize_float32(x, g, c, out, out_dtype, b0, b1); break;
      case DType::float16: quantize_float16(x, g, c, out, out_dtype, b0, b1); break;
      case DType::bfloat16: quantize_bfloat16(x, g, c, out, out_dtype, b0, b1); break;
    }
  });
}

}  // namespace fastpaper::bfp::cpu
