// Public MoE MLP API (fastpaper/moe.h): validate arguments, then dispatch to the CPU or CUDA
// kernels by device and storage type.
#include "fastpaper/moe.h"

#include <string>

#include "core/error.h"
#include "fastpaper/config.h"
#include "moe/moe_backends.h"

namespace fastpaper::moe {
namespace {

using fastpaper::detail::fail;
using detail::bf16_bits;
using detail::half_bits;
using detail::Io;

bool mul_ok(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

Status check_shape(const Shape& s, Device device) {
  if (s.tokens < 0 || s.dim < 1 || s.hidden < 1 || s.experts < 1) {
    return fail(Status::invalid_argument,
                "tokens must be >= 0 and dim, hidden, experts >= 1, got " +
                    std::to_string(s.tokens) + ", " + std::to_string(s.dim) + ", " +
                    std::to_string(s.hidden) + ", " + std::to_string(s.experts));
  }
  if (s.k < 1 || s.k > s.experts) {
    return fail(Status::invalid_argument, "k must be in [1, experts=" + std::to_string(s.experts) +
                                              "], got " + std::to_string(s.k));
  }
  int64_t n = 0;
  if (!mul_ok(s.experts, s.dim, &n) || !mul_ok(n, s.hidden, &n) ||
      !mul_ok(s.tokens, s.k, &n) || !mul_ok(n, s.dim, &n) || !mul_ok(n, s.hidden, &n) ||
      s.tokens * s.k > INT32_MAX || s.dim > INT32_MAX || s.hidden > INT32_MAX) {
    return fail(Status::invalid_argument, "sizes too large (tokens * k and widths must fit int32)");
  }
  if (device != Device::cpu && device != Device::cuda) {
    return fail(Status::invalid_argument, "device must be Device::cpu or Device::cuda");
  }
  return fastpaper::detail::check_device_built(device);
}

Status check_ptrs(std::initializer_list<const void*> ptrs, bool nonempty) {
  if (!nonempty) return Status::ok;
  for (const void* p : ptrs) {
    if (p == nullptr) return fail(Status::invalid_argument, "null data pointer for a non-empty tensor");
  }
  return Status::ok;
}

template <typename S>
Status fwd(const void* x, const void* scores, const int64_t* indices, const void* W1,
           const void* b1, const void* W2, const void* b2, void* y, const Shape& s, Device device,
           void* ws, size_t ws_bytes, void* stream) {
  using A = typename Io<S>::T;
  if (Status st = check_shape(s, device); st != Status::ok) return st;
  if (Status st = check_ptrs({W1, b1, W2, b2}, true); st != Status::ok) return st;
  if (Status st = check_ptrs({x, scores, indices, y}, s.tokens > 0); st != Status::ok) return st;
  if (s.tokens == 0) return fastpaper::detail::succeed();
  if (device == Device::cuda) {
    return cuda::forward(static_cast<const S*>(x), static_cast<const A*>(scores), indices,
                         static_cast<const S*>(W1), static_cast<const S*>(b1),
                         static_cast<const S*>(W2), static_cast<const S*>(b2),
                         static_cast<S*>(y), s, ws, ws_bytes, stream);
  }
  return cpu::forward(static_cast<const S*>(x), static_cast<const A*>(scores), indices,
                      static_cast<const S*>(W1), static_cast<const S*>(b1),
                      static_cast<const S*>(W2), static_cast<const S*>(b2), static_cast<S*>(y),
                      s);
}

template <typename S>
Status bwd(const void* dy, const void* x, const void* scores, const int64_t* indices,
           const void* W1, const void* b1, const void* W2, const void* b2, void* dx,
           void* dscores, void* dW1, void* db1, void* dW2, void* db2, const Shape& s,
           Device device, void* ws, size_t ws_bytes, void* stream) {
  using A = typename Io<S>::T;
  if (Status st = check_shape(s, device); st != Status::ok) return st;
  if (Status st = check_ptrs({W1, b1, W2, b2, dW1, db1, dW2, db2}, true); st != Status::ok) return st;
  if (Status st = check_ptrs({dy, x, scores, indices, dx, dscores}, s.tokens > 0); st != Status::ok) {
    return st;
  }
  if (device == Device::cuda) {
    return cuda::backward(static_cast<const S*>(dy), static_cast<const S*>(x),
                          static_cast<const A*>(scores), indices, static_cast<const S*>(W1),
                          static_cast<const S*>(b1), static_cast<const S*>(W2),
                          static_cast<const S*>(b2), static_cast<S*>(dx), static_cast<A*>(dscores),
                          static_cast<S*>(dW1), static_cast<S*>(db1), static_cast<S*>(dW2),
                          static_cast<S*>(db2), s, ws, ws_bytes, stream);
  }
  return cpu::backward(static_cast<const S*>(dy), static_cast<const S*>(x),
                       static_cast<const A*>(scores), indices, static_cast<const S*>(W1),
                       static_cast<const S*>(b1), static_cast<const S*>(W2),
                       static_cast<const S*>(b2), static_cast<S*>(dx), static_cast<A*>(dscores),
                       static_cast<S*>(dW1), static_cast<S*>(db1), static_cast<S*>(dW2),
                       static_cast<S*>(db2), s);
}

}  // namespace

size_t workspace_size(const Shape& s, Device device, bool backward, bool is_double, DType dtype) {
  if (device != Device::cuda || s.tokens < 0 || s.k < 1 || s.experts < 1) return 0;
  const size_t elem = is_double ? 8 : (dtype == DType::float32 ? 4 : 2);
  return cuda::workspace_size(s, backward, elem);
}

Status moe_mlp_forward(const double* x, const double* scores, const int64_t* indices,
                       const double* W1, const double* b1, const double* W2, const double* b2,
                       double* y, const Shape& s, Device device, void* ws, size_t ws_bytes,
                       void* stream) {
  return fwd<double>(x, scores, indices, W1, b1, W2, b2, y, s, device, ws, ws_bytes, stream);
}

Status moe_mlp_forward(const void* x, const float* scores, const int64_t* indices, const void* W1,
                       const void* b1, const void* W2, const void* b2, void* y, DType dtype,
                       const Shape& s, Device device, void* ws, size_t ws_bytes, void* stream) {
  switch (dtype) {
    case DType::float32:
      return fwd<float>(x, scores, indices, W1, b1, W2, b2, y, s, device, ws, ws_bytes, stream);
    case DType::float16:
      return fwd<half_bits>(x, scores, indices, W1, b1, W2, b2, y, s, device, ws, ws_bytes, stream);
    case DType::bfloat16:
      return fwd<bf16_bits>(x, scores, indices, W1, b1, W2, b2, y, s, device, ws, ws_bytes, stream);
  }
  return fail(Status::invalid_argument, "dtype must be float32, float16 or bfloat16");
}

Status moe_mlp_backward(const double* dy, const double* x, const double* scores,
                        const int64_t* indices, const double* W1, const double* b1,
                        const double* W2, const double* b2, double* dx, double* dscores,
                        double* dW1, double* db1, double* dW2, double* db2, const Shape& s,
                        Device device, void* ws, size_t ws_bytes, void* stream) {
  return bwd<double>(dy, x, scores, indices, W1, b1, W2, b2, dx, dscores, dW1, db1, dW2, db2, s,
                     device, ws, ws_bytes, stream);
}

Status moe_mlp_backward(const void* dy, const void* x, const float* scores,
                        const int64_t* indices, const void* W1, const void* b1, const void* W2,
                        const void* b2, void* dx, float* dscores, void* dW1, void* db1, void* dW2,
                        void* db2, DType dtype, const Shape& s, Device device, void* ws,
                        size_t ws_bytes, void* stream) {
  switch (dtype) {
    case DType::float32:
      return bwd<float>(dy, x, scores, indices, W1, b1, W2, b2, dx, dscores, dW1, db1, dW2, db2,
                        s, device, ws, ws_bytes, stream);
    case DType::float16:
      return bwd<half_bits>(dy, x, scores, indices, W1, b1, W2, b2, dx, dscores, dW1, db1, dW2,
                            db2, s, device, ws, ws_bytes, stream);
    case DType::bfloat16:
      return bwd<bf16_bits>(dy, x, scores, indices, W1, b1, W2, b2, dx, dscores, dW1, db1, dW2,
                            db2, s, device, ws, ws_bytes, stream);
  }
  return fail(Status::invalid_argument, "dtype must be float32, float16 or bfloat16");
}

#if !FASTPAPER_HAS_CUDA
// CPU-only build: the CUDA entry points exist so the dispatcher links; check_shape already refused.
namespace cuda {
size_t workspace_size(const Shape&, bool, size_t) { return 0; }
template <typename S>
Status forward(const S*, const typename Io<S>::T*, const int64_t*, const S*, const S*, const S*,
               const S*, S*, const Shape&, void*, size_t, void*) {
  return Status::not_built_with_cuda;
}
template <typename S>
Status backward(const S*, const S*, const typename Io<S>::T*, const int64_t*, const S*, const S*,
                const S*, const S*, S*, typename Io<S>::T*, S*, S*, S*, S*, const Shape&, void*,
                size_t, void*) {
  return Status::not_built_with_cuda;
}
#define FP_MOE_STUB(S)                                                                         \
  template Status forward<S>(const S*, const Io<S>::T*, const int64_t*, const S*, const S*,     \
                             const S*, const S*, S*, const Shape&, void*, size_t, void*);       \
  template Status backward<S>(const S*, const S*, const Io<S>::T*, const int64_t*, const S*,    \
                              const S*, const S*, const S*, S*, Io<S>::T*, S*, S*, S*, S*,      \
                              const Shape&, void*, size_t, void*);
FP_MOE_STUB(float)
FP_MOE_STUB(double)
FP_MOE_STUB(half_bits)
FP_MOE_STUB(bf16_bits)
#undef FP_MOE_STUB
}  // namespace cuda
#endif

}  // namespace fastpaper::moe
