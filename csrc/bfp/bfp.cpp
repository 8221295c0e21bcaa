// Public BFP API (fastpaper/bfp.h): validate arguments, then dispatch to the CPU or CUDA kernels.
#include "fastpaper/bfp.h"

#include <limits>
#include <string>

#include "bfp/bfp_backends.h"
#include "core/error.h"
#include "fastpaper/config.h"

namespace fastpaper::bfp {
namespace {

using fastpaper::detail::fail;

bool valid_dtype(DType d) {
  return d == DType::float32 || d == DType::float16 || d == DType::bfloat16;
}

Status check_call(int64_t rows, int64_t cols, Format fmt, Options opt, DType in_dtype,
                  DType out_dtype, Device device, const void* a, const void* b, const void* c) {
  if (Status s = check_format(fmt); s != Status::ok) return s;
  if (rows < 0 || cols < 0) {
    return fail(Status::invalid_argument,
                "rows and cols must be >= 0, got " + std::to_string(rows) + " x " +
                    std::to_string(cols));
  }
  if (!valid_dtype(in_dtype) || !valid_dtype(out_dtype)) {
    return fail(Status::invalid_argument, "dtype must be float32, float16 or bfloat16");
  }
  if (opt.scale != Scale::no_clip && opt.scale != Scale::floor) {
    return fail(Status::invalid_argument, "scale must be Scale::no_clip or Scale::floor");
  }
  if (opt.rounding != Rounding::nearest_even && opt.rounding != Rounding::stochastic) {
    return fail(Status::invalid_argument, "rounding must be nearest_even or stochastic");
  }
  if (device != Device::cpu && device != Device::cuda) {
    return fail(Status::invalid_argument, "device must be Device::cpu or Device::cuda");
  }
  const int64_t padded = padded_cols(cols, fmt);
  if (cols > 0 && (padded == 0 || rows > std::numeric_limits<int64_t>::max() / padded)) {
    return fail(Status::invalid_argument, "rows * cols overflows int64");
  }
  if (rows > 0 && cols > 0 && (a == nullptr || b == nullptr || c == nullptr)) {
    return fail(Status::invalid_argument, "null data pointer for a non-empty tensor");
  }
  if (Status s = fastpaper::detail::check_device_built(device); s != Status::ok) return s;
  return fastpaper::detail::succeed();
}

detail::Codec codec_of(Format fmt, Options opt) {
  return detail::make_codec(fmt.block, fmt.mantissa_bits,
                            fmt.element == Element::twos_complement, opt.scale == Scale::floor,
                            opt.rounding == Rounding::stochastic, opt.seed);
}

}  // namespace

Status check_format(Format fmt) {
  const int b = fmt.block;
  if (b != 16 && b != 32 && b != 64 && b != 128) {
    return fail(Status::invalid_argument,
                "block must be 16, 32, 64 or 128, got " + std::to_string(b));
  }
  if (fmt.mantissa_bits < 2 || fmt.mantissa_bits > 8) {
    return fail(Status::invalid_argument,
                "mantissa_bits must be in [2, 8], got " + std::to_string(fmt.mantissa_bits));
  }
  if (fmt.element == Element::twos_complement) {
    if (fmt.mantissa_bits != 8) {
      return fail(Status::invalid_argument, "two's complement elements need mantissa_bits == 8");
    }
  } else if (fmt.element != Element::sign_magnitude) {
    return fail(Status::invalid_argument, "element must be sign_magnitude or twos_complement");
  }
  return fastpaper::detail::succeed();
}

int64_t padded_cols(int64_t cols, Format fmt) {
  if (cols < 0 || check_format(fmt) != Status::ok) return 0;
  if (cols > std::numeric_limits<int64_t>::max() - (fmt.block - 1)) return 0;  // would overflow
  return (cols + fmt.block - 1) / fmt.block * fmt.block;
}

int64_t mantissa_bytes_per_row(int64_t cols, Format fmt) {
  // padded is a multiple of 16, so dividing first is exact and cannot overflow
  return padded_cols(cols, fmt) / 8 * (fmt.mantissa_bits <= 4 ? 4 : 8);
}

int64_t exponent_bytes_per_row(int64_t cols, Format fmt) {
  const int64_t p = padded_cols(cols, fmt);
  return p == 0 ? 0 : p / fmt.block;
}

Status pack(const void* x, DType dtype, int64_t rows, int64_t cols, Format fmt, Options opt,
            uint8_t* mantissas, uint8_t* exponents, Device device, void* stream) {
  if (Status s = check_call(rows, cols, fmt, opt, dtype, dtype, device, x, mantissas, exponents);
      s != Status::ok || rows == 0 || cols == 0) {
    return s;
  }
  const detail::Codec c = codec_of(fmt, opt);
  if (device == Device::cuda) return cuda::pack(x, dtype, rows, cols, c, mantissas, exponents, stream);
  cpu::pack(x, dtype, rows, cols, c, mantissas, exponents);
  return Status::ok;
}

Status unpack(const uint8_t* mantissas, const uint8_t* exponents, int64_t rows, int64_t cols,
              Format fmt, void* out, DType out_dtype, Device device, void* stream) {
  if (Status s = check_call(rows, cols, fmt, Options{}, out_dtype, out_dtype, device, mantissas,
                            exponents, out);
      s != Status::ok || rows == 0 || cols == 0) {
    return s;
  }
  const detail::Codec c = codec_of(fmt, Options{});
  if (device == Device::cuda) {
    return cuda::unpack(mantissas, exponents, rows, cols, c, out, out_dtype, stream);
  }
  cpu::unpack(mantissas, exponents, rows, cols, c, out, out_dtype);
  return Status::ok;
}

Status quantize(const void* x, DType dtype, int64_t rows, int64_t cols, Format fmt, Options opt,
                void* out, DType out_dtype, Device device, void* stream) {
  if (Status s = check_call(rows, cols, fmt, opt, dtype, out_dtype, device, x, out, out);
      s != Status::ok || rows == 0 || cols == 0) {
    return s;
  }
  const detail::Codec c = codec_of(fmt, opt);
  if (device == Device::cuda) return cuda::quantize(x, dtype, rows, cols, c, out, out_dtype, stream);
  cpu::quantize(x, dtype, rows, cols, c, out, out_dtype);
  return Status::ok;
}

#if !FASTPAPER_HAS_CUDA
// CPU-only build: the CUDA entry points exist so the dispatcher links; check_call already refused.
namespace cuda {
Status pack(const void*, DType, int64_t, int64_t, const detail::Codec&, uint8_t*, uint8_t*, void*) {
  return Status::not_built_with_cuda;
}
Status unpack(const uint8_t*, const uint8_t*, int64_t, int64_t, const detail::Codec&, void*, DType,
              void*) {
  return Status::not_built_with_cuda;
}
Status quantize(const void*, DType, int64_t, int64_t, const detail::Codec&, void*, DType, void*) {
  return Status::not_built_with_cuda;
}
}  // namespace cuda
#endif

}  // namespace fastpaper::bfp
