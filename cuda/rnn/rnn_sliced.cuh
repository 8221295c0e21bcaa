// Sliced persistent kernels of the recurrent cells, for heads whose R_n does not fit one CTA's
// shared memory (e.g. LSTM DH = 768 in bf16: R_n = 4.7 MB; fp32 DH = 128: 256 KB). Included by
// rnn_cuda.cu, which chooses among the paths (choose_path there).
//
// The DH hidden units of a head are split into P slices of U = DH / P units; CTA p of a group (one
// group per (head n, tile of 16 batch rows)) owns units [p U, (p + 1) U): the G*U rows of R_n that
// feed them (local row c = g U + u <- R[g, n, pU + u, :], storage type, all DH columns) stay in
// its shared memory for all T steps, with its slice of the states (fp32). Two ways to couple the
// P CTAs of a group, one barrier per time step each:
// * cluster (kCluster = true, sm_90+): the group is one thread-block cluster (P = 2..16 CTAs).
//   Every CTA keeps the whole h tile [16][DH] (storage type) twice (double buffer); after its cell
//   step it pushes its U new columns into the other CTAs' next buffer through distributed shared
//   memory, then cluster.sync(). Double buffering makes that one barrier enough: a peer can only
//   write buffer (t+1)&1 after everyone passed the barrier of step t - 1, i.e. after every CTA's
//   MMA of step t - 1 (the last reader of that buffer) has finished.
// * cooperative (kCluster = false, any arch): all groups in one cooperative grid (co-resident
//   CTAs), h exchanged through a global fp32 double buffer hbuf [2][B][NH*DH] (read with ld.cg, so
//   never from a stale L1 line), grid.sync() per step; same double-buffer argument.
// Backward (bwd_sliced), reverse time: CTA p holds the same R slice; per step it forms the partial
// product P_p[bb][k] = sum_{c in its rows} d pre_{t+1}[bb][c] R[c][k] for all DH columns k (bf16
// storage: on tensor cores, d pre split into two bf16 terms hi + lo so the product keeps ~16 bits
// of d pre, fp32 accumulate; fp16 / fp32: FMA, a thread per (row, k)), then after the barrier
// each CTA sums the P partials of its own U columns in rank order (deterministic) from its peers
// (DSMEM, or the global double buffer pbuf), and runs the pointwise backward of its units (bwd_unit), writing d pre to `work` like
// bwd_persistent / bwd_step so the dR / db / dWx kernels finish the job.
#pragma once

#include <cooperative_groups.h>
#include <mma.h>

#include <type_traits>

#include "rnn_cuda_common.cuh"

