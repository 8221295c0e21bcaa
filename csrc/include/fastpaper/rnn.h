// fastpaper::rnn — FlashRNN-style multi-head recurrent cells (LSTM, GRU, Elman, sLSTM): the
// recurrence g_t = Wx_t + R h_{t-1} + b with a block-diagonal R (NH heads of DH units), fused with
// the pointwise cell, forward and backward. The cell math and the tensor layouts are documented in
// fastpaper/detail/rnn_cells.h:
//   Wx [B, T, G, NH, DH], R [G, NH, DH, DH], b [GB, NH, DH], states [S, B, NH, DH],
//   h_all [B, T, NH, DH];  (G, GB, S) = LSTM (4, 4, 2), GRU (3, 4, 1), Elman (1, 1, 1), sLSTM (4, 4, 4).
//
// forward also writes, when the pointers are non-null, what backward needs (compute type:
// float, or double for the float64 overload):
//   hist  [S, T + 1, B, NH, DH]  hist[:, 0] = initial states, hist[:, t + 1] = states after step t
//   cache [T, B, NH, GB, DH]     the pre-activations `pre` of every step (rnn_cells.h); the CPU
//                                LSTM caches the activated gates instead (Lstm::forward_gates)
// lengths (nullable, int64 [B], on the same device as the data, each in [0, T]): sequence b stops
// at lengths[b]: for t >= lengths[b] its states stay frozen (hist repeats them), its h_all rows are
// zero, and last = the states after its last step (the initial states when lengths[b] == 0).
// states0 == nullptr means zero initial states (dstates0 == nullptr: that gradient is not wanted).
//
// backward takes the gradients of h_all and of last (either may be nullptr: zero) and writes
//   dWx [B, T, G, NH, DH], dR [G, NH, DH, DH], db [GB, NH, DH] (deterministic: no atomics, a fixed
//   summation order), dstates0 [S, B, NH, DH];
// work: backward_workspace(shape) elements of the compute type (the d pre of every step).
// Storage types: float32, float16, bfloat16 (DType overloads; float32 arithmetic, rounded once on
// output) or float64 (its own overload, float64 arithmetic). Device::cuda enqueues on `stream`.
#pragma once

#include <cstdint>

#include "fastpaper/status.h"

namespace fastpaper::rnn {

enum class Cell : int32_t { lstm = 0, gru = 1, elman = 2, slstm = 3 };

struct Shape {
  int64_t batch, time, heads, head_dim;
  Cell cell;
};

// Gate rows of Wx and R (G), bias / cached pre-activation rows (GB), state kinds (S).
constexpr int32_t gates(Cell c) { return c == Cell::gru ? 3 : c == Cell::elman ? 1 : 4; }
constexpr int32_t bias_rows(Cell c) { return c == Cell::elman ? 1 : 4; }
constexpr int32_t state_count(Cell c) {
  return c == Cell::lstm ? 2 : c == Cell::slstm ? 4 : 1;
}
// Elements of the backward workspace: T * B * NH * GB * DH (0 on overflow).
FASTPAPER_API int64_t backward_workspace(const Shape& s);

FASTPAPER_API Status forward(const void* Wx, const void* R, const void* b, const void* states0,
                             const int64_t* lengths, void* h_all, void* last, float* hist,
                             float* cache, DType dtype, const Shape& shape, Device device,
                             void* stream);
FASTPAPER_API Status forward(const double* Wx, const double* R, const double* b,
                             const double* states0, const int64_t* lengths, double* h_all,
                             double* last, double* hist, double* cache, const Shape& shape,
                             Device device, void* stream);

// forward with the input projection fused into the step GEMM (CPU only; float32 or float64;
// not the GRU, whose n gate keeps x_t W and R h apart): instead of reading Wx, the gate inputs
// Wx_t = x_t Wih^T are computed per step, where x [B, T, in_dim] and Wih [G * NH * DH, in_dim]
// (rows gate-major as torch.nn.LSTM's weight_ih). Everything else (states, lengths, hist, cache,
// outputs) as forward; backward is the same function (its dWx is the gradient of x Wih^T).
FASTPAPER_API Status forward_input(const void* x, const void* Wih, int64_t in_dim, const void* R,
                                   const void* b, const void* states0, const int64_t* lengths,
                                   void* h_all, void* last, float* hist, float* cache,
                                   DType dtype, const Shape& shape, Device device, void* stream);
FASTPAPER_API Status forward_input(const double* x, const double* Wih, int64_t in_dim,
                                   const double* R, const double* b, const double* states0,
                                   const int64_t* lengths, double* h_all, double* last,
                                   double* hist, double* cache, const Shape& shape, Device device,
                                   void* stream);

FASTPAPER_API Status backward(const void* dh_all, const void* dlast, const void* R,
                              const float* hist, const float* cache, const int64_t* lengths,
                              void* dWx, void* dR, void* db, void* dstates0, float* work,
                              DType dtype, const Shape& shape, Device device, void* stream);
FASTPAPER_API Status backward(const double* dh_all, const double* dlast, const double* R,
                              const double* hist, const double* cache, const int64_t* lengths,
                              double* dWx, double* dR, double* db, double* dstates0, double* work,
                              const Shape& shape, Device device, void* stream);

// The backward of forward_input (CPU only; float32 or float64): as backward, but instead of dWx
// it writes dx [B, T, in_dim] = dWx Wih and dWih [G * NH * DH, in_dim] = dWx^T x (the gradients
// of x and Wih; dWx, the gradient of x_t Wih^T, is never materialized: dx is computed per step
// with the recurrence and dWih by one GEMM from the workspace). dx == nullptr: not wanted (skipped).
FASTPAPER_API Status backward_input(const void* dh_all, const void* dlast, const void* x,
                                    const void* Wih, int64_t in_dim, const void* R,
                                    const float* hist, const float* cache, const int64_t* lengths,
                                    void* dx, void* dWih, void* dR, void* db, void* dstates0,
                                    float* work, DType dtype, const Shape& shape, Device device,
                                    void* stream);
FASTPAPER_API Status backward_input(const double* dh_all, const double* dlast, const double* x,
                                    const double* Wih, int64_t in_dim, const double* R,
                                    const double* hist, const double* cache,
                                    const int64_t* lengths, double* dx, double* dWih, double* dR,
                                    double* db, double* dstates0, double* work, const Shape& shape,
                                    Device device, void* stream);

// CUDA kernel family (cuda/rnn/rnn_cuda.cu, choose_path): "auto" (default) picks, in order, the
// first that fits: "persistent" (R_n in one CTA's shared memory), "cluster" (sm_90+: R_n sliced
// over a thread-block cluster of up to 16 CTAs, h exchanged through distributed shared memory),
// "cooperative" (R_n sliced over co-resident CTAs of one cooperative grid, grid-wide barrier per
// step) and "step" (one launch per time step). Naming one forces it; a forced family that cannot
// run a call makes that forward / backward fail with invalid_argument and the reason. The initial
// setting is the environment variable FASTPAPER_RNN_PATH, read once (an unknown value: "auto").
FASTPAPER_API Status set_cuda_path(const char* name);
FASTPAPER_API const char* get_cuda_path();
// The family forward (backward = false) or backward would run for `shape` on the current CUDA
// device under the current setting: *name = "persistent", "cluster", "cooperative" or "step".
FASTPAPER_API Status cuda_path(DType dtype, const Shape& shape, bool backward, const char** name);

}  // namespace fastpaper::rnn
