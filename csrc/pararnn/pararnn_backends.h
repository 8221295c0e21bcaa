// Internal: the CPU (csrc/pararnn/pararnn_cpu.cpp) and CUDA (cuda/pararnn/pararnn_cuda.cu) kernels
// behind fastpaper/pararnn.h. Arguments arrive validated and non-empty (batch, time, channels > 0).
#pragma once

#include <cstdint>

#include "fastpaper/detail/pararnn_scan.h"
#include "fastpaper/pararnn.h"

namespace fastpaper::pararnn {

using fastpaper::detail::Io;

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


// Fused cells (fastpaper/pararnn.h cell_*; csrc/pararnn/pararnn_cells_cpu.cpp and
// cuda/pararnn/pararnn_cells_cuda.cu). S: storage type; P: params/workspace type (Io<S>::T).
struct CellShape {
  Cell cell;
  int64_t batch, time, channels;
};

struct NewtonCfg {
  int32_t max_iters;
  double atol, rtol;
};

namespace cpu {
template <typename S>
void cell_sequential(const S* pre, const typename Io<S>::T* params, const S* h0, S* states,
                     const CellShape& s);
template <typename S>
void cell_newton(const S* pre, const typename Io<S>::T* params, const S* h0, S* states,
                 int32_t* info, const CellShape& s, const NewtonCfg& cfg);
template <typename S>
void cell_backward(const S* pre, const typename Io<S>::T* params, const S* h0, const S* states,
                   const S* grad, S* dpre, S* dh0, typename Io<S>::T* dparams,
                   typename Io<S>::T* workspace, const CellShape& s);
}  // namespace cpu

namespace cuda {
template <typename S>
Status cell_sequential(const S* pre, const typename Io<S>::T* params, const S* h0, S* states,
                       const CellShape& s, void* stream);
template <typename S>
Status cell_newton(const S* pre, const typename Io<S>::T* params, const S* h0, S* states,
                   int32_t* info, const CellShape& s, const NewtonCfg& cfg, void* stream);
template <typename S>
Status cell_backward(const S* pre, const typename Io<S>::T* params, const S* h0, const S* states,
                     const S* grad, S* dpre, S* dh0, typename Io<S>::T* dparams,
                     typename Io<S>::T* workspace, const CellShape& s, void* stream);
}  // namespace cuda

}  // namespace fastpaper::pararnn
