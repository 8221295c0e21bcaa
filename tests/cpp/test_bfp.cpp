// GoogleTest tests of the BFP codec (fastpaper/bfp.h) against an independent scalar reference.
//
// The reference below is written from the format description in fastpaper/bfp.h only, in double
// precision with std::ldexp / std::ilogb / std::nearbyint, and deliberately shares no code with
// fastpaper/detail/: a bug in the shared CPU/CUDA math would otherwise be reproduced by the test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "fastpaper/bfp.h"
#include "fastpaper/core.h"

namespace {

using fastpaper::Device;
using fastpaper::DType;
using fastpaper::Status;
namespace bfp = fastpaper::bfp;
using bfp::Element;
using bfp::Format;
using bfp::Options;
using bfp::Rounding;
using bfp::Scale;

constexpr int kBlocks[] = {16, 32, 64, 128};
constexpr DType kDTypes[] = {DType::float32, DType::float16, DType::bfloat16};

const char* dtype_name(DType d) {
  switch (d) {
    case DType::float32: return "float32";
    case DType::float16: return "float16";
    case DType::bfloat16: return "bfloat16";
  }
  return "?";
}

std::string fmt_name(Format f, Options o) {
  return "block=" + std::to_string(f.block) + " M=" + std::to_string(f.mantissa_bits) +
         (f.element == Element::twos_complement ? " twos" : " sign-mag") +
         (o.scale == Scale::floor ? " floor" : " no_clip") +
         (o.rounding == Rounding::stochastic ? " stochastic" : " nearest");
}

// ---- IEEE 754 binary formats, from their definition --------------------------------------------

struct BinFormat {
  int exp_bits;
  int man_bits;
  int total() const { return 1 + exp_bits + man_bits; }
  int bias() const { return (1 << (exp_bits - 1)) - 1; }
  uint32_t exp_field_max() const { return (1u << exp_bits) - 1u; }
};
constexpr BinFormat kF32{8, 23}, kF16{5, 10}, kBF16{8, 7};

BinFormat bin_format(DType d) {
  return d == DType::float32 ? kF32 : (d == DType::float16 ? kF16 : kBF16);
}
size_t dtype_size(DType d) { return d == DType::float32 ? 4 : 2; }

uint32_t make_bits(BinFormat f, bool neg, uint32_t exp_field, uint32_t man) {
  return (static_cast<uint32_t>(neg) << (f.exp_bits + f.man_bits)) | (exp_field << f.man_bits) | man;
}

double bits_to_double(uint32_t bits, BinFormat f) {
  const uint32_t man = bits & ((1u << f.man_bits) - 1u);
  const uint32_t ex = (bits >> f.man_bits) & f.exp_field_max();
  const bool neg = (bits >> (f.exp_bits + f.man_bits)) & 1u;
  double mag;
  if (ex == f.exp_field_max()) {
    mag = man ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (ex == 0) {
    mag = std::ldexp(static_cast<double>(man), 1 - f.bias() - f.man_bits);
  } else {
    mag = std::ldexp(static_cast<double>(man | (1u << f.man_bits)),
                     static_cast<int>(ex) - f.bias() - f.man_bits);
  }
  return neg ? -mag : mag;
}

bool bits_is_nan(uint32_t bits, BinFormat f) {
  return ((bits >> f.man_bits) & f.exp_field_max()) == f.exp_field_max() &&
         (bits & ((1u << f.man_bits) - 1u)) != 0;
}

// Rounds v to the nearest-even value of format f (overflow to Inf) and returns its bit pattern.
uint32_t double_to_bits(double v, BinFormat f) {
  const uint32_t sign = std::signbit(v) ? 1u << (f.exp_bits + f.man_bits) : 0u;
  const uint32_t inf = f.exp_field_max() << f.man_bits;
  if (std::isnan(v)) return inf | (1u << (f.man_bits - 1));
  const double a = std::fabs(v);
  if (std::isinf(a)) return sign | inf;
  if (a == 0.0) return sign;
  const int emin = 1 - f.bias();
  int e = std::max(std::ilogb(a), emin);
  double r = std::nearbyint(std::ldexp(a, f.man_bits - e));  // significand in ulps of binade e
  if (r == std::ldexp(1.0, f.man_bits + 1)) {
    r /= 2;
    ++e;
  }
  if (e > f.bias()) return sign | inf;
  const uint32_t ri = static_cast<uint32_t>(r);
  if (ri < (1u << f.man_bits)) return sign | ri;  // subnormal (e == emin)
  return sign | (static_cast<uint32_t>(e + f.bias()) << f.man_bits) | (ri - (1u << f.man_bits));
}

// A dense host tensor: element bit patterns (low bits of uint32) <-> the raw buffer the API takes.
std::vector<uint8_t> to_buffer(const std::vector<uint32_t>& bits, DType d) {
  std::vector<uint8_t> buf(bits.size() * dtype_size(d));
  for (size_t i = 0; i < bits.size(); ++i) {
    if (d == DType::float32) {
      std::memcpy(&buf[i * 4], &bits[i], 4);
    } else {
      const uint16_t h = static_cast<uint16_t>(bits[i]);
      std::memcpy(&buf[i * 2], &h, 2);
    }
  }
  return buf;
}

std::vector<uint32_t> from_buffer(const std::vector<uint8_t>& buf, DType d) {
  std::vector<uint32_t> bits(buf.size() / dtype_size(d));
  for (size_t i = 0; i < bits.size(); ++i) {
    if (d == DType::float32) {
      std::memcpy(&bits[i], &buf[i * 4], 4);
    } else {
      uint16_t h;
      std::memcpy(&h, &buf[i * 2], 2);
      bits[i] = h;
    }
  }
  return bits;
}

std::vector<double> to_values(const std::vector<uint32_t>& bits, DType d) {
  std::vector<double> v(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) v[i] = bits_to_double(bits[i], bin_format(d));
  return v;
}

std::vector<uint8_t> f32_buffer(const std::vector<float>& x) {
  std::vector<uint8_t> buf(x.size() * 4);
  std::memcpy(buf.data(), x.data(), buf.size());
  return buf;
}

std::vector<float> f32_values(const std::vector<uint8_t>& buf) {
  std::vector<float> x(buf.size() / 4);
  std::memcpy(x.data(), buf.data(), buf.size());
  return x;
}

// ---- the reference BFP codec ------------------------------------------------------------------

struct Ref {
  int B, M;
  bool twos, floor_scale;
  bool exponent_rounds_up;  // Rounding::stochastic: no_clip assumes the worst case, rounding up
  int W() const { return M <= 4 ? 4 : 8; }
  int qmax() const { return (1 << (M - 1)) - 1; }
};

Ref ref_of(Format f, Options o) {
  return Ref{f.block, f.mantissa_bits, f.element == Element::twos_complement,
             o.scale == Scale::floor, o.rounding == Rounding::stochastic};
}

struct Packed {
  std::vector<uint8_t> man, exp;
};

int64_t ref_padded(int64_t cols, int B) { return (cols + B - 1) / B * B; }
int64_t ref_man_bytes(int64_t cols, const Ref& r) { return ref_padded(cols, r.B) * r.W() / 8; }
int64_t ref_exp_bytes(int64_t cols, const Ref& r) { return ref_padded(cols, r.B) / r.B; }

// Block exponent E (unbiased) for a finite block maximum `amax`.
int ref_exponent(double amax, const Ref& r) {
  if (amax == 0.0) return -127;
  int e = std::ilogb(amax);
  if (!r.floor_scale) {
    const auto rounded = [&](int E) {
      const double s = std::ldexp(amax, r.M - 2 - E);
      return r.exponent_rounds_up ? std::ceil(s) : std::nearbyint(s);
    };
    while (rounded(e) > r.qmax()) ++e;
  }
  return std::clamp(e, -127, 127);
}

uint32_t ref_field(double v, int E, const Ref& r) {
  const bool neg = std::signbit(v);
  const double q = std::min(std::nearbyint(std::ldexp(std::fabs(v), r.M - 2 - E)),
                            static_cast<double>(r.qmax()));
  const uint32_t qi = static_cast<uint32_t>(q);
  if (r.twos) return (neg ? 256u - qi : qi) & 0xffu;
  return (static_cast<uint32_t>(neg) << (r.W() - 1)) | qi;
}

void put_field(std::vector<uint8_t>& man, int64_t row_base, int64_t col, uint32_t field, int W) {
  if (W == 4) {
    man[row_base + col / 2] |= static_cast<uint8_t>(field << (4 * (col & 1)));
  } else {
    man[row_base + col] = static_cast<uint8_t>(field);
  }
}

uint32_t get_field(const std::vector<uint8_t>& man, int64_t row_base, int64_t col, int W) {
  if (W == 4) return (man[row_base + col / 2] >> (4 * (col & 1))) & 0xfu;
  return man[row_base + col];
}

Packed ref_pack(const std::vector<double>& x, int64_t rows, int64_t cols, const Ref& r) {
  const int64_t pc = ref_padded(cols, r.B), mb = ref_man_bytes(cols, r), eb = ref_exp_bytes(cols, r);
  Packed p{std::vector<uint8_t>(rows * mb, 0), std::vector<uint8_t>(rows * eb, 0)};
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t b = 0; b < pc / r.B; ++b) {
      double amax = 0.0;
      bool nonfinite = false;
      for (int64_t j = b * r.B; j < std::min(cols, (b + 1) * r.B); ++j) {
        const double v = x[i * cols + j];
        nonfinite |= !std::isfinite(v);
        if (std::isfinite(v)) amax = std::max(amax, std::fabs(v));
      }
      if (nonfinite) {
        p.exp[i * eb + b] = 255;  // mantissas stay zero
        continue;
      }
      const int E = ref_exponent(amax, r);
      p.exp[i * eb + b] = static_cast<uint8_t>(E + 127);
      for (int64_t j = b * r.B; j < (b + 1) * r.B; ++j) {
        const double v = j < cols ? x[i * cols + j] : 0.0;
        put_field(p.man, i * mb, j, ref_field(v, E, r), r.W());
      }
    }
  }
  return p;
}

