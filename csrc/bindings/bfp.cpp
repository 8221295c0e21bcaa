// fastpaper._bfp: nanobind wrappers of fastpaper/bfp.h. Outputs are allocated by the caller
// (torch or numpy) and passed in; CUDA work is enqueued on the stream passed as an integer.
#include "fastpaper/bfp.h"

#include "bindings/bfp_format.h"
#include "bindings/common.h"

namespace nb = nanobind;
using namespace fastpaper;
using fastpaper::bindings::Array;

namespace {

using bindings::format_of;

void check_packed(const Array& mantissas, const Array& exponents, int64_t rows, int64_t cols,
                  bfp::Format f) {
  bindings::check_uint8(mantissas, "mantissas");
  bindings::check_uint8(exponents, "exponents");
  bindings::check_size(mantissas, "mantissas", bindings::checked_mul(rows, bfp::mantissa_bytes_per_row(cols, f), "mantissas"));
  bindings::check_size(exponents, "exponents", bindings::checked_mul(rows, bfp::exponent_bytes_per_row(cols, f), "exponents"));
  bindings::check_same_device(mantissas, "mantissas", exponents, "exponents");
}

void pack(Array x, int64_t rows, int64_t cols, int block, int mantissa_bits, int element,
          int scale, int rounding, uint64_t seed, Array mantissas, Array exponents,
          uintptr_t stream) {
  const bfp::Format f = format_of(block, mantissa_bits, element);
  const DType dt = bindings::float_dtype_of(x, "x");
  const Device dev = bindings::device_of(x, "x");
  bindings::check_size(x, "x", bindings::checked_mul(rows, cols, "x"));
  check_packed(mantissas, exponents, rows, cols, f);
  bindings::check_same_device(x, "x", mantissas, "mantissas");
  const bfp::Options opt{static_cast<bfp::Scale>(scale), static_cast<bfp::Rounding>(rounding), seed};
  Status s;
  {
    nb::gil_scoped_release release;
    s = bfp::pack(x.data(), dt, rows, cols, f, opt, static_cast<uint8_t*>(mantissas.data()),
                  static_cast<uint8_t*>(exponents.data()), dev, reinterpret_cast<void*>(stream));
  }
  bindings::raise_if_failed(s);
}

void unpack(Array mantissas, Array exponents, int64_t rows, int64_t cols, int block,
            int mantissa_bits, int element, Array out, uintptr_t stream) {
  const bfp::Format f = format_of(block, mantissa_bits, element);
  check_packed(mantissas, exponents, rows, cols, f);
  const DType dt = bindings::float_dtype_of(out, "out");
  const Device dev = bindings::device_of(out, "out");
  bindings::check_size(out, "out", bindings::checked_mul(rows, cols, "out"));
  bindings::check_same_device(mantissas, "mantissas", out, "out");
  Status s;
  {
    nb::gil_scoped_release release;
    s = bfp::unpack(static_cast<const uint8_t*>(mantissas.data()),
                    static_cast<const uint8_t*>(exponents.data()), rows, cols, f, out.data(), dt,
                    dev, reinterpret_cast<void*>(stream));
  }
  bindings::raise_if_failed(s);
}

void quantize(Array x, int64_t rows, int64_t cols, int block, int mantissa_bits, int element,
              int scale, int rounding, uint64_t seed, Array out, uintptr_t stream) {
  const bfp::Format f = format_of(block, mantissa_bits, element);
  const DType dt = bindings::float_dtype_of(x, "x");
  const DType ot = bindings::float_dtype_of(out, "out");
  const Device dev = bindings::device_of(x, "x");
  bindings::check_size(x, "x", bindings::checked_mul(rows, cols, "x"));
  bindings::check_size(out, "out", bindings::checked_mul(rows, cols, "out"));
  bindings::check_same_device(x, "x", out, "out");
  const bfp::Options opt{static_cast<bfp::Scale>(scale), static_cast<bfp::Rounding>(rounding), seed};
  Status s;
  {
    nb::gil_scoped_release release;
    s = bfp::quantize(x.data(), dt, rows, cols, f, opt, out.data(), ot, dev,
                      reinterpret_cast<void*>(stream));
  }
  bindings::raise_if_failed(s);
}

// Raw-pointer entry points for the torch ops: a torch tensor's data_ptr() costs ~0.4 us where a
// DLPack export costs ~7 us. The torch layer allocates or checks every buffer before calling
// these (the C++ API still validates formats, sizes, enums and null pointers).
Device device_code(int device) {
  if (device != 0 && device != 1) throw nb::value_error("device must be 0 (cpu) or 1 (cuda)");
  return static_cast<Device>(device);
}

void pack_ptr(uintptr_t x, int dtype, int64_t rows, int64_t cols, int block, int mantissa_bits,
              int element, int scale, int rounding, uint64_t seed, uintptr_t mantissas,
              uintptr_t exponents, int device, uintptr_t stream) {
  const bfp::Format f = format_of(block, mantissa_bits, element);
  const bfp::Options opt{static_cast<bfp::Scale>(scale), static_cast<bfp::Rounding>(rounding), seed};
  const Device dev = device_code(device);
  Status s;
  {
    nb::gil_scoped_release release;
    s = bfp::pack(reinterpret_cast<const void*>(x), static_cast<DType>(dtype), rows, cols, f, opt,
                  reinterpret_cast<uint8_t*>(mantissas), reinterpret_cast<uint8_t*>(exponents), dev,
                  reinterpret_cast<void*>(stream));
  }
  bindings::raise_if_failed(s);
}

void unpack_ptr(uintptr_t mantissas, uintptr_t exponents, int64_t rows, int64_t cols, int block,
                int mantissa_bits, int element, uintptr_t out, int out_dtype, int device,
                uintptr_t stream) {
  const bfp::Format f = format_of(block, mantissa_bits, element);
  const Device dev = device_code(device);
  Status s;
  {
    nb::gil_scoped_release release;
    s = bfp::unpack(reinterpret_cast<const uint8_t*>(mantissas),
                    reinterpret_cast<const uint8_t*>(exponents), rows, cols, f,
                    reinterpret_cast<void*>(out), static_cast<DType>(out_dtype), dev,
                    reinterpret_cast<void*>(stream));
  }
  bindings::raise_if_failed(s);
}

void quantize_ptr(uintptr_t x, int dtype, int64_t rows, int64_t cols, int block, int mantissa_bits,
                  int element, int scale, int rounding, uint64_t seed, uintptr_t out, int out_dtype,
                  int device, uintptr_t stream) {
  const bfp::Format f = format_of(block, mantissa_bits, element);
  const bfp::Options opt{static_cast<bfp::Scale>(scale), static_cast<bfp::Rounding>(rounding), seed};
  const Device dev = device_code(device);
  Status s;
  {
    nb::gil_scoped_release release;
    s = bfp::quantize(reinterpret_cast<const void*>(x), static_cast<DType>(dtype), rows, cols, f,
                      opt, reinterpret_cast<void*>(out), static_cast<DType>(out_dtype), dev,
                      reinterpret_cast<void*>(stream));
  }
  bindings::raise_if_failed(s);
}

}  // namespace

