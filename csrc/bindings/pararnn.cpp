// fastpaper._pararnn: nanobind wrapper of fastpaper/pararnn.h. The output is allocated by the
// caller (torch) and passed in; CUDA work is enqueued on the stream passed as an integer.
#include "fastpaper/pararnn.h"

#include <string>

#include "bindings/common.h"

namespace nb = nanobind;
using namespace fastpaper;
using fastpaper::bindings::Array;

namespace {

using bindings::Elem;
using bindings::elem_of;

void linear_scan(Array J, Array r, nb::object h0_obj, Array h, int64_t batch, int64_t time,
                 int64_t channels, int32_t block, bool reverse, bool adjoint, uintptr_t stream) {
  const Elem el = elem_of(r, "r");
  const Device dev = bindings::device_of(r, "r");
  if (block < 1) throw nb::value_error("block must be >= 1");
  const int64_t n = bindings::checked_mul(bindings::checked_mul(batch, time, "r"), channels, "r");
  bindings::check_size(r, "r", n);
  bindings::check_size(h, "h", n);
  bindings::check_size(J, "J", bindings::checked_mul(n, block, "J"));
  const Array* arrays[] = {&J, &h};
  const char* names[] = {"J", "h"};
  for (int i = 0; i < 2; ++i) {
    if (elem_of(*arrays[i], names[i]) != el) {
      throw nb::type_error((std::string(names[i]) + " must have the same dtype as r").c_str());
    }
    bindings::check_same_device(r, "r", *arrays[i], names[i]);
  }
  const void* h0 = nullptr;
  if (!h0_obj.is_none()) {
    Array h0a = nb::cast<Array>(h0_obj);
    if (elem_of(h0a, "h0") != el) throw nb::type_error("h0 must have the same dtype as r");
    bindings::check_same_device(r, "r", h0a, "h0");
    bindings::check_size(h0a, "h0", bindings::checked_mul(batch, channels, "h0"));
    h0 = h0a.data();
  }
  Status s;
  {
    nb::gil_scoped_release release;
    void* st = reinterpret_cast<void*>(stream);
    if (!el.is_double) {
      s = pararnn::linear_scan(J.data(), r.data(), h0, h.data(), el.dtype, batch, time, channels,
                               block, reverse, adjoint, dev, st);
    } else {
      s = pararnn::linear_scan(static_cast<const double*>(J.data()), static_cast<const double*>(r.data()),
                               static_cast<const double*>(h0), static_cast<double*>(h.data()), batch,
                               time, channels, block, reverse, adjoint, dev, st);
    }
  }
  bindings::raise_if_failed(s);
}

}  // namespace

NB_MODULE(_pararnn, m) {
  m.doc() = "Native ParaRNN linear scan (see fastpaper.pararnn for the documented Python API).";
  m.def("linear_scan", &linear_scan, nb::arg("J").noconvert(), nb::arg("r").noconvert(),
        nb::arg("h0").none(), nb::arg("h").noconvert(), nb::arg("batch"), nb::arg("time"),
        nb::arg("channels"), nb::arg("block"), nb::arg("reverse"), nb::arg("adjoint") = false,
        nb::arg("stream") = 0);
  m.attr("MAX_BLOCK_CPU") = pararnn::kMaxBlockCpu;
  m.attr("MAX_BLOCK_CUDA") = pararnn::kMaxBlockCuda;
}
