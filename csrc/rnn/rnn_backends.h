// Internal: the CPU (csrc/rnn/rnn_cpu.cpp) and CUDA (cuda/rnn/*.cu) kernels behind
// fastpaper/rnn.h. Arguments arrive validated and non-empty (batch, time, heads, head_dim > 0).
#pragma once

#include <cstdint>

#include "fastpaper/detail/rnn_cells.h"
#include "fastpaper/rnn.h"

namespace fastpaper::rnn {

// Pointers of one call; S: float, double, detail::half_t or detail::bf16_t; T its compute type.
template <typename S, typename T>
struct FwdArgs {
  const S* Wx;
  const S* R;
  const S* b;
  const S* states0;  // nullable
  const int64_t* lengths;  // nullable
  S* h_all;
  S* last;
  T* hist;   // nullable
  T* cache;  // nullable
  // The input projection fused into the step GEMM (CPU, float32 / float64 storage only): when x
  // is set, Wx is not read and the gate inputs x_t Wih^T are summed with h_{t-1} R^T in the same
  // product. x [B, T, in_dim] contiguous, Wih [G * NH * DH, in_dim] (torch's weight_ih layout).
  const S* x = nullptr;
  const S* Wih = nullptr;
  int64_t in_dim = 0;
};

template <typename S, typename T>
struct BwdArgs {
  const S* dh_all;  // nullable
  const S* dlast;   // nullable
  const S* R;
  const T* hist;
  const T* cache;
  const int64_t* lengths;  // nullable
  S* dWx;
  S* dR;
  S* db;
  S* dstates0;  // nullable
  T* work;
  // The backward of forward_input (CPU, float32 / float64 storage only): when x is set, dWx is
  // not written (may be null); instead dx [B, T, in_dim] = dWx Wih and dWih [G * NH * DH, in_dim]
  // = sum over (b, t) of dWx^T x, where dWx is the gradient of the gate inputs x_t Wih^T.
  const S* x = nullptr;
  const S* Wih = nullptr;
  int64_t in_dim = 0;
  S* dx = nullptr;  // nullable: dx not wanted
  S* dWih = nullptr;
};

namespace cpu {
template <typename S, typename T>
void forward(const FwdArgs<S, T>& a, const Shape& s);
template <typename S, typename T>
void backward(const BwdArgs<S, T>& a, const Shape& s);
}  // namespace cpu

// The CUDA kernel family a call must use (automatic: cuda/rnn/rnn_cuda.cu, choose_path, decides).
// rnn.cpp keeps it: FASTPAPER_RNN_PATH, read once at the first call, then set_cuda_path.
enum class CudaPath : int32_t { automatic = 0, persistent, cluster, cooperative, step };
CudaPath forced_cuda_path();

namespace cuda {
// The family forward (backward = false) or backward would run for this call on the current
// device: a static name ("persistent", "cluster", "cooperative", "step").
Status describe_path(DType dtype, const Shape& s, bool backward, const char** name);
template <typename S, typename T>
Status forward(const FwdArgs<S, T>& a, const Shape& s, void* stream);
template <typename S, typename T>
Status backward(const BwdArgs<S, T>& a, const Shape& s, void* stream);
}  // namespace cuda

}  // namespace fastpaper::rnn
