// fastpaper._rnn: nanobind wrapper of fastpaper/rnn.h. Outputs and work buffers are allocated by
// the caller (torch) and passed in; CUDA work is enqueued on the stream passed as an integer.
#include "fastpaper/rnn.h"

#include <string>

#include <nanobind/stl/string.h>

#include "bindings/common.h"

namespace nb = nanobind;
using namespace fastpaper;
using fastpaper::bindings::Array;

namespace {

using bindings::Elem;
using bindings::elem_of;

bool is_compute_of(const Array& a, const Elem& el) {
  const auto d = a.dtype();
  return d.lanes == 1 && d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float) &&
         d.bits == (el.is_double ? 64 : 32);
}

rnn::Shape shape_of(int64_t batch, int64_t time, int64_t heads, int64_t head_dim, int32_t cell) {
  if (cell < 0 || cell > 3) throw nb::value_error("cell must be 0 (lstm), 1 (gru), 2 (elman) or 3 (slstm)");
  if (batch < 0 || time < 0 || heads < 0 || head_dim < 0) {
    throw nb::value_error("batch, time, heads and head_dim must be >= 0");
  }
  return {batch, time, heads, head_dim, static_cast<rnn::Cell>(cell)};
}

// Checks one tensor argument: dtype (storage or compute type), device, element count.
struct Checker {
  const Array& ref;
  Elem el;
  Device dev;
  void same(const Array& a, const char* name, int64_t n, bool compute = false) const {
    if (compute ? !is_compute_of(a, el) : elem_of(a, name) != el) {
      throw nb::type_error((std::string(name) + (compute ? " must be float32 (float64 for float64 data)"
                                                         : " must have the same dtype as R")).c_str());
    }
    bindings::check_same_device(ref, "R", a, name);
    bindings::check_size(a, name, n);
  }
  const int64_t* lengths(const nb::object& o, int64_t batch) const {
    if (o.is_none()) return nullptr;
    Array a = nb::cast<Array>(o);
    const auto d = a.dtype();
    if (!(d.lanes == 1 && d.bits == 64 && d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Int))) {
      throw nb::type_error("lengths: expected int64 data");
    }
    bindings::check_same_device(ref, "R", a, "lengths");
    bindings::check_size(a, "lengths", batch);
    return static_cast<const int64_t*>(a.data());
  }
  const void* optional(const nb::object& o, const char* name, int64_t n, bool compute = false) const {
    if (o.is_none()) return nullptr;
    Array a = nb::cast<Array>(o);
    same(a, name, n, compute);
    return a.data();
  }
};

void forward(Array Wx, Array R, Array b, nb::object states0, nb::object lengths, Array h_all,
             Array last, nb::object hist, nb::object cache, int64_t batch, int64_t time,
             int64_t heads, int64_t head_dim, int32_t cell, uintptr_t stream) {
  const rnn::Shape s = shape_of(batch, time, heads, head_dim, cell);
  const Checker c{R, elem_of(R, "R"), bindings::device_of(R, "R")};
  using bindings::checked_mul;
  const int64_t N = checked_mul(heads, head_dim, "R");
  const int64_t BN = checked_mul(batch, N, "states");
  const int64_t G = rnn::gates(s.cell), GB = rnn::bias_rows(s.cell), S = rnn::state_count(s.cell);
  c.same(R, "R", checked_mul(checked_mul(G, N, "R"), head_dim, "R"));
  c.same(b, "b", checked_mul(GB, N, "b"));
  c.same(Wx, "Wx", checked_mul(checked_mul(BN, time, "Wx"), G, "Wx"));
  c.same(h_all, "h_all", checked_mul(BN, time, "h_all"));
  c.same(last, "last", checked_mul(S, BN, "last"));
  const void* st0 = c.optional(states0, "states", S * BN);
  const int64_t* len = c.lengths(lengths, batch);
  void* hi = const_cast<void*>(c.optional(hist, "hist", checked_mul(S * BN, time + 1, "hist"), true));
  void* ca = const_cast<void*>(c.optional(cache, "cache", checked_mul(BN * GB, time, "cache"), true));
  Status st;
  {
    nb::gil_scoped_release release;
    void* sp = reinterpret_cast<void*>(stream);
    if (c.el.is_double) {
      st = rnn::forward(static_cast<const double*>(Wx.data()), static_cast<const double*>(R.data()),
                        static_cast<const double*>(b.data()), static_cast<const double*>(st0), len,
                        static_cast<double*>(h_all.data()), static_cast<double*>(last.data()),
                        static_cast<double*>(hi), static_cast<double*>(ca), s, c.dev, sp);
    } else {
      st = rnn::forward(Wx.data(), R.data(), b.data(), st0, len, h_all.data(), last.data(),
                        static_cast<float*>(hi), static_cast<float*>(ca), c.el.dtype, s, c.dev, sp);
    }
  }
  bindings::raise_if_failed(st);
}

