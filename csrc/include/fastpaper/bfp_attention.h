// fastpaper::bfp — single-query (decode) attention over a BFP-packed KV cache.
//
// For every batch b and query head g (KV head h = g / (q_heads / kv_heads), grouped-query
// attention), with keys K_t and values V_t of the tokens t < seq of (b, h):
//
//   s_t = scale * <q[b, g], K_t> + bias[b, g, t]        out[b, g] = sum_t softmax(s)_t * V_t
//
// bias (optional, float32 [batch, q_heads, seq]) is an additive logit term: fastpaper.bfp.BFPCache
// uses it for the part of q.k that its key centering moved out of the stored keys.
//
// Keys are read packed and decoded in registers (never written back as dense tensors); values are
// packed (v_mantissas != nullptr) or dense. Scores, softmax (online, running max) and the weighted
// sum are float32; out is rounded once to q's dtype. A key or value block that stores NaN/Inf
// (exponent byte 255) makes the output NaN, as dequantize-then-attend would.
//
// Layouts (row-major, contiguous), token-major like fastpaper.bfp.BFPCache:
//   q            [batch, q_heads, head_dim]                     dtype q_dtype
//   k_mantissas  [seq, batch, kv_heads, mantissa_bytes_per_row(head_dim, k_format)]
//   k_exponents  [seq, batch, kv_heads, exponent_bytes_per_row(head_dim, k_format)]
//   v_mantissas / v_exponents likewise with (v_dim, v_format), or
//   v            [seq, batch, kv_heads, v_dim]                  dtype q_dtype (dense values)
//   out          [batch, q_heads, v_dim]                        dtype q_dtype
// Limits: 1 <= head_dim, v_dim <= 256; seq >= 1; q_heads a multiple of kv_heads.
//
// CUDA: the sequence is split into chunks processed independently (split-K) and combined; the
// partial results go to `workspace` (decode_attention_workspace_bytes; unused on the CPU).
#pragma once

#include <cstdint>

#include "fastpaper/bfp.h"

namespace fastpaper::bfp {

struct DecodeAttentionArgs {
  int64_t batch = 0, q_heads = 0, kv_heads = 0, seq = 0, head_dim = 0, v_dim = 0;
  float scale = 1.0f;
  const void* q = nullptr;
  DType dtype = DType::float32;  // of q, dense v and out
  const uint8_t* k_mantissas = nullptr;
  const uint8_t* k_exponents = nullptr;
  Format k_format{};
  const uint8_t* v_mantissas = nullptr;  // packed values, or nullptr for dense `v`
  const uint8_t* v_exponents = nullptr;
  Format v_format{};
  const void* v = nullptr;
  void* out = nullptr;
  const float* bias = nullptr;  // optional [batch, q_heads, seq], on the device of q
  void* workspace = nullptr;  // CUDA only
};

inline constexpr int64_t kMaxDecodeHeadDim = 256;

// Bytes of workspace decode_attention needs on `device` (0 on the CPU, or for invalid sizes).
FASTPAPER_API int64_t decode_attention_workspace_bytes(int64_t batch, int64_t q_heads, int64_t seq,
                                                       int64_t v_dim, Device device);

FASTPAPER_API Status decode_attention(const DecodeAttentionArgs& args, Device device, void* stream);

}  // namespace fastpaper::bfp
