// fastpaper::pararnn — the linear recurrence at the heart of ParaRNN (Newton + parallel scan).
//
// linear_scan solves, for every batch element b and every channel group g independently,
//
//   forward  (reverse = false): h_t = J_t h_{t-1} + r_t,   t = 1 .. T,   h_0     = h0
//   backward (reverse = true):  h_t = J_t h_{t+1} + r_t,   t = T .. 1,   h_{T+1} = h0
//
// (h0 == nullptr means zeros). With adjoint = true it solves instead the transposed (adjoint)
// system of the same J, the recurrence a backward pass needs, without a shifted/transposed copy:
//
//   adjoint of forward (reverse = false): h_t = J_{t+1}^T h_{t+1} + r_t,  t = T .. 1,  J_{T+1} = 0
//   adjoint of reverse (reverse = true):  h_t = J_{t-1}^T h_{t-1} + r_t,  t = 1 .. T,  J_0 = 0
//
// (h0 must be nullptr then: the boundary term does not exist). The state of one time step has `channels` entries cut into
// channels / block groups of `block` consecutive entries; J_t is block-diagonal with one dense
// block x block matrix per group (block = 1: a diagonal Jacobian, one number per channel).
//
// Layout (row-major, contiguous, the native [B, T, N] layout of a sequence model):
//   J:  [batch][time][channels / block][block][block]   (block = 1: [batch][time][channels])
//       J[..][g][i][j] multiplies h[g * block + j] into h[g * block + i]
//   r, h: [batch][time][channels];  h0: [batch][channels]
// h may be the same pointer as r (in-place); it must not overlap J or h0 otherwise.
//
// Supported: block in [1, 8] on the CPU, block in [1, 4] on CUDA. Element types: float64
// (computed in float64), float32, and float16/bfloat16 storage through the DType overload
// (computed in float32, every output rounded once to the storage type). Device::cuda enqueues on `stream` and returns
// without synchronizing. The sequential dependence is broken by the associativity of affine-map
// composition (fastpaper/detail/pararnn_scan.h): CPU and CUDA both scan time in chunks.
#pragma once

#include <cstdint>

#include "fastpaper/status.h"

