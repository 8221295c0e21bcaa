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

// The checks every entry shares: the shape, R's dtype and device, and the state / history / cache
// arrays of one (batch, time, heads, head_dim, cell); each check names the argument.
struct Call {
  rnn::Shape s;
  Checker c;
  int64_t N, BN, G, GB, S;

  Call(Array R, int64_t batch, int64_t time, int64_t heads, int64_t head_dim, int32_t cell)
      : s(shape_of(batch, time, heads, head_dim, cell)),
        c{R, elem_of(R, "R"), bindings::device_of(R, "R")} {
    using bindings::checked_mul;
    N = checked_mul(heads, head_dim, "R");
    BN = checked_mul(batch, N, "states");
    G = rnn::gates(s.cell);
    GB = rnn::bias_rows(s.cell);
    S = rnn::state_count(s.cell);
    c.same(R, "R", checked_mul(checked_mul(G, N, "R"), head_dim, "R"));
  }
  int64_t per_step(int64_t rows, const char* name) const {
    return bindings::checked_mul(rows, s.time, name);
  }
  // x [B, T, in_dim] and Wih [G N, in_dim] of the fused-projection entries.
  int64_t x_size(int64_t in_dim) const {
    if (in_dim <= 0) throw nb::value_error("in_dim must be > 0");
    return bindings::checked_mul(per_step(s.batch, "x"), in_dim, "x");
  }
  int64_t wih_size(int64_t in_dim) const { return bindings::checked_mul(G * N, in_dim, "Wih"); }
  const int64_t* lengths(nb::object l) const { return c.lengths(l, s.batch); }
  const void* states(nb::object o, const char* name) const { return c.optional(o, name, S * BN); }
  void* optional_out(nb::object o, const char* name, int64_t n) const {
    return const_cast<void*>(c.optional(o, name, n, true));
  }
  int64_t hist_size() const { return bindings::checked_mul(S * BN, s.time + 1, "hist"); }
  int64_t cache_size() const { return per_step(BN * GB, "cache"); }
};

// Forward outputs and their optional saves: h_all, last, hist, cache.
struct ForwardArgs {
  void* hist;
  void* cache;
  ForwardArgs(const Call& k, Array b, Array h_all, Array last, nb::object hist_o,
              nb::object cache_o) {
    k.c.same(b, "b", bindings::checked_mul(k.GB, k.N, "b"));
    k.c.same(h_all, "h_all", k.per_step(k.BN, "h_all"));
    k.c.same(last, "last", k.S * k.BN);
    hist = k.optional_out(hist_o, "hist", k.hist_size());
    cache = k.optional_out(cache_o, "cache", k.cache_size());
  }
};

// Backward inputs and outputs shared by both backward entries.
struct BackwardArgs {
  const void* dh;
  const void* dl;
  void* ds0;
  BackwardArgs(const Call& k, nb::object dh_all, nb::object dlast, Array hist, Array cache,
               Array dR, Array db, nb::object dstates0, Array work) {
    k.c.same(dR, "dR", k.G * k.N * k.s.head_dim);
    k.c.same(db, "db", bindings::checked_mul(k.GB, k.N, "db"));
    k.c.same(hist, "hist", k.hist_size(), true);
    k.c.same(cache, "cache", k.cache_size(), true);
    k.c.same(work, "work", rnn::backward_workspace(k.s), true);
    dh = k.c.optional(dh_all, "dh_all", k.per_step(k.BN, "dh_all"));
    dl = k.states(dlast, "dlast");
    ds0 = const_cast<void*>(k.states(dstates0, "dstates"));
  }
};

template <class T>
const T* cptr(const void* p) {
  return static_cast<const T*>(p);
}
template <class T>
T* mptr(void* p) {
  return static_cast<T*>(p);
}

void forward(Array Wx, Array R, Array b, nb::object states0, nb::object lengths, Array h_all,
             Array last, nb::object hist, nb::object cache, int64_t batch, int64_t time,
             int64_t heads, int64_t head_dim, int32_t cell, uintptr_t stream) {
  const Call k(R, batch, time, heads, head_dim, cell);
  const ForwardArgs a(k, b, h_all, last, hist, cache);
  k.c.same(Wx, "Wx", bindings::checked_mul(k.per_step(k.BN, "Wx"), k.G, "Wx"));
  const void* st0 = k.states(states0, "states");
  const int64_t* len = k.lengths(lengths);
  Status st;
  {
    nb::gil_scoped_release release;
    void* sp = reinterpret_cast<void*>(stream);
    if (k.c.el.is_double) {
      st = rnn::forward(cptr<double>(Wx.data()), cptr<double>(R.data()), cptr<double>(b.data()),
                        cptr<double>(st0), len, mptr<double>(h_all.data()),
                        mptr<double>(last.data()), mptr<double>(a.hist), mptr<double>(a.cache),
                        k.s, k.c.dev, sp);
    } else {
      st = rnn::forward(Wx.data(), R.data(), b.data(), st0, len, h_all.data(), last.data(),
                        mptr<float>(a.hist), mptr<float>(a.cache), k.c.el.dtype, k.s, k.c.dev, sp);
    }
  }
  bindings::raise_if_failed(st);
}

