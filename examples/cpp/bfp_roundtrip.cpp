// Example: pack a float32 matrix into BFP12 and MXINT8 with fastpaper::core, unpack it, check the error.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "fastpaper/bfp.h"
#include "fastpaper/core.h"

namespace bfp = fastpaper::bfp;

namespace {

// Packs and unpacks x (rows x cols), prints the storage size and the largest error, and returns
// whether every element lies within half a step of the block's grid (round to nearest).
bool roundtrip(const char* name, bfp::Format fmt, const std::vector<float>& x, int64_t rows,
               int64_t cols) {
  const int64_t mbytes = bfp::mantissa_bytes_per_row(cols, fmt);
  const int64_t ebytes = bfp::exponent_bytes_per_row(cols, fmt);
  std::vector<uint8_t> mantissas(rows * mbytes), exponents(rows * ebytes);
  std::vector<float> y(x.size());

  fastpaper::Status s = bfp::pack(x.data(), fastpaper::DType::float32, rows, cols, fmt, bfp::Options{},
                                  mantissas.data(), exponents.data(), fastpaper::Device::cpu, nullptr);
  if (s == fastpaper::Status::ok) {
    s = bfp::unpack(mantissas.data(), exponents.data(), rows, cols, fmt, y.data(),
                    fastpaper::DType::float32, fastpaper::Device::cpu, nullptr);
  }
  if (s != fastpaper::Status::ok) {
    std::fprintf(stderr, "%s: %s: %s\n", name, fastpaper::status_name(s), fastpaper::last_error());
    return false;
  }

  double max_err = 0.0, max_abs = 0.0;
  int64_t violations = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      // Grid step of this element's block: 2^(e - 127 - (M - 2)).
      const int e = exponents[r * ebytes + c / fmt.block];
      const double step = std::ldexp(1.0, e - 127 - (fmt.mantissa_bits - 2));
      const double err = std::fabs(static_cast<double>(x[i]) - y[i]);
      max_err = err > max_err ? err : max_err;
      max_abs = std::fabs(x[i]) > max_abs ? std::fabs(x[i]) : max_abs;
      violations += err > step / 2;
    }
  }
  const double stored = static_cast<double>(mantissas.size() + exponents.size());
  std::printf("%-7s %lld x %lld float32 (%zu bytes) -> %zu mantissa + %zu exponent bytes "
              "(%.2f bits/value), max |error| %.3g (max |x| %.3g), %lld outside step/2\n",
              name, static_cast<long long>(rows), static_cast<long long>(cols),
              x.size() * sizeof(float), mantissas.size(), exponents.size(),
              8.0 * stored / static_cast<double>(x.size()), max_err, max_abs,
              static_cast<long long>(violations));
  return violations == 0;
}

}  // namespace

int main() {
  std::printf("fastpaper %s (CUDA kernels %s, %d CUDA device(s))\n", fastpaper::version(),
              fastpaper::cuda_built() ? "built" : "not built", fastpaper::cuda_device_count());

  // 300 columns: not a multiple of the block, so the last block of each row is padded.
  const int64_t rows = 8, cols = 300;
  std::vector<float> x(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i) {
    // smooth signal with a per-row scale and a few outliers, like an activation matrix
    const double t = static_cast<double>(i % cols) / cols;
    x[i] = static_cast<float>(std::ldexp(std::sin(40.0 * t + static_cast<double>(i / cols)), static_cast<int>(i / cols) - 4));
    if (i % 97 == 0) x[i] *= 16.0f;
  }

  bool ok = roundtrip("BFP12", bfp::BFP12, x, rows, cols);
  ok = roundtrip("MXINT8", bfp::MXINT8, x, rows, cols) && ok;
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
