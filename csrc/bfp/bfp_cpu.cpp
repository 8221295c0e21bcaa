// CPU kernels of the BFP codec. Work split: the rows x blocks_per_row blocks are distributed over
// OpenMP threads (static schedule); each block is handled by one thread in three short loops over
// its B elements (widen + max, encode, nibble/byte pack) that the compiler vectorizes. The math is
// in fastpaper/detail/bfp_codec.h, shared with the CUDA kernels.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "bfp/bfp_backends.h"
#include "fastpaper/detail/float_convert.h"

namespace fastpaper::bfp::cpu {
namespace {

using namespace fastpaper::bfp::detail;
using fastpaper::detail::load_as_float;
using fastpaper::detail::store_from_float;

constexpr int kMaxBlock = 128;
constexpr int64_t kParallelThreshold = 1 << 15;  // elements; below this threads cost more than they save

// Calls f(block_index) for every block, in parallel when the tensor is large enough.
template <typename F>
void for_each_block(int64_t n_blocks, int64_t elements, F&& f) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (elements >= kParallelThreshold)
#endif
  for (int64_t i = 0; i < n_blocks; ++i) f(i);
}

// Encodes one block (n valid elements, the rest is padding) into W-bit fields. Returns the
// exponent byte. `first_index` is the logical index of element 0 (for stochastic rounding).
template <DType D>
uint8_t encode_block(const void* x, int64_t offset, int n, const Codec& c, int64_t first_index,
                     uint8_t* fields) {
  float v[kMaxBlock];
  float amax = 0.0f;
  uint32_t nonfinite = 0;
  for (int i = 0; i < n; ++i) {
    v[i] = load_as_float<D>(x, offset + i);
    const float a = std::fabs(v[i]);
    amax = a > amax ? a : amax;
    nonfinite |= static_cast<uint32_t>(is_nonfinite(v[i]));
  }
  for (int i = n; i < c.block; ++i) v[i] = 0.0f;
  if (nonfinite) {
    std::memset(fields, 0, static_cast<size_t>(c.block));
    return kNonFiniteByte;
  }
  const int e = choose_exponent(amax, c);
  const int k = (c.mbits - 2) - e;
  for (int i = 0; i < c.block; ++i) {
    fields[i] = static_cast<uint8_t>(encode_element(v[i], k, c, static_cast<uint64_t>(first_index + i)));
  }
  return exponent_byte(e);
}

template <DType D>
void pack_impl(const void* x, int64_t rows, int64_t cols, const Codec& c, uint8_t* mantissas,
               uint8_t* exponents) {
  const int64_t nb = (cols + c.block - 1) / c.block;
  const int64_t row_bytes = nb * c.block * c.field_bits / 8;
  for_each_block(rows * nb, rows * cols, [&](int64_t blk) {
    const int64_t r = blk / nb, b = blk % nb;
    const int64_t col0 = b * c.block;
    const int n = static_cast<int>(std::min<int64_t>(c.block, cols - col0));
    uint8_t fields[kMaxBlock];
    exponents[blk] = encode_block<D>(x, r * cols + col0, n, c, r * cols + col0, fields);
    uint8_t* dst = mantissas + r * row_bytes + col0 * c.field_bits / 8;
    if (c.field_bits == 4) {
      for (int i = 0; i < c.block / 2; ++i) {
        dst[i] = static_cast<uint8_t>(fields[2 * i] | (fields[2 * i + 1] << 4));
      }
    } else {
      std::memcpy(dst, fields, static_cast<size_t>(c.block));
    }
  });
}

template <DType D>
void unpack_impl(const uint8_t* mantissas, const uint8_t* exponents, int64_t rows, int64_t cols,
                 const Codec& c, void* out) {
  const int64_t nb = (cols + c.block - 1) / c.block;
  const int64_t row_bytes = nb * c.block * c.field_bits / 8;
  for_each_block(rows * nb, rows * cols, [&](int64_t blk) {
    const int64_t r = blk / nb, b = blk % nb;
    const int64_t col0 = b * c.block;
    const int n = static_cast<int>(std::min<int64_t>(c.block, cols - col0));
    const uint8_t* src = mantissas + r * row_bytes + col0 * c.field_bits / 8;
    const uint8_t ebyte = exponents[blk];
    const int64_t o = r * cols + col0;
    if (c.field_bits == 4) {
      for (int i = 0; i < n; ++i) {
        const uint32_t field = (src[i >> 1] >> ((i & 1) * 4)) & 0xfu;
        store_from_float<D>(out, o + i, decode_element(field, ebyte, c));
      }
    } else {
      for (int i = 0; i < n; ++i) store_from_float<D>(out, o + i, decode_element(src[i], ebyte, c));
    }
  });
}

template <DType D, DType O>
void quantize_impl(const void* x, int64_t rows, int64_t cols, const Codec& c, void* out) {
  const int64_t nb = (cols + c.block - 1) / c.block;
  for_each_block(rows * nb, rows * cols, [&](int64_t blk) {
    const int64_t r = blk / nb, b = blk % nb;
    const int64_t col0 = b * c.block;
    const int n = static_cast<int>(std::min<int64_t>(c.block, cols - col0));
    const int64_t o = r * cols + col0;
    uint8_t fields[kMaxBlock];
    const uint8_t ebyte = encode_block<D>(x, o, n, c, o, fields);
    for (int i = 0; i < n; ++i) store_from_float<O>(out, o + i, decode_element(fields[i], ebyte, c));
  });
}

template <template <DType> class Fn, typename... Args>
void dispatch_dtype(DType d, Args&&... args) {
  switch (d) {
    case DType::float32: Fn<DType::float32>::run(args...); break;
    case DType::float16: Fn<DType::float16>::run(args...); break;
    case DType::bfloat16: Fn<DType::bfloat16>::run(args...); break;
  }
}

template <DType D> struct PackFn { template <typename... A> static void run(A... a) { pack_impl<D>(a...); } };
template <DType D> struct UnpackFn { template <typename... A> static void run(A... a) { unpack_impl<D>(a...); } };
template <DType D> struct QuantizeF32 { template <typename... A> static void run(A... a) { quantize_impl<D, DType::float32>(a...); } };
template <DType D> struct QuantizeF16 { template <typename... A> static void run(A... a) { quantize_impl<D, DType::float16>(a...); } };
template <DType D> struct QuantizeBF16 { template <typename... A> static void run(A... a) { quantize_impl<D, DType::bfloat16>(a...); } };

}  // namespace

void pack(const void* x, DType dtype, int64_t rows, int64_t cols, const Codec& c,
          uint8_t* mantissas, uint8_t* exponents) {
  dispatch_dtype<PackFn>(dtype, x, rows, cols, c, mantissas, exponents);
}

void unpack(const uint8_t* mantissas, const uint8_t* exponents, int64_t rows, int64_t cols,
            const Codec& c, void* out, DType out_dtype) {
  dispatch_dtype<UnpackFn>(out_dtype, mantissas, exponents, rows, cols, c, out);
}

void quantize(const void* x, DType dtype, int64_t rows, int64_t cols, const Codec& c, void* out,
              DType out_dtype) {
  switch (out_dtype) {
    case DType::float32: dispatch_dtype<QuantizeF32>(dtype, x, rows, cols, c, out); break;
    case DType::float16: dispatch_dtype<QuantizeF16>(dtype, x, rows, cols, c, out); break;
    case DType::bfloat16: dispatch_dtype<QuantizeBF16>(dtype, x, rows, cols, c, out); break;
  }
}

}  // namespace fastpaper::bfp::cpu