double ref_decode(uint32_t field, uint8_t ebyte, const Ref& r) {
  if (ebyte == 255) return std::numeric_limits<double>::quiet_NaN();
  const int k = static_cast<int>(ebyte) - 127 - (r.M - 2);
  if (r.twos) {
    const int q = field >= 128 ? static_cast<int>(field) - 256 : static_cast<int>(field);
    return std::ldexp(static_cast<double>(q), k);
  }
  const double mag = std::ldexp(static_cast<double>(field & ((1u << (r.M - 1)) - 1u)), k);
  return (field >> (r.W() - 1)) & 1u ? -mag : mag;
}

std::vector<double> ref_unpack(const Packed& p, int64_t rows, int64_t cols, const Ref& r) {
  const int64_t mb = ref_man_bytes(cols, r), eb = ref_exp_bytes(cols, r);
  std::vector<double> out(rows * cols);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      out[i * cols + j] = ref_decode(get_field(p.man, i * mb, j, r.W()), p.exp[i * eb + j / r.B], r);
    }
  }
  return out;
}

// ---- calling the library ----------------------------------------------------------------------

struct Lib {
  Status status;
  Packed packed;
};

Lib lib_pack(const std::vector<uint8_t>& x, DType d, int64_t rows, int64_t cols, Format f,
             Options o) {
  // Exact-size buffers, so that the sanitizer build catches any write past the documented sizes.
  Lib l{Status::ok,
        {std::vector<uint8_t>(rows * bfp::mantissa_bytes_per_row(cols, f), 0xA5),
         std::vector<uint8_t>(rows * bfp::exponent_bytes_per_row(cols, f), 0xA5)}};
  l.status = bfp::pack(x.data(), d, rows, cols, f, o, l.packed.man.data(), l.packed.exp.data(),
                       Device::cpu, nullptr);
  return l;
}

std::vector<uint8_t> lib_unpack(const Packed& p, int64_t rows, int64_t cols, Format f, DType od) {
  std::vector<uint8_t> out(rows * cols * dtype_size(od), 0xA5);
  EXPECT_EQ(bfp::unpack(p.man.data(), p.exp.data(), rows, cols, f, out.data(), od, Device::cpu,
                        nullptr),
            Status::ok)
      << fastpaper::last_error();
  return out;
}

std::vector<uint8_t> lib_quantize(const std::vector<uint8_t>& x, DType d, int64_t rows,
                                  int64_t cols, Format f, Options o, DType od) {
  std::vector<uint8_t> out(rows * cols * dtype_size(od), 0xA5);
  EXPECT_EQ(bfp::quantize(x.data(), d, rows, cols, f, o, out.data(), od, Device::cpu, nullptr),
            Status::ok)
      << fastpaper::last_error();
  return out;
}

// Reports only the first mismatch: one wrong rounding rule would otherwise flood the log.
::testing::AssertionResult bytes_equal(const std::vector<uint8_t>& got,
                                       const std::vector<uint8_t>& want) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      size_t n = 0;
      for (size_t j = i; j < got.size(); ++j) n += got[j] != want[j];
      return ::testing::AssertionFailure()
             << "byte " << i << ": got 0x" << std::hex << int(got[i]) << ", want 0x"
             << int(want[i]) << std::dec << " (" << n << " bytes differ)";
    }
  }
  return ::testing::AssertionSuccess();
}

