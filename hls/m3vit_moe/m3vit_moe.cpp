// M3ViT MoE layer: router and expert-by-expert computation with ping-pong weight buffers.
//
// Per call (one MoE layer, one image, one task):
//   1. gating (DATAFLOW: read x rows -> E logits per token -> softmax + top-k), per-token top-k
//      kept on chip ([MAX_N][K]: independent of E), y zeroed;
//   2. queues: counting sort of the N*K routings by expert (begin offsets [E+1], token indices and
//      scores [MAX_N*K]) and the list of active experts;
//   3. for each active expert a: DATAFLOW { load expert a+1 into buffer (a+1)%2 | compute expert a
//      from buffer a%2 on its queued tokens, TT tokens per tile, y[t] += score * expert(x[t]) },
//      the tiles themselves streaming through DATAFLOW { gather -> fc1 -> fc2 -> scatter }.
// On-chip memory: two expert buffers (2 x (2DH + D + H) weights), the queues (N*K) and the gate of
// one task (D*E); only the gate and O(E) counters grow with E.
#include "m3vit_moe.h"

#include <hls_stream.h>

#include "m3vit_moe_tables.h"
#ifdef M3VIT_FLOAT
#include <cmath>
#endif

// Pragmas with macro arguments (tile sizes, cosim depths) go through _Pragma so they expand.
#define M3VIT_PRAGMA_(x) _Pragma(#x)
#define M3VIT_PRAGMA(x) M3VIT_PRAGMA_(x)

// m_axi depths for C/RTL co-simulation (literals; a bundle's params header overrides them).
#ifndef M3VIT_X_DEPTH
#define M3VIT_X_DEPTH 115296      // MAX_N * D / AV
#endif
#ifndef M3VIT_EXPERTS_DEPTH
#define M3VIT_EXPERTS_DEPTH 591360  // E * EXPERT_BEATS
#endif
#ifndef M3VIT_GATE_DEPTH
#define M3VIT_GATE_DEPTH 1540     // TASKS * GATE_BEATS
#endif

namespace m3vit {

static_assert(M3VIT_X_DEPTH >= MAX_N * ROW_BEATS, "M3VIT_X_DEPTH too small for MAX_N");
static_assert(M3VIT_EXPERTS_DEPTH >= E * EXPERT_BEATS, "M3VIT_EXPERTS_DEPTH too small");
static_assert(M3VIT_GATE_DEPTH >= M3VIT_TASKS * GATE_BEATS, "M3VIT_GATE_DEPTH too small");
static_assert(E <= 64, "softmax sum and expert ids assume E <= 64");

#ifndef __SYNTHESIS__
SimCounters g_sim;
void SimCounters::reset() {
  weight_bytes = gate_bytes = act_read_bytes = act_write_bytes = tiles = 0;
  for (int e = 0; e < E; ++e) expert_loads[e] = routed[e] = 0;
  for (int i = 0; i < MAX_N * K; ++i) { route_idx[i] = 0; route_score[i] = 0; }
}
#endif

struct act_vec { act_t v[AV]; };
struct logit_vec { acc_t l[E]; };

typedef wgt_t w1_buf[D / TI][H / TO][TI][TO];
typedef wgt_t w2_buf[H / TI][D / TO][TI][TO];

template <int B, class W>
static inline ap_uint<B> word(const W& beat, int i) {
  return beat.range(B * i + B - 1, B * i);
}

// ---- GELU and exp ------------------------------------------------------------------------------
#ifdef M3VIT_FLOAT
act_t gelu(acc_t v) { return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f)); }
prob_t exp_neg(acc_t u) { return std::exp(-u); }
#else
typedef ap_ufixed<18, 0, AP_RND_CONV> lut_t;
typedef ap_ufixed<18, 1, AP_RND_CONV> lut1_t;