// forward with the input projection fused (CPU; float32 / float64): x [B, T, in_dim] and
// Wih [G * NH * DH, in_dim] instead of Wx.
void forward_input(Array x, Array Wih, Array R, Array b, nb::object states0, nb::object lengths,
                   Array h_all, Array last, nb::object hist, nb::object cache, int64_t batch,
                   int64_t time, int64_t heads, int64_t head_dim, int64_t in_dim, int32_t cell) {
  const Call k(R, batch, time, heads, head_dim, cell);
  const ForwardArgs a(k, b, h_all, last, hist, cache);
  k.c.same(x, "x", k.x_size(in_dim));
  k.c.same(Wih, "Wih", k.wih_size(in_dim));
  const void* st0 = k.states(states0, "states");
  const int64_t* len = k.lengths(lengths);
  Status st;
  {
    nb::gil_scoped_release release;
    if (k.c.el.is_double) {
      st = rnn::forward_input(cptr<double>(x.data()), cptr<double>(Wih.data()), in_dim,
                              cptr<double>(R.data()), cptr<double>(b.data()), cptr<double>(st0),
                              len, mptr<double>(h_all.data()), mptr<double>(last.data()),
                              mptr<double>(a.hist), mptr<double>(a.cache), k.s, k.c.dev, nullptr);
    } else {
      st = rnn::forward_input(x.data(), Wih.data(), in_dim, R.data(), b.data(), st0, len,
                              h_all.data(), last.data(), mptr<float>(a.hist),
                              mptr<float>(a.cache), k.c.el.dtype, k.s, k.c.dev, nullptr);
    }
  }
  bindings::raise_if_failed(st);
}

void backward(nb::object dh_all, nb::object dlast, Array R, Array hist, Array cache,
              nb::object lengths, Array dWx, Array dR, Array db, nb::object dstates0, Array work,
              int64_t batch, int64_t time, int64_t heads, int64_t head_dim, int32_t cell,
              uintptr_t stream) {
  const Call k(R, batch, time, heads, head_dim, cell);
  const BackwardArgs a(k, dh_all, dlast, hist, cache, dR, db, dstates0, work);
  k.c.same(dWx, "dWx", bindings::checked_mul(k.per_step(k.BN, "dWx"), k.G, "dWx"));
  const int64_t* len = k.lengths(lengths);
  Status st;
  {
    nb::gil_scoped_release release;
    void* sp = reinterpret_cast<void*>(stream);
    if (k.c.el.is_double) {
      st = rnn::backward(cptr<double>(a.dh), cptr<double>(a.dl), cptr<double>(R.data()),
                         cptr<double>(hist.data()), cptr<double>(cache.data()), len,
                         mptr<double>(dWx.data()), mptr<double>(dR.data()), mptr<double>(db.data()),
                         mptr<double>(a.ds0), mptr<double>(work.data()), k.s, k.c.dev, sp);
    } else {
      st = rnn::backward(a.dh, a.dl, R.data(), cptr<float>(hist.data()), cptr<float>(cache.data()),
                         len, dWx.data(), dR.data(), db.data(), a.ds0, mptr<float>(work.data()),
                         k.c.el.dtype, k.s, k.c.dev, sp);
    }
  }
  bindings::raise_if_failed(st);
}

// The backward of forward_input (CPU; float32 / float64): dx and dWih instead of dWx.
void backward_input(nb::object dh_all, nb::object dlast, Array x, Array Wih, Array R, Array hist,
                    Array cache, nb::object lengths, nb::object dx, Array dWih, Array dR, Array db,
                    nb::object dstates0, Array work, int64_t batch, int64_t time, int64_t heads,
                    int64_t head_dim, int64_t in_dim, int32_t cell) {
  const Call k(R, batch, time, heads, head_dim, cell);
  const BackwardArgs a(k, dh_all, dlast, hist, cache, dR, db, dstates0, work);
  const int64_t nx = k.x_size(in_dim), nw = k.wih_size(in_dim);
  k.c.same(x, "x", nx);
  void* dxp = const_cast<void*>(k.c.optional(dx, "dx", nx));
  k.c.same(Wih, "Wih", nw);
  k.c.same(dWih, "dWih", nw);
  const int64_t* len = k.lengths(lengths);
  Status st;
  {
    nb::gil_scoped_release release;
    if (k.c.el.is_double) {
      st = rnn::backward_input(cptr<double>(a.dh), cptr<double>(a.dl), cptr<double>(x.data()),
                               cptr<double>(Wih.data()), in_dim, cptr<double>(R.data()),
                               cptr<double>(hist.data()), cptr<double>(cache.data()), len,
                               mptr<double>(dxp), mptr<double>(dWih.data()),
                               mptr<double>(dR.data()), mptr<double>(db.data()),
                               mptr<double>(a.ds0), mptr<double>(work.data()), k.s, k.c.dev,
                               nullptr);
    } else {
      st = rnn::backward_input(a.dh, a.dl, x.data(), Wih.data(), in_dim, R.data(),
                               cptr<float>(hist.data()), cptr<float>(cache.data()), len, dxp,
                               dWih.data(), dR.data(), db.data(), a.ds0, mptr<float>(work.data()),
                               k.c.el.dtype, k.s, k.c.dev, nullptr);
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