// Decoded values in dtype `od` against the reference (exact values, rounded here to `od`);
// any NaN pattern is accepted where the reference is NaN.
::testing::AssertionResult values_equal(const std::vector<uint8_t>& got_buf,
                                        const std::vector<double>& want, DType od) {
  const BinFormat f = bin_format(od);
  const std::vector<uint32_t> got = from_buffer(got_buf, od);
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  for (size_t i = 0; i < got.size(); ++i) {
    const uint32_t w = double_to_bits(want[i], f);
    const bool ok = std::isnan(want[i]) ? bits_is_nan(got[i], f) : got[i] == w;
    if (!ok) {
      return ::testing::AssertionFailure()
             << dtype_name(od) << " element " << i << ": got 0x" << std::hex << got[i]
             << " (" << bits_to_double(got[i], f) << "), want 0x" << w << " (" << want[i] << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

// ---- test data --------------------------------------------------------------------------------

// Finite (optionally some non-finite) bit patterns of dtype d, generated block by block so that a
// block spans a few binades around a random base (the full exponent range, subnormals and the
// largest finite values included). A share of elements has short mantissas or runs of leading
// ones: these land exactly on rounding ties and on the no_clip boundary (2^(M-1) - 1/2) * 2^k
// for every M.
std::vector<uint32_t> random_bits(int64_t rows, int64_t cols, DType d, int B, uint64_t seed,
                                  bool with_nonfinite) {
  const BinFormat f = bin_format(d);
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> bits(rows * cols);
  const uint32_t man_mask = (1u << f.man_bits) - 1u;
  int64_t block_counter = 0;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t b0 = 0; b0 < cols; b0 += B, ++block_counter) {
      const uint32_t base = static_cast<uint32_t>(rng() % f.exp_field_max());  // 0 .. max finite
      const int spread = 1 + static_cast<int>(rng() % 12);
      const bool zero_block = rng() % 23 == 0;
      for (int64_t j = b0; j < std::min(cols, b0 + B); ++j) {
        const bool neg = rng() & 1;
        const int kind = static_cast<int>(rng() % 16);
        uint32_t ex = base - std::min<uint32_t>(base, static_cast<uint32_t>(rng() % spread));
        uint32_t man = static_cast<uint32_t>(rng()) & man_mask;
        if (zero_block || kind == 0) {
          ex = 0;
          man = 0;
        } else if (kind <= 3) {  // up to 3 significant mantissa bits: ties
          man &= ~(man_mask >> std::min<int>(f.man_bits, static_cast<int>(rng() % 4)));
        } else if (kind <= 6) {  // a run of leading ones, +-1 ulp: the no_clip boundary
          const int ones = std::min<int>(f.man_bits, static_cast<int>(rng() % 9));
          man = man_mask & ~(man_mask >> ones);
          const int nudge = static_cast<int>(rng() % 3) - 1;
          if (nudge > 0 && man != man_mask) ++man;
          if (nudge < 0 && man != 0) --man;
        }
        bits[i * cols + j] = make_bits(f, neg, ex, man);
      }
      if (with_nonfinite && block_counter % 7 == 3) {
        const int64_t j = b0 + static_cast<int64_t>(rng() % std::min<int64_t>(B, cols - b0));
        const int which = static_cast<int>(rng() % 3);
        bits[i * cols + j] = make_bits(f, which == 2, f.exp_field_max(), which == 0 ? 1u : 0u);
      }
    }
  }
  return bits;
}

std::vector<Format> all_formats() {
  std::vector<Format> fs;
  for (int B : kBlocks) {
    for (int M = 2; M <= 8; ++M) fs.push_back(Format{B, M, Element::sign_magnitude});
    fs.push_back(Format{B, 8, Element::twos_complement});
  }
  return fs;
}

// ---- (a) bit-exact agreement with the reference -----------------------------------------------

class BfpReference : public ::testing::TestWithParam<std::tuple<DType, Scale>> {};

TEST_P(BfpReference, PackUnpackQuantizeBitExact) {
  const auto [dtype, scale] = GetParam();
  const Options opt{scale, Rounding::nearest_even, 0};
  uint64_t seed = 1234 + static_cast<uint64_t>(dtype) * 100 + static_cast<uint64_t>(scale);
  for (const Format f : all_formats()) {
    const Ref r = ref_of(f, opt);
    for (const int64_t cols : {int64_t{1}, int64_t{2} * f.block, int64_t{3} * f.block - 5}) {
      const int64_t rows = 3;
      SCOPED_TRACE(fmt_name(f, opt) + " " + dtype_name(dtype) + " cols=" + std::to_string(cols));
      const std::vector<uint32_t> bits = random_bits(rows, cols, dtype, f.block, ++seed, true);
      const std::vector<uint8_t> x = to_buffer(bits, dtype);
      const std::vector<double> xv = to_values(bits, dtype);

      const Packed want = ref_pack(xv, rows, cols, r);
      const Lib got = lib_pack(x, dtype, rows, cols, f, opt);
      ASSERT_EQ(got.status, Status::ok) << fastpaper::last_error();
      ASSERT_TRUE(bytes_equal(got.packed.exp, want.exp)) << "exponents";
      ASSERT_TRUE(bytes_equal(got.packed.man, want.man)) << "mantissas";

      const std::vector<double> decoded = ref_unpack(want, rows, cols, r);
      for (const DType od : kDTypes) {
        const std::vector<uint8_t> u = lib_unpack(got.packed, rows, cols, f, od);
        ASSERT_TRUE(values_equal(u, decoded, od)) << "unpack";
        // (e) quantize is unpack(pack(x)) in one pass, bit for bit.
        ASSERT_TRUE(bytes_equal(lib_quantize(x, dtype, rows, cols, f, opt, od), u)) << "quantize";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllDTypesAndScales, BfpReference,
    ::testing::Combine(::testing::ValuesIn(kDTypes), ::testing::Values(Scale::no_clip, Scale::floor)),
    [](const ::testing::TestParamInfo<BfpReference::ParamType>& info) {
      return std::string(dtype_name(std::get<0>(info.param))) +
             (std::get<1>(info.param) == Scale::floor ? "_floor" : "_no_clip");
    });

// Large enough that the CPU kernels take their OpenMP path.
TEST(BfpReferenceLarge, ParallelPathMatchesReference) {
  const int64_t rows = 37, cols = 1000;
  for (const Format f : {bfp::BFP12, bfp::MXINT8}) {
    SCOPED_TRACE(fmt_name(f, Options{}));
    const std::vector<uint32_t> bits = random_bits(rows, cols, DType::float32, f.block, 99, true);
    const std::vector<uint8_t> x = to_buffer(bits, DType::float32);
    const Ref r = ref_of(f, Options{});
    const Packed want = ref_pack(to_values(bits, DType::float32), rows, cols, r);
    const Lib got = lib_pack(x, DType::float32, rows, cols, f, Options{});
    ASSERT_EQ(got.status, Status::ok);
    EXPECT_TRUE(bytes_equal(got.packed.exp, want.exp));
    EXPECT_TRUE(bytes_equal(got.packed.man, want.man));
    const std::vector<uint8_t> u = lib_unpack(got.packed, rows, cols, f, DType::float32);
    EXPECT_TRUE(values_equal(u, ref_unpack(want, rows, cols, r), DType::float32));
    EXPECT_TRUE(bytes_equal(lib_quantize(x, DType::float32, rows, cols, f, Options{}, DType::float32), u));
  }
}

TEST(BfpGeometry, SizesFollowTheFormat) {
  EXPECT_EQ(bfp::padded_cols(0, bfp::BFP12), 0);
  EXPECT_EQ(bfp::padded_cols(1, bfp::BFP12), 64);
  EXPECT_EQ(bfp::padded_cols(64, bfp::BFP12), 64);
  EXPECT_EQ(bfp::padded_cols(65, bfp::BFP12), 128);
  EXPECT_EQ(bfp::mantissa_bytes_per_row(65, bfp::BFP12), 64);   // 4-bit fields
  EXPECT_EQ(bfp::exponent_bytes_per_row(65, bfp::BFP12), 2);
  EXPECT_EQ(bfp::mantissa_bytes_per_row(33, bfp::MXINT8), 64);  // 8-bit fields
  EXPECT_EQ(bfp::exponent_bytes_per_row(33, bfp::MXINT8), 2);
  EXPECT_EQ(bfp::mantissa_bytes_per_row(17, Format{16, 5, Element::sign_magnitude}), 32);
  EXPECT_EQ(bfp::exponent_bytes_per_row(0, bfp::MXINT8), 0);
  // Invalid format or negative cols: 0.
  EXPECT_EQ(bfp::padded_cols(-1, bfp::BFP12), 0);
  EXPECT_EQ(bfp::padded_cols(10, Format{48, 4, Element::sign_magnitude}), 0);
  EXPECT_EQ(bfp::mantissa_bytes_per_row(10, Format{64, 9, Element::sign_magnitude}), 0);
  EXPECT_EQ(bfp::exponent_bytes_per_row(10, Format{32, 4, Element::twos_complement}), 0);
  EXPECT_EQ(bfp::mantissa_bytes_per_row(-5, bfp::MXINT8), 0);
}

// ---- (b) error bound --------------------------------------------------------------------------

// Nearest rounding puts every element within half a step of its value; only elements stored at
// |q| = qmax may exceed that (Scale::floor, or the exponent clamp at 127), and then by < 1 step.
TEST(BfpErrorBound, NearestWithinHalfStepUnlessSaturated) {
  const int64_t rows = 4, cols = 333;
  uint64_t seed = 7;
  for (const Scale scale : {Scale::no_clip, Scale::floor}) {
    const Options opt{scale, Rounding::nearest_even, 0};
    for (const Format f : all_formats()) {
      SCOPED_TRACE(fmt_name(f, opt));
      const Ref r = ref_of(f, opt);
      const std::vector<uint32_t> bits = random_bits(rows, cols, DType::float32, f.block, ++seed, false);
      const std::vector<uint8_t> x = to_buffer(bits, DType::float32);
      const Lib p = lib_pack(x, DType::float32, rows, cols, f, opt);
      ASSERT_EQ(p.status, Status::ok);
      const std::vector<float> q =
          f32_values(lib_quantize(x, DType::float32, rows, cols, f, opt, DType::float32));
      const int64_t eb = bfp::exponent_bytes_per_row(cols, f);
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) {
          const double xv = bits_to_double(bits[i * cols + j], kF32);
          const int E = p.packed.exp[i * eb + j / f.block] - 127;
          const double step = std::ldexp(1.0, E - (f.mantissa_bits - 2));
          const double err = std::fabs(xv - static_cast<double>(q[i * cols + j]));
          const bool at_qmax = std::fabs(q[i * cols + j]) == r.qmax() * step;
          ASSERT_TRUE(std::isfinite(q[i * cols + j]));
          if (err > step / 2) {
            ASSERT_TRUE(at_qmax && err < step)
                << "x=" << xv << " q=" << q[i * cols + j] << " E=" << E << " at " << i << "," << j;
            // no_clip chooses E so that nothing saturates below the exponent clamp.
            ASSERT_TRUE(scale == Scale::floor || E == 127) << "x=" << xv << " E=" << E;
          }
        }
      }
    }
  }
}

// Scale::floor uses E = floor(log2 amax), so a block maximum just below 2^(E+1) saturates;
// no_clip moves such a block up one binade instead.
TEST(BfpErrorBound, NoClipAvoidsSaturationThatFloorAccepts) {
  const Format f = bfp::BFP12;  // M = 4: qmax = 7, values are q * 2^(E-2)
  std::vector<float> x(64, 0.25f);
  x[5] = 7.75f;                  // floor: E = 2, 7.75 / 2^0 = 7.75 rounds to 8 > 7: saturates to 7
  const std::vector<uint8_t> buf = f32_buffer(x);
  const Lib nc = lib_pack(buf, DType::float32, 1, 64, f, Options{Scale::no_clip});
  const Lib fl = lib_pack(buf, DType::float32, 1, 64, f, Options{Scale::floor});
  ASSERT_EQ(nc.status, Status::ok);
  ASSERT_EQ(fl.status, Status::ok);
  EXPECT_EQ(nc.packed.exp[0], 127 + 3);
  EXPECT_EQ(fl.packed.exp[0], 127 + 2);
  const std::vector<float> qn = f32_values(lib_unpack(nc.packed, 1, 64, f, DType::float32));
  const std::vector<float> qf = f32_values(lib_unpack(fl.packed, 1, 64, f, DType::float32));
  EXPECT_EQ(qn[5], 8.0f);
  EXPECT_EQ(qf[5], 7.0f);
  EXPECT_EQ(qf[0], 0.0f);  // 0.25 is a quarter of a step at E = 2: rounds to zero
  // At exactly qmax + 1/2 nearest-even rounds up (qmax is odd), so no_clip must move up;
  // just below it must not.
  x[5] = 7.5f;
  EXPECT_EQ(lib_pack(f32_buffer(x), DType::float32, 1, 64, f, Options{}).packed.exp[0], 127 + 3);
  x[5] = std::nextafter(7.5f, 0.0f);
  EXPECT_EQ(lib_pack(f32_buffer(x), DType::float32, 1, 64, f, Options{}).packed.exp[0], 127 + 2);
}

// ---- (c) special values -----------------------------------------------------------------------

TEST(BfpSpecial, AllZeroBlockHasExponentZeroAndKeepsSigns) {
  for (const Format f : all_formats()) {
    SCOPED_TRACE(fmt_name(f, Options{}));
    std::vector<float> x(2 * f.block, 0.0f);
    for (size_t i = 0; i < x.size(); i += 3) x[i] = -0.0f;
    x[f.block + 1] = 1.0f;  // second block non-zero
    const Lib p = lib_pack(f32_buffer(x), DType::float32, 1, 2 * f.block, f, Options{});
    ASSERT_EQ(p.status, Status::ok);
    EXPECT_EQ(p.packed.exp[0], 0);
    EXPECT_NE(p.packed.exp[1], 0);
    const std::vector<float> u = f32_values(lib_unpack(p.packed, 1, 2 * f.block, f, DType::float32));
    for (int i = 0; i < f.block; ++i) {
      EXPECT_EQ(u[i], 0.0f) << i;
      if (f.element == Element::sign_magnitude) {
        EXPECT_EQ(std::signbit(u[i]), std::signbit(x[i])) << "sign of zero at " << i;
      }
    }
  }
}

TEST(BfpSpecial, NegativeZeroRoundTripsSignMagnitude) {
  for (const DType d : kDTypes) {
    SCOPED_TRACE(dtype_name(d));
    const BinFormat bf = bin_format(d);
    const Format f{16, 5, Element::sign_magnitude};
    // -0.0, and -tiny in a block with a large maximum: both decode to -0.0.
    std::vector<uint32_t> bits(16, make_bits(bf, false, 0, 0));
    bits[0] = make_bits(bf, true, 0, 0);
    bits[1] = double_to_bits(100.0, bf);
    bits[2] = double_to_bits(-1e-3, bf);
    const std::vector<uint8_t> x = to_buffer(bits, d);
    for (const DType od : kDTypes) {
      const std::vector<uint32_t> q =
          from_buffer(lib_quantize(x, d, 1, 16, f, Options{}, od), od);
      const BinFormat of = bin_format(od);
      EXPECT_EQ(q[0], make_bits(of, true, 0, 0)) << dtype_name(od);
      EXPECT_EQ(q[2], make_bits(of, true, 0, 0)) << dtype_name(od);
      EXPECT_EQ(q[3], make_bits(of, false, 0, 0)) << dtype_name(od);
    }
  }
}

TEST(BfpSpecial, NonFiniteBlockStores255AndDecodesNaN) {
  for (const DType d : kDTypes) {
    const BinFormat bf = bin_format(d);
    const uint32_t specials[] = {make_bits(bf, false, bf.exp_field_max(), 1),   // NaN
                                 make_bits(bf, true, bf.exp_field_max(), 1),    // -NaN
                                 make_bits(bf, false, bf.exp_field_max(), 0),   // +Inf
                                 make_bits(bf, true, bf.exp_field_max(), 0)};   // -Inf
    for (const uint32_t special : specials) {
      for (const Format f : {bfp::BFP12, bfp::BFP16, bfp::MXINT8, Format{16, 2, Element::sign_magnitude}}) {
        SCOPED_TRACE(std::string(dtype_name(d)) + " special=" + std::to_string(special) + " " +
                     fmt_name(f, Options{}));
        const int64_t cols = 2 * f.block + 3;
        std::vector<uint32_t> bits(cols);
        for (int64_t j = 0; j < cols; ++j) bits[j] = double_to_bits(0.5 * (j % 7) - 1.0, bf);
        bits[f.block + 4] = special;      // middle block
        bits[cols - 1] = special;         // the padded last block
        const std::vector<uint8_t> x = to_buffer(bits, d);
        const Lib p = lib_pack(x, d, 1, cols, f, Options{});
        ASSERT_EQ(p.status, Status::ok);
        EXPECT_NE(p.packed.exp[0], 255);
        EXPECT_EQ(p.packed.exp[1], 255);
        EXPECT_EQ(p.packed.exp[2], 255);
        const int64_t fb = f.block * (f.mantissa_bits <= 4 ? 4 : 8) / 8;  // bytes per block
        for (int64_t k = fb; k < 3 * fb; ++k) EXPECT_EQ(p.packed.man[k], 0) << "mantissa byte " << k;
        for (const DType od : kDTypes) {
          const std::vector<uint32_t> q = from_buffer(lib_quantize(x, d, 1, cols, f, Options{}, od), od);
          for (int64_t j = 0; j < cols; ++j) {
            EXPECT_EQ(bits_is_nan(q[j], bin_format(od)), j >= f.block) << dtype_name(od) << " j=" << j;
          }
        }
      }
    }
  }
}

// Subnormal inputs: exponents below -127 clamp to -127 and what falls below the grid flushes.
TEST(BfpSpecial, SubnormalInputs) {
  const Format f = bfp::BFP16;  // M = 8: grid 2^(E-6)
  std::vector<float> x(64, 0.0f);
  x[0] = std::ldexp(1.5f, -127);           // a float32 subnormal exactly on the E = -127 grid
  x[1] = -std::ldexp(1.0f, -130);          // -8 * 2^-133: q = -8, still on the grid
  x[2] = std::numeric_limits<float>::denorm_min();  // 2^-149: far below the grid, flushes
  Lib p = lib_pack(f32_buffer(x), DType::float32, 1, 64, f, Options{});
  ASSERT_EQ(p.status, Status::ok);
  EXPECT_EQ(p.packed.exp[0], 0);  // E = -127
  std::vector<float> u = f32_values(lib_unpack(p.packed, 1, 64, f, DType::float32));
  EXPECT_EQ(u[0], x[0]);
  EXPECT_EQ(u[1], x[1]);
  EXPECT_EQ(u[2], 0.0f);

  // A block of nothing but the smallest subnormals: E clamps to -127, all flush to (signed) zero.
  std::fill(x.begin(), x.end(), -std::numeric_limits<float>::denorm_min());
  p = lib_pack(f32_buffer(x), DType::float32, 1, 64, f, Options{});
  ASSERT_EQ(p.status, Status::ok);
  EXPECT_EQ(p.packed.exp[0], 0);
  u = f32_values(lib_unpack(p.packed, 1, 64, f, DType::float32));
  for (float v : u) EXPECT_TRUE(v == 0.0f && std::signbit(v));

  // float16 subnormals (m * 2^-24, here m < 64) are well inside the BFP range; with the block
  // maximum 63 * 2^-24 the grid is 2^-25, so M = 8 keeps every one of them exact.
  std::vector<uint32_t> hb(64);
  for (int j = 0; j < 64; ++j) hb[j] = make_bits(kF16, j & 1, 0, static_cast<uint32_t>(j));
  const std::vector<uint8_t> hx = to_buffer(hb, DType::float16);
  const std::vector<uint32_t> hq =
      from_buffer(lib_quantize(hx, DType::float16, 1, 64, f, Options{}, DType::float16), DType::float16);
  EXPECT_EQ(hq, hb);
}

// Values near FLT_MAX: the exponent clamps at 127 and elements saturate at qmax, finite, no UB.
TEST(BfpSpecial, HugeValuesSaturateFinite) {
  for (const Format f : all_formats()) {
    for (const Scale s : {Scale::no_clip, Scale::floor}) {
      for (const Rounding rd : {Rounding::nearest_even, Rounding::stochastic}) {
        const Options o{s, rd, 5};
        SCOPED_TRACE(fmt_name(f, o));
        const Ref r = ref_of(f, o);
        std::vector<float> x(f.block, 1.0f);
        x[0] = FLT_MAX;
        x[1] = -FLT_MAX;
        x[2] = std::ldexp(1.0f, 127);
        x[3] = std::ldexp(-511.0f, 119);  // (1 - 2^-9) 2^128: above (qmax + 1/2) 2^(127-(M-2)) for all M
        const std::vector<uint8_t> xb = f32_buffer(x);
        const Lib p = lib_pack(xb, DType::float32, 1, f.block, f, o);
        ASSERT_EQ(p.status, Status::ok);
        EXPECT_EQ(p.packed.exp[0], 254);
        const std::vector<float> u = f32_values(lib_unpack(p.packed, 1, f.block, f, DType::float32));
        const float top = static_cast<float>(std::ldexp(static_cast<double>(r.qmax()), 127 - (f.mantissa_bits - 2)));
        EXPECT_EQ(u[0], top);
        EXPECT_EQ(u[1], -top);
        EXPECT_EQ(u[3], -top);
        for (float v : u) EXPECT_TRUE(std::isfinite(v));
      }
    }
  }
}

// The decoder accepts q = -128 for MXINT8 (the OCP MX definition), although the encoder never
// writes it.
TEST(BfpSpecial, TwosComplementDecodesMinus128) {
  const Format f = bfp::MXINT8;
  std::vector<uint8_t> man(32, 0), exp = {200};
  man[0] = 0x80;
  man[1] = 0x7f;
  man[2] = 0xff;
  std::vector<uint8_t> out(32 * 4);
  ASSERT_EQ(bfp::unpack(man.data(), exp.data(), 1, 32, f, out.data(), DType::float32, Device::cpu, nullptr),
            Status::ok);
  std::vector<float> u = f32_values(out);
  EXPECT_EQ(u[0], std::ldexp(-128.0f, 200 - 127 - 6));
  EXPECT_EQ(u[1], std::ldexp(127.0f, 200 - 127 - 6));
  EXPECT_EQ(u[2], std::ldexp(-1.0f, 200 - 127 - 6));
  exp[0] = 254;  // the largest scale: 127 * 2^121 is finite (-128 * 2^121 = -2^128 is not)
  ASSERT_EQ(bfp::unpack(man.data(), exp.data(), 1, 32, f, out.data(), DType::float32, Device::cpu, nullptr),
            Status::ok);
  u = f32_values(out);
  EXPECT_EQ(u[1], std::ldexp(127.0f, 121));
  EXPECT_EQ(u[2], std::ldexp(-1.0f, 121));
  exp[0] = 0;  // the smallest scale: exact down to float32 subnormals
  ASSERT_EQ(bfp::unpack(man.data(), exp.data(), 1, 32, f, out.data(), DType::float32, Device::cpu, nullptr),
            Status::ok);
  u = f32_values(out);
  EXPECT_EQ(u[0], -std::ldexp(1.0f, -126));
  EXPECT_EQ(u[2], -std::ldexp(1.0f, -133));
}

// ---- (d) stochastic rounding ------------------------------------------------------------------

TEST(BfpStochastic, DeterministicPerSeedAndBetweenNeighbours) {
  const int64_t rows = 5, cols = 200;
  for (const Format f : all_formats()) {
    for (const Scale s : {Scale::no_clip, Scale::floor}) {
      const Options o{s, Rounding::stochastic, 42};
      SCOPED_TRACE(fmt_name(f, o));
      const Ref r = ref_of(f, o);
      const std::vector<uint32_t> bits = random_bits(rows, cols, DType::float32, f.block, 3 + f.block + f.mantissa_bits, true);
      const std::vector<uint8_t> x = to_buffer(bits, DType::float32);
      const std::vector<double> xv = to_values(bits, DType::float32);
      const Lib a = lib_pack(x, DType::float32, rows, cols, f, o);
      const Lib b = lib_pack(x, DType::float32, rows, cols, f, o);
      ASSERT_EQ(a.status, Status::ok);
      ASSERT_TRUE(bytes_equal(a.packed.man, b.packed.man));
      ASSERT_TRUE(bytes_equal(a.packed.exp, b.packed.exp));
      // Exponents follow the documented rule (no_clip: worst case rounds upwards).
      const Packed want = ref_pack(xv, rows, cols, r);
      ASSERT_TRUE(bytes_equal(a.packed.exp, want.exp));
      // Every element is the floor or the ceiling of its scaled value (capped at qmax).
      const std::vector<double> u = ref_unpack(a.packed, rows, cols, r);
      const int64_t eb = bfp::exponent_bytes_per_row(cols, f);
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) {
          const uint8_t e = a.packed.exp[i * eb + j / f.block];
          if (e == 255) continue;
          const int k = f.mantissa_bits - 2 - (e - 127);
          const double v = std::ldexp(std::fabs(xv[i * cols + j]), k);
          const double q = std::ldexp(std::fabs(u[i * cols + j]), k);
          const double lo = std::min(std::floor(v), double(r.qmax()));
          const double hi = std::min(std::ceil(v), double(r.qmax()));
          ASSERT_TRUE(q == lo || q == hi) << "v=" << v << " q=" << q << " at " << i << "," << j;
        }
      }
      // quantize draws the same random numbers as pack.
      const std::vector<uint8_t> qa = lib_quantize(x, DType::float32, rows, cols, f, o, DType::float32);
      ASSERT_TRUE(bytes_equal(qa, lib_unpack(a.packed, rows, cols, f, DType::float32)));
    }
  }
}