// forward with the input projection fused (CPU; float32 / float64): x [B, T, in_dim] and
// Wih [G * NH * DH, in_dim] instead of Wx.
void forward_input(Array x, Array Wih, Array R, Array b, nb::object states0, nb::object lengths,
                   Array h_all, Array last, nb::object hist, nb::object cache, int64_t batch,
                   int64_t time, int64_t heads, int64_t head_dim, int64_t in_dim, int32_t cell) {
  const rnn::Shape s = shape_of(batch, time, heads, head_dim, cell);
  const Checker c{R, elem_of(R, "R"), bindings::device_of(R, "R")};
  using bindings::checked_mul;
  if (in_dim <= 0) throw nb::value_error("in_dim must be > 0");
  const int64_t N = checked_mul(heads, head_dim, "R");
  const int64_t BN = checked_mul(batch, N, "states");
  const int64_t G = rnn::gates(s.cell), GB = rnn::bias_rows(s.cell), S = rnn::state_count(s.cell);
  c.same(R, "R", checked_mul(checked_mul(G, N, "R"), head_dim, "R"));
  c.same(b, "b", checked_mul(GB, N, "b"));
  c.same(x, "x", checked_mul(checked_mul(batch, time, "x"), in_dim, "x"));
  c.same(Wih, "Wih", checked_mul(checked_mul(G, N, "Wih"), in_dim, "Wih"));
  c.same(h_all, "h_all", checked_mul(BN, time, "h_all"));
  c.same(last, "last", checked_mul(S, BN, "last"));
  const void* st0 = c.optional(states0, "states", S * BN);
  const int64_t* len = c.lengths(lengths, batch);
  void* hi = const_cast<void*>(c.optional(hist, "hist", checked_mul(S * BN, time + 1, "hist"), true));
  void* ca = const_cast<void*>(c.optional(cache, "cache", checked_mul(BN * GB, time, "cache"), true));
  Status st;
  {
    nb::gil_scoped_release release;
    if (c.el.is_double) {
      st = rnn::forward_input(static_cast<const double*>(x.data()),
                              static_cast<const double*>(Wih.data()), in_dim,
                              static_cast<const double*>(R.data()),
                              static_cast<const double*>(b.data()),
                              static_cast<const double*>(st0), len,
                              static_cast<double*>(h_all.data()), static_cast<double*>(last.data()),
                              static_cast<double*>(hi), static_cast<double*>(ca), s, c.dev,
                              nullptr);
    } else {
      st = rnn::forward_input(x.data(), Wih.data(), in_dim, R.data(), b.data(), st0, len,
                              h_all.data(), last.data(), static_cast<float*>(hi),
                              static_cast<float*>(ca), c.el.dtype, s, c.dev, nullptr);
    }
  }
  bindings::raise_if_failed(st);
}