namespace fastpaper::rnn::cuda {
namespace {

namespace cg = cooperative_groups;

// Cluster primitives; the cluster kernels are only launched on sm_90+ (choose_path checks the
// device), and below sm_90 their bodies are compiled out (trap).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FP_RNN_HAS_CLUSTER 1
#else
#define FP_RNN_HAS_CLUSTER 0
#endif

__device__ inline unsigned cluster_rank() {
#if FP_RNN_HAS_CLUSTER
  return cg::this_cluster().block_rank();
#else
  return 0;
#endif
}
__device__ inline void cluster_barrier() {
#if FP_RNN_HAS_CLUSTER
  cg::this_cluster().sync();  // barrier.cluster arrive.release + wait.acquire: orders DSMEM too
#endif
}
template <typename T> __device__ inline T* cluster_peer(T* p, unsigned rank) {
#if FP_RNN_HAS_CLUSTER
  return cg::this_cluster().map_shared_rank(p, rank);
#else
  return p;
#endif
}

// Shared-memory layout of one sliced CTA, forward and backward (byte offsets, 128-aligned).
//   fwd: sR [G*U][ldr] S | sH [nh][16][ldh] S | sRec [kparts][16][G*U] f32 | sSt [NS][16][U] f32
//   bwd: sR [G*U][ldr] S | sW [16][G*U] f32  | sP [2][16][DH] f32 (cluster) | sD [NS][16][U] f32
//        | (mma) sWhl [2][16][ldw] S: d pre split into a bf16 high part and the bf16 remainder
// Rows are padded (16-bit: +8 elements, keeps wmma's 32-byte alignment and spreads banks; fp32:
// +1 so a warp's threads, one per output row c, hit distinct banks).
struct SliceLayout {
  int32_t parts = 0, units = 0, kparts = 1;
  int32_t mma = 0;  // backward: the partial R^T product on tensor cores (bf16 storage)
  int64_t ldr = 0, ldh = 0, ldw = 0;
  int64_t off_b = 0, off_c = 0, off_d = 0, off_e = 0, total = 0;
};

// bf16: the storage type is bfloat16 (the backward's tensor-core product needs its range).
inline SliceLayout slice_layout(bool backward, bool cluster, int G, int NS, int64_t DH,
                                int parts, int64_t elem, bool bf16) {
  SliceLayout L;
  L.parts = parts;
  L.units = static_cast<int32_t>(DH / parts);
  const int64_t GU = G * static_cast<int64_t>(L.units);
  const bool f32 = elem == 4;
  L.ldr = DH + (f32 ? 1 : 8);
  L.ldh = DH + (f32 ? 0 : 8);
  // K split of the 16-bit MMA: the number of k slices per output tile that minimizes the warp
  // rounds x slice length (ties: fewer slices), so 8 warps stay busy on few column tiles.
  if (!f32 && !backward) {
    const int64_t ctiles = GU / 16, ksteps = DH / 16;
    double best = 1e30;
    for (int kp = 1; kp <= 8; kp *= 2) {
      if (ksteps % kp != 0) continue;
      const double cost = static_cast<double>((ctiles * kp + kWarps - 1) / kWarps) / kp;
      if (cost < best - 1e-9) {
        best = cost;
        L.kparts = kp;
      }
    }
  }
  const int64_t r_bytes = align_up(GU * L.ldr * elem, 128);
  if (!backward) {
    L.off_b = r_bytes;
    L.off_c = L.off_b + align_up((cluster ? 2 : 1) * kTile * L.ldh * elem, 128);
    L.off_d = L.off_c + align_up(L.kparts * kTile * GU * 4, 128);
  } else {
    L.off_b = r_bytes;
    L.off_c = L.off_b + align_up(kTile * GU * 4, 128);
    L.off_d = L.off_c + (cluster ? align_up(2 * kTile * DH * 4, 128) : 0);
  }
  L.off_e = L.off_d + align_up(NS * kTile * L.units * 4, 128);
  L.total = L.off_d + NS * kTile * L.units * 4;
  if (backward && bf16 && GU % 16 == 0 && DH % 16 == 0) {
    L.mma = 1;
    L.ldw = GU + 8;
    L.total = L.off_e + 2 * kTile * L.ldw * elem;
  }
  return L;
}

// ---- forward, sliced ----------------------------------------------------------------------------
// Grid (NH * P, batch tiles); 256 threads. Group = (head n = blockIdx.x / P, tile blockIdx.y),
// p = rank in the group. Per step: (1) rec[bb][c] = h[bb][:] . R_slice[c][:] for the 16 rows and
// the G*U local rows: 16-bit on tensor cores (wmma 16x16x16, fp32 accumulate; work items = (column
// tile, k slice) dealt to the 8 warps round-robin, k-slice partials summed in order by the cell),
// fp32 by FMA (a thread per output); (2) the cell of the CTA's 16 x U units (a thread per unit,
// fwd_unit), which also publishes h rounded to the storage type; (3) exchange + one barrier.
// Each step first issues the loads of its Wx values (for the thread's first two units), so their
// memory latency overlaps (1).
template <typename S, typename C, bool kCluster>
__global__ void __launch_bounds__(kThreads)
fwd_sliced(FwdArgs<S, float> a, Shape sh, SliceLayout L, float* hbuf) {
#if !FP_RNN_HAS_CLUSTER
  if constexpr (kCluster) {
    __trap();
    return;
  }
#endif
  constexpr int G = C::G, NS = C::S;
  const int64_t DH = sh.head_dim, NH = sh.heads, B = sh.batch, Tn = sh.time;
  const int64_t N = NH * DH, BN = B * N;
  const int P = L.parts;
  const int64_t U = L.units, GU = G * U, ldr = L.ldr, ldh = L.ldh;
  const int p = kCluster ? static_cast<int>(cluster_rank()) : static_cast<int>(blockIdx.x % P);
  const int64_t n = blockIdx.x / P, b0 = static_cast<int64_t>(blockIdx.y) * kTile, j0 = p * U;
  extern __shared__ __align__(128) unsigned char smem[];
  S* sR = reinterpret_cast<S*>(smem);                    // [G*U][ldr]
  S* sH = reinterpret_cast<S*>(smem + L.off_b);          // [nh][16][ldh]
  float* sRec = reinterpret_cast<float*>(smem + L.off_c);  // [kparts][16][G*U]
  float* sSt = reinterpret_cast<float*>(smem + L.off_d);   // [NS][16][U]
  const int tid = threadIdx.x;
  for (int64_t i = tid; i < GU * DH; i += kThreads) {
    const int64_t c = i / DH, k = i % DH, g = c / U, u = c % U;
    sR[c * ldr + k] = a.R[((g * NH + n) * DH + j0 + u) * DH + k];
  }
  for (int64_t i = tid; i < kTile * U; i += kThreads) {
    const int64_t bb = i / U, j = j0 + i % U, b = b0 + bb;
    for (int s = 0; s < NS; ++s) {
      float v = 0.f;
      if (b < B && a.states0) v = Io<S>::load(a.states0[s * BN + b * N + n * DH + j]);
      sSt[(s * kTile + bb) * U + i % U] = v;
      if (b < B && a.hist) a.hist[s * (Tn + 1) * BN + b * N + n * DH + j] = v;
    }
  }
  if constexpr (kCluster) {
    // buffer 0: h_0 of the whole head (each CTA reads it itself); buffer 1: zero (rows >= B stay 0)
    for (int64_t i = tid; i < kTile * DH; i += kThreads) {
      const int64_t bb = i / DH, k = i % DH, b = b0 + bb;
      const float v = (b < B && a.states0) ? Io<S>::load(a.states0[b * N + n * DH + k]) : 0.f;
      sH[bb * ldh + k] = Io<S>::store(v);
      sH[(kTile + bb) * ldh + k] = Io<S>::store(0.f);
    }
    cluster_barrier();  // every CTA of the cluster runs and is initialized before any DSMEM write
  }
  // Wx of the current step for the thread's first kPre units, loaded before the MMA so that its
  // memory latency overlaps the recurrent product instead of following it
  constexpr int kPre = 2;
  float wx_next[kPre][G];
  for (int64_t t = 0; t < Tn; ++t) {
#pragma unroll
    for (int m = 0; m < kPre; ++m) {
      const int64_t i = tid + m * kThreads, b = b0 + i / U;
      if (i < kTile * U && b < B) {
        const S* wxp = a.Wx + ((b * Tn + t) * G * NH + n) * DH + j0 + i % U;
        for (int g = 0; g < G; ++g) wx_next[m][g] = Io<S>::load(wxp[g * N]);
      }
    }
    S* hcur = sH + (kCluster ? (t & 1) * kTile * ldh : 0);
    if constexpr (!kCluster) {
      // h_{t-1} of the whole head: the initial states at t = 0, else the exchange buffer
      const float* src = hbuf + (t & 1) * BN;
      for (int64_t i = tid; i < kTile * DH; i += kThreads) {
        const int64_t bb = i / DH, k = i % DH, b = b0 + bb;
        float v = 0.f;
        if (b < B) {
          if (t > 0) {
            v = __ldcg(src + b * N + n * DH + k);
          } else if (a.states0) {
            v = Io<S>::load(a.states0[b * N + n * DH + k]);
          }
        }
        hcur[bb * ldh + k] = Io<S>::store(v);
      }
    }
    __syncthreads();
    // (1) rec[q][bb][c] = sum_{k in slice q} h[bb][k] R_slice[c][k]
    if constexpr (std::is_same_v<S, float>) {
      rec_product_fma(hcur, ldh, sR, ldr, DH, GU, sRec);
    } else {
      using namespace nvcuda;
      using E = typename Wmma<S>::type;
      const int warp = tid / 32;
      const int64_t ctiles = GU / 16, kq = DH / 16 / L.kparts;
      for (int64_t item = warp; item < ctiles * L.kparts; item += kWarps) {
        const int64_t ct = item % ctiles, q = item / ctiles;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.f);
        for (int64_t kk = q * kq * 16; kk < (q + 1) * kq * 16; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> fa;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::col_major> fb;
          wmma::load_matrix_sync(fa, reinterpret_cast<const E*>(hcur) + kk,
                                 static_cast<unsigned>(ldh));
          wmma::load_matrix_sync(fb, reinterpret_cast<const E*>(sR) + ct * 16 * ldr + kk,
                                 static_cast<unsigned>(ldr));
          wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(sRec + q * kTile * GU + ct * 16, acc, static_cast<unsigned>(GU),
                                wmma::mem_row_major);
      }
    }
    __syncthreads();
    // (2) the cell of the CTA's units; the new h goes to the next h buffer (cluster: own columns of
    // the local copy; cooperative: the global exchange buffer)
    S* hnext = sH + (kCluster ? ((t + 1) & 1) * kTile * ldh : 0);
    const int kparts = std::is_same_v<S, float> ? 1 : L.kparts;
    auto cell = [&](int64_t i, const float* wx) {
      const int64_t bb = i / U, u = i % U, j = j0 + u, b = b0 + bb;
      if (b >= B) return;
      float rec[G], prev[NS], next[NS];
      for (int g = 0; g < G; ++g) {
        float r = 0.f;
        for (int q = 0; q < kparts; ++q) r += sRec[(q * kTile + bb) * GU + g * U + u];
        rec[g] = r;
      }
      for (int s = 0; s < NS; ++s) prev[s] = sSt[(s * kTile + bb) * U + u];
      fwd_unit<S, C>(a, sh, t, b, n, j, rec, prev, next, wx);
      for (int s = 0; s < NS; ++s) sSt[(s * kTile + bb) * U + u] = next[s];
      const S hv = Io<S>::store(next[0]);
      if constexpr (kCluster) {
        hnext[bb * ldh + j] = hv;
      } else {
        hbuf[((t + 1) & 1) * BN + b * N + n * DH + j] = Io<S>::load(hv);
      }
    };
#pragma unroll
    for (int m = 0; m < kPre; ++m) {
      if (tid + m * kThreads < kTile * U) cell(tid + m * kThreads, wx_next[m]);
    }
    for (int64_t i = tid + kPre * kThreads; i < kTile * U; i += kThreads) cell(i, nullptr);
    if constexpr (kCluster) {
      __syncthreads();
      // (3) push the CTA's columns [j0, j0 + U) of all 16 rows into the peers' next buffer
      const bool vec = (U * sizeof(S)) % 16 == 0 && (j0 * sizeof(S)) % 16 == 0 &&
                       (ldh * sizeof(S)) % 16 == 0;
      if (vec) {
        const int64_t per_row = U * sizeof(S) / 16, per_peer = kTile * per_row;
        for (int64_t i = tid; i < (P - 1) * per_peer; i += kThreads) {
          const int64_t q = i / per_peer, r = i % per_peer, bb = r / per_row, w = r % per_row;
          const unsigned rank = static_cast<unsigned>(q < p ? q : q + 1);
          const int64_t off = bb * ldh + j0;
          reinterpret_cast<uint4*>(cluster_peer(hnext, rank) + off)[w] =
              reinterpret_cast<const uint4*>(hnext + off)[w];
        }
      } else {
        const int64_t per_peer = kTile * U;
        for (int64_t i = tid; i < (P - 1) * per_peer; i += kThreads) {
          const int64_t q = i / per_peer, r = i % per_peer, off = (r / U) * ldh + j0 + r % U;
          const unsigned rank = static_cast<unsigned>(q < p ? q : q + 1);
          cluster_peer(hnext, rank)[off] = hnext[off];
        }
      }
      cluster_barrier();  // h_t complete everywhere; also: no DSMEM access after the last one
    } else {
      cg::this_grid().sync();
    }
  }
  for (int64_t i = tid; i < kTile * U; i += kThreads) {
    const int64_t bb = i / U, u = i % U, b = b0 + bb;
    if (b >= B) continue;
    for (int s = 0; s < NS; ++s) {
      a.last[s * BN + b * N + n * DH + j0 + u] = Io<S>::store(sSt[(s * kTile + bb) * U + u]);
    }
  }
}

// ---- backward, sliced ---------------------------------------------------------------------------
// Grid and groups as fwd_sliced; 256 threads. Per step t = T-1 .. -1 (t = -1: only the R^T product
// of step 0, for the initial-state gradient): (1) the partial R^T product of the CTA's rows for all
// DH columns (bf16: wmma, warp w owns the 16-column tiles w, w+8, ..., two MMAs (hi, lo) per
// 16-row k step; else a thread per (row, k), G*U FMAs from shared memory); (2) barrier; (3) each
// CTA adds the partials of its U columns from all P CTAs (rank order) to d h; (4) the pointwise backward of
// its units (bwd_unit; same thread -> unit map as (3), so no barrier between them), whose d pre
// rows 0..G-1 feed the next (earlier) step's partial product.
template <typename S, typename C, bool kCluster>
__global__ void __launch_bounds__(kThreads)
bwd_sliced(BwdArgs<S, float> a, Shape sh, SliceLayout L, float* pbuf) {
#if !FP_RNN_HAS_CLUSTER
  if constexpr (kCluster) {
    __trap();
    return;
  }
#endif
  constexpr int G = C::G, GB = C::GB, NS = C::S;
  const int64_t DH = sh.head_dim, NH = sh.heads, B = sh.batch, Tn = sh.time;
  const int64_t N = NH * DH, BN = B * N;
  const int P = L.parts;
  const int64_t U = L.units, GU = G * U, ldr = L.ldr;
  const int p = kCluster ? static_cast<int>(cluster_rank()) : static_cast<int>(blockIdx.x % P);
  const int64_t n = blockIdx.x / P, b0 = static_cast<int64_t>(blockIdx.y) * kTile, j0 = p * U;
  extern __shared__ __align__(128) unsigned char smem[];
  S* sR = reinterpret_cast<S*>(smem);                      // [G*U][ldr]
  float* sW = reinterpret_cast<float*>(smem + L.off_b);    // [16][G*U] d pre_{t+1}, own rows
  float* sP = reinterpret_cast<float*>(smem + L.off_c);    // [2][16][DH] partials (cluster)
  float* sD = reinterpret_cast<float*>(smem + L.off_d);    // [NS][16][U] state gradients
  S* sWh = reinterpret_cast<S*>(smem + L.off_e);           // (mma) [16][ldw] high parts of sW
  S* sWl = sWh + kTile * L.ldw;                              // (mma) [16][ldw] remainders
  // cooperative: this CTA's partials live at pbuf[buf][group][p] (group = tile * NH + n)
  const int64_t group = static_cast<int64_t>(blockIdx.y) * NH + n, groups = gridDim.y * NH;
  auto partials = [&](int buf, int q) -> float* {
    return kCluster ? sP + buf * kTile * DH
                    : pbuf + ((buf * groups + group) * P + q) * kTile * DH;
  };
  const int tid = threadIdx.x;
  for (int64_t i = tid; i < GU * DH; i += kThreads) {
    const int64_t c = i / DH, k = i % DH, g = c / U, u = c % U;
    sR[c * ldr + k] = a.R[((g * NH + n) * DH + j0 + u) * DH + k];
  }
  for (int64_t i = tid; i < kTile * GU; i += kThreads) sW[i] = 0.f;
  if (L.mma) {
    for (int64_t i = tid; i < 2 * kTile * L.ldw; i += kThreads) sWh[i] = Io<S>::store(0.f);
  }
  for (int64_t i = tid; i < kTile * U; i += kThreads) {
    const int64_t bb = i / U, u = i % U, b = b0 + bb;
    for (int s = 0; s < NS; ++s) {
      sD[(s * kTile + bb) * U + u] =
          (b < B && a.dlast) ? Io<S>::load(a.dlast[s * BN + b * N + n * DH + j0 + u]) : 0.f;
    }
  }
  int buf = 0;
  for (int64_t t = Tn - 1; t >= -1; --t, buf ^= 1) {
    __syncthreads();
    // (1) P[bb][k] = sum_c d pre_{t+1}[bb][c] R_slice[c][k]  (sW is zero before the last step)
    float* mine = partials(buf, p);
    bool done = false;
    if constexpr (std::is_same_v<S, bf16_t>) {
      if (L.mma) {  // tensor cores: P = (W_hi + W_lo) R_slice, warp w owns column tiles w, w+8, ...
        using namespace nvcuda;
        using E = typename Wmma<S>::type;
        const int warp = tid / 32;
        for (int64_t kt = warp; kt < DH / 16; kt += kWarps) {
          wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
          wmma::fill_fragment(acc, 0.f);
          for (int64_t c0 = 0; c0 < GU; c0 += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::row_major> fb;
            wmma::load_matrix_sync(fb, reinterpret_cast<const E*>(sR) + c0 * ldr + kt * 16,
                                   static_cast<unsigned>(ldr));
            wmma::load_matrix_sync(fa, reinterpret_cast<const E*>(sWh) + c0,
                                   static_cast<unsigned>(L.ldw));
            wmma::mma_sync(acc, fa, fb, acc);
            wmma::load_matrix_sync(fa, reinterpret_cast<const E*>(sWl) + c0,
                                   static_cast<unsigned>(L.ldw));
            wmma::mma_sync(acc, fa, fb, acc);
          }
          wmma::store_matrix_sync(mine + kt * 16, acc, static_cast<unsigned>(DH),
                                  wmma::mem_row_major);
        }
        done = true;
      }
    }
    if (!done) {  // FMA, a thread per (row, k)
      for (int64_t i = tid; i < kTile * DH; i += kThreads) {
        const int64_t bb = i / DH, k = i % DH;
        const float* w = sW + bb * GU;
        float acc = 0.f;
        for (int64_t c = 0; c < GU; ++c) acc = fmaf(w[c], Io<S>::load(sR[c * ldr + k]), acc);
        mine[i] = acc;
      }
    }
    // (2) all partials of this step are visible; the buffer written two steps later is no longer
    // read (its readers passed this barrier after their step-(t+2) reads)
    if constexpr (kCluster) {
      cluster_barrier();
    } else {
      cg::this_grid().sync();
    }
    // (3) d h_t[bb][j0 + u] += sum_q P_q[bb][j0 + u]
    for (int64_t i = tid; i < kTile * U; i += kThreads) {
      const int64_t bb = i / U, u = i % U;
      float acc = 0.f;
      for (int q = 0; q < P; ++q) {
        const int64_t off = bb * DH + j0 + u;
        if constexpr (kCluster) {
          acc += cluster_peer(partials(buf, q), static_cast<unsigned>(q))[off];
        } else {
          acc += __ldcg(partials(buf, q) + off);
        }
      }
      sD[bb * U + u] += acc;
    }
    if (t < 0) break;  // uniform across the grid
    // (4) the pointwise backward of step t
    for (int64_t i = tid; i < kTile * U; i += kThreads) {
      const int64_t bb = i / U, u = i % U, b = b0 + bb;
      if (b >= B) continue;
      float d[NS], dpre[GB];
      for (int s = 0; s < NS; ++s) d[s] = sD[(s * kTile + bb) * U + u];
      bwd_unit<S, C>(a, sh, t, b, n, j0 + u, d, dpre);
      for (int s = 0; s < NS; ++s) sD[(s * kTile + bb) * U + u] = d[s];
      if (L.mma) {  // hi = bf16(d pre), lo = bf16(d pre - hi): about 16 significant bits together
        for (int g = 0; g < G; ++g) {
          const S hi = Io<S>::store(dpre[g]);
          sWh[bb * L.ldw + g * U + u] = hi;
          sWl[bb * L.ldw + g * U + u] = Io<S>::store(dpre[g] - Io<S>::load(hi));
        }
      } else {
        for (int g = 0; g < G; ++g) sW[bb * GU + g * U + u] = dpre[g];
      }
    }
  }
  if constexpr (kCluster) cluster_barrier();  // peers may still read this CTA's partials
  if (a.dstates0) {
    for (int64_t i = tid; i < kTile * U; i += kThreads) {
      const int64_t bb = i / U, u = i % U, b = b0 + bb;
      if (b >= B) continue;
      for (int s = 0; s < NS; ++s) {
        a.dstates0[s * BN + b * N + n * DH + j0 + u] = Io<S>::store(sD[(s * kTile + bb) * U + u]);
      }
    }
  }
}

}  // namespace
}  // namespace fastpaper::rnn::cuda
