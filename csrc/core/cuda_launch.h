// Internal: turn the CUDA runtime's error state after a kernel launch into a Status.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "core/error.h"

namespace fastpaper::detail {

inline Status launched(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    return fail(Status::cuda_error, std::string(what) + ": " + cudaGetErrorString(err));
  }
  return Status::ok;
}

}  // namespace fastpaper::detail
