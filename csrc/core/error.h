// Internal: record an error message for fastpaper::last_error() and return the status.
#pragma once

#include <string>

#include "fastpaper/status.h"

namespace fastpaper::detail {
Status fail(Status s, std::string message);
Status succeed();
}  // namespace fastpaper::detail
