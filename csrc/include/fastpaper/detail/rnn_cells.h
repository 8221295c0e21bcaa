// Pointwise math of the FlashRNN-style cells, shared by the CPU (csrc/rnn/) and CUDA (cuda/rnn/)
// kernels, so the CPU tests check the arithmetic the GPU runs.
//
// Layouts (row-major, contiguous) of fastpaper/rnn.h:
//   Wx      [B, T, G, NH, DH]   input projections, computed outside (one big GEMM)
//   R       [G, NH, DH, DH]     recurrent blocks: R[gi, n, j, k] multiplies h[n, k] into gate gi
//                               of unit j of head n, i.e. torch.nn.LSTM's weight_hh [4H, H]
//                               reshaped to [4, 1, H, H] loads exactly (NH = 1)
//   b       [GB, NH, DH]        biases (GB = 4 for the GRU, which keeps b_hn apart; GB = G else)
//   states  [S, B, NH, DH]      initial / last states; state 0 is h, the only one fed back
//   h_all   [B, T, NH, DH]
// Per step t, head n, unit j, the recurrent product is rec[gi] = sum_k R[gi, n, j, k] h_{t-1}[n, k]
// and the cell turns (Wx_t, rec, b) into "pre-activations" pre[GB] (preact), then states (forward).
// pre is what the kernels cache for the backward pass:
//   LSTM  (G 4, GB 4, S 2: h, c), gates i, f, g, o (torch order): pre = Wx + rec + b;
//         c = s(f) c_prev + s(i) tanh(g),  h = s(o) tanh(c)
//   GRU   (G 3, GB 4, S 1), torch.nn.GRU: gates r, z, n; b = [b_r, b_z, b_in, b_hn];
//         pre = [Wx_r + rec_r + b_r, Wx_z + rec_z + b_z, rec_n + b_hn, Wx_n + b_in];
//         r = s(pre0), z = s(pre1), n = tanh(pre3 + r pre2),  h = (1 - z) n + z h_prev
//   Elman (G 1, GB 1, S 1): h = tanh(pre)
//   sLSTM (G 4, GB 4, S 4: h, c, n, m), gates i~, f~, z~, o~ (xLSTM):
//         lf = log s(f~), a = lf + m_prev;  m = i~ if n_prev == 0 (first step) else max(i~, a)
//         i = exp(i~ - m),  f = exp(a - m),  c = f c_prev + i tanh(z~)
//         n = max(f n_prev + i, 1),  h = s(o~) c / n
// (s = logistic sigmoid). backward() is the exact derivative of forward() (m included; at the
// ties of the two max() the first branch is taken: i~ >= a picks i~, f n_prev + i >= 1 picks it),
// given the gradients of the new states; it returns the gradients of pre and of the previous
// states through the pointwise path only (the R^T path of h is the caller's GEMM).
// The first G rows of pre are exactly the rows R feeds (d rec = d pre[0 .. G), so the dR and
// R^T GEMMs read d pre directly); wx_row(g) is the pre row whose gradient is d Wx[g] and b_row(gb)
// the pre row whose gradient sum is d b[gb] (identities except for the GRU).
// T is the compute type: float (for float32/float16/bfloat16 storage) or double.
#pragma once

#include <cmath>
#include <math.h>
#include <cstdint>

#include "fastpaper/detail/host_device.h"
#include "fastpaper/detail/storage_io.h"

namespace fastpaper::rnn::detail {

// Storage types and their compute types: fastpaper/detail/storage_io.h.
using half_t = fastpaper::detail::half_bits;
using bf16_t = fastpaper::detail::bf16_bits;
using fastpaper::detail::Io;

// exp and tanh: CUDA's functions on the device; on the host the float versions are branch-free
// polynomials (so that the CPU loops over units vectorize; within 2 ulp of expf), double uses libm.
// Host expf clamps its argument to [-87.3, 88.3] (results below 1e-38 or above 2e38 saturate).
FP_HD float exp_poly(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float fx = floorf(x * 1.44269504088896341f + 0.5f);  // n = round(x / ln 2)
  float r = x - fx * 0.693359375f;                                 // Cody-Waite: ln 2 = hi + lo
  r = r - fx * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const uint32_t e = static_cast<uint32_t>(static_cast<int32_t>(fx) + 127) << 23;  // 2^n
  return y * fastpaper::detail::bits_float(e);
}
template <typename T> FP_HD T fexp(T x) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) {
    return ::expf(x);
  } else {
    return ::exp(x);
  }