// GELU(v) = relu(v) - delta(|v|), delta(a) = a Phi(-a) linearly interpolated from a 257-entry
// table on [0, 8] (step 1/32); delta(a) < 1e-14 beyond 8.
act_t gelu(acc_t v) {
  static const lut_t DELTA[M3VIT_GELU_LUT_SIZE] = {M3VIT_GELU_DELTA};
  acc_t a = v < 0 ? acc_t(-v) : v;
  act_t relu = v > 0 ? act_t(v) : act_t(0);
  if (a >= 8) return relu;
  ap_ufixed<26, 8> t = a * 32;       // table position in [0, 256)
  int i = t.to_int();
  ap_ufixed<18, 0> f = t - i;        // interpolation weight
  ap_fixed<20, 1> step = ap_fixed<20, 1>(DELTA[i + 1]) - ap_fixed<20, 1>(DELTA[i]);
  act_t delta = DELTA[i] + f * step;
  return relu - delta;
}

// exp(-u) = 2^-n * 2^-f with n + f = u log2(e); 2^-f interpolated from 65 entries (step 1/64).
prob_t exp_neg(acc_t u) {
  static const lut1_t EXP2[M3VIT_EXP2_LUT_SIZE] = {M3VIT_EXP2_NEG};
  if (u >= 13) return prob_t(0);     // exp(-13) < 2^-18, below the probability lsb
  ap_ufixed<32, 5> t = u * ap_ufixed<20, 1>(1.4426950408889634);
  int n = t.to_int();
  ap_ufixed<24, 6> p = (t - n) * 64;  // [0, 64)
  int i = p.to_int();
  ap_ufixed<18, 0> f = p - i;
  ap_fixed<20, 1> step = ap_fixed<20, 1>(EXP2[i + 1]) - ap_fixed<20, 1>(EXP2[i]);
  ap_ufixed<24, 1> m = EXP2[i] + f * step;  // (1/2, 1]
  return prob_t(m >> n);
}
#endif

// ---- gating ------------------------------------------------------------------------------------
static void load_gate(const wbeat_t* gate, int task, wgt_t g[D][GE], bias_t gb[GE]) {
  const int base = task * GATE_BEATS;
L_gate_w:
  for (int d = 0; d < D; ++d) {
    for (int c = 0; c < GE / TO; ++c) {
#pragma HLS PIPELINE II = 1
      wbeat_t b = gate[base + d * (GE / TO) + c];
      for (int o = 0; o < TO; ++o) g[d][c * TO + o] = word_to_wgt(word<WBITS>(b, o));
    }
  }
L_gate_b:
  for (int c = 0; c < GE / TO; ++c) {
#pragma HLS PIPELINE II = 1
    wbeat_t b = gate[base + D * (GE / TO) + c];
    for (int o = 0; o < TO; ++o) gb[c * TO + o] = word_to_bias(word<WBITS>(b, o));
  }
  M3VIT_SIM(g_sim.gate_bytes += GATE_BYTES);
}

static void read_rows(const abeat_t* x, int n, hls::stream<act_vec>& s_x) {
L_read:
  for (int i = 0; i < n * ROW_BEATS; ++i) {
#pragma HLS PIPELINE II = 1
    abeat_t b = x[i];
    act_vec v;
    for (int a = 0; a < AV; ++a) v.v[a] = act_t(word_to_io(word<IOBITS>(b, a)));
    s_x.write(v);
  }
  M3VIT_SIM(g_sim.act_read_bytes += (uint64_t)n * D * 4);
}

static void gate_logits(hls::stream<act_vec>& s_x, const wgt_t g[D][GE], const bias_t gb[GE],
                        int n, hls::stream<logit_vec>& s_l) {
L_tok:
  for (int t = 0; t < n; ++t) {
    logit_vec lv;
    for (int e = 0; e < E; ++e) lv.l[e] = gb[e];
  L_dot:
    for (int r = 0; r < ROW_BEATS; ++r) {
#pragma HLS PIPELINE II = 1
      act_vec v = s_x.read();
      for (int e = 0; e < E; ++e) {
        acc_t s = lv.l[e];
        for (int a = 0; a < AV; ++a) s += v.v[a] * g[r * AV + a][e];
        lv.l[e] = s;
      }
    }
    s_l.write(lv);
  }
}

