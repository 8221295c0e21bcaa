// CUDA kernels of the ParaRNN linear scan h_t = J_t h_{t-1} + r_t (or its reverse, or the adjoint
// of either: the same scan in the opposite direction reading J^T of the neighbouring step), in
// the native [B, T, N] layout (no transposes). Two kernels; both give a CTA of 32 x kWarps
// threads 32 consecutive channel groups (lane = group, so a warp's loads of one time step are
// contiguous) of one batch element: a "chain" = (batch element, tile of 32 groups).
//
// chain_kernel — one CTA per chain (grid = batch x ceil(groups / 32)) walks the chain's whole
// time axis in segments of kWarps * L steps (L = steps per thread, up to kMaxChunk). Within a
// segment warp w owns the time chunk [w L, (w + 1) L):
//   1. each thread composes the affine maps of its chunk, (A, b) = (J_s, r_s) o ... o (J_1, r_1),
//      in registers and stores it to shared memory;
//   2. each thread applies the maps of the chunks before its own to the segment carry (at most
//      kWarps - 1 small matrix-vector products), which gives its chunk's initial state, and all
//      kWarps maps to get the carry into the next segment;
//   3. each thread re-runs its chunk from that state, writing h (the second read of J and r comes
//      from L1/L2).
//
// lookback_kernel — single-pass multi-block scan with decoupled look-back, for few chains and
// long T (where the chain kernel would leave most SMs idle): the time axis of every chain is cut
// too, into `blocks` time blocks of kWarps * L steps (L sized so that chains x blocks is about
// kLookbackCtasPerSm CTAs per SM; fastpaper/detail/pararnn_blocks.h plan_lookback), one CTA each
// (grid = chains x blocks). A CTA
//   0. takes a ticket from a global atomic counter and works on the time block the ticket names
//      (tickets run block-major, so a CTA's predecessor in its chain holds a smaller ticket);
//   1. like step 1 above over its block (warp w: chunk w), then each thread composes the chunk
//      maps before its own (its exclusive map inside the block, kept in registers) and all of them
//      (the block's aggregate map);
//   2. warp 0 (lane = group) publishes the aggregate (flag AGGREGATE), then looks back over the
//      chain's earlier blocks, kWarps at a time (warp v reads block - 1 - v - window offset):
//      aggregates are composed into an exclusive prefix map until a block with flag INCLUSIVE is
//      met, whose payload is the state leaving it (h0 is known, so the prefix is a state vector,
//      not a map); block 0 starts from h0 and never looks back. Warp 0 then publishes its own
//      INCLUSIVE state (its aggregate applied to the incoming state);
//   3. each thread applies its exclusive map to the incoming state and re-runs its chunk writing h.
// Why a ticket counter: CUDA does not promise that CTAs are scheduled in blockIdx order, so a CTA
// spinning on a predecessor with a larger blockIdx that has not been scheduled (all SMs busy with
// spinners) could deadlock. A ticket is taken by a CTA that is already running, so every block a
// CTA waits for belongs to a running CTA, and block 0 waits for nobody: by induction every CTA
// finishes. Memory ordering: payloads are written with plain stores, then __threadfence() by
// every writer lane, __syncwarp(), and a release store of the status word by lane 0; readers
// acquire-load the status word (each lane itself) and then read the payload through L2 (__ldcg).
// Rounding: how far back a block walks (which predecessors it finds INCLUSIVE) depends on timing,
// so the association of the compositions, and with it the last bits of a floating-point result,
// may differ from run to run (exactly representable inputs give exact results either way).
// The workspace (ticket counter, status words, payloads) is a stream-ordered allocation
// (cudaMallocAsync / cudaMemsetAsync / cudaFreeAsync), so the op stays capturable in CUDA graphs
// and needs no host synchronization.
//
// Dispatch (linear_scan below): the look-back kernel when chains < SM count and
// T >= kLookbackMinTime (the chain kernel leaves SMs idle and the sequence is long), the chain
// kernel otherwise (deterministic rounding, and the path verified first on a GPU). The environment variable FASTPAPER_PARARNN_SCAN = chain | lookback forces a
// kernel (auto or unset: the rule above); it is read at every call, so tests and benchmarks can
// run both kernels on the same input in one process.
//
// The per-chunk loops (compose, re-run) are fastpaper/detail/pararnn_blocks.h and the step math
// fastpaper/detail/pararnn_scan.h, shared with the CPU kernel and a host emulation of the
// look-back kernel (tests/cpp/test_pararnn_lookback.cpp).
#include <cuda/atomic>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/cuda_launch.h"
#include "fastpaper/detail/pararnn_blocks.h"
#include "fastpaper/detail/pararnn_scan.h"
#include "pararnn/pararnn_backends.h"