NB_MODULE(_bfp, m) {
  m.doc() = "Native BFP codec (see fastpaper.bfp for the documented Python API).";
  m.def("pack", &pack, nb::arg("x").noconvert(), nb::arg("rows"), nb::arg("cols"), nb::arg("block"),
        nb::arg("mantissa_bits"), nb::arg("element"), nb::arg("scale"), nb::arg("rounding"),
        nb::arg("seed"), nb::arg("mantissas").noconvert(), nb::arg("exponents").noconvert(),
        nb::arg("stream") = 0);
  m.def("unpack", &unpack, nb::arg("mantissas").noconvert(), nb::arg("exponents").noconvert(),
        nb::arg("rows"), nb::arg("cols"), nb::arg("block"), nb::arg("mantissa_bits"),
        nb::arg("element"), nb::arg("out").noconvert(), nb::arg("stream") = 0);
  m.def("quantize", &quantize, nb::arg("x").noconvert(), nb::arg("rows"), nb::arg("cols"),
        nb::arg("block"), nb::arg("mantissa_bits"), nb::arg("element"), nb::arg("scale"),
        nb::arg("rounding"), nb::arg("seed"), nb::arg("out").noconvert(), nb::arg("stream") = 0);
  m.def("pack_ptr", &pack_ptr);
  m.def("unpack_ptr", &unpack_ptr);
  m.def("quantize_ptr", &quantize_ptr);
  m.def("mantissa_bytes_per_row", [](int64_t cols, int block, int mantissa_bits) {
    return bfp::mantissa_bytes_per_row(cols, bfp::Format{block, mantissa_bits});
  });
}
