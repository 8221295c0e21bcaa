// Storage types of the kernels and how an element of each widens to its compute type and is
// rounded back: float and double as themselves, IEEE half and bfloat16 (16-bit tags, distinct
// types so that templates can tell them apart; same layout as uint16_t) as float. Shared by the
// areas whose kernels take float32/float64/float16/bfloat16 buffers (pararnn, rnn, moe).
#pragma once

#include <cstdint>

#include "fastpaper/detail/float_convert.h"
#include "fastpaper/detail/host_device.h"

namespace fastpaper::detail {

struct half_bits { uint16_t v; };
struct bf16_bits { uint16_t v; };

// Io<S>::T is the compute type of storage S; load widens, store rounds (to nearest even).
template <typename S> struct Io;
template <> struct Io<float> {
  using T = float;
  static FP_HD float load(float s) { return s; }
  static FP_HD float store(float v) { return v; }
};
template <> struct Io<double> {
  using T = double;
  static FP_HD double load(double s) { return s; }
  static FP_HD double store(double v) { return v; }
};
template <> struct Io<half_bits> {
  using T = float;
  static FP_HD float load(half_bits s) { return half_to_float(s.v); }
  static FP_HD half_bits store(float v) { return {float_to_half(v)}; }
};
template <> struct Io<bf16_bits> {
  using T = float;
  static FP_HD float load(bf16_bits s) { return bf16_to_float(s.v); }
  static FP_HD bf16_bits store(float v) { return {float_to_bf16(v)}; }
};

}  // namespace fastpaper::detail
