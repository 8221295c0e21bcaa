"""torch.library op of the ParaRNN linear scan: ``torch.ops.fastpaper.pararnn_linear_scan``.

Registered with ``Library.define``/``impl`` like the other areas, with a fake kernel for
torch.compile and autograd whose backward is again this op (the adjoint of a linear recurrence is
the reversed recurrence with transposed Jacobians), so double backward works as well.
The kernel runs on torch's current CUDA stream; the output is allocated by torch.
"""

from __future__ import annotations

import torch

from . import _native
from ._torch import LIB, device_guard, stream_of

_C = _native.load("pararnn")

MAX_BLOCK_CPU = int(_C.MAX_BLOCK_CPU)
MAX_BLOCK_CUDA = int(_C.MAX_BLOCK_CUDA)

# block = 1: J is [B, T, N] (diagonal); block = k >= 2: J is [B, T, N/k, k, k].
# adjoint: the transposed recurrence of the same J (fastpaper/pararnn.h), what backward needs.
LIB.define("pararnn_linear_scan(Tensor J, Tensor r, Tensor? h0, int block, bool reverse, "
           "bool adjoint) -> Tensor")


def _scan_kernel(J, r, h0, block, reverse, adjoint):
    J, r = J.detach().contiguous(), r.detach().contiguous()
    h0 = None if h0 is None else h0.detach().contiguous()
    h = torch.empty_like(r, memory_format=torch.contiguous_format)
    if h.numel():
        batch, time, channels = r.shape
        with device_guard(r):
            _C.linear_scan(J, r, h0, h, batch, time, channels, block, reverse, adjoint,
                           stream_of(r))
    return h


for _device in ("CPU", "CUDA"):
    LIB.impl("pararnn_linear_scan", _scan_kernel, _device)