TEST(BfpStochastic, SeedChangesTheDrawsAndIndexIsTheFlatPosition) {
  const Format f = bfp::BFP12;
  std::vector<float> x(256);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 1.0f + 0.013f * static_cast<float>(i % 61);
  const std::vector<uint8_t> xb = f32_buffer(x);
  const Lib s1 = lib_pack(xb, DType::float32, 1, 256, f, Options{Scale::no_clip, Rounding::stochastic, 1});
  const Lib s2 = lib_pack(xb, DType::float32, 1, 256, f, Options{Scale::no_clip, Rounding::stochastic, 2});
  EXPECT_NE(s1.packed.man, s2.packed.man);
  // The random number of element (r, c) depends on r * cols + c only, so a 4 x 64 view of the same
  // data, whose blocks coincide with those of the 1 x 256 view, packs to the same bytes.
  const Lib v4 = lib_pack(xb, DType::float32, 4, 64, f, Options{Scale::no_clip, Rounding::stochastic, 1});
  EXPECT_EQ(s1.packed.man, v4.packed.man);
  EXPECT_EQ(s1.packed.exp, v4.packed.exp);
}

// E[q(x)] = x: over many elements holding the same value the mean error shrinks like 1/sqrt(n),
// while nearest rounding keeps a fixed bias.
TEST(BfpStochastic, UnbiasedInExpectation) {
  const int64_t n = 1 << 16;  // also above the CPU kernels' parallel threshold
  for (const double value : {1.3, -0.7123, 5.0 / 3.0, 0.0421}) {
    const std::vector<float> x(n, static_cast<float>(value));
    const std::vector<uint8_t> xb = f32_buffer(x);
    for (const Format f : {bfp::BFP12, Format{32, 3, Element::sign_magnitude}}) {
      SCOPED_TRACE(fmt_name(f, Options{}) + " value=" + std::to_string(value));
      const double xs = x[0];
      const std::vector<float> qs = f32_values(lib_quantize(
          xb, DType::float32, 1, n, f, Options{Scale::no_clip, Rounding::stochastic, 2024}, DType::float32));
      const std::vector<float> qn = f32_values(
          lib_quantize(xb, DType::float32, 1, n, f, Options{}, DType::float32));
      double mean = 0.0;
      for (float q : qs) mean += q;
      mean /= static_cast<double>(n);
      // step of the first block; all blocks hold the same value
      const Lib p = lib_pack(xb, DType::float32, 1, f.block, f, Options{Scale::no_clip, Rounding::stochastic, 0});
      const double step = std::ldexp(1.0, p.packed.exp[0] - 127 - (f.mantissa_bits - 2));
      // 6 standard deviations of the mean of n Bernoulli(p) draws scaled by step (p(1-p) <= 1/4).
      EXPECT_NEAR(mean, xs, 6.0 * step * 0.5 / std::sqrt(static_cast<double>(n)));
      EXPECT_GT(std::fabs(static_cast<double>(qn[0]) - xs), 20.0 * step / std::sqrt(static_cast<double>(n)))
          << "nearest rounding should be visibly biased for this value";
    }
  }
}