namespace fastpaper::pararnn::cuda {
namespace {

using namespace fastpaper::pararnn::detail;
using fastpaper::detail::fail;
using fastpaper::detail::launched;

constexpr int kLanes = 32;
constexpr int kWarps = 8;
constexpr int kMaxChunk = 16;
// look-back kernel
constexpr int64_t kLookbackCtasPerSm = 8;  // 8 CTAs of 256 threads: a full SM (2048 threads)
constexpr int64_t kLookbackMinChunk = 8;   // steps per thread, at least
constexpr int64_t kLookbackMinTime = 1024; // below this the chain kernel's few segments win
constexpr unsigned kAggregate = 1, kInclusive = 2;  // status words; 0 = nothing published yet

struct Geometry {
  ScanGeometry scan;
  int64_t tiles;  // tiles of 32 groups per batch element
  int chunk;      // chain kernel: time steps per thread per segment
};

// Workspace of the look-back kernel (one stream-ordered allocation, see lookback()).
template <typename T>
struct Lookback {
  unsigned* ticket;  // the ticket counter (zeroed)
  unsigned* status;  // [chains * blocks] status words (zeroed), index chain * blocks + block
  T* aggregate;      // [chains * blocks][K * K + K][32]: the block's map (A, b), lane-minor
  T* inclusive;      // [chains * blocks][K][32]: the state leaving the block
  int64_t chains, blocks, chunk;
};

// The affine map of this thread's chunk of steps [s0, s1) (the identity for a lane past the last
// group or an empty chunk), stored to its shared-memory slots for the block-level combine.
template <int K, bool Adj, typename S, typename T>
__device__ __forceinline__ void store_chunk_map(const S* __restrict__ J, const S* r,
                                                const ScanGeometry& sg, int64_t b, int64_t g,
                                                int64_t s0, int64_t s1, bool active, T* sA, T* sb) {
  T A[K * K], bv[K];
  if (active) {
    chunk_map<K, Adj>(J, r, sg, b, g, s0, s1, A, bv);
  } else {
    affine_identity<K>(A, bv);
  }
#pragma unroll
  for (int e = 0; e < K * K; ++e) sA[e] = A[e];
#pragma unroll
  for (int i = 0; i < K; ++i) sb[i] = bv[i];
}

// Adj: the adjoint recurrence (fastpaper/pararnn.h; see pararnn_blocks.h).
template <int K, typename S, bool Adj>
__global__ void __launch_bounds__(kLanes * kWarps)
chain_kernel(const S* __restrict__ J, const S* r, const S* __restrict__ h0, S* h, Geometry geo) {
  using T = typename Io<S>::T;  // compute type (float for 16-bit storage)
  __shared__ T smA[kWarps][kLanes][K * K];
  __shared__ T smb[kWarps][kLanes][K];
  const int lane = threadIdx.x, w = threadIdx.y;
  const ScanGeometry& sg = geo.scan;
  const int64_t b = blockIdx.x / geo.tiles;
  const int64_t g = (blockIdx.x % geo.tiles) * kLanes + lane;
  const bool active = g < sg.groups;

  T carry[K];
#pragma unroll
  for (int i = 0; i < K; ++i) {
    carry[i] = (active && h0) ? Io<S>::load(h0[b * sg.channels + g * K + i]) : T(0);
  }

  const int64_t seg_len = static_cast<int64_t>(kWarps) * geo.chunk;
  for (int64_t seg0 = 0; seg0 < sg.time; seg0 += seg_len) {
    const int64_t s0 = seg0 + static_cast<int64_t>(w) * geo.chunk;
    const int64_t s1 = s0 + geo.chunk < sg.time ? s0 + geo.chunk : sg.time;

    // 1. this thread's chunk map (identity for a chunk past the end)
    store_chunk_map<K, Adj>(J, r, sg, b, g, s0, s1, active, &smA[w][lane][0], &smb[w][lane][0]);
    __syncthreads();

    // 2. state entering this chunk, and the carry into the next segment
    T state[K];
    for (int v = 0; v < kWarps; ++v) {
      if (v == w) {
#pragma unroll
        for (int i = 0; i < K; ++i) state[i] = carry[i];
      }
      affine_apply<K>(&smA[v][lane][0], &smb[v][lane][0], carry);
    }
    __syncthreads();  // shared memory is rewritten by the next segment

    // 3. re-run the chunk from its true initial state
    if (active) chunk_run<K, Adj>(J, r, h, sg, b, g, s0, s1, state);
  }
}

__device__ __forceinline__ unsigned acquire_status(unsigned* word) {
  ::cuda::atomic_ref<unsigned, ::cuda::thread_scope_device> ref(*word);
  unsigned f;
  while ((f = ref.load(::cuda::memory_order_acquire)) == 0) __nanosleep(32);
  return f;
}

// Called by all 32 lanes of one warp after each wrote its part of the payload.
__device__ __forceinline__ void release_status(unsigned* word, unsigned value, int lane) {
  __threadfence();  // this lane's payload before the status word (every lane)
  __syncwarp();
  if (lane == 0) {
    ::cuda::atomic_ref<unsigned, ::cuda::thread_scope_device> ref(*word);
    ref.store(value, ::cuda::memory_order_release);
  }
}

template <int K, typename S, bool Adj>
__global__ void __launch_bounds__(kLanes * kWarps)
lookback_kernel(const S* __restrict__ J, const S* r, const S* __restrict__ h0, S* h, Geometry geo,
                Lookback<typename Io<S>::T> lb) {
  using T = typename Io<S>::T;
  constexpr int kMap = K * K + K;  // payload entries of a map per group
  __shared__ T smA[kWarps][kLanes][K * K];
  __shared__ T smb[kWarps][kLanes][K];
  __shared__ unsigned sflag[kWarps][kLanes];
  __shared__ unsigned sticket;
  __shared__ int sdone;
  const int lane = threadIdx.x, w = threadIdx.y;
  const ScanGeometry& sg = geo.scan;

  // 0. which block: by ticket, not blockIdx (forward progress, see the header comment)
  if (lane == 0 && w == 0) sticket = atomicAdd(lb.ticket, 1u);
  __syncthreads();
  int64_t chain, blk;
  ticket_block(sticket, lb.chains, &chain, &blk);
  const int64_t b = chain / geo.tiles;
  const int64_t g = (chain % geo.tiles) * kLanes + lane;
  const bool active = g < sg.groups;
  const int64_t len = kWarps * lb.chunk;
  // this thread's chunk, clipped to [0, T) (the last block may be short; chunks past T are empty)
  const int64_t c0 = blk * len + w * lb.chunk;
  const int64_t s0 = c0 < sg.time ? c0 : sg.time;
  const int64_t s1 = s0 + lb.chunk < sg.time ? s0 + lb.chunk : sg.time;

  // 1. chunk map; exclusive map of the chunks before this one in the block; block aggregate
  store_chunk_map<K, Adj>(J, r, sg, b, g, s0, s1, active, &smA[w][lane][0], &smb[w][lane][0]);
  __syncthreads();
  T eA[K * K], eb[K], aA[K * K], ab[K];  // exclusive map, then aggregate
  affine_identity<K>(aA, ab);
  for (int v = 0; v < kWarps; ++v) {
    if (v == w) {
#pragma unroll
      for (int e = 0; e < K * K; ++e) eA[e] = aA[e];
#pragma unroll
      for (int i = 0; i < K; ++i) eb[i] = ab[i];
    }
    affine_compose_after<K>(&smA[v][lane][0], &smb[v][lane][0], aA, ab);
  }
  __syncthreads();  // shared memory is reused by the look-back

  // 2. the state entering the block (warp 0, lane = group)
  const int64_t slot = chain * lb.blocks + blk;
  T x[K];
#pragma unroll
  for (int i = 0; i < K; ++i) x[i] = T(0);
  if (blk == 0) {
    if (w == 0) {
#pragma unroll
      for (int i = 0; i < K; ++i) {
        x[i] = (active && h0) ? Io<S>::load(h0[b * sg.channels + g * K + i]) : T(0);
      }
    }
  } else {
    T pA[K * K], pb[K];  // exclusive prefix: the maps of blocks (j, blk) composed
    bool found = false;
    if (w == 0) {
      T* out = lb.aggregate + slot * kMap * kLanes + lane;
#pragma unroll
      for (int e = 0; e < K * K; ++e) out[e * kLanes] = aA[e];
#pragma unroll
      for (int i = 0; i < K; ++i) out[(K * K + i) * kLanes] = ab[i];
      release_status(lb.status + slot, kAggregate, lane);
      affine_identity<K>(pA, pb);
    }
    for (int64_t j = blk - 1;; j -= kWarps) {
      // warp v fetches block j - v of the window (status and payload) into shared memory
      const int64_t p = j - w;
      if (p >= 0) {
        const int64_t ps = chain * lb.blocks + p;
        const unsigned f = acquire_status(lb.status + ps);
        sflag[w][lane] = f;
        if (f == kInclusive) {
          const T* in = lb.inclusive + ps * K * kLanes + lane;
#pragma unroll
          for (int i = 0; i < K; ++i) smb[w][lane][i] = __ldcg(in + i * kLanes);
        } else {
          const T* in = lb.aggregate + ps * kMap * kLanes + lane;
#pragma unroll
          for (int e = 0; e < K * K; ++e) smA[w][lane][e] = __ldcg(in + e * kLanes);
#pragma unroll
          for (int i = 0; i < K; ++i) smb[w][lane][i] = __ldcg(in + (K * K + i) * kLanes);
        }
      }
      __syncthreads();
      if (w == 0) {
        // newest to oldest: aggregates go before the prefix, an inclusive state ends the walk
        for (int v = 0; v < kWarps && !found && j - v >= 0; ++v) {
          found = lookback_take<K>(sflag[v][lane] == kInclusive, &smA[v][lane][0],
                                   &smb[v][lane][0], pA, pb, x);
        }
        // block 0 is always INCLUSIVE, so every lane is done once the window reaches it
        const bool all = __all_sync(0xffffffffu, found);
        if (lane == 0) sdone = all;
      }
      __syncthreads();
      if (sdone) break;
    }
  }
  if (w == 0) {
    T y[K];
#pragma unroll
    for (int i = 0; i < K; ++i) y[i] = x[i];
    affine_apply<K>(aA, ab, y);
    T* out = lb.inclusive + slot * K * kLanes + lane;
#pragma unroll
    for (int i = 0; i < K; ++i) out[i * kLanes] = y[i];
    release_status(lb.status + slot, kInclusive, lane);
#pragma unroll
    for (int i = 0; i < K; ++i) smb[0][lane][i] = x[i];
  }
  __syncthreads();

  // 3. the state entering this thread's chunk; re-run the chunk writing h
  T state[K];
#pragma unroll
  for (int i = 0; i < K; ++i) state[i] = smb[0][lane][i];
  affine_apply<K>(eA, eb, state);
  if (active) chunk_run<K, Adj>(J, r, h, sg, b, g, s0, s1, state);
}

Geometry geometry_of(const ScanShape& s, int K) {
  Geometry geo;
  geo.scan.time = s.time;
  geo.scan.channels = s.channels;
  geo.scan.groups = s.channels / K;
  // the adjoint runs against the direction of its primal recurrence
  geo.scan.backwards = s.reverse != s.adjoint;
  geo.tiles = (geo.scan.groups + kLanes - 1) / kLanes;
  const int64_t per_warp = (s.time + kWarps - 1) / kWarps;
  geo.chunk = static_cast<int>(per_warp < kMaxChunk ? per_warp : kMaxChunk);
  return geo;
}

template <int K, typename S>
Status launch_chain(const S* J, const S* r, const S* h0, S* h, const ScanShape& s,
                    cudaStream_t stream) {
  const Geometry geo = geometry_of(s, K);
  const dim3 block(kLanes, kWarps);
  const auto grid = static_cast<unsigned>(s.batch * geo.tiles);
  if (s.adjoint) {
    chain_kernel<K, S, true><<<grid, block, 0, stream>>>(J, r, h0, h, geo);
  } else {
    chain_kernel<K, S, false><<<grid, block, 0, stream>>>(J, r, h0, h, geo);
  }
  return launched("pararnn::linear_scan (chain kernel)");
}

size_t round_up(size_t n) { return (n + 255) / 256 * 256; }

template <int K, typename S>
Status launch_lookback(const S* J, const S* r, const S* h0, S* h, const ScanShape& s, int sms,
                       cudaStream_t stream) {
  using T = typename Io<S>::T;
  const Geometry geo = geometry_of(s, K);
  const int64_t chains = s.batch * geo.tiles;
  const LookbackPlan plan =
      plan_lookback(s.time, chains, kWarps, kLookbackCtasPerSm * sms, kLookbackMinChunk);
  const int64_t ctas = chains * plan.blocks;
  if (ctas > (int64_t{1} << 31) - 1) {
    return fail(Status::invalid_argument,
                "pararnn::linear_scan: chains x time blocks exceeds the CUDA grid limit");
  }
  // layout: ticket | status words | aggregates | inclusive states (each 256-byte aligned)
  const size_t head =
      round_up(sizeof(unsigned)) + round_up(static_cast<size_t>(ctas) * sizeof(unsigned));
  const size_t agg = round_up(static_cast<size_t>(ctas) * (K * K + K) * kLanes * sizeof(T));
  const size_t inc = static_cast<size_t>(ctas) * K * kLanes * sizeof(T);
  char* ws = nullptr;
  if (cudaMallocAsync(reinterpret_cast<void**>(&ws), head + agg + inc, stream) != cudaSuccess) {
    return fail(Status::cuda_error, std::string("pararnn::linear_scan: cudaMallocAsync: ") +
                                        cudaGetErrorString(cudaGetLastError()));
  }
  if (cudaMemsetAsync(ws, 0, head, stream) != cudaSuccess) {
    cudaFreeAsync(ws, stream);
    return fail(Status::cuda_error, std::string("pararnn::linear_scan: cudaMemsetAsync: ") +
                                        cudaGetErrorString(cudaGetLastError()));
  }
  Lookback<T> lb;
  lb.ticket = reinterpret_cast<unsigned*>(ws);
  lb.status = reinterpret_cast<unsigned*>(ws + round_up(sizeof(unsigned)));
  lb.aggregate = reinterpret_cast<T*>(ws + head);
  lb.inclusive = reinterpret_cast<T*>(ws + head + agg);
  lb.chains = chains;
  lb.blocks = plan.blocks;
  lb.chunk = plan.chunk;
  const dim3 block(kLanes, kWarps);
  const auto grid = static_cast<unsigned>(ctas);
  if (s.adjoint) {
    lookback_kernel<K, S, true><<<grid, block, 0, stream>>>(J, r, h0, h, geo, lb);
  } else {
    lookback_kernel<K, S, false><<<grid, block, 0, stream>>>(J, r, h0, h, geo, lb);
  }
  const Status st = launched("pararnn::linear_scan (look-back kernel)");
  cudaFreeAsync(ws, stream);  // stream-ordered: after the kernel
  return st;
}

// Streaming multiprocessors of the current device, queried once per device.
int sm_count() {
  constexpr int kCached = 64;
  static std::atomic<int> cache[kCached] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 1;
  if (dev >= 0 && dev < kCached) {
    if (const int n = cache[dev].load(std::memory_order_relaxed); n > 0) return n;
  }
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n < 1) {
    cudaGetLastError();  // clear: the heuristic falls back to one SM
    n = 1;
  }
  if (dev >= 0 && dev < kCached) cache[dev].store(n, std::memory_order_relaxed);
  return n;
}

enum class Path { automatic, chain, lookback, invalid };

// FASTPAPER_PARARNN_SCAN: read at every call (a getenv per launch) so tests can switch kernels.
Path forced_path() {
  const char* v = std::getenv("FASTPAPER_PARARNN_SCAN");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return Path::automatic;
  if (std::strcmp(v, "chain") == 0) return Path::chain;
  if (std::strcmp(v, "lookback") == 0) return Path::lookback;
  return Path::invalid;
}

template <int K, typename S>
Status launch(const S* J, const S* r, const S* h0, S* h, const ScanShape& s, Path path,
              cudaStream_t stream) {
  const int64_t chains = s.batch * ((s.channels / K + kLanes - 1) / kLanes);
  const int sms = sm_count();
  if (path == Path::automatic) {
    path = chains < int64_t{sms} && s.time >= kLookbackMinTime ? Path::lookback : Path::chain;
  }
  if (path == Path::lookback) return launch_lookback<K>(J, r, h0, h, s, sms, stream);
  return launch_chain<K>(J, r, h0, h, s, stream);
}

}  // namespace

