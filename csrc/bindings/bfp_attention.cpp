// fastpaper._bfp_attention: nanobind wrapper of fastpaper/bfp_attention.h (decode attention over a
// packed BFP KV cache). Shapes are checked here against the packed geometry so that the C++ API
// never reads past a buffer; the caller (torch) allocates out and the CUDA workspace.
#include "fastpaper/bfp_attention.h"

#include <nanobind/stl/optional.h>

#include <optional>

#include "bindings/bfp_format.h"
#include "bindings/common.h"

namespace nb = nanobind;
using namespace fastpaper;
using fastpaper::bindings::Array;

namespace {

using bindings::format_of;

int64_t rows_of(int64_t seq, int64_t batch, int64_t heads, const char* what) {
  return bindings::checked_mul(bindings::checked_mul(seq, batch, what), heads, what);
}

void decode_attention(Array q, int64_t batch, int64_t q_heads, int64_t kv_heads, int64_t seq,
                      int64_t head_dim, int64_t v_dim, double scale, Array k_mantissas,
                      Array k_exponents, int k_block, int k_mbits, int k_element,
                      std::optional<Array> v_mantissas, std::optional<Array> v_exponents,
                      std::optional<Array> v, int v_block, int v_mbits, int v_element, Array out,
                      std::optional<Array> workspace, std::optional<Array> bias, uintptr_t stream) {
  const DType dt = bindings::float_dtype_of(q, "q");
  const Device dev = bindings::device_of(q, "q");
  if (batch < 0 || q_heads < 1 || kv_heads < 1 || seq < 1 || head_dim < 1 || v_dim < 1) {
    throw nb::value_error("decode_attention: batch >= 0 and positive q_heads, kv_heads, seq, head_dim, v_dim required");
  }
  bindings::check_size(q, "q", bindings::checked_mul(bindings::checked_mul(batch, q_heads, "q"), head_dim, "q"));
  bindings::check_size(out, "out", bindings::checked_mul(bindings::checked_mul(batch, q_heads, "out"), v_dim, "out"));
  if (bindings::float_dtype_of(out, "out") != dt) throw nb::type_error("out: must have q's dtype");
  bindings::check_same_device(q, "q", out, "out");
  bfp::DecodeAttentionArgs a;
  a.batch = batch; a.q_heads = q_heads; a.kv_heads = kv_heads; a.seq = seq;
  a.head_dim = head_dim; a.v_dim = v_dim; a.scale = static_cast<float>(scale);
  a.q = q.data(); a.dtype = dt; a.out = out.data();
  a.k_format = format_of(k_block, k_mbits, k_element);
  const int64_t rows = rows_of(seq, batch, kv_heads, "k_mantissas");
  bindings::check_uint8(k_mantissas, "k_mantissas");
  bindings::check_uint8(k_exponents, "k_exponents");
  bindings::check_size(k_mantissas, "k_mantissas", bindings::checked_mul(rows, bfp::mantissa_bytes_per_row(head_dim, a.k_format), "k_mantissas"));
  bindings::check_size(k_exponents, "k_exponents", bindings::checked_mul(rows, bfp::exponent_bytes_per_row(head_dim, a.k_format), "k_exponents"));
  bindings::check_same_device(q, "q", k_mantissas, "k_mantissas");
  bindings::check_same_device(q, "q", k_exponents, "k_exponents");
  a.k_mantissas = static_cast<const uint8_t*>(k_mantissas.data());
  a.k_exponents = static_cast<const uint8_t*>(k_exponents.data());
  if (v_mantissas.has_value() != v_exponents.has_value() || v_mantissas.has_value() == v.has_value()) {
    throw nb::value_error("values: pass either v_mantissas and v_exponents (packed) or v (dense)");
  }
  if (v_mantissas) {
    a.v_format = format_of(v_block, v_mbits, v_element);
    bindings::check_uint8(*v_mantissas, "v_mantissas");
    bindings::check_uint8(*v_exponents, "v_exponents");
    bindings::check_size(*v_mantissas, "v_mantissas", bindings::checked_mul(rows, bfp::mantissa_bytes_per_row(v_dim, a.v_format), "v_mantissas"));
    bindings::check_size(*v_exponents, "v_exponents", bindings::checked_mul(rows, bfp::exponent_bytes_per_row(v_dim, a.v_format), "v_exponents"));
    bindings::check_same_device(q, "q", *v_mantissas, "v_mantissas");
    bindings::check_same_device(q, "q", *v_exponents, "v_exponents");
    a.v_mantissas = static_cast<const uint8_t*>(v_mantissas->data());
    a.v_exponents = static_cast<const uint8_t*>(v_exponents->data());
  } else {
    if (bindings::float_dtype_of(*v, "v") != dt) throw nb::type_error("v: dense values must have q's dtype");
    bindings::check_size(*v, "v", bindings::checked_mul(rows, v_dim, "v"));
    bindings::check_same_device(q, "q", *v, "v");
    a.v = v->data();
  }
  if (bias) {
    if (bindings::float_dtype_of(*bias, "bias") != DType::float32) throw nb::type_error("bias: must be float32");
    bindings::check_size(*bias, "bias", bindings::checked_mul(bindings::checked_mul(batch, q_heads, "bias"), seq, "bias"));
    bindings::check_same_device(q, "q", *bias, "bias");
    a.bias = static_cast<const float*>(bias->data());
  }
  const int64_t ws_bytes = bfp::decode_attention_workspace_bytes(batch, q_heads, seq, v_dim, dev);
  if (ws_bytes > 0) {
    if (!workspace) throw nb::value_error("workspace: required on CUDA");
    bindings::check_uint8(*workspace, "workspace");
    if (static_cast<int64_t>(workspace->size()) < ws_bytes) throw nb::value_error("workspace: too small");
    bindings::check_same_device(q, "q", *workspace, "workspace");
    a.workspace = workspace->data();
  }
  Status s;
  {
    nb::gil_scoped_release release;
    s = bfp::decode_attention(a, dev, reinterpret_cast<void*>(stream));
  }
  bindings::raise_if_failed(s);
}

}  // namespace

NB_MODULE(_bfp_attention, m) {
  m.doc() = "Native decode attention over a packed BFP KV cache (see fastpaper.bfp.decode_attention).";
  m.def("decode_attention", &decode_attention, nb::arg("q").noconvert(), nb::arg("batch"),
        nb::arg("q_heads"), nb::arg("kv_heads"), nb::arg("seq"), nb::arg("head_dim"),
        nb::arg("v_dim"), nb::arg("scale"), nb::arg("k_mantissas").noconvert(),
        nb::arg("k_exponents").noconvert(), nb::arg("k_block"), nb::arg("k_mantissa_bits"),
        nb::arg("k_element"), nb::arg("v_mantissas").noconvert().none(),
        nb::arg("v_exponents").noconvert().none(), nb::arg("v").noconvert().none(),
        nb::arg("v_block"), nb::arg("v_mantissa_bits"), nb::arg("v_element"),
        nb::arg("out").noconvert(), nb::arg("workspace").noconvert().none(),
        nb::arg("bias").noconvert().none(), nb::arg("stream") = 0);
  m.def("workspace_bytes", [](int64_t batch, int64_t q_heads, int64_t seq, int64_t v_dim, bool cuda) {
    return bfp::decode_attention_workspace_bytes(batch, q_heads, seq, v_dim, cuda ? Device::cuda : Device::cpu);
  });
}