#else
  if constexpr (sizeof(T) == 4) {
    return exp_poly(x);
  } else {
    return std::exp(x);
  }
#endif
}
template <typename T> FP_HD T ftanh(T x) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) {
    return ::tanhf(x);
  } else {
    return ::tanh(x);
  }
#else
  if constexpr (sizeof(T) == 4) {
    const T t = exp_poly(-2 * (x < 0 ? -x : x));  // tanh |x| = (1 - e^{-2|x|}) / (1 + e^{-2|x|})
    const T a = (1 - t) / (1 + t);
    return x < 0 ? -a : a;
  } else {
    return std::tanh(x);
  }
#endif
}
template <typename T> FP_HD T flog1p(T x) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) {
    return ::log1pf(x);
  } else {
    return ::log1p(x);
  }
#else
  return std::log1p(x);
#endif
}
template <typename T> FP_HD T sigmoid(T x) { return T(1) / (T(1) + fexp(-x)); }
// log s(x) = min(x, 0) - log1p(exp(-|x|)), without overflow for either sign.
template <typename T> FP_HD T log_sigmoid(T x) {
  const T ax = x < T(0) ? -x : x;
  return (x < T(0) ? x : T(0)) - flog1p(fexp(-ax));
}

enum CellId : int { kLstm = 0, kGru = 1, kElman = 2, kSlstm = 3 };

template <typename T>
struct Lstm {
  static constexpr int G = 4, GB = 4, S = 2;
  FP_HD static constexpr int wx_row(int g) { return g; }
  FP_HD static constexpr int b_row(int gb) { return gb; }
  FP_HD static void preact(const T* wx, const T* rec, const T* b, T* pre) {
    for (int g = 0; g < 4; ++g) pre[g] = wx[g] + rec[g] + b[g];
  }
  FP_HD static void forward(const T* pre, const T* prev, T* next) {
    T act[4];
    forward_gates(pre, prev, next, act);
  }
  FP_HD static void backward(const T* pre, const T* prev, const T* dnext, T* dprev, T* dpre) {
    T act[4], next[2];
    forward_gates(pre, prev, next, act);
    backward_gates(act, prev, next, dnext, dprev, dpre);
  }
  // The CPU kernels cache the activated gates act = (s(i), s(f), tanh(g), s(o)) instead of pre
  // (forward_gates): their backward (backward_gates) then needs only tanh(c_t), with c_t = next[1]
  // read from the saved states, instead of five exp / division chains. Same values as
  // forward / backward (the same operations on the same operands).
  static constexpr bool kCachesGates = true;
  FP_HD static void forward_gates(const T* pre, const T* prev, T* next, T* act) {
    act[0] = sigmoid(pre[0]);
    act[1] = sigmoid(pre[1]);
    act[2] = ftanh(pre[2]);
    act[3] = sigmoid(pre[3]);
    const T c = act[1] * prev[1] + act[0] * act[2];
    next[0] = act[3] * ftanh(c);
    next[1] = c;
  }
  FP_HD static void backward_gates(const T* act, const T* prev, const T* next, const T* dnext,
                                   T* dprev, T* dpre) {
    const T i = act[0], f = act[1], g = act[2], o = act[3];
    const T tc = ftanh(next[1]);
    const T dc = dnext[1] + dnext[0] * o * (T(1) - tc * tc);
    dpre[0] = dc * g * i * (T(1) - i);
    dpre[1] = dc * prev[1] * f * (T(1) - f);
    dpre[2] = dc * i * (T(1) - g * g);
    dpre[3] = dnext[0] * tc * o * (T(1) - o);
    dprev[0] = T(0);
    dprev[1] = dc * f;
  }
};

template <typename T>
struct Gru {
  static constexpr int G = 3, GB = 4, S = 1;
  static constexpr bool kCachesGates = false;  // caches pre
  FP_HD static constexpr int wx_row(int g) { return g == 2 ? 3 : g; }
  FP_HD static constexpr int b_row(int gb) { return gb < 2 ? gb : 5 - gb; }
  FP_HD static void preact(const T* wx, const T* rec, const T* b, T* pre) {
    pre[0] = wx[0] + rec[0] + b[0];
    pre[1] = wx[1] + rec[1] + b[1];
    pre[2] = rec[2] + b[3];
    pre[3] = wx[2] + b[2];
  }
  FP_HD static void forward(const T* pre, const T* prev, T* next) {
    const T r = sigmoid(pre[0]), z = sigmoid(pre[1]);
    const T n = ftanh(pre[3] + r * pre[2]);
    next[0] = (T(1) - z) * n + z * prev[0];
  }
  FP_HD static void backward(const T* pre, const T* prev, const T* dnext, T* dprev, T* dpre) {
    const T r = sigmoid(pre[0]), z = sigmoid(pre[1]);
    const T n = ftanh(pre[3] + r * pre[2]);
    const T dh = dnext[0];
    const T dn = dh * (T(1) - z) * (T(1) - n * n);
    const T dz = dh * (prev[0] - n);
    dpre[0] = dn * pre[2] * r * (T(1) - r);
    dpre[1] = dz * z * (T(1) - z);
    dpre[2] = dn * r;
    dpre[3] = dn;
    dprev[0] = dh * z;
  }
};

