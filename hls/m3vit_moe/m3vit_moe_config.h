// M3ViT MoE layer for the ZCU104: sizes, tiling and number types.
//
// Sizes are compile-time (they size the on-chip buffers); the token count and the task are run-time
// (s_axilite). A bundle exported from a model writes m3vit_moe_params.h next to the sources (or in
// an -I directory) with its own #defines; without it the M3ViT ViT-S layer is built
// (D = H = 384, E = 16, top-4, 1201 tokens).
//
// Build variants: default = fixed point (ap_fixed, the synthesized datapath); -DM3VIT_FLOAT =
// the same source with float arithmetic, exact GELU and exp (the reference build).
#ifndef M3VIT_MOE_CONFIG_H
#define M3VIT_MOE_CONFIG_H

#if defined(__has_include)
#if __has_include("m3vit_moe_params.h")
#include "m3vit_moe_params.h"
#endif
#endif

#ifndef M3VIT_D
#define M3VIT_D 384      // token width
#endif
#ifndef M3VIT_H
#define M3VIT_H 384      // expert hidden width
#endif
#ifndef M3VIT_E
#define M3VIT_E 16       // experts
#endif
#ifndef M3VIT_K
#define M3VIT_K 4        // experts per token (top-k)
#endif
#ifndef M3VIT_MAX_N
#define M3VIT_MAX_N 1201 // tokens per image (480x640 / 16^2 patches + cls)
#endif
// MAC array: TT tokens x TI inputs x TO outputs per cycle (512 MAC/cycle by default).
#ifndef M3VIT_TT
#define M3VIT_TT 8
#endif
#ifndef M3VIT_TI
#define M3VIT_TI 8
#endif
#ifndef M3VIT_TO
#define M3VIT_TO 8       // also the weight words per AXI beat (8 x 16 bit = 128-bit HP port)
#endif
#define M3VIT_AV 4       // activation words (32 bit) per AXI beat: 128 bit

// Fixed-point formats <total bits, integer bits incl. sign>. moe_fpga.FORMATS must agree
// (tests/test_moe_hls.py checks).
#define M3VIT_WGT_W 16   // expert and gate weights
#define M3VIT_WGT_I 2
#define M3VIT_BIAS_W 16  // expert biases, folded gate bias
#define M3VIT_BIAS_I 5
#define M3VIT_IO_W 32    // x and y in DRAM
#define M3VIT_IO_I 12
#define M3VIT_ACT_W 24   // activations inside (24 x 16 bit fits one DSP48E2 27 x 18 multiplier)
#define M3VIT_ACT_I 8
#define M3VIT_ACC_W 48   // MAC accumulators (the DSP48E2 accumulator width)
#define M3VIT_ACC_I 18

#include <ap_fixed.h>
#include <ap_int.h>
#include <stdint.h>

namespace m3vit {

constexpr int D = M3VIT_D, H = M3VIT_H, E = M3VIT_E, K = M3VIT_K, MAX_N = M3VIT_MAX_N;
constexpr int TT = M3VIT_TT, TI = M3VIT_TI, TO = M3VIT_TO, AV = M3VIT_AV;
constexpr int GE = (E + TO - 1) / TO * TO;  // gate columns padded to whole weight beats
static_assert(D % TI == 0 && H % TI == 0 && D % TO == 0 && H % TO == 0,
              "D and H must be multiples of the MAC tile (TI, TO)");
static_assert(D % AV == 0, "D must be a multiple of the activation beat");
static_assert(K >= 1 && K <= E, "need 1 <= K <= E");
static_assert(MAX_N * K < 65536, "token queue indices are 16 bit");

#ifdef M3VIT_FLOAT
typedef float wgt_t;
typedef float bias_t;
typedef float act_t;
typedef float acc_t;
typedef float io_t;
typedef float prob_t;
constexpr int WBITS = 32;  // the float build reads float32 weights
#else
typedef ap_fixed<M3VIT_WGT_W, M3VIT_WGT_I, AP_RND_CONV, AP_SAT> wgt_t;
typedef ap_fixed<M3VIT_BIAS_W, M3VIT_BIAS_I, AP_RND_CONV, AP_SAT> bias_t;
typedef ap_fixed<M3VIT_ACT_W, M3VIT_ACT_I, AP_RND_CONV, AP_SAT> act_t;
typedef ap_fixed<M3VIT_ACC_W, M3VIT_ACC_I> acc_t;  // wide enough never to overflow: plain wrap
typedef ap_fixed<M3VIT_IO_W, M3VIT_IO_I, AP_RND_CONV, AP_SAT> io_t;
typedef ap_ufixed<18, 1, AP_RND_CONV, AP_SAT> prob_t;  // softmax probabilities, [0, 1]
constexpr int WBITS = M3VIT_WGT_W;
#endif
constexpr int IOBITS = 32;
typedef ap_uint<WBITS * TO> wbeat_t;  // one beat of the weights port
typedef ap_uint<IOBITS * AV> abeat_t; // one beat of the activations port
typedef ap_uint<16> tok_t;
typedef ap_uint<8> exp_id_t;

// DRAM layout (in beats). One expert's block, contiguous, so that a load is one burst:
//   W1 [D][H] row-major, b1 [H], W2 [H][D] row-major, b2 [D]   (WBITS-bit words)
// One task's gate block: G [D][GE] row-major (columns >= E are zero), gb [GE].
// x and y: [N][D] row-major 32-bit words.
constexpr int W1_BEATS = D * H / TO, B1_BEATS = H / TO, W2_BEATS = H * D / TO, B2_BEATS = D / TO;
constexpr int EXPERT_BEATS = W1_BEATS + B1_BEATS + W2_BEATS + B2_BEATS;
constexpr int GATE_BEATS = D * GE / TO + GE / TO;
constexpr int ROW_BEATS = D / AV;
constexpr uint64_t EXPERT_BYTES = (uint64_t)EXPERT_BEATS * WBITS * TO / 8;
constexpr uint64_t GATE_BYTES = (uint64_t)GATE_BEATS * WBITS * TO / 8;

// ---- word <-> number ---------------------------------------------------------------------------
#ifdef M3VIT_FLOAT
inline float bits_to_float(ap_uint<32> b) {
  union { uint32_t u; float f; } c;
  c.u = (uint32_t)b.to_uint();
  return c.f;
}
inline ap_uint<32> float_to_bits(float f) {
  union { uint32_t u; float f; } c;
  c.f = f;
  return ap_uint<32>(c.u);
}
inline wgt_t word_to_wgt(ap_uint<WBITS> b) { return bits_to_float(b); }
inline bias_t word_to_bias(ap_uint<WBITS> b) { return bits_to_float(b); }
inline io_t word_to_io(ap_uint<IOBITS> b) { return bits_to_float(b); }
inline ap_uint<IOBITS> io_to_word(io_t v) { return float_to_bits(v); }
#else
template <class T, int B>
inline T fixed_from_bits(ap_uint<B> b) {
  T v;
  v.range(B - 1, 0) = b;
  return v;
}
inline wgt_t word_to_wgt(ap_uint<WBITS> b) { return fixed_from_bits<wgt_t, WBITS>(b); }
inline bias_t word_to_bias(ap_uint<WBITS> b) { return fixed_from_bits<bias_t, WBITS>(b); }
inline io_t word_to_io(ap_uint<IOBITS> b) { return fixed_from_bits<io_t, IOBITS>(b); }
inline ap_uint<IOBITS> io_to_word(io_t v) { return v.range(IOBITS - 1, 0); }
#endif

}  // namespace m3vit

#endif  // M3VIT_MOE_CONFIG_H
