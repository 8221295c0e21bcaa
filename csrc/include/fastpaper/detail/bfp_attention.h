// Math of decode attention over packed BFP rows, shared by the CPU kernel (csrc/bfp) and the CUDA
// kernel (cuda/bfp): reading one element of a packed row, and the online-softmax recurrences.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastpaper/detail/bfp_codec.h"

namespace fastpaper::bfp::detail {

// The W-bit field of element c of a packed row (W = 4: two per byte, even index in the low nibble).
FP_HD uint32_t field_at(const uint8_t* row, int64_t c, int field_bits) {
  if (field_bits == 4) return (row[c >> 1] >> ((c & 1) * 4)) & 0xfu;
  return row[c];
}

// Element c of a packed row with mantissa bytes `mant` and exponent bytes `expo`.
FP_HD float decode_at(const uint8_t* mant, const uint8_t* expo, int64_t c, const Codec& k) {
  return decode_element(field_at(mant, c, k.field_bits), expo[c / k.block], k);
}

// Online softmax (Milakov & Gimelshein 2018): the running maximum m and normaliser
// l = sum_t exp(s_t - m) of the scores seen so far. Adding a score s gives the factor `alpha` that
// rescales the running weighted sum and the weight `p` of the new value: acc = acc * alpha + p * v.
// A NaN score makes l (hence the output) NaN; -inf scores have weight 0.
struct OnlineSoftmax {
  float m;
  float l;
};

FP_HD OnlineSoftmax softmax_init() { return OnlineSoftmax{-INFINITY, 0.0f}; }

FP_HD void softmax_add(OnlineSoftmax& st, float s, float& alpha, float& p) {
  const float m_new = s > st.m ? s : st.m;  // a NaN s keeps m; exp(NaN - m) below poisons l
  if (m_new == -INFINITY) {                 // nothing finite seen yet
    alpha = 1.0f;
    p = (s != s) ? s : 0.0f;
  } else {
    alpha = expf(st.m - m_new);
    p = expf(s - m_new);
  }
  st.l = st.l * alpha + p;
  st.m = m_new;
}

// Merges partial state b into a (split-K combine): returns the factors for a's and b's partial
// weighted sums, acc = acc_a * fa + acc_b * fb.
FP_HD void softmax_merge(OnlineSoftmax& a, OnlineSoftmax b, float& fa, float& fb) {
  const float m = a.m > b.m ? a.m : b.m;
  fa = a.m == -INFINITY ? 0.0f : expf(a.m - m);
  fb = b.m == -INFINITY ? 0.0f : expf(b.m - m);
  a.l = a.l * fa + b.l * fb;
  a.m = m;
}

// Number of sequence chunks of the CUDA split-K kernel: chunks of at least 64 tokens, at most 128.
FP_HD int64_t decode_splits(int64_t seq) {
  const int64_t s = (seq + 63) / 64;
  return s < 1 ? 1 : (s > 128 ? 128 : s);
}

}  // namespace fastpaper::bfp::detail
