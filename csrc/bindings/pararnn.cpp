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


// ------------------------------------------------------------------ fused cells

pararnn::Cell cell_of(int32_t cell) {
  if (cell != 0 && cell != 1) throw nb::value_error("cell must be 0 (gru) or 1 (lstm)");
  return static_cast<pararnn::Cell>(cell);
}

// Checks shared by the cell entry points: pre [B, T, 3N] sets the element type and device;
// `params` [P, N] is float64 for float64 storage and float32 otherwise; the state-like arrays
// (name, array, expected size) must match pre's dtype and device.
struct CellArgs {
  Elem el;
  Device dev;
  pararnn::Cell cell;
  int64_t k, np;  // state entries and params per channel
};

CellArgs check_cell(int32_t cell_id, const Array& pre, const Array& params, int64_t batch,
                    int64_t time, int64_t channels) {
  CellArgs a{elem_of(pre, "pre"), bindings::device_of(pre, "pre"), cell_of(cell_id), 0, 0};
  a.k = pararnn::cell_state(a.cell);
  a.np = pararnn::cell_params(a.cell);
  const int64_t bt = bindings::checked_mul(batch, time, "pre");
  bindings::check_size(pre, "pre", bindings::checked_mul(bt, 3 * channels, "pre"));
  const Elem pel = elem_of(params, "params");
  if (pel.is_double != a.el.is_double || (!pel.is_double && pel.dtype != DType::float32)) {
    throw nb::type_error(a.el.is_double ? "params must be float64 for float64 pre"
                                        : "params must be float32 for float32/float16/bfloat16 pre");
  }
  bindings::check_same_device(pre, "pre", params, "params");
  bindings::check_size(params, "params", bindings::checked_mul(a.np, channels, "params"));
  return a;
}

void check_like(const CellArgs& a, const Array& pre, const Array& x, const char* name,
                int64_t expected) {
  if (elem_of(x, name) != a.el) {
    throw nb::type_error((std::string(name) + " must have the same dtype as pre").c_str());
  }
  bindings::check_same_device(pre, "pre", x, name);
  bindings::check_size(x, name, expected);
}

const void* optional_h0(const CellArgs& a, const Array& pre, nb::object h0_obj, int64_t batch,
                        int64_t channels) {
  if (h0_obj.is_none()) return nullptr;
  Array h0 = nb::cast<Array>(h0_obj);
  check_like(a, pre, h0, "h0", bindings::checked_mul(batch, channels * a.k, "h0"));
  return h0.data();
}

void cell_sequential(int32_t cell_id, Array pre, Array params, nb::object h0_obj, Array states,
                     int64_t batch, int64_t time, int64_t channels, uintptr_t stream) {
  const CellArgs a = check_cell(cell_id, pre, params, batch, time, channels);
  const void* h0 = optional_h0(a, pre, h0_obj, batch, channels);
  check_like(a, pre, states, "states",
             bindings::checked_mul(bindings::checked_mul(batch, time, "states"), channels * a.k, "states"));
  Status s;
  {
    nb::gil_scoped_release release;
    void* st = reinterpret_cast<void*>(stream);
    if (a.el.is_double) {
      s = pararnn::cell_sequential(a.cell, static_cast<const double*>(pre.data()),
                                   static_cast<const double*>(params.data()),
                                   static_cast<const double*>(h0), static_cast<double*>(states.data()),
                                   batch, time, channels, a.dev, st);
    } else {
      s = pararnn::cell_sequential(a.cell, pre.data(), static_cast<const float*>(params.data()), h0,
                                   states.data(), a.el.dtype, batch, time, channels, a.dev, st);
    }
  }
  bindings::raise_if_failed(s);
}

void cell_newton(int32_t cell_id, Array pre, Array params, nb::object h0_obj, Array states,
                 Array info, int64_t batch, int64_t time, int64_t channels, int32_t max_iters,
                 double atol, double rtol, uintptr_t stream) {
  const CellArgs a = check_cell(cell_id, pre, params, batch, time, channels);
  const void* h0 = optional_h0(a, pre, h0_obj, batch, channels);
  check_like(a, pre, states, "states",
             bindings::checked_mul(bindings::checked_mul(batch, time, "states"), channels * a.k, "states"));
  const auto d = info.dtype();
  if (!(d.lanes == 1 && d.bits == 32 && d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Int))) {
    throw nb::type_error("info: expected int32 data");
  }
  bindings::check_same_device(pre, "pre", info, "info");
  bindings::check_size(info, "info", 2);
  Status s;
  {
    nb::gil_scoped_release release;
    void* st = reinterpret_cast<void*>(stream);
    int32_t* inf = static_cast<int32_t*>(info.data());
    if (a.el.is_double) {
      s = pararnn::cell_newton(a.cell, static_cast<const double*>(pre.data()),
                               static_cast<const double*>(params.data()),
                               static_cast<const double*>(h0), static_cast<double*>(states.data()),
                               inf, batch, time, channels, max_iters, atol, rtol, a.dev, st);
    } else {
      s = pararnn::cell_newton(a.cell, pre.data(), static_cast<const float*>(params.data()), h0,
                               states.data(), inf, a.el.dtype, batch, time, channels, max_iters,
                               atol, rtol, a.dev, st);
    }
  }
  bindings::raise_if_failed(s);
}

