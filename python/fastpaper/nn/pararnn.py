"""ParaGRU and ParaLSTM: the ParaRNN paper's cells, trained and run in parallel over time.

Both cells have diagonal recurrent weights, so their Jacobians df/dh are diagonal (ParaGRU) or
2 x 2 blocks per channel (ParaLSTM, state (c, h)). ``mode`` picks how the recurrence is solved:

* ``"parallel"`` (default): the fused Newton kernels (``torch.ops.fastpaper.pararnn_cell_newton``,
  C++/OpenMP and CUDA): residual, Jacobian and scan in one kernel, early exit per unit
  (batch element x 32 channels x time segment); backward by the fused adjoint kernel.
* ``"parallel-generic"``: :func:`fastpaper.pararnn.newton_solve` with torch.func Jacobians and the
  :func:`fastpaper.pararnn.linear_scan` op (the path a custom Python cell takes).
* ``"sequential"``: the C++/CUDA sequential kernel (one step after another per channel; the
  fastest path on a CPU, and on a GPU when batch x channels fills it), same fused backward.
* ``"loop"``: the step in a Python loop over t with autograd through it (reference and the
  ParaRNN paper's baseline).

The input projection ``Bx + b`` (dense, or block-diagonal with ``num_heads`` heads) is one
batched matmul before the recurrence, in the parameters' dtype. float16/bfloat16 inputs: the
fused modes store the pre-activations, states and their gradients in the input dtype and compute
in float32; the other modes compute in the parameters' dtype. Outputs have the input dtype.
Accuracy (tests/test_pararnn_cells.py): float64 fused results equal the loop to 1e-10 (T up to
4097); float32 ones are within 1e-4 of the float64 loop; 16-bit storage within one rounding
of the stored type.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import torch
from torch import nn

from .. import pararnn
from .. import _pararnn_torch  # noqa: F401  (registers the fused ops)

__all__ = ["ParaGRU", "ParaLSTM", "gru_step", "lstm_step"]

_MODES = ("parallel", "parallel-generic", "sequential", "loop")


def gru_step(h: torch.Tensor, pre: torch.Tensor, params) -> torch.Tensor:
    """One ParaGRU step on a batch: ``h`` ``[M, N]``, ``pre = Bx + b`` ``[M, 3N]`` -> ``[M, N]``::

        z = sigmoid(a_z * h + pre_z),  r = sigmoid(a_r * h + pre_r)
        c = tanh(a_c * (h * r) + pre_c),  h' = z * c + (1 - z) * h
    """
    a_z, a_r, a_c = params
    p_z, p_r, p_c = pre.chunk(3, dim=-1)
    z = torch.sigmoid(a_z * h + p_z)
    r = torch.sigmoid(a_r * h + p_r)
    c = torch.tanh(a_c * (h * r) + p_c)
    return z * c + (1 - z) * h


def lstm_step(s: torch.Tensor, pre: torch.Tensor, params) -> torch.Tensor:
    """One ParaLSTM step (coupled input-forget gate, peepholes) on a batch.

    The state ``s`` ``[M, 2N]`` interleaves ``(c_n, h_n)`` per channel n, so that the Jacobian is
    block-diagonal with one 2 x 2 block per channel; ``pre = Bx + b`` ``[M, 3N]``::

        f  = sigmoid(a_f * h + pre_f + p_f * c)
        c' = f * c + (1 - f) * tanh(a_c * h + pre_c)
        o  = sigmoid(a_o * h + pre_o + p_o * c'),   h' = o * tanh(c')
    """
    a_f, a_c, a_o, p_f, p_o = params
    cs = s.reshape(*s.shape[:-1], -1, 2)
    c, h = cs[..., 0], cs[..., 1]
    q_f, q_c, q_o = pre.chunk(3, dim=-1)
    f = torch.sigmoid(a_f * h + q_f + p_f * c)
    c_new = f * c + (1 - f) * torch.tanh(a_c * h + q_c)
    o = torch.sigmoid(a_o * h + q_o + p_o * c_new)
    h_new = o * torch.tanh(c_new)
    return torch.stack([c_new, h_new], dim=-1).reshape(s.shape)


class _ParaCell(nn.Module):
    """Shared parts: the (multi-head) input projection, mode handling, Newton settings."""

    n_diag: int = 0

    def __init__(self, input_size: int, hidden_size: int, num_heads: int = 1,
                 mode: str = "parallel", max_iters: int = 50, atol: Optional[float] = None,
                 rtol: Optional[float] = None, device=None, dtype=None):
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_heads", num_heads)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if input_size % num_heads or hidden_size % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide input_size ({input_size}) and "
                             f"hidden_size ({hidden_size})")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.input_size, self.hidden_size, self.num_heads = input_size, hidden_size, num_heads
        self.mode, self.max_iters, self.atol, self.rtol = mode, max_iters, atol, rtol
        self.last_info: Optional[pararnn.NewtonInfo] = None
        kw = {"device": device, "dtype": dtype or torch.float32}
        hd, nd = input_size // num_heads, hidden_size // num_heads
        # weight[head, gate, n, d]: gate pre-activations of head `head` from its slice of x
        self.weight = nn.Parameter(torch.empty(num_heads, 3, nd, hd, **kw))
        self.bias = nn.Parameter(torch.empty(3, hidden_size, **kw))
        self.diag = nn.Parameter(torch.empty(self.n_diag, hidden_size, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As in the ParaRNN reference: Xavier-uniform input weights, recurrent diagonals
        ~ N(0, 2 / sqrt(5 * hidden_size)) (std), first gate's bias -linspace(0, 1), others 0."""
        with torch.no_grad():
            hd, nd = self.weight.shape[-1], self.weight.shape[-2]
            bound = math.sqrt(6.0 / (hd + 3 * nd))
            self.weight.uniform_(-bound, bound)
            self.diag.normal_(0.0, 2.0 / math.sqrt(5.0 * self.hidden_size))
            self.bias.zero_()
            self.bias[0] = -torch.linspace(0.0, 1.0, self.hidden_size)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_heads={self.num_heads}, "
                f"mode={self.mode!r}, max_iters={self.max_iters}")

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``Bx + b`` for all steps: ``[B, T, input_size]`` -> ``[B, T, 3 * hidden_size]``."""
        b, t, _ = x.shape
        xh = x.reshape(b, t, self.num_heads, self.input_size // self.num_heads)
        pre = torch.einsum("bthd,hgnd->btghn", xh, self.weight).reshape(b, t, 3, self.hidden_size)
        return (pre + self.bias).reshape(b, t, 3 * self.hidden_size)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape [B, T, {self.input_size}], got {tuple(x.shape)}")

    def _solve(self, step, pre, s0, params, structure, block, io_dtype):
        """States ``[B, T, K*N]`` from ``pre`` ``[B, T, 3N]`` and ``s0`` ``[B, K*N]`` (both in the
        parameters' dtype) by the module's mode; fused modes store in ``io_dtype`` (16-bit) or the
        parameters' dtype."""
        if self.mode == "loop":
            out, s = [], s0
            for t in range(pre.shape[1]):
                s = step(s, pre[:, t], params)
                out.append(s)
            self.last_info = None
            return torch.stack(out, dim=1) if out else pre.new_zeros(pre.shape[0], 0, s0.shape[1])
        if self.mode == "parallel-generic":
            h, info = pararnn.newton_solve(step, pre, s0, params, structure=structure,
                                           block_size=block, max_iters=self.max_iters,
                                           atol=self.atol, rtol=self.rtol)
            self.last_info = info
            return h
        # fused kernels: float64 throughout, or float32 math with float32/16-bit storage
        if pre.dtype == torch.float64:
            store, diag = torch.float64, self.diag
        else:
            store = io_dtype if io_dtype in (torch.float16, torch.bfloat16) else torch.float32
            diag = self.diag.float()
        pre, s0 = pre.to(store), s0.to(store)
        if self.mode == "sequential":
            self.last_info = None
            return torch.ops.fastpaper.pararnn_cell_sequential(self._cell_id, pre, diag, s0)
        default = 1e-10 if store == torch.float64 else 1e-5
        atol = default if self.atol is None else float(self.atol)
        rtol = default if self.rtol is None else float(self.rtol)
        if not (isinstance(self.max_iters, int) and self.max_iters >= 1):
            raise ValueError(f"max_iters must be an int >= 1, got {self.max_iters!r}")
        if not (atol >= 0 and rtol >= 0):
            raise ValueError(f"atol and rtol must be >= 0, got {atol} and {rtol}")
        h, info = torch.ops.fastpaper.pararnn_cell_newton(self._cell_id, pre, diag, s0,
                                                          self.max_iters, atol, rtol)
        its, failed = (int(v) for v in info.tolist())  # one host sync per forward
        self.last_info = pararnn.NewtonInfo(iterations=its, converged=failed == 0)
        if failed:
            warnings.warn(f"{type(self).__name__}: the fused Newton solve did not converge in "
                          f"{its} iterations ({failed} of the (batch, 32-channel tile, time "
                          f"segment) units)", RuntimeWarning,
                          stacklevel=3)
        return h


class ParaGRU(_ParaCell):
    """ParaGRU (diagonal-recurrence GRU) over a whole sequence.

    ``forward(x [B, T, input_size], h0 [B, hidden_size] = zeros)`` returns
    ``(output [B, T, hidden_size], h_T [B, hidden_size])`` with, per step (see :func:`gru_step`)::

        z = sigmoid(a_z h + (Bx)_z + b_z),  r = sigmoid(a_r h + (Bx)_r + b_r)
        c = tanh(a_c (h r) + (Bx)_c + b_c), h' = z c + (1 - z) h

    Parameters: ``weight`` ``[heads, 3, N/heads, D/heads]`` (gates z, r, c), ``bias`` ``[3, N]``,
    ``diag`` ``[3, N]`` = (a_z, a_r, a_c). The Newton info of the last parallel forward is
    ``last_info`` (``iterations``: the most any unit needed; ``converged``: all units did; the
    fused mode fills neither ``converged_batch`` nor ``max_delta``). Modes: see the module doc.
    """

    n_diag = 3
    _cell_id = 0

    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        self._check_input(x)
        dt = self.weight.dtype
        pre = self.project(x.to(dt))
        b = x.shape[0]
        h0 = pre.new_zeros(b, self.hidden_size) if h0 is None else h0.to(dt)
        if tuple(h0.shape) != (b, self.hidden_size):
            raise ValueError(f"h0 must have shape {(b, self.hidden_size)}, got {tuple(h0.shape)}")
        h = self._solve(gru_step, pre, h0, tuple(self.diag.unbind(0)), "diag", 1, x.dtype)
        last = h[:, -1] if h.shape[1] else h0
        return h.to(x.dtype), last.to(x.dtype)


class ParaLSTM(_ParaCell):
    """ParaLSTM (coupled input-forget gate with peepholes, diagonal recurrence) over a sequence.

    ``forward(x [B, T, input_size], state=(c0, h0) [B, hidden_size] each, zeros by default)``
    returns ``(output h [B, T, hidden_size], (c_T, h_T))`` with, per step (see :func:`lstm_step`)::

        f  = sigmoid(a_f h + (Bx)_f + p_f c + b_f)
        c' = f c + (1 - f) tanh(a_c h + (Bx)_c + b_c)
        o  = sigmoid(a_o h + (Bx)_o + p_o c' + b_o),   h' = o tanh(c')

    Parameters: ``weight`` ``[heads, 3, N/heads, D/heads]`` (gates f, c, o), ``bias`` ``[3, N]``,
    ``diag`` ``[5, N]`` = (a_f, a_c, a_o, p_f, p_o). The Jacobian of (c', h') w.r.t. (c, h) is one
    2 x 2 block per channel, so Newton uses ``structure="block"`` with ``block_size=2``.
    """

    n_diag = 5
    _cell_id = 1

    def forward(self, x: torch.Tensor, state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        self._check_input(x)
        dt = self.weight.dtype
        pre = self.project(x.to(dt))
        b, n = x.shape[0], self.hidden_size
        if state is None:
            s0 = pre.new_zeros(b, 2 * n)
        else:
            if not (isinstance(state, (tuple, list)) and len(state) == 2):
                raise TypeError("state must be a tuple (c0, h0)")
            c0, h0 = state
            for name, v in (("c0", c0), ("h0", h0)):
                if not isinstance(v, torch.Tensor) or tuple(v.shape) != (b, n):
                    raise ValueError(f"state {name} must be a tensor of shape {(b, n)}")
            s0 = torch.stack([c0.to(dt), h0.to(dt)], dim=-1).reshape(b, 2 * n)
        s = self._solve(lstm_step, pre, s0, tuple(self.diag.unbind(0)), "block", 2, x.dtype)
        cs = s.reshape(b, s.shape[1], n, 2)
        last = cs[:, -1] if s.shape[1] else s0.reshape(b, n, 2)
        return cs[..., 1].to(x.dtype), (last[..., 0].to(x.dtype), last[..., 1].to(x.dtype))