@torch.library.register_fake("fastpaper::pararnn_linear_scan", lib=LIB)
def _scan_fake(J, r, h0, block, reverse, adjoint):
    return torch.empty_like(r, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    J, r, h0, block, reverse, adjoint = inputs
    ctx.block, ctx.reverse, ctx.adjoint, ctx.has_h0 = block, reverse, adjoint, h0 is not None
    ctx.save_for_backward(J, h0 if h0 is not None else None, output)


def _apply_t(J1: torch.Tensor, v: torch.Tensor, block: int) -> torch.Tensor:
    """J1^T v for one time step: J1 [B, N] or [B, G, k, k], v [B, N] -> [B, N]."""
    if block == 1:
        return J1 * v
    b, g = J1.shape[0], J1.shape[1]
    return torch.einsum("bgji,bgj->bgi", J1, v.reshape(b, g, block)).reshape(v.shape)


def _outer(u: torch.Tensor, v: torch.Tensor, block: int) -> torch.Tensor:
    """Per-group outer products u v^T: [B, T, N] x [B, T, N] -> J's shape (diag: u * v)."""
    if block == 1:
        return u * v
    b, t, n = u.shape
    g = n // block
    return u.reshape(b, t, g, block, 1) * v.reshape(b, t, g, 1, block)


def _toward(x: torch.Tensor, start: torch.Tensor, forward: bool) -> torch.Tensor:
    """x shifted one step along the direction of a recurrence, `start` entering at its start:
    forward: [start, x_1, ..., x_{T-1}]; backward: [x_2, ..., x_T, start]."""
    if forward:
        return torch.cat([start, x[:, :-1]], dim=1)
    return torch.cat([x[:, 1:], start], dim=1)


def _backward(ctx, grad):
    J, h0, h = ctx.saved_tensors
    block, reverse, adjoint = ctx.block, ctx.reverse, ctx.adjoint
    batch, time, channels = h.shape
    if time == 0:
        dh0 = torch.zeros_like(h0) if ctx.has_h0 else None
        return torch.zeros_like(J), torch.zeros_like(grad), dh0, None, None, None
    # the adjoint of a scan is the adjoint-mode scan of the same J (and vice versa): one kernel
    # call, no shifted or transposed copy of J
    lam = torch.ops.fastpaper.pararnn_linear_scan(J, grad, None, block, reverse, not adjoint)
    zero = h.new_zeros(batch, 1, channels)
    dJ = dh0 = None
    if not adjoint:
        if ctx.needs_input_grad[0]:
            # dJ_t = lambda_t h_prev^T, h_prev the state entering step t (h0 at the boundary)
            start = zero if h0 is None else h0.unsqueeze(1)
            dJ = _outer(lam, _toward(h, start, forward=not reverse), block)
        if ctx.has_h0 and ctx.needs_input_grad[2]:
            J_edge, lam_edge = (J[:, -1], lam[:, -1]) if reverse else (J[:, 0], lam[:, 0])
            dh0 = _apply_t(J_edge, lam_edge, block)
    elif ctx.needs_input_grad[0]:
        # h_t = J_{t+-1}^T h_{t+-1} + r_t: dJ_s = h_s mu_{s-+1}^T, zero where J is not used
        dJ = _outer(h, _toward(lam, zero, forward=not reverse), block)
    return dJ, lam, dh0, None, None, None


torch.library.register_autograd("fastpaper::pararnn_linear_scan", _backward,
                                setup_context=_setup, lib=LIB)


# ------------------------------------------------------------------ fused ParaGRU / ParaLSTM
#
# cell: 0 = ParaGRU (state K = 1 per channel, 3 params), 1 = ParaLSTM (K = 2: (c, h) interleaved,
# 5 params). pre [B, T, 3N] (gates-major per step, the cells' project() layout), params [P, N]
# (float64 for float64 pre, float32 otherwise), h0 [B, K*N] or None, states [B, T, K*N] in pre's
# dtype. The Newton op also returns info = int32 [2] (max iterations, non-converged units).
# Both forwards share one backward op (the adjoint at the solution does not depend on how the
# solution was found); it is not itself differentiable (no double backward).

NEWTON_TILE = int(_C.NEWTON_TILE)
CELL_STATE = (1, 2)
CELL_PARAMS = (3, 5)

LIB.define("pararnn_cell_sequential(int cell, Tensor pre, Tensor params, Tensor? h0) -> Tensor")
LIB.define("pararnn_cell_newton(int cell, Tensor pre, Tensor params, Tensor? h0, int max_iters, "
           "float atol, float rtol) -> (Tensor, Tensor)")
LIB.define("pararnn_cell_backward(int cell, Tensor pre, Tensor params, Tensor? h0, Tensor states, "
           "Tensor grad) -> (Tensor, Tensor, Tensor)")


def _cell_dims(cell, pre):
    """(B, T, N, K) of a cell op's pre [B, T, 3N]; ValueError naming the bad argument."""
    if cell not in (0, 1):
        raise ValueError(f"cell must be 0 (ParaGRU) or 1 (ParaLSTM), got {cell!r}")
    if pre.dim() != 3 or pre.shape[2] % 3:
        raise ValueError(f"pre must have shape [B, T, 3N], got {tuple(pre.shape)}")
    b, t, n3 = pre.shape
    return b, t, n3 // 3, CELL_STATE[cell]


def _c(x):
    return None if x is None else x.detach().contiguous()


def _states_like(cell, pre):
    b, t, n, k = _cell_dims(cell, pre)
    return pre.new_empty(b, t, k * n)


def _sequential_kernel(cell, pre, params, h0):
    pre, params, h0 = _c(pre), _c(params), _c(h0)
    states = _states_like(cell, pre)
    b, t, n, _ = _cell_dims(cell, pre)
    with device_guard(pre):
        _C.cell_sequential(cell, pre, params, h0, states, b, t, n, stream_of(pre))
    return states


def _newton_kernel(cell, pre, params, h0, max_iters, atol, rtol):
    pre, params, h0 = _c(pre), _c(params), _c(h0)
    states = _states_like(cell, pre)
    info = torch.zeros(2, dtype=torch.int32, device=pre.device)
    b, t, n, _ = _cell_dims(cell, pre)
    with device_guard(pre):
        _C.cell_newton(cell, pre, params, h0, states, info, b, t, n, max_iters, atol, rtol,
                       stream_of(pre))
    return states, info


def _cell_backward_kernel(cell, pre, params, h0, states, grad):
    pre, params, h0, states, grad = _c(pre), _c(params), _c(h0), _c(states), _c(grad)
    b, t, n, _ = _cell_dims(cell, pre)
    dpre = torch.empty_like(pre)
    dh0 = pre.new_empty(b, CELL_STATE[cell] * n)
    dparams = torch.empty_like(params)
    workspace = params.new_empty(b, *params.shape)
    with device_guard(pre):
        _C.cell_backward(cell, pre, params, h0, states, grad, dpre, dh0, dparams, workspace, b, t,
                         n, stream_of(pre))
    return dpre, dparams, dh0


for _device in ("CPU", "CUDA"):
    LIB.impl("pararnn_cell_sequential", _sequential_kernel, _device)
    LIB.impl("pararnn_cell_newton", _newton_kernel, _device)
    LIB.impl("pararnn_cell_backward", _cell_backward_kernel, _device)


@torch.library.register_fake("fastpaper::pararnn_cell_sequential", lib=LIB)
def _sequential_fake(cell, pre, params, h0):
    return _states_like(cell, pre)


@torch.library.register_fake("fastpaper::pararnn_cell_newton", lib=LIB)
def _newton_fake(cell, pre, params, h0, max_iters, atol, rtol):
    return _states_like(cell, pre), pre.new_empty(2, dtype=torch.int32)


@torch.library.register_fake("fastpaper::pararnn_cell_backward", lib=LIB)
def _cell_backward_fake(cell, pre, params, h0, states, grad):
    b, t, n, k = _cell_dims(cell, pre)
    return torch.empty_like(pre), torch.empty_like(params), pre.new_empty(b, k * n)


def _cell_setup(ctx, inputs, output):
    cell, pre, params, h0 = inputs[:4]
    states = output[0] if isinstance(output, (tuple, list)) else output
    ctx.cell, ctx.has_h0 = cell, h0 is not None
    ctx.save_for_backward(pre, params, h0, states)


def _cell_backward(ctx, grad, *rest):
    pre, params, h0, states = ctx.saved_tensors
    dpre, dparams, dh0 = torch.ops.fastpaper.pararnn_cell_backward(
        ctx.cell, pre, params, h0, states, grad.to(states.dtype))
    return (None, dpre, dparams, dh0 if ctx.has_h0 else None) + (None,) * (len(ctx.needs_input_grad) - 4)


torch.library.register_autograd("fastpaper::pararnn_cell_sequential", _cell_backward,
                                setup_context=_cell_setup, lib=LIB)
torch.library.register_autograd("fastpaper::pararnn_cell_newton", _cell_backward,
                                setup_context=_cell_setup, lib=LIB)
