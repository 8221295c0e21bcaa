// Status names and the per-thread error message behind fastpaper::last_error().
#include <string>

#include "core/error.h"
#include "fastpaper/config.h"
#include "fastpaper/status.h"

namespace fastpaper {
namespace {
thread_local std::string g_last_error;
}

const char* status_name(Status s) {
  switch (s) {
    case Status::ok: return "ok";
    case Status::invalid_argument: return "invalid_argument";
    case Status::not_built_with_cuda: return "not_built_with_cuda";
    case Status::cuda_error: return "cuda_error";
  }
  return "unknown";
}

const char* last_error() { return g_last_error.c_str(); }

namespace detail {
Status fail(Status s, std::string message) {
  g_last_error = std::move(message);
  return s;
}
Status succeed() {
  g_last_error.clear();
  return Status::ok;
}
Status check_device_built(Device device) {
  if (device == Device::cuda && !FASTPAPER_HAS_CUDA) {
    return fail(Status::not_built_with_cuda,
                "this fastpaper library was built without CUDA kernels (FASTPAPER_CUDA=OFF or "
                "no nvcc at build time)");
  }
  return Status::ok;
}
}  // namespace detail
}  // namespace fastpaper
