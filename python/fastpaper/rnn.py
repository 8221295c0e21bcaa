"""FlashRNN-style multi-head recurrent cells (LSTM, GRU, Elman, sLSTM), forward and backward
fused in C++ (CPU, OpenMP + OpenBLAS) and CUDA kernels.

The recurrence, per time step t and head n (the recurrent matrix is block-diagonal over NH heads
of DH units; heads never mix)::

    g_t = Wx_t + R_n h_{t-1} + b          (Wx = x_t W^T is computed outside, as one big GEMM,
                                           or, flashrnn_input, inside the per-step product)

followed by a pointwise cell (s = logistic sigmoid):

* ``"lstm"`` (gates i, f, g, o as torch.nn.LSTM; states h, c)::

      c_t = s(f) c_{t-1} + s(i) tanh(g),    h_t = s(o) tanh(c_t)

* ``"gru"`` (torch.nn.GRU; gates r, z, n; biases b = [b_r, b_z, b_in, b_hn]; state h)::

      r = s(.), z = s(.), n = tanh(Wx_n + b_in + r (R_n h_{t-1} + b_hn)),  h_t = (1 - z) n + z h_{t-1}

* ``"elman"``: ``h_t = tanh(g_t)``.
* ``"slstm"`` (xLSTM; gates i~, f~, z~, o~; states h, c, n, m)::

      m_t = i~ if n_{t-1} == 0 else max(i~, log s(f~) + m_{t-1})
      i = exp(i~ - m_t),  f = exp(log s(f~) + m_{t-1} - m_t)
      c_t = f c_{t-1} + i tanh(z~),  n_t = max(f n_{t-1} + i, 1),  h_t = s(o~) c_t / n_t

Storage dtypes float32, float16, bfloat16 (all arithmetic and the carried states in float32,
outputs rounded once) and float64 (float64 throughout; for gradcheck). Gradients are exact
(the sLSTM stabilizer m included) and deterministic (fixed summation order, no atomics).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import _rnn_torch as _ops

__all__ = ["flashrnn", "flashrnn_input", "CELLS", "cell_dims"]

CELLS = tuple(_ops.CELLS)
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def cell_dims(cell: str) -> Tuple[int, int, int]:
    """(G, GB, S) of a cell: gate rows of Wx and R, bias rows, state kinds.

    lstm (4, 4, 2), gru (3, 4, 1), elman (1, 1, 1), slstm (4, 4, 4).
    """
    if cell not in _ops.CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    return _ops.DIMS[_ops.CELLS[cell]]


def _check(t, name: str, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on the CPU or a CUDA device, got {t.device}")
    if t.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def flashrnn(Wx: torch.Tensor, R: torch.Tensor, b: torch.Tensor,
             states: Optional[torch.Tensor] = None, cell: str = "lstm",
             lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run a multi-head recurrent cell over a batch of sequences.

    Parameters
    ----------
    Wx : Tensor [B, T, G, NH, DH]
        Input projections ``x_t W^T`` per gate (gate order of the cell, see the module docstring).
    R : Tensor [G, NH, DH, DH]
        Recurrent blocks: ``R[g, n, j, k]`` multiplies ``h[n, k]`` into gate g of unit j of head n
        (torch.nn.LSTM's ``weight_hh`` [4H, H] is ``R.reshape(4 * H, H)`` with NH = 1).
    b : Tensor [GB, NH, DH]
        Biases (GRU: GB = 4 rows b_r, b_z, b_in, b_hn; otherwise GB = G).
    states : Tensor [S, B, NH, DH], optional
        Initial states (h, c for the LSTM; h, c, n, m for the sLSTM); zeros when None.
    cell : {"lstm", "gru", "elman", "slstm"}
    lengths : integer Tensor [B], optional
        Sequence lengths (values are clamped to [0, T]). After its end a sequence's states stay
        frozen and its rows of ``h_all`` are zero.

    Returns
    -------
    h_all : Tensor [B, T, NH, DH]
        Hidden states after every step.
    last : Tensor [S, B, NH, DH]
        All states after each sequence's last step.

    Differentiable in Wx, R, b and states. All tensors share one dtype (float32, float64, float16,
    bfloat16) and one device; computation is float32 (float64 for float64 inputs).
    """
    G, GB, S = cell_dims(cell)
    _check(Wx, "Wx", 5)
    _check(R, "R", 4)
    _check(b, "b", 3)
    B, T, G_, NH, DH = Wx.shape
    if G_ != G:
        raise ValueError(f"Wx: cell {cell!r} has {G} gates, got Wx of shape {tuple(Wx.shape)} "
                         "(expected [B, T, G, NH, DH])")
    if tuple(R.shape) != (G, NH, DH, DH):
        raise ValueError(f"R: expected shape {(G, NH, DH, DH)} for Wx {tuple(Wx.shape)}, got "
                         f"{tuple(R.shape)}")
    lengths, save = _check_rest(Wx, "Wx", R, b, states, cell, lengths, B, NH, DH)
    h_all, last, _, _ = torch.ops.fastpaper.rnn_forward(Wx, R, b, states, lengths,
                                                        _ops.CELLS[cell], save)
    return h_all, last


