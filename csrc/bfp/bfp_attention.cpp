// Public decode-attention API (fastpaper/bfp_attention.h): validate, then dispatch to CPU or CUDA.
#include "fastpaper/bfp_attention.h"

#include <limits>
#include <string>

#include "bfp/bfp_attention_backends.h"
#include "core/error.h"
#include "fastpaper/config.h"
#include "fastpaper/detail/bfp_attention.h"

namespace fastpaper::bfp {
namespace {

using fastpaper::detail::fail;

detail::Codec codec_of(Format f) {
  return detail::make_codec(f.block, f.mantissa_bits, f.element == Element::twos_complement, false,
                            false, 0);
}

bool fits(int64_t a, int64_t b, int64_t c, int64_t d) {
  // a * b * c * d <= int64 max, all >= 0
  int64_t r = a;
  for (int64_t x : {b, c, d}) {
    if (x != 0 && r > std::numeric_limits<int64_t>::max() / x) return false;
    r *= x;
  }
  return true;
}

}  // namespace

int64_t decode_attention_workspace_bytes(int64_t batch, int64_t q_heads, int64_t seq, int64_t v_dim,
                                         Device device) {
  if (device != Device::cuda || batch < 0 || q_heads < 0 || seq < 1 || v_dim < 1 ||
      v_dim > kMaxDecodeHeadDim || !fits(batch, q_heads, 1, 1)) {
    return 0;
  }
  const int64_t per = detail::decode_splits(seq) * (v_dim + 2) * 4;
  if (!fits(batch * q_heads, per, 1, 1)) return 0;
  return batch * q_heads * per;
}

Status decode_attention(const DecodeAttentionArgs& a, Device device, void* stream) {
  if (a.batch < 0 || a.q_heads < 1 || a.kv_heads < 1 || a.q_heads % a.kv_heads != 0) {
    return fail(Status::invalid_argument,
                "need batch >= 0, kv_heads >= 1 and q_heads a positive multiple of kv_heads, got "
                "batch " + std::to_string(a.batch) + ", q_heads " + std::to_string(a.q_heads) +
                    ", kv_heads " + std::to_string(a.kv_heads));
  }
  if (a.seq < 1) return fail(Status::invalid_argument, "seq must be >= 1 (no keys to attend to)");
  if (a.head_dim < 1 || a.head_dim > kMaxDecodeHeadDim || a.v_dim < 1 || a.v_dim > kMaxDecodeHeadDim) {
    return fail(Status::invalid_argument, "head_dim and v_dim must be in [1, 256], got " +
                                              std::to_string(a.head_dim) + " and " + std::to_string(a.v_dim));
  }
  if (!fits(a.seq, a.batch, a.kv_heads, 2 * kMaxDecodeHeadDim) || !fits(a.batch, a.q_heads, 2 * kMaxDecodeHeadDim, 1)) {
    return fail(Status::invalid_argument, "sizes overflow int64");
  }
  if (a.dtype != DType::float32 && a.dtype != DType::float16 && a.dtype != DType::bfloat16) {
    return fail(Status::invalid_argument, "dtype must be float32, float16 or bfloat16");
  }
  if (Status s = check_format(a.k_format); s != Status::ok) return s;
  const bool packed_v = a.v_mantissas != nullptr;
  if (packed_v) {
    if (Status s = check_format(a.v_format); s != Status::ok) return s;
    if (a.v_exponents == nullptr) return fail(Status::invalid_argument, "packed values need v_exponents");
  } else if (a.v == nullptr) {
    return fail(Status::invalid_argument, "values: pass v_mantissas/v_exponents or dense v");
  }
  if (a.batch == 0) return fastpaper::detail::succeed();
  if (a.q == nullptr || a.k_mantissas == nullptr || a.k_exponents == nullptr || a.out == nullptr) {
    return fail(Status::invalid_argument, "null data pointer");
  }
  if (device != Device::cpu && device != Device::cuda) {
    return fail(Status::invalid_argument, "device must be Device::cpu or Device::cuda");
  }
  const DecodeCodecs c{codec_of(a.k_format), codec_of(packed_v ? a.v_format : Format{}), packed_v};
  if (device == Device::cuda) {
    if (Status s = fastpaper::detail::check_device_built(device); s != Status::ok) return s;
    if (a.workspace == nullptr) {
      return fail(Status::invalid_argument, "CUDA decode_attention needs a workspace of "
                                            "decode_attention_workspace_bytes(...) bytes");
    }
    return cuda::decode_attention(a, c, stream);
  }
  cpu::decode_attention(a, c);
  return fastpaper::detail::succeed();
}

#if !FASTPAPER_HAS_CUDA
namespace cuda {
Status decode_attention(const DecodeAttentionArgs&, const DecodeCodecs&, void*) {
  return Status::not_built_with_cuda;
}
}  // namespace cuda
#endif

}  // namespace fastpaper::bfp