// Softmax over E, top-k by logit (ties: lower expert index first), scores not renormalized.
static void select_topk(hls::stream<logit_vec>& s_l, int n, exp_id_t tk_idx[MAX_N][K],
                        prob_t tk_score[MAX_N][K], tok_t count[E]) {
  for (int e = 0; e < E; ++e) count[e] = 0;
L_select:
  for (int t = 0; t < n; ++t) {
#pragma HLS PIPELINE
    logit_vec lv = s_l.read();
    acc_t mx = lv.l[0];
    for (int e = 1; e < E; ++e) mx = lv.l[e] > mx ? lv.l[e] : mx;
    prob_t p[E];
#ifdef M3VIT_FLOAT
    float sum = 0;
    for (int e = 0; e < E; ++e) { p[e] = exp_neg(mx - lv.l[e]); sum += p[e]; }
    float r = 1.0f / sum;
#else
    ap_ufixed<26, 7> sum = 0;
    for (int e = 0; e < E; ++e) { p[e] = exp_neg(acc_t(mx - lv.l[e])); sum += p[e]; }
    // sum >= 1 (the max term is 1); the quotient keeps the dividend's fraction bits, hence 25
    ap_ufixed<24, 1, AP_RND_CONV> r = ap_ufixed<26, 1>(1) / sum;
#endif
    acc_t bl[K];
    exp_id_t be[K];
    bool bv[K];
    for (int j = 0; j < K; ++j) { bv[j] = false; be[j] = 0; bl[j] = 0; }
    for (int e = 0; e < E; ++e) {  // insertion into the sorted top-k list
      acc_t cl = lv.l[e];
      exp_id_t ce = e;
      bool cv = true;
      for (int j = 0; j < K; ++j) {
        if (cv && (!bv[j] || cl > bl[j])) {
          if (!bv[j]) { bl[j] = cl; be[j] = ce; bv[j] = true; cv = false; }
          else { acc_t tl = bl[j]; exp_id_t te = be[j]; bl[j] = cl; be[j] = ce; cl = tl; ce = te; }
        }
      }
    }
    for (int j = 0; j < K; ++j) {
      prob_t s = p[be[j]] * r;
      tk_idx[t][j] = be[j];
      tk_score[t][j] = s;
      count[be[j]]++;
      M3VIT_SIM(g_sim.route_idx[t * K + j] = (uint8_t)be[j].to_uint();
                g_sim.route_score[t * K + j] = (double)s; g_sim.routed[be[j]]++);
    }
  }
}

static void gating_dataflow(const abeat_t* x, const wgt_t g[D][GE], const bias_t gb[GE], int n,
                            exp_id_t tk_idx[MAX_N][K], prob_t tk_score[MAX_N][K], tok_t count[E]) {
#pragma HLS DATAFLOW
  hls::stream<act_vec> s_x;
  hls::stream<logit_vec> s_l;
#pragma HLS STREAM variable = s_x depth = 8
#pragma HLS STREAM variable = s_l depth = 2
  read_rows(x, n, s_x);
  gate_logits(s_x, g, gb, n, s_l);
  select_topk(s_l, n, tk_idx, tk_score, count);
}

static void zero_rows(abeat_t* y, int n) {
L_zero:
  for (int i = 0; i < n * ROW_BEATS; ++i) {
#pragma HLS PIPELINE II = 1
    y[i] = 0;
  }
  M3VIT_SIM(g_sim.act_write_bytes += (uint64_t)n * D * 4);
}

// Counting sort of the routings by expert: q_begin[e]..q_begin[e+1] are expert e's queue entries
// (tokens ascending); active[0..n_active) lists the experts with a non-empty queue.
static void build_queues(int n, const exp_id_t tk_idx[MAX_N][K], const prob_t tk_score[MAX_N][K],
                         const tok_t count[E], int q_begin[E + 1], tok_t q_tok[MAX_N * K],
                         prob_t q_score[MAX_N * K], exp_id_t active[E], int& n_active) {
  int fill[E];
  int na = 0;
  q_begin[0] = 0;
  for (int e = 0; e < E; ++e) {
#pragma HLS PIPELINE II = 1
    fill[e] = q_begin[e];
    q_begin[e + 1] = q_begin[e] + count[e];
    if (count[e] > 0) active[na++] = e;
  }
  n_active = na;
L_fill:
  for (int t = 0; t < n; ++t) {
    for (int j = 0; j < K; ++j) {
#pragma HLS PIPELINE II = 2
      int e = tk_idx[t][j];
      int pos = fill[e]++;
      q_tok[pos] = t;
      q_score[pos] = tk_score[t][j];
    }
  }
}

