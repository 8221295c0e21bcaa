// Internal: the CPU (csrc/pararnn/pararnn_cpu.cpp) and CUDA (cuda/pararnn/pararnn_cuda.cu) kernels
// behind fastpaper/pararnn.h. Arguments arrive validated and non-empty (batch, time, channels > 0).
#pragma once

#include <cstdint>

#include "fastpaper/pararnn.h"

namespace fastpaper::pararnn {

struct ScanShape {
  int64_t batch, time, channels;
  int32_t block;
  bool reverse;
};

namespace cpu {
void linear_scan(const float* J, const float* r, const float* h0, float* h, const ScanShape& s);
void linear_scan(const double* J, const double* r, const double* h0, double* h, const ScanShape& s);
}  // namespace cpu

namespace cuda {
Status linear_scan(const float* J, const float* r, const float* h0, float* h, const ScanShape& s,
                   void* stream);
Status linear_scan(const double* J, const double* r, const double* h0, double* h,
                   const ScanShape& s, void* stream);
}  // namespace cuda

}  // namespace fastpaper::pararnn
