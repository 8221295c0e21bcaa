// Internal: the CPU (csrc/bfp/bfp_cpu.cpp) and CUDA (cuda/bfp/bfp_cuda.cu) kernels behind the
// public API in fastpaper/bfp.h. Arguments arrive validated and non-empty.
#pragma once

#include <cstdint>

#include "fastpaper/bfp.h"
#include "fastpaper/detail/bfp_codec.h"

namespace fastpaper::bfp {

namespace cpu {
void pack(const void* x, DType dtype, int64_t rows, int64_t cols, const detail::Codec& c,
          uint8_t* mantissas, uint8_t* exponents);
void unpack(const uint8_t* mantissas, const uint8_t* exponents, int64_t rows, int64_t cols,
            const detail::Codec& c, void* out, DType out_dtype);
void quantize(const void* x, DType dtype, int64_t rows, int64_t cols, const detail::Codec& c,
              void* out, DType out_dtype);
}  // namespace cpu

namespace cuda {
Status pack(const void* x, DType dtype, int64_t rows, int64_t cols, const detail::Codec& c,
            uint8_t* mantissas, uint8_t* exponents, void* stream);
Status unpack(const uint8_t* mantissas, const uint8_t* exponents, int64_t rows, int64_t cols,
              const detail::Codec& c, void* out, DType out_dtype, void* stream);
Status quantize(const void* x, DType dtype, int64_t rows, int64_t cols, const detail::Codec& c,
                void* out, DType out_dtype, void* stream);
}  // namespace cuda

}  // namespace fastpaper::bfp
