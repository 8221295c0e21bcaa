"""Multi-head LSTM / GRU / sLSTM / Elman modules on the fused kernels of :mod:`fastpaper.rnn`.

A unidirectional layer runs :func:`fastpaper.rnn.flashrnn_input` (on the CPU the input projection
``x_t W_ih^T`` is part of the per-step product, fused with the recurrence and the cell); a
bidirectional one computes its input projection for all time steps and both directions as one GEMM
(``x W_ih^T``), then runs :func:`fastpaper.rnn.flashrnn` per direction.
``num_heads`` splits the hidden units into heads with a block-diagonal recurrent matrix
(FlashRNN); ``num_heads=1`` is the dense cell of torch.nn.LSTM / nn.GRU / nn.RNN, whose state dicts
load directly (``load_state_dict``) and give the same outputs.

Parameters per layer ``l`` and direction (suffix ``""`` or ``"_reverse"``):
``weight_ih_l{l}`` [G*H, in] (rows gate-major as torch), ``weight_hh_l{l}`` [G, NH, DH, DH] (the
recurrent blocks R) and ``bias_l{l}`` [GB, NH, DH] (torch's b_ih + b_hh; the GRU keeps
[b_r, b_z, b_in, b_hn]).

States follow torch's convention: LSTM (h, c), sLSTM (h, c, n, m) as tuples, GRU / Elman a single
tensor, each [num_layers * num_directions, B, H].
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from .. import rnn as _rnn

__all__ = ["LSTM", "GRU", "SLSTM", "Elman"]


def _reverse_time(x: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """x [B, T, ...] with each sequence reversed within its length (the padding stays put)."""
    if lengths is None:
        return x.flip(1)
    B, T = x.shape[:2]
    t = torch.arange(T, device=x.device).expand(B, T)
    L = lengths.to(device=x.device, dtype=torch.int64).clamp(0, T).view(B, 1)
    idx = torch.where(t < L, L - 1 - t, t)
    idx = idx.view(B, T, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)


class _MultiHeadRNN(nn.Module):
    _cell = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_heads: int = 1, num_layers: int = 1,
                 batch_first: bool = True, bidirectional: bool = False, device=None, dtype=None):
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_heads", num_heads), ("num_layers", num_layers)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads "
                             f"({num_heads})")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_heads, self.num_layers = num_heads, num_layers
        self.head_dim = hidden_size // num_heads
        self.batch_first, self.bidirectional = batch_first, bidirectional
        self.G, self.GB, self.S = _rnn.cell_dims(self._cell)
        fk = {"device": device, "dtype": dtype}
        D = 2 if bidirectional else 1
        for layer in range(num_layers):
            in_l = input_size if layer == 0 else hidden_size * D
            for sfx in self._suffixes():
                self.register_parameter(f"weight_ih_l{layer}{sfx}", nn.Parameter(
                    torch.empty(self.G * hidden_size, in_l, **fk)))
                self.register_parameter(f"weight_hh_l{layer}{sfx}", nn.Parameter(
                    torch.empty(self.G, num_heads, self.head_dim, self.head_dim, **fk)))
                self.register_parameter(f"bias_l{layer}{sfx}", nn.Parameter(
                    torch.empty(self.GB, num_heads, self.head_dim, **fk)))
        self.reset_parameters()

    def _suffixes(self):
        return ("", "_reverse") if self.bidirectional else ("",)

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) as torch's RNNs (R: 1/sqrt(DH), the fan-in of a head)."""
        k = 1.0 / math.sqrt(self.hidden_size)
        kh = 1.0 / math.sqrt(self.head_dim)
        for name, p in self.named_parameters():
            nn.init.uniform_(p, -(kh if name.startswith("weight_hh") else k),
                             kh if name.startswith("weight_hh") else k)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_heads={self.num_heads}, "
                f"num_layers={self.num_layers}, batch_first={self.batch_first}, "
                f"bidirectional={self.bidirectional}")

    # ---- torch.nn state dicts ---------------------------------------------------------------------
    def _torch_bias(self, b_ih, b_hh):
        G, H = self.G, self.hidden_size
        zero = torch.zeros(G * H, dtype=(b_ih if b_ih is not None else b_hh).dtype)
        b_ih = zero if b_ih is None else b_ih.reshape(G * H)
        b_hh = zero if b_hh is None else b_hh.reshape(G * H)
        if self._cell == "gru":
            b = torch.cat([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:], b_hh[2 * H:]])
        else:
            b = b_ih + b_hh
        return b.reshape(self.GB, self.num_heads, self.head_dim)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # torch.nn.LSTM / GRU / RNN keys: weight_hh [G*H, H] (2-D) and separate bias_ih / bias_hh
        G, NH, DH = self.G, self.num_heads, self.head_dim
        for layer in range(self.num_layers):
            for sfx in self._suffixes():
                k_hh = f"{prefix}weight_hh_l{layer}{sfx}"
                W = state_dict.get(k_hh)
                if W is None or W.dim() != 2:
                    continue
                if tuple(W.shape) != (G * self.hidden_size, self.hidden_size):
                    continue  # the shape check of the base class reports it
                blocks = W.reshape(G, NH, DH, NH, DH)
                R = blocks.diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2).contiguous()
                if NH > 1:
                    off = blocks.clone()
                    for n in range(NH):
                        off[:, n, :, n, :] = 0
                    if off.abs().max() > 0:
                        error_msgs.append(f"{k_hh}: a dense recurrent matrix cannot be loaded "
                                          f"into {NH} heads (it is not block-diagonal)")
                        continue
                state_dict[k_hh] = R
                b_ih = state_dict.pop(f"{prefix}bias_ih_l{layer}{sfx}", None)
                b_hh = state_dict.pop(f"{prefix}bias_hh_l{layer}{sfx}", None)
                if b_ih is not None or b_hh is not None:
                    state_dict[f"{prefix}bias_l{layer}{sfx}"] = self._torch_bias(b_ih, b_hh)
                else:  # torch module built with bias=False
                    state_dict[f"{prefix}bias_l{layer}{sfx}"] = torch.zeros(
                        self.GB, NH, DH, dtype=W.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # ---- states ---------------------------------------------------------------------------------
    def _split_states(self, states, B, ref):
        """torch-format states -> list over (layer, direction) of [S, B, NH, DH] (None: zeros)."""
        if states is None:
            return [None] * (self.num_layers * len(self._suffixes()))
        if isinstance(states, torch.Tensor):
            states = (states,)
        states = tuple(states)
        if len(states) != self.S:
            raise ValueError(f"states: {type(self).__name__} has {self.S} state tensors, got "
                             f"{len(states)}")
        LD = self.num_layers * len(self._suffixes())
        for s in states:
            if not isinstance(s, torch.Tensor) or tuple(s.shape) != (LD, B, self.hidden_size):
                raise ValueError(f"states: each must be a tensor of shape "
                                 f"{(LD, B, self.hidden_size)}, got "
                                 f"{getattr(s, 'shape', type(s).__name__)}")
        st = torch.stack(states).to(ref.dtype).reshape(self.S, LD, B, self.num_heads, self.head_dim)
        return list(st.unbind(1))

    def _join_states(self, lasts, B):
        st = torch.stack(lasts, 1).reshape(self.S, len(lasts), B, self.hidden_size)
        return st[0] if self.S == 1 else tuple(st.unbind(0))

    def _check_input(self, x, ndim):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != ndim or x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected {ndim}-D with last dimension {self.input_size}, "
                             f"got shape {tuple(x.shape)}")

    # ---- forward / step -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, states=None, lengths: Optional[torch.Tensor] = None):
        """x [B, T, input_size] (batch_first) or [T, B, input_size] -> (output, states).

        output [B, T, D*H] (D = 2 if bidirectional: forward and reverse halves concatenated);
        states as torch's RNNs, [num_layers * D, B, H] each, after each sequence's last step.
        lengths [B] (optional): variable-length batch; outputs past a sequence's end are zero and
        the reverse direction reads each sequence backwards from its own end.
        """
        self._check_input(x, 3)
        if not self.batch_first:
            x = x.transpose(0, 1)
        B, T, _ = x.shape
        G, NH, DH, H = self.G, self.num_heads, self.head_dim, self.hidden_size
        init = self._split_states(states, B, x)
        sfxs = self._suffixes()
        lasts, inp = [], x
        for layer in range(self.num_layers):
            if len(sfxs) == 1:
                # one direction: the projection runs inside the recurrence's per-step product
                # on the CPU (flashrnn_input), one GEMM elsewhere
                h_all, last = _rnn.flashrnn_input(
                    inp, getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}"),
                    getattr(self, f"bias_l{layer}"), init[layer], self._cell, lengths)
                lasts.append(last)
                inp = h_all.reshape(B, T, H)
                continue
            W = torch.cat([getattr(self, f"weight_ih_l{layer}{s}") for s in sfxs])
            proj = F.linear(inp, W)  # all directions, all steps: one GEMM
            outs = []
            for d, s in enumerate(sfxs):
                wx = proj[..., d * G * H:(d + 1) * G * H].reshape(B, T, G, NH, DH)
                if d == 1:
                    wx = _reverse_time(wx, lengths)
                h_all, last = _rnn.flashrnn(wx, getattr(self, f"weight_hh_l{layer}{s}"),
                                            getattr(self, f"bias_l{layer}{s}"),
                                            init[layer * len(sfxs) + d], self._cell, lengths)
                h_all = h_all.reshape(B, T, H)
                outs.append(_reverse_time(h_all, lengths) if d == 1 else h_all)
                lasts.append(last)
            inp = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
        out = inp if self.batch_first else inp.transpose(0, 1)
        return out, self._join_states(lasts, B)

    def step(self, x_t: torch.Tensor, states=None):
        """One time step for token-by-token inference: x_t [B, input_size] -> (y_t [B, H], states).

        The same kernels as forward (a sequence of length 1), so stepping through a sequence
        reproduces forward's outputs. Unidirectional modules only.
        """
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional module (the reverse direction reads "
                             "the future)")
        self._check_input(x_t, 2)
        B = x_t.shape[0]
        init = self._split_states(states, B, x_t)
        lasts, inp = [], x_t
        for layer in range(self.num_layers):
            wx = F.linear(inp, getattr(self, f"weight_ih_l{layer}"))
            wx = wx.reshape(B, 1, self.G, self.num_heads, self.head_dim)
            h, last = _rnn.flashrnn(wx, getattr(self, f"weight_hh_l{layer}"),
                                    getattr(self, f"bias_l{layer}"), init[layer], self._cell)
            inp = h.reshape(B, self.hidden_size)
            lasts.append(last)
        return inp, self._join_states(lasts, B)


class LSTM(_MultiHeadRNN):
    """Multi-head LSTM (gates i, f, g, o); ``num_heads=1`` loads torch.nn.LSTM state dicts."""
    _cell = "lstm"


class GRU(_MultiHeadRNN):
    """Multi-head GRU (torch.nn.GRU convention); ``num_heads=1`` loads torch.nn.GRU state dicts."""
    _cell = "gru"


class SLSTM(_MultiHeadRNN):
    """Multi-head sLSTM (xLSTM: exponential gating with the stabilizer state m)."""
    _cell = "slstm"


class Elman(_MultiHeadRNN):
    """Multi-head Elman RNN, h_t = tanh(W x_t + R h_{t-1} + b); loads torch.nn.RNN (tanh) state
    dicts with ``num_heads=1``."""
    _cell = "elman"