void backward(nb::object dh_all, nb::object dlast, Array R, Array hist, Array cache,
              nb::object lengths, Array dWx, Array dR, Array db, nb::object dstates0, Array work,
              int64_t batch, int64_t time, int64_t heads, int64_t head_dim, int32_t cell,
              uintptr_t stream) {
  const rnn::Shape s = shape_of(batch, time, heads, head_dim, cell);
  const Checker c{R, elem_of(R, "R"), bindings::device_of(R, "R")};
  using bindings::checked_mul;
  const int64_t N = checked_mul(heads, head_dim, "R");
  const int64_t BN = checked_mul(batch, N, "states");
  const int64_t G = rnn::gates(s.cell), GB = rnn::bias_rows(s.cell), S = rnn::state_count(s.cell);
  c.same(R, "R", checked_mul(checked_mul(G, N, "R"), head_dim, "R"));
  c.same(dR, "dR", G * N * head_dim);
  c.same(db, "db", checked_mul(GB, N, "db"));
  c.same(dWx, "dWx", checked_mul(checked_mul(BN, time, "dWx"), G, "dWx"));
  c.same(hist, "hist", checked_mul(S * BN, time + 1, "hist"), true);
  c.same(cache, "cache", checked_mul(BN * GB, time, "cache"), true);
  c.same(work, "work", rnn::backward_workspace(s), true);
  const void* dh = c.optional(dh_all, "dh_all", checked_mul(BN, time, "dh_all"));
  const void* dl = c.optional(dlast, "dlast", S * BN);
  void* ds0 = const_cast<void*>(c.optional(dstates0, "dstates", S * BN));
  const int64_t* len = c.lengths(lengths, batch);
  Status st;
  {
    nb::gil_scoped_release release;
    void* sp = reinterpret_cast<void*>(stream);
    if (c.el.is_double) {
      st = rnn::backward(static_cast<const double*>(dh), static_cast<const double*>(dl),
                         static_cast<const double*>(R.data()), static_cast<const double*>(hist.data()),
                         static_cast<const double*>(cache.data()), len,
                         static_cast<double*>(dWx.data()), static_cast<double*>(dR.data()),
                         static_cast<double*>(db.data()), static_cast<double*>(ds0),
                         static_cast<double*>(work.data()), s, c.dev, sp);
    } else {
      st = rnn::backward(dh, dl, R.data(), static_cast<const float*>(hist.data()),
                         static_cast<const float*>(cache.data()), len, dWx.data(), dR.data(),
                         db.data(), ds0, static_cast<float*>(work.data()), c.el.dtype, s, c.dev, sp);
    }
  }
  bindings::raise_if_failed(st);
}

// The CUDA kernel family forward / backward would run (rnn.h: cuda_path); dtype by name.
std::string cuda_path(const std::string& dtype, int64_t batch, int64_t time, int64_t heads,
                      int64_t head_dim, int32_t cell, bool backward) {
  DType dt;
  if (dtype == "float32") {
    dt = DType::float32;
  } else if (dtype == "float16") {
    dt = DType::float16;
  } else if (dtype == "bfloat16") {
    dt = DType::bfloat16;
  } else {
    throw nb::value_error("dtype must be 'float32', 'float16' or 'bfloat16'");
  }
  const char* name = nullptr;
  bindings::raise_if_failed(rnn::cuda_path(dt, shape_of(batch, time, heads, head_dim, cell),
                                           backward, &name));
  return name;
}

void set_cuda_path(const std::string& name) {
  if (rnn::set_cuda_path(name.c_str()) != Status::ok) {
    throw nb::value_error("path must be 'auto', 'persistent', 'cluster', 'cooperative' or 'step'");
  }
}

// The backward of forward_input (CPU; float32 / float64): dx and dWih instead of dWx.
void backward_input(nb::object dh_all, nb::object dlast, Array x, Array Wih, Array R, Array hist,
                    Array cache, nb::object lengths, nb::object dx, Array dWih, Array dR, Array db,
                    nb::object dstates0, Array work, int64_t batch, int64_t time, int64_t heads,
                    int64_t head_dim, int64_t in_dim, int32_t cell) {
  const rnn::Shape s = shape_of(batch, time, heads, head_dim, cell);
  const Checker c{R, elem_of(R, "R"), bindings::device_of(R, "R")};
  using bindings::checked_mul;
  if (in_dim <= 0) throw nb::value_error("in_dim must be > 0");
  const int64_t N = checked_mul(heads, head_dim, "R");
  const int64_t BN = checked_mul(batch, N, "states");
  const int64_t G = rnn::gates(s.cell), GB = rnn::bias_rows(s.cell), S = rnn::state_count(s.cell);
  c.same(R, "R", checked_mul(checked_mul(G, N, "R"), head_dim, "R"));
  c.same(dR, "dR", G * N * head_dim);
  c.same(db, "db", checked_mul(GB, N, "db"));
  const int64_t nx = checked_mul(checked_mul(batch, time, "x"), in_dim, "x");
  const int64_t nw = checked_mul(checked_mul(G, N, "Wih"), in_dim, "Wih");
  c.same(x, "x", nx);
  void* dxp = const_cast<void*>(c.optional(dx, "dx", nx));
  c.same(Wih, "Wih", nw);
  c.same(dWih, "dWih", nw);
  c.same(hist, "hist", checked_mul(S * BN, time + 1, "hist"), true);
  c.same(cache, "cache", checked_mul(BN * GB, time, "cache"), true);
  c.same(work, "work", rnn::backward_workspace(s), true);
  const void* dh = c.optional(dh_all, "dh_all", checked_mul(BN, time, "dh_all"));
  const void* dl = c.optional(dlast, "dlast", S * BN);
  void* ds0 = const_cast<void*>(c.optional(dstates0, "dstates", S * BN));
  const int64_t* len = c.lengths(lengths, batch);
  Status st;
  {
    nb::gil_scoped_release release;
    if (c.el.is_double) {
      st = rnn::backward_input(
          static_cast<const double*>(dh), static_cast<const double*>(dl),
          static_cast<const double*>(x.data()), static_cast<const double*>(Wih.data()), in_dim,
          static_cast<const double*>(R.data()), static_cast<const double*>(hist.data()),
          static_cast<const double*>(cache.data()), len, static_cast<double*>(dxp),
          static_cast<double*>(dWih.data()), static_cast<double*>(dR.data()),
          static_cast<double*>(db.data()), static_cast<double*>(ds0),
          static_cast<double*>(work.data()), s, c.dev, nullptr);
    } else {
      st = rnn::backward_input(dh, dl, x.data(), Wih.data(), in_dim, R.data(),
                               static_cast<const float*>(hist.data()),
                               static_cast<const float*>(cache.data()), len, dxp,
                               dWih.data(), dR.data(), db.data(), ds0,
                               static_cast<float*>(work.data()), c.el.dtype, s, c.dev, nullptr);
    }
  }
  bindings::raise_if_failed(st);
}

}  // namespace