namespace fastpaper::pararnn {

inline constexpr int32_t kMaxBlockCpu = 8;
inline constexpr int32_t kMaxBlockCuda = 4;

FASTPAPER_API Status linear_scan(const float* J, const float* r, const float* h0, float* h,
                                 int64_t batch, int64_t time, int64_t channels, int32_t block,
                                 bool reverse, bool adjoint, Device device,
                                 void* stream);

FASTPAPER_API Status linear_scan(const double* J, const double* r, const double* h0, double* h,
                                 int64_t batch, int64_t time, int64_t channels, int32_t block,
                                 bool reverse, bool adjoint, Device device,
                                 void* stream);

// All of J, r, h0 and h stored as `dtype` (float32, float16 or bfloat16); float32 arithmetic.
FASTPAPER_API Status linear_scan(const void* J, const void* r, const void* h0, void* h,
                                 DType dtype, int64_t batch, int64_t time, int64_t channels,
                                 int32_t block, bool reverse, bool adjoint, Device device,
                                 void* stream);


// ------------------------------------------------------------------ fused ParaGRU / ParaLSTM
//
// The cells of fastpaper/detail/pararnn_cells.h run over a whole sequence, channel by channel
// (their recurrent weights are diagonal, so every (batch element, channel) is an independent
// recurrence s_t = f(s_{t-1}, pre_t), t = 1 .. T, s_0 = h0):
//   Cell::gru:  state h (K = 1 entry per channel), 3 diagonal parameters (a_z, a_r, a_c)
//   Cell::lstm: state (c, h) (K = 2), 5 diagonal parameters (a_f, a_c, a_o, p_f, p_o)
//
// Layouts (row-major, contiguous):
//   pre     [batch][time][3][channels]   gate pre-activations Bx + b (GRU z, r, c; LSTM f, c, o),
//                                        what fastpaper.nn's project() returns as [B, T, 3N]
//   params  [P][channels]                P = 3 (GRU) or 5 (LSTM), in the compute type
//   h0      [batch][channels][K]         or nullptr for zeros (LSTM: (c, h) interleaved)
//   states  [batch][time][channels][K]   (LSTM: (c_t, h_t) interleaved, the Python lstm_step order)
// Element types: float64 (params float64, float64 math), or pre/h0/states/grads stored as DType
// float32/float16/bfloat16 with float32 params and float32 math (each output rounded once).
// Device::cuda enqueues on `stream` and returns without synchronizing; every pointer is then a
// device pointer (info and workspace included).
enum class Cell : int32_t { gru = 0, lstm = 1 };

// Number of diagonal parameters (3 or 5) and state entries per channel (1 or 2) of a cell.
FASTPAPER_API int32_t cell_params(Cell cell);
FASTPAPER_API int32_t cell_state(Cell cell);

// Channels per convergence unit of cell_newton: the check runs per (batch element, tile of this
// many channels, time segment).
inline constexpr int64_t kNewtonTile = 32;

// The sequential recurrence, step after step: the fast forward path on the CPU (OpenMP over batch
// elements and channel tiles, vectorized over channels) and a thread per (batch, channel) on CUDA.
FASTPAPER_API Status cell_sequential(Cell cell, const double* pre, const double* params,
                                     const double* h0, double* states, int64_t batch, int64_t time,
                                     int64_t channels, Device device, void* stream);
FASTPAPER_API Status cell_sequential(Cell cell, const void* pre, const float* params,
                                     const void* h0, void* states, DType dtype, int64_t batch,
                                     int64_t time, int64_t channels, Device device, void* stream);

// The same system solved by Newton's method with the linear step done by a parallel scan (the
// ParaRNN algorithm), fused: from s^0_t = f(0, pre_t), iterate
//   J_t = df/ds(s^k_{t-1}, pre_t), r_t = f(s^k_{t-1}, pre_t) - s^k_t,
//   delta_t = J_t delta_{t-1} + r_t (delta_0 = 0),  s^{k+1} = s^k + delta
// until max|delta| <= atol + rtol * max|s| over the unit (batch element x kNewtonTile channels
// x one time segment: 1024 steps on the CPU, 64 (LSTM) or 128 (GRU) on CUDA; a segment's
// solution seeds the next one, so the result is the same system's solution) or after
// max_iters iterations; a unit whose first k steps are exact after k iterations (k >= its length)
// counts as converged if finite. info[0] <- the largest iteration count of any unit, info[1] <-
// the number of units that did not converge (non-finite values never converge). info is int32[2]
// (device memory on CUDA, overwritten). On the CPU this does more work than cell_sequential; it
// exists so that both devices share (and the CPU tests check) the algorithm.
FASTPAPER_API Status cell_newton(Cell cell, const double* pre, const double* params,
                                 const double* h0, double* states, int32_t* info, int64_t batch,
                                 int64_t time, int64_t channels, int32_t max_iters, double atol,
                                 double rtol, Device device, void* stream);
FASTPAPER_API Status cell_newton(Cell cell, const void* pre, const float* params, const void* h0,
                                 void* states, int32_t* info, DType dtype, int64_t batch,
                                 int64_t time, int64_t channels, int32_t max_iters, double atol,
                                 double rtol, Device device, void* stream);

// Backward at the solution `states` given grad = dL/dstates (layout of states): the adjoint
//   lam_t = grad_t + J_{t+1}^T lam_{t+1}  (lam_{T+1} = 0),
// then through the cell's vector-Jacobian product at every step:
//   dpre_t = (df/dpre_t)^T lam_t   (layout of pre),   dh0 = J_1^T lam_1   (layout of h0; may be
//   nullptr), dparams = sum over b, t of (df/dparams)^T lam_t   ([P][channels], compute type).
// workspace: batch * P * channels elements of the compute type (per-batch partial sums, reduced
// over b in a fixed order: deterministic, no atomics).
FASTPAPER_API Status cell_backward(Cell cell, const double* pre, const double* params,
                                   const double* h0, const double* states, const double* grad,
                                   double* dpre, double* dh0, double* dparams, double* workspace,
                                   int64_t batch, int64_t time, int64_t channels, Device device,
                                   void* stream);
FASTPAPER_API Status cell_backward(Cell cell, const void* pre, const float* params, const void* h0,
                                   const void* states, const void* grad, void* dpre, void* dh0,
                                   float* dparams, float* workspace, DType dtype, int64_t batch,
                                   int64_t time, int64_t channels, Device device, void* stream);

}  // namespace fastpaper::pararnn