TEST(BfpStochastic, ValuesOnTheGridStayExact) {
  std::vector<float> x(128);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.25f * static_cast<float>(static_cast<int>(i % 15) - 7);
  const std::vector<uint8_t> xb = f32_buffer(x);
  for (uint64_t seed = 0; seed < 8; ++seed) {
    const std::vector<float> q = f32_values(lib_quantize(
        xb, DType::float32, 2, 64, bfp::BFP12, Options{Scale::no_clip, Rounding::stochastic, seed}, DType::float32));
    EXPECT_EQ(q, x) << "seed " << seed;
  }
}

// ---- (e) aliasing -----------------------------------------------------------------------------

TEST(BfpQuantize, InPlaceEqualsOutOfPlace) {
  const int64_t rows = 3, cols = 77;
  for (const DType d : kDTypes) {
    for (const Format f : {bfp::BFP12, bfp::BFP16, bfp::MXINT8, Format{128, 2, Element::sign_magnitude}}) {
      for (const Rounding rd : {Rounding::nearest_even, Rounding::stochastic}) {
        const Options o{Scale::no_clip, rd, 9};
        SCOPED_TRACE(std::string(dtype_name(d)) + " " + fmt_name(f, o));
        std::vector<uint8_t> x = to_buffer(random_bits(rows, cols, d, f.block, 11, true), d);
        const std::vector<uint8_t> want = lib_quantize(x, d, rows, cols, f, o, d);
        ASSERT_EQ(bfp::quantize(x.data(), d, rows, cols, f, o, x.data(), d, Device::cpu, nullptr), Status::ok);
        EXPECT_TRUE(bytes_equal(x, want));
      }
    }
  }
}