// ---- experts -----------------------------------------------------------------------------------
// One expert's block -> on-chip buffer, one 128-bit beat (TO weights) per cycle. e < 0: nothing.
static void load_expert(const wbeat_t* experts, int e, w1_buf w1, bias_t b1[H], w2_buf w2,
                        bias_t b2[D]) {
  if (e < 0) return;
  const int base = e * EXPERT_BEATS;
L_w1:
  for (int d = 0; d < D; ++d) {
    for (int c = 0; c < H / TO; ++c) {
#pragma HLS PIPELINE II = 1
      wbeat_t b = experts[base + d * (H / TO) + c];
      for (int o = 0; o < TO; ++o) w1[d / TI][c][d % TI][o] = word_to_wgt(word<WBITS>(b, o));
    }
  }
L_b1:
  for (int c = 0; c < H / TO; ++c) {
#pragma HLS PIPELINE II = 1
    wbeat_t b = experts[base + W1_BEATS + c];
    for (int o = 0; o < TO; ++o) b1[c * TO + o] = word_to_bias(word<WBITS>(b, o));
  }
L_w2:
  for (int h = 0; h < H; ++h) {
    for (int c = 0; c < D / TO; ++c) {
#pragma HLS PIPELINE II = 1
      wbeat_t b = experts[base + W1_BEATS + B1_BEATS + h * (D / TO) + c];
      for (int o = 0; o < TO; ++o) w2[h / TI][c][h % TI][o] = word_to_wgt(word<WBITS>(b, o));
    }
  }
L_b2:
  for (int c = 0; c < D / TO; ++c) {
#pragma HLS PIPELINE II = 1
    wbeat_t b = experts[base + W1_BEATS + B1_BEATS + W2_BEATS + c];
    for (int o = 0; o < TO; ++o) b2[c * TO + o] = word_to_bias(word<WBITS>(b, o));
  }
  M3VIT_SIM(g_sim.expert_loads[e]++; g_sim.weight_bytes += EXPERT_BYTES);
}

// ---- one tile of TT queued tokens through the MAC array: gather -> fc1 -> fc2 -> scatter -------
static void gather_tile(const abeat_t* x, const tok_t q_tok[MAX_N * K],
                        const prob_t q_score[MAX_N * K], int first, int nt, act_t xt[TT][D],
                        tok_t tok[TT], prob_t sc[TT]) {
  for (int tt = 0; tt < TT; ++tt) {
    tok[tt] = tt < nt ? q_tok[first + tt] : tok_t(0);
    sc[tt] = tt < nt ? q_score[first + tt] : prob_t(0);
  }
L_gather:
  for (int tt = 0; tt < TT; ++tt) {
    for (int r = 0; r < ROW_BEATS; ++r) {
#pragma HLS PIPELINE II = 1
      abeat_t b = tt < nt ? x[tok[tt] * ROW_BEATS + r] : abeat_t(0);
      for (int a = 0; a < AV; ++a) xt[tt][r * AV + a] = act_t(word_to_io(word<IOBITS>(b, a)));
    }
  }
  M3VIT_SIM(g_sim.act_read_bytes += (uint64_t)nt * D * 4);
}

// h = GELU(x W1 + b1): TT x TI x TO MACs per cycle, accumulators start from the bias.
static void fc1_tile(const act_t xt[TT][D], const w1_buf w1, const bias_t b1[H], act_t ht[TT][H]) {
L_fc1:
  for (int c = 0; c < H / TO; ++c) {
    acc_t acc[TT][TO];
#pragma HLS ARRAY_PARTITION variable = acc type = complete dim = 0
    for (int di = 0; di < D / TI; ++di) {
#pragma HLS PIPELINE II = 1
      for (int tt = 0; tt < TT; ++tt)
        for (int o = 0; o < TO; ++o) {
          acc_t s = di == 0 ? acc_t(b1[c * TO + o]) : acc[tt][o];
          for (int i = 0; i < TI; ++i) s += xt[tt][di * TI + i] * w1[di][c][i][o];
          acc[tt][o] = s;
        }
    }
    for (int tt = 0; tt < TT; ++tt)
      for (int o = 0; o < TO; ++o) ht[tt][c * TO + o] = gelu(acc[tt][o]);
  }
}

