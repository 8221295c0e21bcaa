// Internal: the CPU (csrc/moe/moe_cpu.cpp) and CUDA (cuda/moe/moe_cuda.cu) kernels behind
// fastpaper/moe.h. Arguments arrive validated; tokens > 0 (the dispatcher handles N = 0).
#pragma once

#include <cstddef>
#include <cstdint>

#include "fastpaper/detail/moe_math.h"
#include "fastpaper/moe.h"

namespace fastpaper::moe {

// S: float, double, detail::half_bits or detail::bf16_bits; A = Io<S>::T is the type of scores.
namespace cpu {
template <typename S>
Status forward(const S* x, const typename detail::Io<S>::T* scores, const int64_t* indices,
               const S* W1, const S* b1, const S* W2, const S* b2, S* y, const Shape& s);
template <typename S>
Status backward(const S* dy, const S* x, const typename detail::Io<S>::T* scores,
                const int64_t* indices, const S* W1, const S* b1, const S* W2, const S* b2, S* dx,
                typename detail::Io<S>::T* dscores, S* dW1, S* db1, S* dW2, S* db2,
                const Shape& s);
}  // namespace cpu

namespace cuda {
size_t workspace_size(const Shape& s, bool backward, size_t elem_bytes);
template <typename S>
Status forward(const S* x, const typename detail::Io<S>::T* scores, const int64_t* indices,
               const S* W1, const S* b1, const S* W2, const S* b2, S* y, const Shape& s,
               void* workspace, size_t workspace_bytes, void* stream);
template <typename S>
Status backward(const S* dy, const S* x, const typename detail::Io<S>::T* scores,
                const int64_t* indices, const S* W1, const S* b1, const S* W2, const S* b2, S* dx,
                typename detail::Io<S>::T* dscores, S* dW1, S* db1, S* dW2, S* db2,
                const Shape& s, void* workspace, size_t workspace_bytes, void* stream);
}  // namespace cuda

}  // namespace fastpaper::moe
