// Shared helpers of the nanobind modules: array checks that raise Python exceptions naming the
// argument, and Status -> exception translation. Bindings stay thin: check, release the GIL, call.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <string>

#include "fastpaper/status.h"

namespace fastpaper::bindings {

namespace nb = nanobind;
using Array = nb::ndarray<nb::c_contig>;

// "cpu" or "cuda", raising for anything else.
inline Device device_of(const Array& a, const char* name) {
  if (a.device_type() == nb::device::cpu::value) return Device::cpu;
  if (a.device_type() == nb::device::cuda::value) return Device::cuda;
  throw nb::value_error((std::string(name) + ": arrays must live on the CPU or a CUDA device").c_str());
}

inline void check_same_device(const Array& a, const char* an, const Array& b, const char* bn) {
  if (a.device_type() != b.device_type() || a.device_id() != b.device_id()) {
    throw nb::value_error((std::string(bn) + " is on a different device than " + an).c_str());
  }
}

inline DType float_dtype_of(const Array& a, const char* name) {
  const auto d = a.dtype();
  if (d.lanes == 1 && d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float)) {
    if (d.bits == 32) return DType::float32;
    if (d.bits == 16) return DType::float16;
  }
  if (d.lanes == 1 && d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat) && d.bits == 16) {
    return DType::bfloat16;
  }
  throw nb::type_error((std::string(name) + ": expected float32, float16 or bfloat16 data").c_str());
}

// The element type of an array that may also be float64 (kernels with a float64 reference path):
// float64 is reported as is_double (DType has no float64); anything but float64, float32,
// float16 or bfloat16 raises TypeError naming the argument.
struct Elem {
  bool is_double;
  DType dtype;
  bool operator!=(const Elem& o) const { return is_double != o.is_double || dtype != o.dtype; }
};

inline Elem elem_of(const Array& a, const char* name) {
  const auto d = a.dtype();
  const bool fl = d.lanes == 1 && d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float);
  if (fl && d.bits == 64) return {true, DType::float32};
  const bool bf = d.lanes == 1 && d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat);
  if (!((fl && (d.bits == 32 || d.bits == 16)) || (bf && d.bits == 16))) {
    throw nb::type_error((std::string(name) + ": expected float64, float32, float16 or bfloat16 data").c_str());
  }
  return {false, float_dtype_of(a, name)};
}

inline void check_uint8(const Array& a, const char* name) {
  const auto d = a.dtype();
  if (!(d.lanes == 1 && d.bits == 8 && d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::UInt))) {
    throw nb::type_error((std::string(name) + ": expected uint8 data").c_str());
  }
}

// a * b, raising instead of overflowing (sizes come from Python ints).
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r)) {
    throw nb::value_error((std::string(what) + ": sizes must be >= 0 and their product fit in int64").c_str());
  }
  return r;
}

inline void check_size(const Array& a, const char* name, int64_t expected) {
  if (static_cast<int64_t>(a.size()) != expected) {
    throw nb::value_error((std::string(name) + ": expected " + std::to_string(expected) +
                           " elements, got " + std::to_string(a.size())).c_str());
  }
}

// Turns a non-ok Status into ValueError (bad arguments) or RuntimeError (everything else).
inline void raise_if_failed(Status s) {
  if (s == Status::ok) return;
  const std::string msg = std::string(status_name(s)) + ": " + last_error();
  if (s == Status::invalid_argument) throw nb::value_error(msg.c_str());
  throw std::runtime_error(msg);
}

}  // namespace fastpaper::bindings
