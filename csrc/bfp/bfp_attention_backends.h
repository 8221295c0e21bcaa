// Internal: the CPU (csrc/bfp/bfp_attention_cpu.cpp) and CUDA (cuda/bfp/bfp_attention.cu) kernels
// behind fastpaper/bfp_attention.h. Arguments arrive validated; the codecs are derived once.
#pragma once

#include "fastpaper/bfp_attention.h"
#include "fastpaper/detail/bfp_codec.h"

namespace fastpaper::bfp {

struct DecodeCodecs {
  detail::Codec k;
  detail::Codec v;  // meaningful when the values are packed
  bool packed_v;
};

namespace cpu {
void decode_attention(const DecodeAttentionArgs& a, const DecodeCodecs& c);
}  // namespace cpu

namespace cuda {
Status decode_attention(const DecodeAttentionArgs& a, const DecodeCodecs& c, void* stream);
}  // namespace cuda

}  // namespace fastpaper::bfp
