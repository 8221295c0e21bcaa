// M3ViT MoE layer (router + E experts, top-k) for the ZCU104: top functions and C-simulation
// counters. See README.md for the design and m3vit_moe_config.h for sizes, tiling and types.
#ifndef M3VIT_MOE_H
#define M3VIT_MOE_H

#include "m3vit_moe_config.h"

#ifndef M3VIT_TASKS
#define M3VIT_TASKS 2    // gate blocks in DRAM (only the cosim depth of the gate port uses it)
#endif

namespace m3vit {

// Reordered design: gating pass, per-expert token queues, then expert by expert with the next
// active expert's weights loading into the other on-chip buffer (ping-pong) while this one
// computes. Each active expert's weights are read once; inactive experts are never read.
//   x        [n_tokens][D] 32-bit words (io format), activations port
//   y        [n_tokens][D] 32-bit words, written: y[t] = sum_j score[t,j] * expert_{idx[t,j]}(x[t])
//   experts  [E] expert blocks (W1 [D][H], b1 [H], W2 [H][D], b2 [D]), weights port
//   gate     [tasks] gate blocks (G [D][GE], gb [GE]), weights port; `task` picks one, so a task
//            switch changes one offset and nothing else
void m3vit_moe(const abeat_t* x, abeat_t* y, const wbeat_t* experts, const wbeat_t* gate,
               int n_tokens, int task);

// Token-by-token baseline in the same source: the same router and MAC array, but each token
// fetches the weights of each of its k experts (N * k expert loads per layer).
void m3vit_moe_token_by_token(const abeat_t* x, abeat_t* y, const wbeat_t* experts,
                              const wbeat_t* gate, int n_tokens, int task);

// The datapath's GELU and exp (exposed so the testbench can measure their error).
act_t gelu(acc_t v);
prob_t exp_neg(acc_t u);  // exp(-u), u >= 0

#ifndef __SYNTHESIS__
// C-simulation only: DRAM traffic and the routing the design chose (not synthesized).
struct SimCounters {
  uint64_t weight_bytes;     // expert weights read (weights port)
  uint64_t gate_bytes;       // gate read (weights port)
  uint64_t act_read_bytes;   // x and y reads (activations port)
  uint64_t act_write_bytes;  // y writes
  uint64_t tiles;            // TT-token tiles through the MAC array
  uint32_t expert_loads[E];  // times each expert's block was fetched
  uint32_t routed[E];        // tokens routed to each expert
  uint8_t route_idx[MAX_N * K];
  double route_score[MAX_N * K];
  void reset();
};
extern SimCounters g_sim;
#define M3VIT_SIM(stmt) do { stmt; } while (0)
#else
#define M3VIT_SIM(stmt) do { } while (0)
#endif

}  // namespace m3vit

#endif  // M3VIT_MOE_H
