// Public API of the fused ParaGRU / ParaLSTM kernels (fastpaper/pararnn.h, cell_*): validate the
// arguments, then dispatch to the CPU (pararnn_cells_cpu.cpp) or CUDA (pararnn_cells_cuda.cu)
// kernels.
#include <cmath>
#include <string>

#include "core/error.h"
#include "fastpaper/config.h"
#include "fastpaper/pararnn.h"
#include "pararnn/pararnn_backends.h"

namespace fastpaper::pararnn {
namespace {

using fastpaper::detail::bf16_bits;
using fastpaper::detail::fail;
using fastpaper::detail::half_bits;

Status check_shape(Cell cell, int64_t batch, int64_t time, int64_t channels, Device device) {
  if (cell != Cell::gru && cell != Cell::lstm) {
    return fail(Status::invalid_argument, "cell must be Cell::gru or Cell::lstm");
  }
  if (batch < 0 || time < 0 || channels < 0) {
    return fail(Status::invalid_argument,
                "batch, time and channels must be >= 0, got " + std::to_string(batch) + ", " +
                    std::to_string(time) + ", " + std::to_string(channels));
  }
  if (device != Device::cpu && device != Device::cuda) {
    return fail(Status::invalid_argument, "device must be Device::cpu or Device::cuda");
  }
  int64_t n = 0;
  if (__builtin_mul_overflow(batch, time, &n) || __builtin_mul_overflow(n, channels, &n) ||
      __builtin_mul_overflow(n, int64_t{5}, &n)) {
    return fail(Status::invalid_argument, "batch * time * channels * 5 overflows int64");
  }
  return fastpaper::detail::check_device_built(device);
}

bool empty(int64_t batch, int64_t time, int64_t channels) {
  return batch == 0 || time == 0 || channels == 0;
}

Status null_data(const char* what) {
  return fail(Status::invalid_argument, std::string("null data pointer: ") + what);
}

template <typename S>
Status sequential(Cell cell, const S* pre, const typename Io<S>::T* params, const S* h0, S* states,
                  int64_t batch, int64_t time, int64_t channels, Device device, void* stream) {
  if (Status s = check_shape(cell, batch, time, channels, device); s != Status::ok) return s;
  if (empty(batch, time, channels)) return Status::ok;
  if (!pre || !params || !states) return null_data("pre, params and states are required");
  const CellShape shape{cell, batch, time, channels};
  if (device == Device::cuda) return cuda::cell_sequential(pre, params, h0, states, shape, stream);
  cpu::cell_sequential(pre, params, h0, states, shape);
  return Status::ok;
}

template <typename S>
Status newton(Cell cell, const S* pre, const typename Io<S>::T* params, const S* h0, S* states,
              int32_t* info, int64_t batch, int64_t time, int64_t channels, int32_t max_iters,
              double atol, double rtol, Device device, void* stream) {
  if (Status s = check_shape(cell, batch, time, channels, device); s != Status::ok) return s;
  if (max_iters < 1) {
    return fail(Status::invalid_argument,
                "max_iters must be >= 1, got " + std::to_string(max_iters));
  }
  if (!(atol >= 0) || !(rtol >= 0) || std::isinf(atol) || std::isinf(rtol)) {
    return fail(Status::invalid_argument, "atol and rtol must be finite and >= 0");
  }
  if (info == nullptr) return null_data("info is required");
  const CellShape shape{cell, batch, time, channels};
  const NewtonCfg cfg{max_iters, atol, rtol};
  if (empty(batch, time, channels)) {
    if (device == Device::cuda) {  // info is device memory: let the backend clear it
      return cuda::cell_newton<S>(nullptr, nullptr, nullptr, nullptr, info, shape, cfg, stream);
    }
    info[0] = info[1] = 0;
    return Status::ok;
  }
  if (!pre || !params || !states) return null_data("pre, params and states are required");
  if (device == Device::cuda) {
    return cuda::cell_newton(pre, params, h0, states, info, shape, cfg, stream);
  }
  cpu::cell_newton(pre, params, h0, states, info, shape, cfg);
  return Status::ok;
}

template <typename S, typename P>
Status backward(Cell cell, const S* pre, const P* params, const S* h0, const S* states,
                const S* grad, S* dpre, S* dh0, P* dparams, P* workspace, int64_t batch,
                int64_t time, int64_t channels, Device device, void* stream) {
  if (Status s = check_shape(cell, batch, time, channels, device); s != Status::ok) return s;
  if (batch == 0 || channels == 0) return Status::ok;
  if (!params || !dparams || !workspace) {
    return null_data("params, dparams and workspace are required");
  }
  if (time > 0 && (!pre || !states || !grad || !dpre)) {
    return null_data("pre, states, grad and dpre are required");
  }
  const CellShape shape{cell, batch, time, channels};
  if (device == Device::cuda) {
    return cuda::cell_backward(pre, params, h0, states, grad, dpre, dh0, dparams, workspace, shape,
                               stream);
  }
  cpu::cell_backward(pre, params, h0, states, grad, dpre, dh0, dparams, workspace, shape);
  return Status::ok;
}

Status bad_dtype() {
  return fail(Status::invalid_argument, "dtype must be float32, float16 or bfloat16");
}

}  // namespace

int32_t cell_params(Cell cell) { return cell == Cell::lstm ? 5 : 3; }
int32_t cell_state(Cell cell) { return cell == Cell::lstm ? 2 : 1; }

Status cell_sequential(Cell cell, const double* pre, const double* params, const double* h0,
                       double* states, int64_t batch, int64_t time, int64_t channels,
                       Device device, void* stream) {
  return sequential(cell, pre, params, h0, states, batch, time, channels, device, stream);
}

Status cell_sequential(Cell cell, const void* pre, const float* params, const void* h0,
                       void* states, DType dtype, int64_t batch, int64_t time, int64_t channels,
                       Device device, void* stream) {
  switch (dtype) {
    case DType::float32:
      return sequential(cell, static_cast<const float*>(pre), params,
                        static_cast<const float*>(h0), static_cast<float*>(states), batch, time,
                        channels, device, stream);
    case DType::float16:
      return sequential(cell, static_cast<const half_bits*>(pre), params,
                        static_cast<const half_bits*>(h0), static_cast<half_bits*>(states), batch,
                        time, channels, device, stream);
    case DType::bfloat16:
      return sequential(cell, static_cast<const bf16_bits*>(pre), params,
                        static_cast<const bf16_bits*>(h0), static_cast<bf16_bits*>(states), batch,
                        time, channels, device, stream);
  }
  return bad_dtype();
}

Status cell_newton(Cell cell, const double* pre, const double* params, const double* h0,
                   double* states, int32_t* info, int64_t batch, int64_t time, int64_t channels,
                   int32_t max_iters, double atol, double rtol, Device device, void* stream) {
  return newton(cell, pre, params, h0, states, info, batch, time, channels, max_iters, atol, rtol,
                device, stream);
}

Status cell_newton(Cell cell, const void* pre, const float* params, const void* h0, void* states,
                   int32_t* info, DType dtype, int64_t batch, int64_t time, int64_t channels,
                   int32_t max_iters, double atol, double rtol, Device device, void* stream) {
  switch (dtype) {
    case DType::float32:
      return newton(cell, static_cast<const float*>(pre), params, static_cast<const float*>(h0),
                    static_cast<float*>(states), info, batch, time, channels, max_iters, atol,
                    rtol, device, stream);
    case DType::float16:
      return newton(cell, static_cast<const half_bits*>(pre), params,
                    static_cast<const half_bits*>(h0), static_cast<half_bits*>(states), info,
                    batch, time, channels, max_iters, atol, rtol, device, stream);
    case DType::bfloat16:
      return newton(cell, static_cast<const bf16_bits*>(pre), params,
                    static_cast<const bf16_bits*>(h0), static_cast<bf16_bits*>(states), info,
                    batch, time, channels, max_iters, atol, rtol, device, stream);
  }
  return bad_dtype();
}

Status cell_backward(Cell cell, const double* pre, const double* params, const double* h0,
                     const double* states, const double* grad, double* dpre, double* dh0,
                     double* dparams, double* workspace, int64_t batch, int64_t time,
                     int64_t channels, Device device, void* stream) {
  return backward(cell, pre, params, h0, states, grad, dpre, dh0, dparams, workspace, batch, time,
                  channels, device, stream);
}

Status cell_backward(Cell cell, const void* pre, const float* params, const void* h0,
                     const void* states, const void* grad, void* dpre, void* dh0, float* dparams,
                     float* workspace, DType dtype, int64_t batch, int64_t time, int64_t channels,
                     Device device, void* stream) {
  switch (dtype) {
    case DType::float32:
      return backward(cell, static_cast<const float*>(pre), params, static_cast<const float*>(h0),
                      static_cast<const float*>(states), static_cast<const float*>(grad),
                      static_cast<float*>(dpre), static_cast<float*>(dh0), dparams, workspace,
                      batch, time, channels, device, stream);
    case DType::float16:
      return backward(cell, static_cast<const half_bits*>(pre), params,
                      static_cast<const half_bits*>(h0), static_cast<const half_bits*>(states),
                      static_cast<const half_bits*>(grad), static_cast<half_bits*>(dpre),
                      static_cast<half_bits*>(dh0), dparams, workspace, batch, time, channels,
                      device, stream);
    case DType::bfloat16:
      return backward(cell, static_cast<const bf16_bits*>(pre), params,
                      static_cast<const bf16_bits*>(h0), static_cast<const bf16_bits*>(states),
                      static_cast<const bf16_bits*>(grad), static_cast<bf16_bits*>(dpre),
                      static_cast<bf16_bits*>(dh0), dparams, workspace, batch, time, channels,
                      device, stream);
  }
  return bad_dtype();
}

#if !FASTPAPER_HAS_CUDA
// CPU-only build: the CUDA entry points exist so the dispatcher links; check_shape refused.
namespace cuda {
template <typename S>
Status cell_sequential(const S*, const typename Io<S>::T*, const S*, S*, const CellShape&, void*) {
  return Status::not_built_with_cuda;
}
template <typename S>
Status cell_newton(const S*, const typename Io<S>::T*, const S*, S*, int32_t*, const CellShape&,
                   const NewtonCfg&, void*) {
  return Status::not_built_with_cuda;
}
template <typename S>
Status cell_backward(const S*, const typename Io<S>::T*, const S*, const S*, const S*, S*, S*,
                     typename Io<S>::T*, typename Io<S>::T*, const CellShape&, void*) {
  return Status::not_built_with_cuda;
}
#define FP_INSTANTIATE(S)                                                                        \
  template Status cell_sequential(const S*, const Io<S>::T*, const S*, S*, const CellShape&,    \
                                  void*);                                                       \
  template Status cell_newton(const S*, const Io<S>::T*, const S*, S*, int32_t*,                \
                              const CellShape&, const NewtonCfg&, void*);                       \
  template Status cell_backward(const S*, const Io<S>::T*, const S*, const S*, const S*, S*, S*, \
                                Io<S>::T*, Io<S>::T*, const CellShape&, void*);
FP_INSTANTIATE(float)
FP_INSTANTIATE(double)
FP_INSTANTIATE(half_bits)
FP_INSTANTIATE(bf16_bits)
#undef FP_INSTANTIATE
}  // namespace cuda
#endif

}  // namespace fastpaper::pararnn
