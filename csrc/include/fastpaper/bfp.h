// fastpaper::bfp — block floating point (BFP) codec.
//
// Format BFP(block = B, mantissa_bits = M), B in {16, 32, 64, 128}, M in [2, 8].
// A tensor is viewed as `rows` x `cols` (row-major, contiguous). Each row is padded with zeros to
// padded_cols = ceil(cols / B) * B so that blocks never straddle rows; every block of B
// consecutive elements of a row shares one 8-bit exponent byte e:
//
//   value(q, e) = q * 2^(e - 127 - (M - 2))        (e = 255: the whole block decodes to NaN)
//
// Elements (Element::sign_magnitude): q is a sign-magnitude integer with |q| <= 2^(M-1) - 1,
// stored in a field of W bits, W = 4 when M <= 4 else 8: the sign in bit W-1, |q| in the low
// M-1 bits, the bits in between zero. The sign of zero is kept (-0.0 round-trips).
// Elements (Element::twos_complement, MXINT8): q is W = 8 bit two's complement; the encoder writes
// |q| <= 127 and the decoder also accepts -128, as the OCP Microscaling spec defines MXINT8
// (block 32, E8M0 scale 2^(e-127), INT8 elements with implied scale 2^-6).
//
// Storage of one row (bit-identical on CPU and CUDA):
//   mantissas: padded_cols * W / 8 bytes; for W = 4 two elements per byte, the element with the
//              even index in the low nibble.
//   exponents: padded_cols / B bytes, one per block.
//
// Exponent choice for a block with maximum magnitude a (E = e - 127):
//   Scale::no_clip (default): the smallest E >= floor(log2 a) for which a, rounded in the chosen
//     rounding mode's worst case (nearest-even; stochastic: upwards), does not exceed 2^(M-1) - 1.
//   Scale::floor: E = floor(log2 a), the convention of the paper's simulation and of the MX spec;
//     elements that round past 2^(M-1) - 1 saturate.
//   E is clamped to [-127, 127]: blocks beyond the top saturate, and tiny values flush to zero.
//   An all-zero block stores e = 0 (and zero mantissas, keeping signs). A block containing NaN or
//   +-Inf stores e = 255 and zero mantissas.
// Element rounding: Rounding::nearest_even, or Rounding::stochastic: q = floor(v) + [u < frac(v)]
//   with u a 24-bit uniform from a counter-based hash of (seed, row * cols + col), so results are
//   reproducible and identical on CPU and CUDA.
//
// Decoding to float16/bfloat16 rounds the exact float32 value to nearest-even.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fastpaper/status.h"

namespace fastpaper::bfp {

enum class Element : int32_t { sign_magnitude = 0, twos_complement = 1 };
enum class Scale : int32_t { no_clip = 0, floor = 1 };
enum class Rounding : int32_t { nearest_even = 0, stochastic = 1 };

struct Format {
  int32_t block = 64;
  int32_t mantissa_bits = 4;
  Element element = Element::sign_magnitude;
};

inline constexpr Format BFP12{64, 4, Element::sign_magnitude};
inline constexpr Format BFP16{64, 8, Element::sign_magnitude};
inline constexpr Format MXINT8{32, 8, Element::twos_complement};

struct Options {
  Scale scale = Scale::no_clip;
  Rounding rounding = Rounding::nearest_even;
  uint64_t seed = 0;
};

// invalid_argument unless B in {16, 32, 64, 128}, M in [2, 8], and M == 8 for twos_complement.
FASTPAPER_API Status check_format(Format fmt);
// Storage geometry of one row of `cols` elements (0 for an invalid format, cols < 0, or a cols
// so large that the padded row would overflow int64).
FASTPAPER_API int64_t padded_cols(int64_t cols, Format fmt);
FASTPAPER_API int64_t mantissa_bytes_per_row(int64_t cols, Format fmt);
FASTPAPER_API int64_t exponent_bytes_per_row(int64_t cols, Format fmt);

// Encode x[rows][cols] (dtype `dtype`) into mantissas[rows][mantissa_bytes_per_row] and
// exponents[rows][exponent_bytes_per_row].
FASTPAPER_API Status pack(const void* x, DType dtype, int64_t rows, int64_t cols, Format fmt,
                          Options opt, uint8_t* mantissas, uint8_t* exponents, Device device,
                          void* stream);

// Decode into out[rows][cols] of dtype `out_dtype`.
FASTPAPER_API Status unpack(const uint8_t* mantissas, const uint8_t* exponents, int64_t rows,
                            int64_t cols, Format fmt, void* out, DType out_dtype, Device device,
                            void* stream);

// unpack(pack(x)) in one pass, without materializing the packed form. `out` may alias `x` when
// the dtypes are equal.
FASTPAPER_API Status quantize(const void* x, DType dtype, int64_t rows, int64_t cols, Format fmt,
                              Options opt, void* out, DType out_dtype, Device device,
                              void* stream);

}  // namespace fastpaper::bfp