template <typename S>
Status linear_scan(const S* J, const S* r, const S* h0, S* h, const ScanShape& s, void* stream) {
  // at least one CTA per (batch element, 32 groups): gridDim.x is limited to 2^31 - 1
  const int64_t tiles = (s.channels / s.block + kLanes - 1) / kLanes;
  if (s.batch > (int64_t{1} << 31) / tiles - 1) {
    return fail(Status::invalid_argument,
                "pararnn::linear_scan: batch x channel tiles exceeds the CUDA grid limit "
                "(2^31 - 1 blocks)");
  }
  const Path path = forced_path();
  if (path == Path::invalid) {
    return fail(Status::invalid_argument,
                "environment variable FASTPAPER_PARARNN_SCAN must be auto, chain or lookback");
  }
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (s.block) {
    case 1: return launch<1>(J, r, h0, h, s, path, st);
    case 2: return launch<2>(J, r, h0, h, s, path, st);
    case 3: return launch<3>(J, r, h0, h, s, path, st);
    case 4: return launch<4>(J, r, h0, h, s, path, st);
    default: return fail(Status::invalid_argument, "block must be in [1, 4] on CUDA");
  }
}

template Status linear_scan(const float*, const float*, const float*, float*, const ScanShape&, void*);
template Status linear_scan(const double*, const double*, const double*, double*, const ScanShape&,
                            void*);
template Status linear_scan(const half_bits*, const half_bits*, const half_bits*, half_bits*,
                            const ScanShape&, void*);
template Status linear_scan(const bf16_bits*, const bf16_bits*, const bf16_bits*, bf16_bits*,
                            const ScanShape&, void*);

}  // namespace fastpaper::pararnn::cuda
