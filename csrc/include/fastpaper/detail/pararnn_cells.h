// Pointwise math of the ParaRNN cells (ParaGRU, ParaLSTM), shared by the CPU (csrc/pararnn/) and
// CUDA (cuda/pararnn/) fused kernels, so the CPU tests check the arithmetic the GPU runs.
//
// Every channel is independent (the recurrent weights are diagonal), so one call handles one
// channel at one time step. T is the compute type (float or double).
//
//   ParaGRU, state h, pre = (p_z, p_r, p_c) = Bx + b, params (a_z, a_r, a_c):
//     z = s(a_z h + p_z),  r = s(a_r h + p_r),  c = tanh(a_c (h r) + p_c),  h' = z c + (1 - z) h
//   ParaLSTM, state (c, h), pre = (q_f, q_c, q_o), params (a_f, a_c, a_o, p_f, p_o):
//     f = s(a_f h + q_f + p_f c),  g = tanh(a_c h + q_c),  c' = f c + (1 - f) g
//     o = s(a_o h + q_o + p_o c'), h' = o tanh(c')
//
// (s = logistic sigmoid.) For each cell:
//   step      f(state): the new state
//   step_jac  f(state) and J = df/dstate (GRU: one number; LSTM: a 2 x 2 block over the state
//             order (c, h), row-major: J[i * 2 + j] = d out_i / d in_j, the order of the Python
//             lstm_step's interleaved state)
//   vjp       given lam = dL/d(new state): dpre (3 values, written), dstate_prev = J^T lam
//             (written) and dparams (accumulated, +=).
#pragma once

#include "fastpaper/detail/host_device.h"
#include "fastpaper/detail/rnn_cells.h"  // fexp, ftanh, sigmoid: device intrinsics / host polynomials

namespace fastpaper::pararnn::detail {

using fastpaper::rnn::detail::ftanh;
using fastpaper::rnn::detail::sigmoid;

template <typename T>
struct GruCell {
  static constexpr int kState = 1;   // state entries per channel
  static constexpr int kParams = 3;  // diagonal parameters per channel

  FP_HD static void step(const T* pre, const T* a, const T* s, T* out) {
    const T h = s[0];
    const T z = sigmoid(a[0] * h + pre[0]);
    const T r = sigmoid(a[1] * h + pre[1]);
    const T c = ftanh(a[2] * (h * r) + pre[2]);
    out[0] = z * c + (T(1) - z) * h;
  }

  FP_HD static void step_jac(const T* pre, const T* a, const T* s, T* out, T* J) {
    const T h = s[0];
    const T z = sigmoid(a[0] * h + pre[0]);
    const T r = sigmoid(a[1] * h + pre[1]);
    const T c = ftanh(a[2] * (h * r) + pre[2]);
    out[0] = z * c + (T(1) - z) * h;
    const T dz = z * (T(1) - z) * a[0];
    const T dr = r * (T(1) - r) * a[1];
    const T dc = (T(1) - c * c) * a[2] * (r + h * dr);
    J[0] = (T(1) - z) + dz * (c - h) + z * dc;
  }

  FP_HD static void vjp(const T* pre, const T* a, const T* s, const T* lam, T* dpre, T* ds,
                        T* da) {
    const T h = s[0], l = lam[0];
    const T z = sigmoid(a[0] * h + pre[0]);
    const T r = sigmoid(a[1] * h + pre[1]);
    const T c = ftanh(a[2] * (h * r) + pre[2]);
    const T duz = l * (c - h) * z * (T(1) - z);
    const T duc = l * z * (T(1) - c * c);
    const T dur = duc * a[2] * h * r * (T(1) - r);
    dpre[0] = duz;
    dpre[1] = dur;
    dpre[2] = duc;
    ds[0] = l * (T(1) - z) + duz * a[0] + dur * a[1] + duc * a[2] * r;
    da[0] += duz * h;
    da[1] += dur * h;
    da[2] += duc * h * r;
  }
};

template <typename T>
struct LstmCell {
  static constexpr int kState = 2;   // (c, h)
  static constexpr int kParams = 5;  // a_f, a_c, a_o, p_f, p_o

  FP_HD static void step(const T* pre, const T* a, const T* s, T* out) {
    const T c = s[0], h = s[1];
    const T f = sigmoid(a[0] * h + pre[0] + a[3] * c);
    const T g = ftanh(a[1] * h + pre[1]);
    const T cn = f * c + (T(1) - f) * g;
    const T o = sigmoid(a[2] * h + pre[2] + a[4] * cn);
    out[0] = cn;
    out[1] = o * ftanh(cn);
  }

  FP_HD static void step_jac(const T* pre, const T* a, const T* s, T* out, T* J) {
    const T c = s[0], h = s[1];
    const T f = sigmoid(a[0] * h + pre[0] + a[3] * c);
    const T g = ftanh(a[1] * h + pre[1]);
    const T cn = f * c + (T(1) - f) * g;
    const T o = sigmoid(a[2] * h + pre[2] + a[4] * cn);
    const T th = ftanh(cn);
    out[0] = cn;
    out[1] = o * th;
    const T sf = f * (T(1) - f), so = o * (T(1) - o);
    const T dcn_dc = f + sf * a[3] * (c - g);
    const T dcn_dh = sf * a[0] * (c - g) + (T(1) - f) * (T(1) - g * g) * a[1];
    const T dth = o * (T(1) - th * th);
    J[0] = dcn_dc;
    J[1] = dcn_dh;
    J[2] = so * a[4] * dcn_dc * th + dth * dcn_dc;
    J[3] = so * (a[2] + a[4] * dcn_dh) * th + dth * dcn_dh;
  }

  FP_HD static void vjp(const T* pre, const T* a, const T* s, const T* lam, T* dpre, T* ds,
                        T* da) {
    const T c = s[0], h = s[1];
    const T f = sigmoid(a[0] * h + pre[0] + a[3] * c);
    const T g = ftanh(a[1] * h + pre[1]);
    const T cn = f * c + (T(1) - f) * g;
    const T o = sigmoid(a[2] * h + pre[2] + a[4] * cn);
    const T th = ftanh(cn);
    const T duo = lam[1] * th * o * (T(1) - o);
    const T gcn = lam[0] + lam[1] * o * (T(1) - th * th) + duo * a[4];
    const T dug = gcn * (T(1) - f) * (T(1) - g * g);
    const T duf = gcn * (c - g) * f * (T(1) - f);
    dpre[0] = duf;
    dpre[1] = dug;
    dpre[2] = duo;
    ds[0] = gcn * f + duf * a[3];
    ds[1] = duo * a[2] + dug * a[1] + duf * a[0];
    da[0] += duf * h;
    da[1] += dug * h;
    da[2] += duo * h;
    da[3] += duf * c;
    da[4] += duo * cn;
  }
};

}  // namespace fastpaper::pararnn::detail