// ---- (f) argument validation ------------------------------------------------------------------

struct Buffers {
  std::vector<uint8_t> x = std::vector<uint8_t>(4 * 256, 0);
  std::vector<uint8_t> man = std::vector<uint8_t>(256, 0x5A);
  std::vector<uint8_t> exp = std::vector<uint8_t>(16, 0x5A);
  std::vector<uint8_t> out = std::vector<uint8_t>(4 * 256, 0x5A);
  bool untouched() const {
    const auto all = [](const std::vector<uint8_t>& v) {
      return std::all_of(v.begin(), v.end(), [](uint8_t b) { return b == 0x5A; });
    };
    return all(man) && all(exp) && all(out);
  }
};

// Runs pack, unpack and quantize with the given arguments and expects `want` from each. When a
// null pointer is under test, only the ops that take that pointer are run.
void expect_all(Status want, Format f, Options o, int64_t rows, int64_t cols, DType d = DType::float32,
                Device dev = Device::cpu, bool null_x = false, bool null_man = false,
                bool null_exp = false, bool null_out = false) {
  Buffers b;
  const void* x = null_x ? nullptr : b.x.data();
  uint8_t* man = null_man ? nullptr : b.man.data();
  uint8_t* exp = null_exp ? nullptr : b.exp.data();
  void* out = null_out ? nullptr : b.out.data();
  const bool any_null = null_x || null_man || null_exp || null_out;
  const bool all = want == Status::ok || !any_null;
  if (all || null_x || null_man || null_exp) {
    EXPECT_EQ(bfp::pack(x, d, rows, cols, f, o, man, exp, dev, nullptr), want)
        << "pack: " << fastpaper::last_error();
    if (want != Status::ok) {
      EXPECT_STRNE(fastpaper::last_error(), "");
    }
  }
  if (all || null_man || null_exp || null_out) {
    EXPECT_EQ(bfp::unpack(man, exp, rows, cols, f, out, d, dev, nullptr), want)
        << "unpack: " << fastpaper::last_error();
    if (want != Status::ok) {
      EXPECT_STRNE(fastpaper::last_error(), "");
    }
  }
  if (all || null_x || null_out) {
    EXPECT_EQ(bfp::quantize(x, d, rows, cols, f, o, out, d, dev, nullptr), want)
        << "quantize: " << fastpaper::last_error();
    if (want != Status::ok) {
      EXPECT_STRNE(fastpaper::last_error(), "");
    }
  }
  if (want != Status::ok) {
    EXPECT_TRUE(b.untouched()) << "a failing call wrote its outputs";
  }
}

