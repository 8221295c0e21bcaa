// Public ParaRNN API (fastpaper/pararnn.h): validate arguments, then dispatch to the CPU or CUDA
// kernels.
#include "fastpaper/pararnn.h"

#include <limits>
#include <string>

#include "core/error.h"
#include "fastpaper/config.h"
#include "pararnn/pararnn_backends.h"

namespace fastpaper::pararnn {
namespace {

using fastpaper::detail::fail;

// a * b for non-negative a, b; false on int64 overflow.
bool mul_ok(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

Status check_call(const void* J, const void* r, const void* h0, const void* h, int64_t batch,
                  int64_t time, int64_t channels, int32_t block, bool adjoint, Device device) {
  if (batch < 0 || time < 0 || channels < 0) {
    return fail(Status::invalid_argument,
                "batch, time and channels must be >= 0, got " + std::to_string(batch) + ", " +
                    std::to_string(time) + ", " + std::to_string(channels));
  }
  if (device != Device::cpu && device != Device::cuda) {
    return fail(Status::invalid_argument, "device must be Device::cpu or Device::cuda");
  }
  if (adjoint && h0 != nullptr) {
    return fail(Status::invalid_argument, "h0 must be null for the adjoint recurrence");
  }
  const int32_t max_block = device == Device::cuda ? kMaxBlockCuda : kMaxBlockCpu;
  if (block < 1 || block > max_block) {
    return fail(Status::invalid_argument,
                "block must be in [1, " + std::to_string(max_block) + "] on " +
                    (device == Device::cuda ? "CUDA" : "the CPU") + ", got " +
                    std::to_string(block));
  }
  if (channels % block != 0) {
    return fail(Status::invalid_argument, "channels (" + std::to_string(channels) +
                                              ") must be a multiple of block (" +
                                              std::to_string(block) + ")");
  }
  int64_t n = 0;
  if (!mul_ok(batch, time, &n) || !mul_ok(n, channels, &n) || !mul_ok(n, block, &n)) {
    return fail(Status::invalid_argument, "batch * time * channels * block overflows int64");
  }
  if (n > 0 && (J == nullptr || r == nullptr || h == nullptr)) {
    return fail(Status::invalid_argument, "null data pointer for a non-empty tensor");
  }
  if (Status s = fastpaper::detail::check_device_built(device); s != Status::ok) return s;
  return fastpaper::detail::succeed();
}

template <typename S>
Status scan(const S* J, const S* r, const S* h0, S* h, int64_t batch, int64_t time,
            int64_t channels, int32_t block, bool reverse, bool adjoint, Device device,
            void* stream) {
  if (Status s = check_call(J, r, h0, h, batch, time, channels, block, adjoint, device);
      s != Status::ok || batch == 0 || time == 0 || channels == 0) {
    return s;
  }
  const ScanShape shape{batch, time, channels, block, reverse, adjoint};
  if (device == Device::cuda) return cuda::linear_scan(J, r, h0, h, shape, stream);
  cpu::linear_scan(J, r, h0, h, shape);
  return Status::ok;
}

}  // namespace

Status linear_scan(const float* J, const float* r, const float* h0, float* h, int64_t batch,
                   int64_t time, int64_t channels, int32_t block, bool reverse, bool adjoint,
                   Device device, void* stream) {
  return scan(J, r, h0, h, batch, time, channels, block, reverse, adjoint, device, stream);
}

Status linear_scan(const double* J, const double* r, const double* h0, double* h, int64_t batch,
                   int64_t time, int64_t channels, int32_t block, bool reverse, bool adjoint,
                   Device device, void* stream) {
  return scan(J, r, h0, h, batch, time, channels, block, reverse, adjoint, device, stream);
}

Status linear_scan(const void* J, const void* r, const void* h0, void* h, DType dtype,
                   int64_t batch, int64_t time, int64_t channels, int32_t block, bool reverse,
                   bool adjoint, Device device, void* stream) {
  using detail::bf16_bits;
  using detail::half_bits;
  switch (dtype) {
    case DType::float32:
      return scan(static_cast<const float*>(J), static_cast<const float*>(r),
                  static_cast<const float*>(h0), static_cast<float*>(h), batch, time, channels,
                  block, reverse, adjoint, device, stream);
    case DType::float16:
      return scan(static_cast<const half_bits*>(J), static_cast<const half_bits*>(r),
                  static_cast<const half_bits*>(h0), static_cast<half_bits*>(h), batch, time,
                  channels, block, reverse, adjoint, device, stream);
    case DType::bfloat16:
      return scan(static_cast<const bf16_bits*>(J), static_cast<const bf16_bits*>(r),
                  static_cast<const bf16_bits*>(h0), static_cast<bf16_bits*>(h), batch, time,
                  channels, block, reverse, adjoint, device, stream);
  }
  return fail(Status::invalid_argument, "dtype must be float32, float16 or bfloat16");
}

#if !FASTPAPER_HAS_CUDA
// CPU-only build: the CUDA entry points exist so the dispatcher links; check_call already refused.
namespace cuda {
template <typename S>
Status linear_scan(const S*, const S*, const S*, S*, const ScanShape&, void*) {
  return Status::not_built_with_cuda;
}
template Status linear_scan(const float*, const float*, const float*, float*, const ScanShape&, void*);
template Status linear_scan(const double*, const double*, const double*, double*, const ScanShape&,
                            void*);
template Status linear_scan(const detail::half_bits*, const detail::half_bits*,
                            const detail::half_bits*, detail::half_bits*, const ScanShape&, void*);
template Status linear_scan(const detail::bf16_bits*, const detail::bf16_bits*,
                            const detail::bf16_bits*, detail::bf16_bits*, const ScanShape&, void*);
}  // namespace cuda
#endif

}  // namespace fastpaper::pararnn
