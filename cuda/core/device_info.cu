// CUDA device queries for fastpaper::cuda_device_count / cuda_device_info. A machine without a
// driver or a GPU reports zero devices instead of failing.
#include <cuda_runtime.h>

#include <cstring>

#include "core/cuda_runtime_info.h"

namespace fastpaper::detail {

int cuda_runtime_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

bool cuda_runtime_device_info(int index, char* name, int name_len, int* major, int* minor) {
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  std::strncpy(name, prop.name, static_cast<size_t>(name_len) - 1);
  name[name_len - 1] = '\0';
  *major = prop.major;
  *minor = prop.minor;
  return true;
}

}  // namespace fastpaper::detail