// Bad Options concern pack and quantize only: unpack takes none.
void expect_bad_options(Options o) {
  Buffers b;
  EXPECT_EQ(bfp::pack(b.x.data(), DType::float32, 2, 16, bfp::BFP12, o, b.man.data(), b.exp.data(),
                      Device::cpu, nullptr),
            Status::invalid_argument);
  EXPECT_STRNE(fastpaper::last_error(), "");
  EXPECT_EQ(bfp::quantize(b.x.data(), DType::float32, 2, 16, bfp::BFP12, o, b.out.data(),
                          DType::float32, Device::cpu, nullptr),
            Status::invalid_argument);
  EXPECT_STRNE(fastpaper::last_error(), "");
  EXPECT_TRUE(b.untouched()) << "a failing call wrote its outputs";
}

TEST(BfpArgs, InvalidFormatsAreRejected) {
  const Status bad = Status::invalid_argument;
  for (const int block : {0, -64, 8, 48, 256, 63}) {
    SCOPED_TRACE("block=" + std::to_string(block));
    EXPECT_EQ(bfp::check_format(Format{block, 4, Element::sign_magnitude}), bad);
    expect_all(bad, Format{block, 4, Element::sign_magnitude}, Options{}, 2, 16);
  }
  for (const int m : {-1, 0, 1, 9, 32}) {
    SCOPED_TRACE("M=" + std::to_string(m));
    EXPECT_EQ(bfp::check_format(Format{64, m, Element::sign_magnitude}), bad);
    expect_all(bad, Format{64, m, Element::sign_magnitude}, Options{}, 2, 16);
  }
  for (int m = 2; m < 8; ++m) {
    EXPECT_EQ(bfp::check_format(Format{32, m, Element::twos_complement}), bad) << m;
    expect_all(bad, Format{32, m, Element::twos_complement}, Options{}, 2, 16);
  }
  for (const Format f : all_formats()) EXPECT_EQ(bfp::check_format(f), Status::ok);
  EXPECT_EQ(bfp::check_format(bfp::BFP12), Status::ok);
  EXPECT_EQ(bfp::check_format(bfp::BFP16), Status::ok);
  EXPECT_EQ(bfp::check_format(bfp::MXINT8), Status::ok);
}

