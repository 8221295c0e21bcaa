// fastpaper::moe — the M³ViT mixture-of-experts MLP computed expert by expert.
//
// For N tokens x[t] (width D), each routed to k experts indices[t][j] with scores[t][j]:
//
//   y[t] = sum_{j=0..k-1} scores[t][j] * ( GELU(x[t] W1[e] + b1[e]) W2[e] + b2[e] ),  e = indices[t][j]
//
// GELU is the exact erf GELU, 0.5 z (1 + erf(z / sqrt 2)). The computation is reordered by
// expert (M³ViT's accelerator and a GPU grouped GEMM alike): the N*k (token, slot) pairs are
// counting-sorted by expert (stable: pairs of one expert keep token order), each expert's weights
// are applied once to all of its gathered tokens, and every pair's score-weighted output row is
// written to its own slot; the k rows of a token are then summed in slot order. No atomics, so the
// result is deterministic and independent of the thread count.
//
// Layout (row-major, contiguous): x, y [N][D]; scores [N][k]; indices [N][k] (int64, each in
// [0, E)); W1 [E][D][H]; b1 [E][H]; W2 [E][H][D]; b2 [E][D].
//
// Types: the double overloads compute in float64; the DType overloads read and write x, W1, b1,
// W2, b2, y (and the weight/input gradients) as float32, float16 or bfloat16 and compute in float32
// (hidden activations are never rounded to 16 bits); scores/dscores are float32 there.
//
// Backward: given dy [N][D] it writes dx [N][D], dscores [N][k], dW1, db1, dW2, db2 (overwritten,
// not accumulated). The hidden activations are recomputed (one extra first GEMM) rather than
// saved, so the forward keeps no state.
//
// Workspace: the CPU path allocates its own scratch; the CUDA path uses the caller's `workspace`
// of at least workspace_size(...) bytes (allocated by e.g. torch's caching allocator), which may
// be nullptr only when the size is 0. CUDA enqueues on `stream` with no host synchronization.
// N = 0 is allowed (y untouched; backward zeroes the weight gradients); experts that receive no
// token are skipped. 1 <= k <= E. An index outside [0, E) gives Status::invalid_argument on the CPU;
// on CUDA such pairs are dropped (checking would need a host synchronization) - validate first.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fastpaper/status.h"

namespace fastpaper::moe {

struct Shape {
  int64_t tokens;   // N
  int64_t dim;      // D
  int64_t hidden;   // H
  int64_t experts;  // E
  int64_t k;        // experts per token
};

// Bytes of CUDA workspace moe_mlp_forward / moe_mlp_backward need (0 on the CPU).
FASTPAPER_API size_t workspace_size(const Shape& shape, Device device, bool backward,
                                    bool is_double, DType dtype);

FASTPAPER_API Status moe_mlp_forward(const double* x, const double* scores, const int64_t* indices,
                                     const double* W1, const double* b1, const double* W2,
                                     const double* b2, double* y, const Shape& shape,
                                     Device device, void* workspace, size_t workspace_bytes,
                                     void* stream);

FASTPAPER_API Status moe_mlp_forward(const void* x, const float* scores, const int64_t* indices,
                                     const void* W1, const void* b1, const void* W2,
                                     const void* b2, void* y, DType dtype, const Shape& shape,
                                     Device device, void* workspace, size_t workspace_bytes,
                                     void* stream);

FASTPAPER_API Status moe_mlp_backward(const double* dy, const double* x, const double* scores,
                                      const int64_t* indices, const double* W1, const double* b1,
                                      const double* W2, const double* b2, double* dx,
                                      double* dscores, double* dW1, double* db1, double* dW2,
                                      double* db2, const Shape& shape, Device device,
                                      void* workspace, size_t workspace_bytes, void* stream);

FASTPAPER_API Status moe_mlp_backward(const void* dy, const void* x, const float* scores,
                                      const int64_t* indices, const void* W1, const void* b1,
                                      const void* W2, const void* b2, void* dx, float* dscores,
                                      void* dW1, void* db1, void* dW2, void* db2, DType dtype,
                                      const Shape& shape, Device device, void* workspace,
                                      size_t workspace_bytes, void* stream);

}  // namespace fastpaper::moe
