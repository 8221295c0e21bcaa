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
LIB.define("pararnn_linear_scan(Tensor J, Tensor r, Tensor? h0, int block, bool reverse) -> Tensor")


def _scan_kernel(J, r, h0, block, reverse):
    J, r = J.detach().contiguous(), r.detach().contiguous()
    h0 = None if h0 is None else h0.detach().contiguous()
    h = torch.empty_like(r, memory_format=torch.contiguous_format)
    if h.numel():
        batch, time, channels = r.shape
        with device_guard(r):
            _C.linear_scan(J, r, h0, h, batch, time, channels, block, reverse, stream_of(r))
    return h


for _device in ("CPU", "CUDA"):
    LIB.impl("pararnn_linear_scan", _scan_kernel, _device)


@torch.library.register_fake("fastpaper::pararnn_linear_scan", lib=LIB)
def _scan_fake(J, r, h0, block, reverse):
    return torch.empty_like(r, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    J, r, h0, block, reverse = inputs
    ctx.block, ctx.reverse, ctx.has_h0 = block, reverse, h0 is not None
    ctx.save_for_backward(J, h0 if h0 is not None else None, output)


def _transpose(J: torch.Tensor, block: int) -> torch.Tensor:
    return J if block == 1 else J.transpose(-1, -2)


def _apply_t(J1: torch.Tensor, v: torch.Tensor, block: int) -> torch.Tensor:
    """J1^T v for one time step: J1 [B, N] or [B, G, k, k], v [B, N] -> [B, N]."""
    if block == 1:
        return J1 * v
    b, g = J1.shape[0], J1.shape[1]
    return torch.einsum("bgji,bgj->bgi", J1, v.reshape(b, g, block)).reshape(v.shape)


def _backward(ctx, grad):
    J, h0, h = ctx.saved_tensors
    block, reverse = ctx.block, ctx.reverse
    batch, time, channels = h.shape
    if time == 0:
        dh0 = torch.zeros_like(h0) if ctx.has_h0 else None
        return torch.zeros_like(J), torch.zeros_like(grad), dh0, None, None
    zero_h = h.new_zeros(batch, 1, channels)
    start = zero_h if h0 is None else h0.unsqueeze(1)
    Jt = _transpose(J, block)
    if not reverse:
        # lambda_t = g_t + J_{t+1}^T lambda_{t+1}: a reversed scan over the next step's J^T
        Jn = torch.cat([Jt[:, 1:], torch.zeros_like(Jt[:, :1])], dim=1)
        lam = torch.ops.fastpaper.pararnn_linear_scan(Jn, grad, None, block, True)
        h_in = torch.cat([start, h[:, :-1]], dim=1)            # h_{t-1}
        J_edge, lam_edge = J[:, 0], lam[:, 0]
    else:
        # lambda_t = g_t + J_{t-1}^T lambda_{t-1}: a forward scan over the previous step's J^T
        Jn = torch.cat([torch.zeros_like(Jt[:, :1]), Jt[:, :-1]], dim=1)
        lam = torch.ops.fastpaper.pararnn_linear_scan(Jn, grad, None, block, False)
        h_in = torch.cat([h[:, 1:], start], dim=1)             # h_{t+1}
        J_edge, lam_edge = J[:, -1], lam[:, -1]
    dJ = None
    if ctx.needs_input_grad[0]:
        if block == 1:
            dJ = lam * h_in
        else:
            g = channels // block
            dJ = (lam.reshape(batch, time, g, block, 1) * h_in.reshape(batch, time, g, 1, block))
    dh0 = _apply_t(J_edge, lam_edge, block) if ctx.has_h0 and ctx.needs_input_grad[2] else None
    return dJ, lam, dh0, None, None


torch.library.register_autograd("fastpaper::pararnn_linear_scan", _backward,
                                setup_context=_setup, lib=LIB)
