// Internal: record an error message for fastpaper::last_error() and return the status.
#pragma once

#include <string>

#include "fastpaper/status.h"

namespace fastpaper::detail {
Status fail(Status s, std::string message);
Status succeed();
// not_built_with_cuda (with the explanation) when a CPU-only build is asked for Device::cuda.
Status check_device_built(Device device);
}  // namespace fastpaper::detail
