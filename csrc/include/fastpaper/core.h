// fastpaper core: what this build contains and what the machine offers.
#pragma once

#include "fastpaper/config.h"
#include "fastpaper/status.h"

namespace fastpaper {

FASTPAPER_API const char* version();
// True when the CUDA kernels were compiled into this library.
FASTPAPER_API bool cuda_built();
// Semicolon-separated CUDA architectures this library was compiled for ("" without CUDA).
FASTPAPER_API const char* cuda_architectures();
// Number of CUDA devices visible (0 without CUDA kernels, driver or device; never fails).
FASTPAPER_API int cuda_device_count();
// Name and compute capability of device `index`; returns false when there is no such device.
FASTPAPER_API bool cuda_device_info(int index, char* name, int name_len, int* major, int* minor);

}  // namespace fastpaper