template <typename T>
struct Elman {
  static constexpr int G = 1, GB = 1, S = 1;
  static constexpr bool kCachesGates = false;  // caches pre
  FP_HD static constexpr int wx_row(int g) { return g; }
  FP_HD static constexpr int b_row(int gb) { return gb; }
  FP_HD static void preact(const T* wx, const T* rec, const T* b, T* pre) {
    pre[0] = wx[0] + rec[0] + b[0];
  }
  FP_HD static void forward(const T* pre, const T*, T* next) { next[0] = ftanh(pre[0]); }
  FP_HD static void backward(const T* pre, const T*, const T* dnext, T* dprev, T* dpre) {
    const T h = ftanh(pre[0]);
    dpre[0] = dnext[0] * (T(1) - h * h);
    dprev[0] = T(0);
  }
};

template <typename T>
struct Slstm {
  static constexpr int G = 4, GB = 4, S = 4;
  static constexpr bool kCachesGates = false;  // caches pre
  FP_HD static constexpr int wx_row(int g) { return g; }
  FP_HD static constexpr int b_row(int gb) { return gb; }
  FP_HD static void preact(const T* wx, const T* rec, const T* b, T* pre) {
    for (int g = 0; g < 4; ++g) pre[g] = wx[g] + rec[g] + b[g];
  }
  // Intermediates shared by forward and backward (recomputed in backward, nothing cached).
  struct Fwd {
    T a, m, i, f, z, o, c, nn, n;
    bool first, take_i, take_nn;
  };
  FP_HD static Fwd run(const T* pre, const T* prev) {
    Fwd s;
    s.a = log_sigmoid(pre[1]) + prev[3];
    s.first = prev[2] == T(0);
    s.take_i = s.first || pre[0] >= s.a;
    s.m = s.take_i ? pre[0] : s.a;
    s.i = fexp(pre[0] - s.m);
    s.f = fexp(s.a - s.m);
    s.z = ftanh(pre[2]);
    s.o = sigmoid(pre[3]);
    s.c = s.f * prev[1] + s.i * s.z;
    s.nn = s.f * prev[2] + s.i;
    s.take_nn = s.nn >= T(1);
    s.n = s.take_nn ? s.nn : T(1);
    return s;
  }
  FP_HD static void forward(const T* pre, const T* prev, T* next) {
    const Fwd s = run(pre, prev);
    next[0] = s.o * s.c / s.n;
    next[1] = s.c;
    next[2] = s.n;
    next[3] = s.m;
  }
  FP_HD static void backward(const T* pre, const T* prev, const T* dnext, T* dprev, T* dpre) {
    const Fwd s = run(pre, prev);
    const T dh = dnext[0];
    const T dc = dnext[1] + dh * s.o / s.n;
    const T dn = dnext[2] - dh * s.o * s.c / (s.n * s.n);
    const T dnn = s.take_nn ? dn : T(0);
    const T df = dc * prev[1] + dnn * prev[2];
    const T di = dc * s.z + dnn;
    const T dm = dnext[3] - di * s.i - df * s.f;
    T dit = di * s.i;   // d i~
    T da = df * s.f;    // d a = d log s(f~) = d m_prev
    if (s.take_i) {
      dit += dm;
    } else {
      da += dm;
    }
    dpre[0] = dit;
    dpre[1] = da * (T(1) - sigmoid(pre[1]));  // d log s(x)/dx = s(-x) = 1 - s(x)
    dpre[2] = dc * s.i * (T(1) - s.z * s.z);
    dpre[3] = dh * s.c / s.n * s.o * (T(1) - s.o);
    dprev[0] = T(0);
    dprev[1] = dc * s.f;
    dprev[2] = dnn * s.f;
    dprev[3] = da;
  }
};

}  // namespace fastpaper::rnn::detail
