// fastpaper._moe: nanobind wrapper of fastpaper/moe.h. Outputs and the CUDA workspace are
// allocated by the caller (torch) and passed in; CUDA work is enqueued on the stream passed as an
// integer.
#include "fastpaper/moe.h"

#include <string>

#include "bindings/common.h"

namespace nb = nanobind;
using namespace fastpaper;
using fastpaper::bindings::Array;

namespace {

bool is_float64(const Array& a) {
  const auto d = a.dtype();
  return d.lanes == 1 && d.bits == 64 && d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float);
}

bool is_float32(const Array& a) {
  const auto d = a.dtype();
  return d.lanes == 1 && d.bits == 32 && d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float);
}

void check_int64(const Array& a, const char* name) {
  const auto d = a.dtype();
  if (!(d.lanes == 1 && d.bits == 64 && d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Int))) {
    throw nb::type_error((std::string(name) + ": expected int64 data").c_str());
  }
}

struct Checked {
  bool dbl;
  DType dtype;
  Device device;
  moe::Shape shape;
};

// Checks sizes, dtypes and devices of the tensors shared by forward and backward.
Checked check(const Array& x, const Array& scores, const Array& indices, const Array& W1,
              const Array& b1, const Array& W2, const Array& b2, int64_t tokens, int64_t dim,
              int64_t hidden, int64_t experts, int64_t k) {
  Checked c{is_float64(x), DType::float32, bindings::device_of(x, "x"),
            {tokens, dim, hidden, experts, k}};
  if (!c.dbl) c.dtype = bindings::float_dtype_of(x, "x");
  const Array* same[] = {&W1, &b1, &W2, &b2};
  const char* names[] = {"W1", "b1", "W2", "b2"};
  for (int i = 0; i < 4; ++i) {
    const Array& a = *same[i];
    if (is_float64(a) != c.dbl || (!c.dbl && bindings::float_dtype_of(a, names[i]) != c.dtype)) {
      throw nb::type_error((std::string(names[i]) + " must have the dtype of x").c_str());
    }
    bindings::check_same_device(x, "x", a, names[i]);
  }
  if (c.dbl ? !is_float64(scores) : !is_float32(scores)) {
    throw nb::type_error("scores must be float64 for float64 x, else float32");
  }
  check_int64(indices, "indices");
  bindings::check_same_device(x, "x", scores, "scores");
  bindings::check_same_device(x, "x", indices, "indices");
  const int64_t dh = bindings::checked_mul(dim, hidden, "W1");
  bindings::check_size(x, "x", bindings::checked_mul(tokens, dim, "x"));
  bindings::check_size(scores, "scores", bindings::checked_mul(tokens, k, "scores"));
  bindings::check_size(indices, "indices", bindings::checked_mul(tokens, k, "indices"));
  bindings::check_size(W1, "W1", bindings::checked_mul(experts, dh, "W1"));
  bindings::check_size(W2, "W2", bindings::checked_mul(experts, dh, "W2"));
  bindings::check_size(b1, "b1", bindings::checked_mul(experts, hidden, "b1"));
  bindings::check_size(b2, "b2", bindings::checked_mul(experts, dim, "b2"));
  return c;
}

void* ws_ptr(nb::object ws, size_t* bytes) {
  if (ws.is_none()) {
    *bytes = 0;
    return nullptr;
  }
  Array a = nb::cast<Array>(ws);
  *bytes = a.nbytes();
  return a.data();
}

size_t workspace_size(int64_t tokens, int64_t dim, int64_t hidden, int64_t experts, int64_t k,
                      bool cuda, bool backward, bool dbl, int32_t dtype) {
  return moe::workspace_size({tokens, dim, hidden, experts, k},
                             cuda ? Device::cuda : Device::cpu, backward, dbl,
                             static_cast<DType>(dtype));
}

void forward(Array x, Array scores, Array indices, Array W1, Array b1, Array W2, Array b2, Array y,
             nb::object workspace, int64_t tokens, int64_t dim, int64_t hidden, int64_t experts,
             int64_t k, uintptr_t stream) {
  const Checked c = check(x, scores, indices, W1, b1, W2, b2, tokens, dim, hidden, experts, k);
  bindings::check_size(y, "y", bindings::checked_mul(tokens, dim, "y"));
  bindings::check_same_device(x, "x", y, "y");
  size_t ws_bytes = 0;
  void* ws = ws_ptr(workspace, &ws_bytes);
  Status s;
  {
    nb::gil_scoped_release release;
    void* st = reinterpret_cast<void*>(stream);
    const auto* idx = static_cast<const int64_t*>(indices.data());
    if (c.dbl) {
      s = moe::moe_mlp_forward(static_cast<const double*>(x.data()),
                               static_cast<const double*>(scores.data()), idx,
                               static_cast<const double*>(W1.data()),
                               static_cast<const double*>(b1.data()),
                               static_cast<const double*>(W2.data()),
                               static_cast<const double*>(b2.data()),
                               static_cast<double*>(y.data()), c.shape, c.device, ws, ws_bytes, st);
    } else {
      s = moe::moe_mlp_forward(x.data(), static_cast<const float*>(scores.data()), idx, W1.data(),
                               b1.data(), W2.data(), b2.data(), y.data(), c.dtype, c.shape,
                               c.device, ws, ws_bytes, st);
    }
  }
  bindings::raise_if_failed(s);
}