// z = h W2 + b2.
static void fc2_tile(const act_t ht[TT][H], const w2_buf w2, const bias_t b2[D], acc_t zt[TT][D]) {
L_fc2:
  for (int c = 0; c < D / TO; ++c) {
    acc_t acc[TT][TO];
#pragma HLS ARRAY_PARTITION variable = acc type = complete dim = 0
    for (int hi = 0; hi < H / TI; ++hi) {
#pragma HLS PIPELINE II = 1
      for (int tt = 0; tt < TT; ++tt)
        for (int o = 0; o < TO; ++o) {
          acc_t s = hi == 0 ? acc_t(b2[c * TO + o]) : acc[tt][o];
          for (int i = 0; i < TI; ++i) s += ht[tt][hi * TI + i] * w2[hi][c][i][o];
          acc[tt][o] = s;
        }
    }
    for (int tt = 0; tt < TT; ++tt)
      for (int o = 0; o < TO; ++o) zt[tt][c * TO + o] = acc[tt][o];
  }
}

// y[t] += score * z (read-modify-write). Each product is rounded to the io format before the
// (exact) fixed-point add, so y does not depend on the order in which experts are processed.
static void scatter_tile(abeat_t* y, const tok_t tok[TT], const prob_t sc[TT], int nt,
                         const acc_t zt[TT][D]) {
L_scatter:
  for (int tt = 0; tt < nt; ++tt) {
    for (int r = 0; r < ROW_BEATS; ++r) {
#pragma HLS PIPELINE II = 2
      const int addr = tok[tt] * ROW_BEATS + r;
      abeat_t b = y[addr];
      abeat_t out;
      for (int a = 0; a < AV; ++a) {
        io_t v = word_to_io(word<IOBITS>(b, a)) + io_t(sc[tt] * zt[tt][r * AV + a]);
        out.range(IOBITS * a + IOBITS - 1, IOBITS * a) = io_to_word(v);
      }
      y[addr] = out;
    }
  }
  M3VIT_SIM(g_sim.tiles++; g_sim.act_read_bytes += (uint64_t)nt * D * 4;
            g_sim.act_write_bytes += (uint64_t)nt * D * 4);
}

// Queue entries [begin, begin + count) of expert e, TT tokens per tile. The four stages of a tile
// form a DATAFLOW region inside the tile loop: with ping-pong (PIPO) tile buffers, tile i+1 is
// gathered while tile i is in fc1, and so on, so a tile costs max(stage) once the pipe is full.
// A token occurs at most once in an expert's queue, so overlapping tiles never touch the same y row.
static void compute_expert(const abeat_t* x, abeat_t* y, int e, int begin, int count,
                           const tok_t q_tok[MAX_N * K], const prob_t q_score[MAX_N * K],
                           const w1_buf w1, const bias_t b1[H], const w2_buf w2,
                           const bias_t b2[D]) {
  if (e < 0) return;
L_tiles:
  for (int t0 = 0; t0 < count; t0 += TT) {
#pragma HLS DATAFLOW
    const int nt = count - t0 < TT ? count - t0 : TT;
    act_t xt[TT][D], ht[TT][H];
    acc_t zt[TT][D];
    tok_t tok[TT];
    prob_t sc[TT];
#pragma HLS ARRAY_PARTITION variable = xt dim = 1 type = complete
#pragma HLS ARRAY_PARTITION variable = ht dim = 1 type = complete
#pragma HLS ARRAY_PARTITION variable = zt dim = 1 type = complete
#pragma HLS ARRAY_PARTITION variable = tok type = complete
#pragma HLS ARRAY_PARTITION variable = sc type = complete
    M3VIT_PRAGMA(HLS ARRAY_PARTITION variable = xt dim = 2 type = cyclic factor = M3VIT_TI)
    M3VIT_PRAGMA(HLS ARRAY_PARTITION variable = ht dim = 2 type = cyclic factor = M3VIT_TI)
    M3VIT_PRAGMA(HLS ARRAY_PARTITION variable = zt dim = 2 type = cyclic factor = M3VIT_TO)
    gather_tile(x, q_tok, q_score, begin + t0, nt, xt, tok, sc);
    fc1_tile(xt, w1, b1, ht);
    fc2_tile(ht, w2, b2, zt);
    scatter_tile(y, tok, sc, nt, zt);
  }
}

