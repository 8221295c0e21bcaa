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

}  // namespace fastpaper::pararnn
