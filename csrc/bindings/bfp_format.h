// Internal to the bfp bindings: a validated bfp::Format from the integers Python passes.
#pragma once

#include "bindings/common.h"
#include "fastpaper/bfp.h"

namespace fastpaper::bindings {

inline bfp::Format format_of(int block, int mantissa_bits, int element) {
  bfp::Format f{block, mantissa_bits, static_cast<bfp::Element>(element)};
  raise_if_failed(bfp::check_format(f));
  return f;
}

}  // namespace fastpaper::bindings