// Load the next expert into one buffer while the current one computes from the other.
static void expert_stage(const wbeat_t* experts, int load_e, w1_buf lw1, bias_t lb1[H],
                         w2_buf lw2, bias_t lb2[D], const abeat_t* x, abeat_t* y, int comp_e,
                         int begin, int count, const tok_t q_tok[MAX_N * K],
                         const prob_t q_score[MAX_N * K], const w1_buf cw1, const bias_t cb1[H],
                         const w2_buf cw2, const bias_t cb2[D]) {
#pragma HLS DATAFLOW
  load_expert(experts, load_e, lw1, lb1, lw2, lb2);
  compute_expert(x, y, comp_e, begin, count, q_tok, q_score, cw1, cb1, cw2, cb2);
}

// ---- shared state of both top functions ---------------------------------------------------------

static void route(const abeat_t* x, abeat_t* y, const wbeat_t* gate, int n, int task,
                  exp_id_t tk_idx[MAX_N][K], prob_t tk_score[MAX_N][K], tok_t count[E]) {
  static wgt_t g[D][GE];
  static bias_t gb[GE];
#pragma HLS ARRAY_PARTITION variable = g dim = 2 type = complete
#pragma HLS ARRAY_PARTITION variable = gb type = complete
  M3VIT_PRAGMA(HLS ARRAY_PARTITION variable = g dim = 1 type = cyclic factor = M3VIT_AV)
  load_gate(gate, task, g, gb);
  gating_dataflow(x, g, gb, n, tk_idx, tk_score, count);
  zero_rows(y, n);
}

#define M3VIT_INTERFACES                                                                      \
  M3VIT_PRAGMA(HLS INTERFACE mode = m_axi port = x bundle = gmem_act offset = slave            \
               depth = M3VIT_X_DEPTH max_widen_bitwidth = 128 max_read_burst_length = 64)      \
  M3VIT_PRAGMA(HLS INTERFACE mode = m_axi port = y bundle = gmem_act offset = slave            \
               depth = M3VIT_X_DEPTH max_widen_bitwidth = 128)                                \
  M3VIT_PRAGMA(HLS INTERFACE mode = m_axi port = experts bundle = gmem_w offset = slave        \
               depth = M3VIT_EXPERTS_DEPTH max_widen_bitwidth = 128 max_read_burst_length = 256 \
               num_read_outstanding = 8)                                                      \
  M3VIT_PRAGMA(HLS INTERFACE mode = m_axi port = gate bundle = gmem_w offset = slave           \
               depth = M3VIT_GATE_DEPTH max_widen_bitwidth = 128)                             \
  M3VIT_PRAGMA(HLS INTERFACE mode = s_axilite port = x bundle = control)                      \
  M3VIT_PRAGMA(HLS INTERFACE mode = s_axilite port = y bundle = control)                      \
  M3VIT_PRAGMA(HLS INTERFACE mode = s_axilite port = experts bundle = control)                \
  M3VIT_PRAGMA(HLS INTERFACE mode = s_axilite port = gate bundle = control)                   \
  M3VIT_PRAGMA(HLS INTERFACE mode = s_axilite port = n_tokens bundle = control)               \
  M3VIT_PRAGMA(HLS INTERFACE mode = s_axilite port = task bundle = control)                   \
  M3VIT_PRAGMA(HLS INTERFACE mode = s_axilite port = return bundle = control)

// Expert buffers: the MAC array reads TI x TO weights per cycle, so the TI rows are separate
// banks and each bank word holds TO weights (reshaped; 128 bit -> two UltraRAM columns).
#define M3VIT_BUFFER_PRAGMAS(w1, b1, w2, b2)                                                   \
  M3VIT_PRAGMA(HLS ARRAY_PARTITION variable = w1 dim = 3 type = complete)                      \
  M3VIT_PRAGMA(HLS ARRAY_RESHAPE variable = w1 dim = 4 type = complete)                        \
  M3VIT_PRAGMA(HLS BIND_STORAGE variable = w1 type = ram_2p impl = uram)                       \
  M3VIT_PRAGMA(HLS ARRAY_PARTITION variable = w2 dim = 3 type = complete)                      \
  M3VIT_PRAGMA(HLS ARRAY_RESHAPE variable = w2 dim = 4 type = complete)                        \
  M3VIT_PRAGMA(HLS BIND_STORAGE variable = w2 type = ram_2p impl = uram)                       \
  M3VIT_PRAGMA(HLS ARRAY_PARTITION variable = b1 type = cyclic factor = M3VIT_TO)              \
  M3VIT_PRAGMA(HLS ARRAY_PARTITION variable = b2 type = cyclic factor = M3VIT_TO)