void cell_backward(int32_t cell_id, Array pre, Array params, nb::object h0_obj, Array states,
                   Array grad, Array dpre, nb::object dh0_obj, Array dparams, Array workspace,
                   int64_t batch, int64_t time, int64_t channels, uintptr_t stream) {
  const CellArgs a = check_cell(cell_id, pre, params, batch, time, channels);
  const void* h0 = optional_h0(a, pre, h0_obj, batch, channels);
  const int64_t ns = bindings::checked_mul(bindings::checked_mul(batch, time, "states"),
                                           channels * a.k, "states");
  check_like(a, pre, states, "states", ns);
  check_like(a, pre, grad, "grad", ns);
  check_like(a, pre, dpre, "dpre", static_cast<int64_t>(pre.size()));
  void* dh0 = nullptr;
  if (!dh0_obj.is_none()) {
    Array d = nb::cast<Array>(dh0_obj);
    check_like(a, pre, d, "dh0", bindings::checked_mul(batch, channels * a.k, "dh0"));
    dh0 = d.data();
  }
  const Array* ps[] = {&dparams, &workspace};
  const char* names[] = {"dparams", "workspace"};
  const int64_t sizes[] = {a.np * channels,
                           bindings::checked_mul(batch, a.np * channels, "workspace")};
  for (int i = 0; i < 2; ++i) {
    if (elem_of(*ps[i], names[i]) != elem_of(params, "params")) {
      throw nb::type_error((std::string(names[i]) + " must have the dtype of params").c_str());
    }
    bindings::check_same_device(pre, "pre", *ps[i], names[i]);
    bindings::check_size(*ps[i], names[i], sizes[i]);
  }
  Status s;
  {
    nb::gil_scoped_release release;
    void* st = reinterpret_cast<void*>(stream);
    if (a.el.is_double) {
      s = pararnn::cell_backward(
          a.cell, static_cast<const double*>(pre.data()), static_cast<const double*>(params.data()),
          static_cast<const double*>(h0), static_cast<const double*>(states.data()),
          static_cast<const double*>(grad.data()), static_cast<double*>(dpre.data()),
          static_cast<double*>(dh0), static_cast<double*>(dparams.data()),
          static_cast<double*>(workspace.data()), batch, time, channels, a.dev, st);
    } else {
      s = pararnn::cell_backward(a.cell, pre.data(), static_cast<const float*>(params.data()), h0,
                                 states.data(), grad.data(), dpre.data(), dh0,
                                 static_cast<float*>(dparams.data()),
                                 static_cast<float*>(workspace.data()), a.el.dtype, batch, time,
                                 channels, a.dev, st);
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
  m.def("cell_sequential", &cell_sequential, nb::arg("cell"), nb::arg("pre").noconvert(),
        nb::arg("params").noconvert(), nb::arg("h0").none(), nb::arg("states").noconvert(),
        nb::arg("batch"), nb::arg("time"), nb::arg("channels"), nb::arg("stream") = 0);
  m.def("cell_newton", &cell_newton, nb::arg("cell"), nb::arg("pre").noconvert(),
        nb::arg("params").noconvert(), nb::arg("h0").none(), nb::arg("states").noconvert(),
        nb::arg("info").noconvert(), nb::arg("batch"), nb::arg("time"), nb::arg("channels"),
        nb::arg("max_iters"), nb::arg("atol"), nb::arg("rtol"), nb::arg("stream") = 0);
  m.def("cell_backward", &cell_backward, nb::arg("cell"), nb::arg("pre").noconvert(),
        nb::arg("params").noconvert(), nb::arg("h0").none(), nb::arg("states").noconvert(),
        nb::arg("grad").noconvert(), nb::arg("dpre").noconvert(), nb::arg("dh0").none(),
        nb::arg("dparams").noconvert(), nb::arg("workspace").noconvert(), nb::arg("batch"),
        nb::arg("time"), nb::arg("channels"), nb::arg("stream") = 0);
  m.attr("NEWTON_TILE") = pararnn::kNewtonTile;
  m.attr("MAX_BLOCK_CPU") = pararnn::kMaxBlockCpu;
  m.attr("MAX_BLOCK_CUDA") = pararnn::kMaxBlockCuda;
}