TEST(BfpArgs, BadEnumValuesAreRejected) {
  const Status bad = Status::invalid_argument;
  // Each enum's valid values are 0 .. 1 (DType: 0 .. 2).
  for (const int v : {-1, 3, 7, 1 << 30, std::numeric_limits<int32_t>::min()}) {
    SCOPED_TRACE("value=" + std::to_string(v));
    EXPECT_EQ(bfp::check_format(Format{64, 8, static_cast<Element>(v)}), bad);
    expect_all(bad, Format{64, 8, static_cast<Element>(v)}, Options{}, 2, 16);
    expect_bad_options(Options{static_cast<Scale>(v), Rounding::nearest_even, 0});
    expect_bad_options(Options{Scale::no_clip, static_cast<Rounding>(v), 0});
    expect_all(bad, bfp::BFP12, Options{}, 2, 16, static_cast<DType>(v));
    expect_all(bad, bfp::BFP12, Options{}, 2, 16, DType::float32, static_cast<Device>(v));
  }
  expect_bad_options(Options{static_cast<Scale>(2), Rounding::nearest_even, 0});
  expect_bad_options(Options{Scale::no_clip, static_cast<Rounding>(2), 0});
  expect_all(bad, bfp::BFP12, Options{}, 2, 16, DType::float32, static_cast<Device>(2));
  EXPECT_EQ(bfp::check_format(Format{64, 8, static_cast<Element>(2)}), bad);
  // A bad output dtype for quantize, with a good input dtype.
  Buffers b;
  EXPECT_EQ(bfp::quantize(b.x.data(), DType::float32, 2, 16, bfp::BFP12, Options{}, b.out.data(),
                          static_cast<DType>(3), Device::cpu, nullptr),
            bad);
  EXPECT_TRUE(b.untouched());
}

TEST(BfpArgs, NegativeShapesAndNullPointers) {
  const Status bad = Status::invalid_argument;
  expect_all(bad, bfp::BFP12, Options{}, -1, 16);
  expect_all(bad, bfp::BFP12, Options{}, 2, -16);
  expect_all(bad, bfp::BFP12, Options{}, std::numeric_limits<int64_t>::min(), 16);
  expect_all(bad, bfp::BFP12, Options{}, 2, 16, DType::float32, Device::cpu, true, false, false, false);
  expect_all(bad, bfp::BFP12, Options{}, 2, 16, DType::float32, Device::cpu, false, true, false, false);
  expect_all(bad, bfp::BFP12, Options{}, 2, 16, DType::float32, Device::cpu, false, false, true, false);
  expect_all(bad, bfp::BFP12, Options{}, 2, 16, DType::float32, Device::cpu, false, false, false, true);
  // rows * padded_cols beyond int64: refused before any arithmetic on the sizes.
  expect_all(bad, bfp::BFP12, Options{}, std::numeric_limits<int64_t>::max() / 64 + 1, 64);
  expect_all(bad, bfp::BFP12, Options{}, std::numeric_limits<int64_t>::max(), 1);
}

TEST(BfpArgs, EmptyTensorsAreOkEvenWithNullPointers) {
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{0, 0}, {0, 16}, {5, 0}}) {
    SCOPED_TRACE(std::to_string(rows) + " x " + std::to_string(cols));
    expect_all(Status::ok, bfp::MXINT8, Options{}, rows, cols);
    expect_all(Status::ok, bfp::BFP12, Options{}, rows, cols, DType::bfloat16, Device::cpu, true, true, true, true);
    Buffers b;
    EXPECT_EQ(bfp::quantize(nullptr, DType::float16, rows, cols, bfp::BFP12, Options{}, nullptr,
                            DType::float32, Device::cpu, nullptr),
              Status::ok);
    EXPECT_EQ(bfp::unpack(nullptr, nullptr, rows, cols, bfp::BFP12, nullptr, DType::float16, Device::cpu, nullptr),
              Status::ok);
  }
}

// Column counts whose padded size does not fit in int64 must be refused, not overflow.
TEST(BfpArgs, HugeColsAreRefusedWithoutOverflow) {
  const int64_t big = std::numeric_limits<int64_t>::max();
  for (const int64_t cols : {big, big - 10}) {
    SCOPED_TRACE("cols=" + std::to_string(cols));
    expect_all(Status::invalid_argument, bfp::BFP12, Options{}, 1, cols);
  }
}

// The geometry helpers must not return negative sizes when the byte count does not fit in int64
// (the header documents 0 for what it cannot describe).
TEST(BfpGeometry, HugeColsGiveNoNegativeSizes) {
  const int64_t big = std::numeric_limits<int64_t>::max();
  for (const int64_t cols : {big, big - 10, big / 2, big / 8 + 1}) {
    SCOPED_TRACE("cols=" + std::to_string(cols));
    for (const Format f : {bfp::BFP12, bfp::BFP16}) {
      EXPECT_GE(bfp::padded_cols(cols, f), 0);
      EXPECT_GE(bfp::mantissa_bytes_per_row(cols, f), 0);
      EXPECT_GE(bfp::exponent_bytes_per_row(cols, f), 0);
    }
  }
}

// Without a usable GPU the CUDA path must fail with a status (and a message), never crash. With a
// GPU these host pointers would be invalid device pointers, so the test does not apply there.
TEST(BfpArgs, CudaDeviceWithoutGpuFailsCleanly) {
  if (fastpaper::cuda_device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  Buffers b;
  const Status sp = bfp::pack(b.x.data(), DType::float32, 2, 16, bfp::BFP12, Options{}, b.man.data(),
                              b.exp.data(), Device::cuda, nullptr);
  const std::string msg = fastpaper::last_error();
  const Status su = bfp::unpack(b.man.data(), b.exp.data(), 2, 16, bfp::BFP12, b.out.data(),
                                DType::float16, Device::cuda, nullptr);
  const Status sq = bfp::quantize(b.x.data(), DType::bfloat16, 2, 16, bfp::MXINT8, Options{},
                                  b.out.data(), DType::float32, Device::cuda, nullptr);
  for (const Status s : {sp, su, sq}) {
    EXPECT_TRUE(s == Status::not_built_with_cuda || s == Status::cuda_error) << fastpaper::status_name(s);
    if (!fastpaper::cuda_built()) {
      EXPECT_EQ(s, Status::not_built_with_cuda);
    }
  }
  EXPECT_FALSE(msg.empty());
  EXPECT_STRNE(fastpaper::last_error(), "");
}

}  // namespace