void m3vit_moe(const abeat_t* x, abeat_t* y, const wbeat_t* experts, const wbeat_t* gate,
               int n_tokens, int task) {
  M3VIT_INTERFACES
  static exp_id_t tk_idx[MAX_N][K];
  static prob_t tk_score[MAX_N][K];
  static tok_t q_tok[MAX_N * K];
  static prob_t q_score[MAX_N * K];
  static wgt_t w1a[D / TI][H / TO][TI][TO], w1b[D / TI][H / TO][TI][TO];
  static wgt_t w2a[H / TI][D / TO][TI][TO], w2b[H / TI][D / TO][TI][TO];
  static bias_t b1a[H], b1b[H], b2a[D], b2b[D];
  M3VIT_BUFFER_PRAGMAS(w1a, b1a, w2a, b2a)
  M3VIT_BUFFER_PRAGMAS(w1b, b1b, w2b, b2b)
#pragma HLS ARRAY_PARTITION variable = tk_idx dim = 2 type = complete
#pragma HLS ARRAY_PARTITION variable = tk_score dim = 2 type = complete
  tok_t count[E];
  int q_begin[E + 1];
  exp_id_t active[E];
  int n_active = 0;
  const int n = n_tokens < 0 ? 0 : (n_tokens > MAX_N ? MAX_N : n_tokens);

  route(x, y, gate, n, task, tk_idx, tk_score, count);
  build_queues(n, tk_idx, tk_score, count, q_begin, q_tok, q_score, active, n_active);
  if (n_active > 0) load_expert(experts, active[0], w1a, b1a, w2a, b2a);
L_experts:
  for (int a = 0; a < n_active; ++a) {
    const int cur = active[a];
    const int nxt = a + 1 < n_active ? int(active[a + 1]) : -1;
    const int begin = q_begin[cur], cnt = q_begin[cur + 1] - q_begin[cur];
    if (a % 2 == 0)
      expert_stage(experts, nxt, w1b, b1b, w2b, b2b, x, y, cur, begin, cnt, q_tok, q_score, w1a,
                   b1a, w2a, b2a);
    else
      expert_stage(experts, nxt, w1a, b1a, w2a, b2a, x, y, cur, begin, cnt, q_tok, q_score, w1b,
                   b1b, w2b, b2b);
  }
}

void m3vit_moe_token_by_token(const abeat_t* x, abeat_t* y, const wbeat_t* experts,
                              const wbeat_t* gate, int n_tokens, int task) {
  M3VIT_INTERFACES
  static exp_id_t tk_idx[MAX_N][K];
  static prob_t tk_score[MAX_N][K];
  static tok_t q_tok[MAX_N * K];
  static prob_t q_score[MAX_N * K];
  static wgt_t w1a[D / TI][H / TO][TI][TO];
  static wgt_t w2a[H / TI][D / TO][TI][TO];
  static bias_t b1a[H], b2a[D];
  M3VIT_BUFFER_PRAGMAS(w1a, b1a, w2a, b2a)
#pragma HLS ARRAY_PARTITION variable = tk_idx dim = 2 type = complete
#pragma HLS ARRAY_PARTITION variable = tk_score dim = 2 type = complete
  tok_t count[E];
  const int n = n_tokens < 0 ? 0 : (n_tokens > MAX_N ? MAX_N : n_tokens);

  route(x, y, gate, n, task, tk_idx, tk_score, count);
L_tokens:
  for (int t = 0; t < n; ++t) {
    for (int j = 0; j < K; ++j) {  // queue entry t*K+j holds this single routing
      q_tok[t * K + j] = t;
      q_score[t * K + j] = tk_score[t][j];
      const int e = tk_idx[t][j];
      load_expert(experts, e, w1a, b1a, w2a, b2a);
      compute_expert(x, y, e, t * K + j, 1, q_tok, q_score, w1a, b1a, w2a, b2a);
    }
  }
}

}  // namespace m3vit
