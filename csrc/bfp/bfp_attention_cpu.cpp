// CPU kernel of decode attention over a packed BFP KV cache (fastpaper/bfp_attention.h).
//
// Work split: one task per (batch, KV head), spread over OpenMP threads; a task serves all
// q_heads / kv_heads query heads of its group, so each key and value row is decoded once per group
// (GQA) into a small float buffer that stays in L1, then used for every query of the group. Tokens
// are visited in order with an online softmax per query (fastpaper/detail/bfp_attention.h, shared
// with CUDA), so memory traffic is one pass over the packed rows and nothing of size seq is stored.
#include <cmath>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "bfp/bfp_attention_backends.h"
#include "fastpaper/detail/bfp_attention.h"
#include "fastpaper/detail/float_convert.h"

namespace fastpaper::bfp::cpu {
namespace {

using namespace fastpaper::bfp::detail;
using fastpaper::detail::load_as_float;
using fastpaper::detail::store_from_float;

// Decodes the first n elements of a packed row into buf, block by block (format branches hoisted
// out of the element loops).
void decode_row(const uint8_t* mant, const uint8_t* expo, int n, const Codec& c, float* buf) {
  for (int c0 = 0; c0 < n; c0 += c.block) {
    const int len = n - c0 < c.block ? n - c0 : c.block;
    const uint8_t ebyte = expo[c0 / c.block];
    if (ebyte == kNonFiniteByte) {
      for (int i = 0; i < len; ++i) buf[c0 + i] = nan_value();
      continue;
    }
    const BlockScale s = decode_scale(ebyte, c);
    if (c.twos) {
      for (int i = 0; i < len; ++i) buf[c0 + i] = decode_element<true>(mant[c0 + i], s, 8);
    } else if (c.field_bits == 4) {
      for (int i = 0; i < len; ++i) {
        const int j = c0 + i;
        buf[j] = decode_element<false>((mant[j >> 1] >> ((j & 1) * 4)) & 0xfu, s, 4);
      }
    } else {
      for (int i = 0; i < len; ++i) buf[c0 + i] = decode_element<false>(mant[c0 + i], s, 8);
    }
  }
}

// <a, b> with 8 independent partial sums: the build keeps float addition unreordered
// (-ffp-contract=off, no -ffast-math), so a single accumulator would not vectorize.
float dot(const float* a, const float* b, int n) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) part[j] += a[i + j] * b[i + j];
  }
  for (; i < n; ++i) part[i & 7] += a[i] * b[i];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

template <DType D>
void run(const DecodeAttentionArgs& a, const DecodeCodecs& cd) {
  const int64_t groups = a.batch * a.kv_heads;
  const int rep = static_cast<int>(a.q_heads / a.kv_heads);
  const int d = static_cast<int>(a.head_dim), dv = static_cast<int>(a.v_dim);
  const int64_t k_mb = (a.head_dim + cd.k.block - 1) / cd.k.block * cd.k.block * cd.k.field_bits / 8;
  const int64_t k_nb = (a.head_dim + cd.k.block - 1) / cd.k.block;
  const int64_t v_mb = cd.packed_v ? (a.v_dim + cd.v.block - 1) / cd.v.block * cd.v.block * cd.v.field_bits / 8 : 0;
  const int64_t v_nb = cd.packed_v ? (a.v_dim + cd.v.block - 1) / cd.v.block : 0;
  const int64_t rows_per_token = a.batch * a.kv_heads;

#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (groups > 1 && a.seq * groups >= 256)
#endif
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t b = g / a.kv_heads, h = g % a.kv_heads;
    std::vector<float> q(static_cast<size_t>(rep) * d), acc(static_cast<size_t>(rep) * dv, 0.0f);
    std::vector<float> kbuf(d), vbuf(dv), alpha(rep), p(rep);
    std::vector<OnlineSoftmax> st(rep, softmax_init());
    for (int r = 0; r < rep; ++r) {
      const int64_t qrow = (b * a.q_heads + h * rep + r) * a.head_dim;
      for (int i = 0; i < d; ++i) q[r * d + i] = load_as_float<D>(a.q, qrow + i) * a.scale;
    }
    for (int64_t t = 0; t < a.seq; ++t) {
      const int64_t row = t * rows_per_token + g;  // g = b * kv_heads + h
      decode_row(a.k_mantissas + row * k_mb, a.k_exponents + row * k_nb, d, cd.k, kbuf.data());
      for (int r = 0; r < rep; ++r) {
        float s = dot(q.data() + r * d, kbuf.data(), d);
        if (a.bias) s += a.bias[(b * a.q_heads + h * rep + r) * a.seq + t];
        softmax_add(st[r], s, alpha[r], p[r]);
      }
      if (cd.packed_v) {
        decode_row(a.v_mantissas + row * v_mb, a.v_exponents + row * v_nb, dv, cd.v, vbuf.data());
      } else {
        for (int i = 0; i < dv; ++i) vbuf[i] = load_as_float<D>(a.v, row * a.v_dim + i);
      }
      for (int r = 0; r < rep; ++r) {
        float* ar = acc.data() + r * dv;
        const float al = alpha[r], pr = p[r];
        for (int i = 0; i < dv; ++i) ar[i] = ar[i] * al + pr * vbuf[i];
      }
    }
    for (int r = 0; r < rep; ++r) {
      const int64_t orow = (b * a.q_heads + h * rep + r) * a.v_dim;
      const float inv = 1.0f / st[r].l;
      for (int i = 0; i < dv; ++i) store_from_float<D>(a.out, orow + i, acc[r * dv + i] * inv);
    }
  }
}

}  // namespace

void decode_attention(const DecodeAttentionArgs& a, const DecodeCodecs& c) {
  switch (a.dtype) {
    case DType::float32: run<DType::float32>(a, c); break;
    case DType::float16: run<DType::float16>(a, c); break;
    case DType::bfloat16: run<DType::bfloat16>(a, c); break;
  }
}

}  // namespace fastpaper::bfp::cpu
