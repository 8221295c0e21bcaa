// Public API of the multi-head recurrent cells (fastpaper/rnn.h): validate arguments, then
// dispatch to the CPU or CUDA kernels.
#include "fastpaper/rnn.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"
#include "fastpaper/config.h"
#include "rnn/rnn_backends.h"

namespace fastpaper::rnn {
namespace {

using fastpaper::detail::fail;
using detail::bf16_t;
using detail::half_t;

bool mul_ok(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

Status check_shape(const Shape& s, Device device) {
  if (s.batch < 0 || s.time < 0 || s.heads < 0 || s.head_dim < 0) {
    return fail(Status::invalid_argument, "batch, time, heads and head_dim must be >= 0");
  }
  if (s.cell != Cell::lstm && s.cell != Cell::gru && s.cell != Cell::elman &&
      s.cell != Cell::slstm) {
    return fail(Status::invalid_argument, "cell must be Cell::lstm, gru, elman or slstm");
  }
  if (device != Device::cpu && device != Device::cuda) {
    return fail(Status::invalid_argument, "device must be Device::cpu or Device::cuda");
  }
  // the largest buffer: hist with S * (T + 1) * B * NH * DH, or Wx with T * B * G * NH * DH
  int64_t n = 0;
  if (!mul_ok(s.batch, s.time + 1, &n) || !mul_ok(n, s.heads, &n) ||
      !mul_ok(n, s.head_dim, &n) || !mul_ok(n, 4, &n) ||
      !mul_ok(s.heads * 4, s.head_dim, &n) || !mul_ok(n, s.head_dim, &n)) {
    return fail(Status::invalid_argument, "tensor sizes overflow int64");
  }
  return fastpaper::detail::check_device_built(device);
}

bool empty(const Shape& s) {
  return s.batch == 0 || s.heads == 0 || s.head_dim == 0;
}

// The extra checks of forward_input / backward_input (the fused input projection).
Status check_input_args(const Shape& s, Device device, int64_t in_dim, bool have_wih_out) {
  if (device != Device::cpu) {
    return fail(Status::invalid_argument, "rnn::forward_input / backward_input run on the CPU only");
  }
  if (s.cell == Cell::gru) {
    return fail(Status::invalid_argument, "rnn::forward_input / backward_input: the GRU is not "
                                          "supported (compute Wx and call forward / backward)");
  }
  if (in_dim <= 0) return fail(Status::invalid_argument, "rnn: in_dim must be > 0");
  if (!have_wih_out) return fail(Status::invalid_argument, "rnn::backward_input: dWih is null");
  int64_t n = 0;
  if (!mul_ok(s.batch * s.time, in_dim, &n) || !mul_ok(s.heads * s.head_dim * 4, in_dim, &n)) {
    return fail(Status::invalid_argument, "tensor sizes overflow int64");
  }
  return Status::ok;
}

template <typename S, typename T>
Status run_forward(const FwdArgs<S, T>& a, const Shape& s, Device device, void* stream) {
  if (Status st = check_shape(s, device); st != Status::ok) return st;
  if (empty(s)) return Status::ok;
  if (a.R == nullptr || a.b == nullptr || a.last == nullptr ||
      (s.time > 0 && ((a.Wx == nullptr && a.x == nullptr) || a.h_all == nullptr))) {
    return fail(Status::invalid_argument, "rnn::forward: null data pointer for a non-empty tensor");
  }
  if (s.time > 0 && (a.hist == nullptr) != (a.cache == nullptr)) {  // T = 0: cache is empty
    return fail(Status::invalid_argument, "rnn::forward: hist and cache are saved together");
  }
  if (a.Wih != nullptr) {  // forward_input
    if (Status st = check_input_args(s, device, a.in_dim, true); st != Status::ok) return st;
    if (s.time > 0 && a.x == nullptr) {
      return fail(Status::invalid_argument, "rnn::forward_input: null x for a non-empty tensor");
    }
  }
  if (device == Device::cuda) return cuda::forward(a, s, stream);
  cpu::forward(a, s);
  return Status::ok;
}

template <typename S, typename T>
Status run_backward(const BwdArgs<S, T>& a, const Shape& s, Device device, void* stream) {
  if (Status st = check_shape(s, device); st != Status::ok) return st;
  if (empty(s)) return Status::ok;
  if (a.R == nullptr || a.hist == nullptr || a.dR == nullptr || a.db == nullptr ||
      (s.time > 0 && (a.cache == nullptr || a.work == nullptr ||
                      (a.Wih == nullptr ? a.dWx == nullptr : a.x == nullptr)))) {
    return fail(Status::invalid_argument, "rnn::backward: null data pointer for a non-empty tensor");
  }
  if (a.Wih != nullptr) {  // backward_input
    if (Status st = check_input_args(s, device, a.in_dim, a.dWih != nullptr); st != Status::ok) {
      return st;
    }
  }
  if (device == Device::cuda) return cuda::backward(a, s, stream);
  cpu::backward(a, s);
  return Status::ok;
}

template <typename S>
Status forward_as(const void* Wx, const void* R, const void* b, const void* states0,
                  const int64_t* lengths, void* h_all, void* last, float* hist, float* cache,
                  const Shape& s, Device device, void* stream) {
  const FwdArgs<S, float> a{static_cast<const S*>(Wx), static_cast<const S*>(R),
                            static_cast<const S*>(b), static_cast<const S*>(states0), lengths,
                            static_cast<S*>(h_all), static_cast<S*>(last), hist, cache};
  return run_forward(a, s, device, stream);
}

template <typename S>
Status backward_as(const void* dh_all, const void* dlast, const void* R, const float* hist,
                   const float* cache, const int64_t* lengths, void* dWx, void* dR, void* db,
                   void* dstates0, float* work, const Shape& s, Device device, void* stream) {
  const BwdArgs<S, float> a{static_cast<const S*>(dh_all), static_cast<const S*>(dlast),
                            static_cast<const S*>(R), hist, cache, lengths,
                            static_cast<S*>(dWx), static_cast<S*>(dR), static_cast<S*>(db),
                            static_cast<S*>(dstates0), work};
  return run_backward(a, s, device, stream);
}

}  // namespace

int64_t backward_workspace(const Shape& s) {
  int64_t n = 0;
  if (s.batch < 0 || s.time < 0 || s.heads < 0 || s.head_dim < 0) return 0;
  if (!mul_ok(s.time, s.batch, &n) || !mul_ok(n, s.heads, &n) ||
      !mul_ok(n, bias_rows(s.cell), &n) || !mul_ok(n, s.head_dim, &n)) {
    return 0;
  }
  return n;
}

Status forward(const void* Wx, const void* R, const void* b, const void* states0,
               const int64_t* lengths, void* h_all, void* last, float* hist, float* cache,
               DType dtype, const Shape& s, Device device, void* stream) {
  switch (dtype) {
    case DType::float32:
      return forward_as<float>(Wx, R, b, states0, lengths, h_all, last, hist, cache, s, device,
                               stream);
    case DType::float16:
      return forward_as<half_t>(Wx, R, b, states0, lengths, h_all, last, hist, cache, s, device,
                                stream);
    case DType::bfloat16:
      return forward_as<bf16_t>(Wx, R, b, states0, lengths, h_all, last, hist, cache, s, device,
                                stream);
  }
  return fail(Status::invalid_argument, "dtype must be float32, float16 or bfloat16");
}

Status forward(const double* Wx, const double* R, const double* b, const double* states0,
               const int64_t* lengths, double* h_all, double* last, double* hist, double* cache,
               const Shape& s, Device device, void* stream) {
  const FwdArgs<double, double> a{Wx, R, b, states0, lengths, h_all, last, hist, cache};
  return run_forward(a, s, device, stream);
}

Status forward_input(const void* x, const void* Wih, int64_t in_dim, const void* R, const void* b,
                     const void* states0, const int64_t* lengths, void* h_all, void* last,
                     float* hist, float* cache, DType dtype, const Shape& s, Device device,
                     void* stream) {
  if (dtype != DType::float32) {
    return fail(Status::invalid_argument, "rnn::forward_input: dtype must be float32 (or float64)");
  }
  if (Wih == nullptr) return fail(Status::invalid_argument, "rnn::forward_input: Wih is null");
  FwdArgs<float, float> a{nullptr, static_cast<const float*>(R), static_cast<const float*>(b),
                          static_cast<const float*>(states0), lengths,
                          static_cast<float*>(h_all), static_cast<float*>(last), hist, cache};
  a.x = static_cast<const float*>(x);
  a.Wih = static_cast<const float*>(Wih);
  a.in_dim = in_dim;
  return run_forward(a, s, device, stream);
}

Status forward_input(const double* x, const double* Wih, int64_t in_dim, const double* R,
                     const double* b, const double* states0, const int64_t* lengths,
                     double* h_all, double* last, double* hist, double* cache, const Shape& s,
                     Device device, void* stream) {
  if (Wih == nullptr) return fail(Status::invalid_argument, "rnn::forward_input: Wih is null");
  FwdArgs<double, double> a{nullptr, R, b, states0, lengths, h_all, last, hist, cache};
  a.x = x;
  a.Wih = Wih;
  a.in_dim = in_dim;
  return run_forward(a, s, device, stream);
}

Status backward(const void* dh_all, const void* dlast, const void* R, const float* hist,
                const float* cache, const int64_t* lengths, void* dWx, void* dR, void* db,
                void* dstates0, float* work, DType dtype, const Shape& s, Device device,
                void* stream) {
  switch (dtype) {
    case DType::float32:
      return backward_as<float>(dh_all, dlast, R, hist, cache, lengths, dWx, dR, db, dstates0,
                                work, s, device, stream);
    case DType::float16:
      return backward_as<half_t>(dh_all, dlast, R, hist, cache, lengths, dWx, dR, db, dstates0,
                                 work, s, device, stream);
    case DType::bfloat16:
      return backward_as<bf16_t>(dh_all, dlast, R, hist, cache, lengths, dWx, dR, db, dstates0,
                                 work, s, device, stream);
  }
  return fail(Status::invalid_argument, "dtype must be float32, float16 or bfloat16");
}

Status backward(const double* dh_all, const double* dlast, const double* R, const double* hist,
                const double* cache, const int64_t* lengths, double* dWx, double* dR, double* db,
                double* dstates0, double* work, const Shape& s, Device device, void* stream) {
  const BwdArgs<double, double> a{dh_all, dlast, R, hist, cache, lengths,
                                  dWx, dR, db, dstates0, work};
  return run_backward(a, s, device, stream);
}

Status backward_input(const void* dh_all, const void* dlast, const void* x, const void* Wih,
                      int64_t in_dim, const void* R, const float* hist, const float* cache,
                      const int64_t* lengths, void* dx, void* dWih, void* dR, void* db,
                      void* dstates0, float* work, DType dtype, const Shape& s, Device device,
                      void* stream) {
  if (dtype != DType::float32) {
    return fail(Status::invalid_argument, "rnn::backward_input: dtype must be float32 (or float64)");
  }
  if (Wih == nullptr) return fail(Status::invalid_argument, "rnn::backward_input: Wih is null");
  BwdArgs<float, float> a{static_cast<const float*>(dh_all), static_cast<const float*>(dlast),
                          static_cast<const float*>(R), hist, cache, lengths, nullptr,
                          static_cast<float*>(dR), static_cast<float*>(db),
                          static_cast<float*>(dstates0), work};
  a.x = static_cast<const float*>(x);
  a.Wih = static_cast<const float*>(Wih);
  a.in_dim = in_dim;
  a.dx = static_cast<float*>(dx);
  a.dWih = static_cast<float*>(dWih);
  return run_backward(a, s, device, stream);
}

Status backward_input(const double* dh_all, const double* dlast, const double* x,
                      const double* Wih, int64_t in_dim, const double* R, const double* hist,
                      const double* cache, const int64_t* lengths, double* dx, double* dWih,
                      double* dR, double* db, double* dstates0, double* work, const Shape& s,
                      Device device, void* stream) {
  if (Wih == nullptr) return fail(Status::invalid_argument, "rnn::backward_input: Wih is null");
  BwdArgs<double, double> a{dh_all, dlast, R, hist, cache, lengths, nullptr, dR, db, dstates0, work};
  a.x = x;
  a.Wih = Wih;
  a.in_dim = in_dim;
  a.dx = dx;
  a.dWih = dWih;
  return run_backward(a, s, device, stream);
}

// ---- CUDA path selection -----------------------------------------------------------------------
namespace {
// -1: not read yet; else a CudaPath. FASTPAPER_RNN_PATH is read once, at the first use.
std::atomic<int32_t> g_cuda_path{-1};

bool parse_path(const char* name, CudaPath* out) {
  static const char* const names[] = {"auto", "persistent", "cluster", "cooperative", "step"};
  for (int32_t i = 0; i < 5; ++i) {
    if (std::strcmp(name, names[i]) == 0) {
      *out = static_cast<CudaPath>(i);
      return true;
    }
  }
  return false;
}
}  // namespace

CudaPath forced_cuda_path() {
  int32_t v = g_cuda_path.load(std::memory_order_relaxed);
  if (v < 0) {
    CudaPath p = CudaPath::automatic;
    const char* env = std::getenv("FASTPAPER_RNN_PATH");
    if (env != nullptr && *env != '\0' && !parse_path(env, &p)) p = CudaPath::automatic;
    int32_t expected = -1;
    g_cuda_path.compare_exchange_strong(expected, static_cast<int32_t>(p));
    v = g_cuda_path.load(std::memory_order_relaxed);
  }
  return static_cast<CudaPath>(v);
}

Status set_cuda_path(const char* name) {
  CudaPath p = CudaPath::automatic;
  if (name == nullptr || !parse_path(name, &p)) {
    return fail(Status::invalid_argument,
                "rnn path must be 'auto', 'persistent', 'cluster', 'cooperative' or 'step'");
  }
  g_cuda_path.store(static_cast<int32_t>(p), std::memory_order_relaxed);
  return Status::ok;
}

const char* get_cuda_path() {
  static const char* const names[] = {"auto", "persistent", "cluster", "cooperative", "step"};
  return names[static_cast<int32_t>(forced_cuda_path())];
}

Status cuda_path(DType dtype, const Shape& s, bool backward, const char** name) {
  if (name == nullptr) return fail(Status::invalid_argument, "rnn::cuda_path: name is null");
  if (Status st = check_shape(s, Device::cuda); st != Status::ok) return st;
  if (empty(s)) {
    return fail(Status::invalid_argument, "rnn::cuda_path: empty shape (no kernel runs)");
  }
  return cuda::describe_path(dtype, s, backward, name);
}

#if !FASTPAPER_HAS_CUDA
// CPU-only build: the CUDA entry points exist so the dispatcher links; check_shape already refused.
namespace cuda {
Status describe_path(DType, const Shape&, bool, const char**) {
  return Status::not_built_with_cuda;
}
template <typename S, typename T>
Status forward(const FwdArgs<S, T>&, const Shape&, void*) {
  return Status::not_built_with_cuda;
}
template <typename S, typename T>
Status backward(const BwdArgs<S, T>&, const Shape&, void*) {
  return Status::not_built_with_cuda;
}
template Status forward(const FwdArgs<float, float>&, const Shape&, void*);
template Status forward(const FwdArgs<double, double>&, const Shape&, void*);
template Status forward(const FwdArgs<half_t, float>&, const Shape&, void*);
template Status forward(const FwdArgs<bf16_t, float>&, const Shape&, void*);
template Status backward(const BwdArgs<float, float>&, const Shape&, void*);
template Status backward(const BwdArgs<double, double>&, const Shape&, void*);
template Status backward(const BwdArgs<half_t, float>&, const Shape&, void*);
template Status backward(const BwdArgs<bf16_t, float>&, const Shape&, void*);
}  // namespace cuda
#endif

}  // namespace fastpaper::rnn
