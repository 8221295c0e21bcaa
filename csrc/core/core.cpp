// Build and machine information (fastpaper/core.h).
#include <cstring>

#include "core/cuda_runtime_info.h"
#include "fastpaper/core.h"

namespace fastpaper {

const char* version() { return FASTPAPER_VERSION; }
bool cuda_built() { return FASTPAPER_HAS_CUDA != 0; }
const char* cuda_architectures() { return FASTPAPER_CUDA_ARCHITECTURES; }

int cuda_device_count() {
#if FASTPAPER_HAS_CUDA
  return detail::cuda_runtime_device_count();
#else
  return 0;
#endif
}

bool cuda_device_info(int index, char* name, int name_len, int* major, int* minor) {
  if (index < 0 || index >= cuda_device_count() || name == nullptr || name_len <= 0 ||
      major == nullptr || minor == nullptr) {
    return false;
  }
#if FASTPAPER_HAS_CUDA
  return detail::cuda_runtime_device_info(index, name, name_len, major, minor);
#else
  return false;
#endif
}

}  // namespace fastpaper