NB_MODULE(_rnn, m) {
  m.doc() = "Native multi-head RNN cells (see fastpaper.rnn for the documented Python API).";
  m.def("forward", &forward, nb::arg("Wx").noconvert(), nb::arg("R").noconvert(),
        nb::arg("b").noconvert(), nb::arg("states0").none(), nb::arg("lengths").none(),
        nb::arg("h_all").noconvert(), nb::arg("last").noconvert(), nb::arg("hist").none(),
        nb::arg("cache").none(), nb::arg("batch"), nb::arg("time"), nb::arg("heads"),
        nb::arg("head_dim"), nb::arg("cell"), nb::arg("stream") = 0);
  m.def("forward_input", &forward_input, nb::arg("x").noconvert(), nb::arg("Wih").noconvert(),
        nb::arg("R").noconvert(), nb::arg("b").noconvert(), nb::arg("states0").none(),
        nb::arg("lengths").none(), nb::arg("h_all").noconvert(), nb::arg("last").noconvert(),
        nb::arg("hist").none(), nb::arg("cache").none(), nb::arg("batch"), nb::arg("time"),
        nb::arg("heads"), nb::arg("head_dim"), nb::arg("in_dim"), nb::arg("cell"));
  m.def("backward", &backward, nb::arg("dh_all").none(), nb::arg("dlast").none(),
        nb::arg("R").noconvert(), nb::arg("hist").noconvert(), nb::arg("cache").noconvert(),
        nb::arg("lengths").none(), nb::arg("dWx").noconvert(), nb::arg("dR").noconvert(),
        nb::arg("db").noconvert(), nb::arg("dstates0").none(), nb::arg("work").noconvert(),
        nb::arg("batch"), nb::arg("time"), nb::arg("heads"), nb::arg("head_dim"),
        nb::arg("cell"), nb::arg("stream") = 0);
  m.def("backward_input", &backward_input, nb::arg("dh_all").none(), nb::arg("dlast").none(),
        nb::arg("x").noconvert(), nb::arg("Wih").noconvert(), nb::arg("R").noconvert(),
        nb::arg("hist").noconvert(), nb::arg("cache").noconvert(), nb::arg("lengths").none(),
        nb::arg("dx").none(), nb::arg("dWih").noconvert(), nb::arg("dR").noconvert(),
        nb::arg("db").noconvert(), nb::arg("dstates0").none(), nb::arg("work").noconvert(),
        nb::arg("batch"), nb::arg("time"), nb::arg("heads"), nb::arg("head_dim"),
        nb::arg("in_dim"), nb::arg("cell"));
  m.def("set_cuda_path", &set_cuda_path, nb::arg("name"),
        "Force the CUDA kernel family: 'auto', 'persistent', 'cluster', 'cooperative' or 'step'.");
  m.def("get_cuda_path", [] { return std::string(rnn::get_cuda_path()); },
        "The current setting (FASTPAPER_RNN_PATH at first use, then set_cuda_path).");
  m.def("cuda_path", &cuda_path, nb::arg("dtype"), nb::arg("batch"), nb::arg("time"),
        nb::arg("heads"), nb::arg("head_dim"), nb::arg("cell"), nb::arg("backward") = false,
        "The CUDA kernel family a call would run on the current device (raises when forced and "
        "impossible).");
}