def flashrnn_input(x: torch.Tensor, W: torch.Tensor, R: torch.Tensor, b: torch.Tensor,
                   states: Optional[torch.Tensor] = None, cell: str = "lstm",
                   lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`flashrnn` with the input projection included: ``Wx = x W^T`` (per step, gate rows
    as torch.nn.LSTM's ``weight_ih``).

    On the CPU (float32 / float64; not the GRU, whose n gate keeps ``x W_n`` and ``R h`` apart)
    the projection is fused into the per-step product, ``[x_t | h_{t-1}] [W; R]^T``: Wx is never
    materialized (no [B, T, G*H] round trip through memory). Elsewhere it is one GEMM followed
    by :func:`flashrnn`. The results equal ``flashrnn((x @ W.T).view(B, T, G, NH, DH), ...)`` up
    to float rounding (the sums are ordered differently).

    Parameters
    ----------
    x : Tensor [B, T, I]
    W : Tensor [G * NH * DH, I]
        Input weights, rows ordered (gate, head, unit) as ``Wx``'s last three dimensions.
    R, b, states, cell, lengths :
        As :func:`flashrnn` (R [G, NH, DH, DH] gives NH and DH).

    Returns ``(h_all [B, T, NH, DH], last [S, B, NH, DH])``, differentiable in x, W, R, b and
    states.
    """
    G, GB, S = cell_dims(cell)
    _check(x, "x", 3)
    _check(W, "W", 2)
    _check(R, "R", 4)
    _check(b, "b", 3)
    B, T, I = x.shape
    G_, NH, DH, DH_ = R.shape
    if G_ != G or DH_ != DH:
        raise ValueError(f"R: cell {cell!r} expects shape [{G}, NH, DH, DH], got {tuple(R.shape)}")
    if tuple(W.shape) != (G * NH * DH, I):
        raise ValueError(f"W: expected shape {(G * NH * DH, I)} for x {tuple(x.shape)} and R "
                         f"{tuple(R.shape)}, got {tuple(W.shape)}")
    if W.dtype != x.dtype or W.device != x.device:
        raise TypeError(f"W must have the dtype and device of x ({x.dtype}, {x.device}), got "
                        f"{W.dtype}, {W.device}")
    if cell == "gru" or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        Wx = torch.nn.functional.linear(x, W).view(B, T, G, NH, DH)
        return flashrnn(Wx, R, b, states, cell, lengths)
    lengths, save = _check_rest(x, "x", R, b, states, cell, lengths, B, NH, DH)
    save = save or (torch.is_grad_enabled() and W.requires_grad)
    h_all, last, _, _ = torch.ops.fastpaper.rnn_forward_input(x, W, R, b, states, lengths,
                                                              _ops.CELLS[cell], save)
    return h_all, last


def _check_rest(ref, ref_name, R, b, states, cell, lengths, B, NH, DH):
    """Checks b, states and lengths against ref (the data tensor); returns (lengths as int64 on
    ref's device or None, whether the forward must save for a backward)."""
    G, GB, S = cell_dims(cell)
    if tuple(b.shape) != (GB, NH, DH):
        raise ValueError(f"b: expected shape {(GB, NH, DH)}, got {tuple(b.shape)}")
    tensors = [("R", R), ("b", b)]
    if states is not None:
        _check(states, "states", 4)
        if tuple(states.shape) != (S, B, NH, DH):
            raise ValueError(f"states: expected shape {(S, B, NH, DH)}, got {tuple(states.shape)}")
        tensors.append(("states", states))
    for name, t in tensors:
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} must have the same dtype as {ref_name} ({ref.dtype}), got "
                            f"{t.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), "
                             f"got {t.device}")
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor):
            lengths = torch.as_tensor(lengths)
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
        if tuple(lengths.shape) != (B,):
            raise ValueError(f"lengths: expected shape ({B},), got {tuple(lengths.shape)}")
        lengths = lengths.to(device=ref.device, dtype=torch.int64)
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (ref, R, b, states))
    return lengths, save
