// Internal: the CPU (csrc/pararnn/pararnn_cpu.cpp) and CUDA (cuda/pararnn/pararnn_cuda.cu) kernels
// behind fastpaper/pararnn.h. Arguments arrive validated and non-empty (batch, time, channels > 0).
#pragma once

#include <cstdint>

#include "fastpaper/detail/pararnn_scan.h"
#include "fastpaper/pararnn.h"

namespace fastpaper::pararnn {

struct ScanShape {
  int64_t batch, time, channels;
  int32_t block;
  bool reverse;
  bool adjoint;
};

// S: float, double, detail::half_bits or detail::bf16_bits (explicitly instantiated).
namespace cpu {
template <typename S>
void linear_scan(const S* J, const S* r, const S* h0, S* h, const ScanShape& s);
}  // namespace cpu

namespace cuda {
template <typename S>
Status linear_scan(const S* J, const S* r, const S* h0, S* h, const ScanShape& s, void* stream);
}  // namespace cuda

}  // namespace fastpaper::pararnn