void backward(Array dy, Array x, Array scores, Array indices, Array W1, Array b1, Array W2,
              Array b2, Array dx, Array dscores, Array dW1, Array db1, Array dW2, Array db2,
              nb::object workspace, int64_t tokens, int64_t dim, int64_t hidden, int64_t experts,
              int64_t k, uintptr_t stream) {
  const Checked c = check(x, scores, indices, W1, b1, W2, b2, tokens, dim, hidden, experts, k);
  // gradients: same dtype, size and device as their primal
  const Array* grads[] = {&dy, &dx, &dscores, &dW1, &db1, &dW2, &db2};
  const Array* primal[] = {&x, &x, &scores, &W1, &b1, &W2, &b2};
  const char* names[] = {"dy", "dx", "dscores", "dW1", "db1", "dW2", "db2"};
  for (int i = 0; i < 7; ++i) {
    const Array& g = *grads[i];
    const Array& p = *primal[i];
    if (g.dtype() != p.dtype()) {
      throw nb::type_error((std::string(names[i]) + " must have the dtype of its input").c_str());
    }
    bindings::check_size(g, names[i], static_cast<int64_t>(p.size()));
    bindings::check_same_device(x, "x", g, names[i]);
  }
  size_t ws_bytes = 0;
  void* ws = ws_ptr(workspace, &ws_bytes);
  Status s;
  {
    nb::gil_scoped_release release;
    void* st = reinterpret_cast<void*>(stream);
    const auto* idx = static_cast<const int64_t*>(indices.data());
    if (c.dbl) {
      auto D = [](const Array& a) { return static_cast<const double*>(a.data()); };
      auto M = [](Array& a) { return static_cast<double*>(a.data()); };
      s = moe::moe_mlp_backward(D(dy), D(x), D(scores), idx, D(W1), D(b1), D(W2), D(b2), M(dx),
                                M(dscores), M(dW1), M(db1), M(dW2), M(db2), c.shape, c.device, ws,
                                ws_bytes, st);
    } else {
      s = moe::moe_mlp_backward(dy.data(), x.data(), static_cast<const float*>(scores.data()), idx,
                                W1.data(), b1.data(), W2.data(), b2.data(), dx.data(),
                                static_cast<float*>(dscores.data()), dW1.data(), db1.data(),
                                dW2.data(), db2.data(), c.dtype, c.shape, c.device, ws, ws_bytes,
                                st);
    }
  }
  bindings::raise_if_failed(s);
}

}  // namespace

NB_MODULE(_moe, m) {
  m.doc() = "Native expert-by-expert MoE MLP (see fastpaper.moe for the documented Python API).";
  m.def("workspace_size", &workspace_size, nb::arg("tokens"), nb::arg("dim"), nb::arg("hidden"),
        nb::arg("experts"), nb::arg("k"), nb::arg("cuda"), nb::arg("backward"), nb::arg("dbl"),
        nb::arg("dtype"));
  m.def("forward", &forward, nb::arg("x").noconvert(), nb::arg("scores").noconvert(),
        nb::arg("indices").noconvert(), nb::arg("W1").noconvert(), nb::arg("b1").noconvert(),
        nb::arg("W2").noconvert(), nb::arg("b2").noconvert(), nb::arg("y").noconvert(),
        nb::arg("workspace").none(), nb::arg("tokens"), nb::arg("dim"), nb::arg("hidden"),
        nb::arg("experts"), nb::arg("k"), nb::arg("stream") = 0);
  m.def("backward", &backward, nb::arg("dy").noconvert(), nb::arg("x").noconvert(),
        nb::arg("scores").noconvert(), nb::arg("indices").noconvert(), nb::arg("W1").noconvert(),
        nb::arg("b1").noconvert(), nb::arg("W2").noconvert(), nb::arg("b2").noconvert(),
        nb::arg("dx").noconvert(), nb::arg("dscores").noconvert(), nb::arg("dW1").noconvert(),
        nb::arg("db1").noconvert(), nb::arg("dW2").noconvert(), nb::arg("db2").noconvert(),
        nb::arg("workspace").none(), nb::arg("tokens"), nb::arg("dim"), nb::arg("hidden"),
        nb::arg("experts"), nb::arg("k"), nb::arg("stream") = 0);
}
