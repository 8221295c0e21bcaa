"""torch.library ops of the multi-head recurrent cells: ``torch.ops.fastpaper.rnn_forward`` and
``torch.ops.fastpaper.rnn_backward`` (the public, validated entry point is
:func:`fastpaper.rnn.flashrnn`).

rnn_forward returns, besides the hidden states and the last states, what its backward needs:
``hist`` [S, T+1, B, NH, DH] (every state after every step; hist[:, 0] are the initial states)
and ``cache`` [T, B, NH, GB, DH] (the pre-activations; the CPU LSTM's activated gates), in float32 (float64 for float64 data);
both are empty when ``save`` is False (inference). The autograd formula of rnn_forward is the
rnn_backward op, which reverses time once and returns dWx, dR, db (deterministic sums) and the
initial-state gradient. Kernels run on torch's current CUDA stream; outputs are allocated here.
"""

from __future__ import annotations

import torch

from . import _native
from ._torch import LIB, device_guard, stream_of

_C = _native.load("rnn")

CELLS = {"lstm": 0, "gru": 1, "elman": 2, "slstm": 3}
# cell id -> (G: gate rows of Wx and R, GB: bias / pre-activation rows, S: state kinds)
DIMS = {0: (4, 4, 2), 1: (3, 4, 1), 2: (1, 1, 1), 3: (4, 4, 4)}

LIB.define("rnn_forward(Tensor Wx, Tensor R, Tensor b, Tensor? states, Tensor? lengths, int cell, "
           "bool save) -> (Tensor, Tensor, Tensor, Tensor)")
LIB.define("rnn_forward_input(Tensor x, Tensor W, Tensor R, Tensor b, Tensor? states, "
           "Tensor? lengths, int cell, bool save) -> (Tensor, Tensor, Tensor, Tensor)")
LIB.define("rnn_backward_input(Tensor? dh_all, Tensor? dlast, Tensor x, Tensor W, Tensor R, "
           "Tensor hist, Tensor cache, Tensor? lengths, int cell, bool need_dx, bool need_dstates) "
           "-> (Tensor, Tensor, Tensor, Tensor, Tensor)")
LIB.define("rnn_backward(Tensor? dh_all, Tensor? dlast, Tensor R, Tensor hist, Tensor cache, "
           "Tensor? lengths, int cell, bool need_dstates) -> (Tensor, Tensor, Tensor, Tensor)")


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _forward_outputs(ref, B, T, NH, DH, cell, save):
    """h_all, last, hist, cache (the last two empty unless save) like ref (dtype, device)."""
    _, GB, S = DIMS[cell]
    cd = _compute_dtype(ref)
    h_all = ref.new_empty((B, T, NH, DH))
    last = ref.new_empty((S, B, NH, DH))
    hist = ref.new_empty((S, T + 1, B, NH, DH) if save else (0,), dtype=cd)
    cache = ref.new_empty((T, B, NH, GB, DH) if save else (0,), dtype=cd)
    return h_all, last, hist, cache


def _c(t):
    return None if t is None else t.detach().contiguous()


def _forward_kernel(Wx, R, b, states, lengths, cell, save):
    B, T, G, NH, DH = Wx.shape
    h_all, last, hist, cache = _forward_outputs(Wx, B, T, NH, DH, cell, save)
    with device_guard(R):
        _C.forward(_c(Wx), _c(R), _c(b), _c(states), _c(lengths), h_all, last,
                   hist if save else None, cache if save else None, B, T, NH, DH, cell,
                   stream_of(R))
    return h_all, last, hist, cache


def _forward_input_cpu(x, W, R, b, states, lengths, cell, save):
    B, T, I = x.shape
    _, NH, DH, _ = R.shape
    h_all, last, hist, cache = _forward_outputs(x, B, T, NH, DH, cell, save)
    _C.forward_input(_c(x), _c(W), _c(R), _c(b), _c(states), _c(lengths), h_all, last,
                     hist if save else None, cache if save else None, B, T, NH, DH, I, cell)
    return h_all, last, hist, cache


def _forward_input_cuda(x, W, R, b, states, lengths, cell, save):
    # no fused kernel on CUDA: one GEMM for Wx, then the recurrence
    B, T, _ = x.shape
    Wx = torch.matmul(x, W.t()).view(B, T, *R.shape[:3])
    return _forward_kernel(Wx, R, b, states, lengths, cell, save)


def _backward_kernel(dh_all, dlast, R, hist, cache, lengths, cell, need_dstates):
    S, T1, B, NH, DH = hist.shape
    T = T1 - 1
    G, GB, _ = DIMS[cell]
    dWx = R.new_empty((B, T, G, NH, DH))
    dR = torch.empty_like(R, memory_format=torch.contiguous_format)
    db = R.new_empty((GB, NH, DH))
    dstates = R.new_empty((S, B, NH, DH)) if need_dstates else R.new_empty((0,))
    work = hist.new_empty((T, B, NH, GB, DH))
    with device_guard(R):
        _C.backward(_c(dh_all), _c(dlast), _c(R), _c(hist), _c(cache), _c(lengths), dWx, dR, db,
                    dstates if need_dstates else None, work, B, T, NH, DH, cell, stream_of(R))
    return dWx, dR, db, dstates


def _backward_input_cpu(dh_all, dlast, x, W, R, hist, cache, lengths, cell, need_dx,
                        need_dstates):
    S, T1, B, NH, DH = hist.shape
    T = T1 - 1
    G, GB, _ = DIMS[cell]
    I = x.shape[2]
    dx = x.new_empty((B, T, I) if need_dx else (0,))
    dW = torch.empty_like(W, memory_format=torch.contiguous_format)
    dR = torch.empty_like(R, memory_format=torch.contiguous_format)
    db = R.new_empty((GB, NH, DH))
    dstates = R.new_empty((S, B, NH, DH)) if need_dstates else R.new_empty((0,))
    work = hist.new_empty((T, B, NH, GB, DH))
    _C.backward_input(_c(dh_all), _c(dlast), _c(x), _c(W), _c(R), _c(hist), _c(cache), _c(lengths),
                      dx if need_dx else None, dW, dR, db, dstates if need_dstates else None,
                      work, B, T, NH, DH, I, cell)
    return dx, dW, dR, db, dstates


for _device in ("CPU", "CUDA"):
    LIB.impl("rnn_forward", _forward_kernel, _device)
    LIB.impl("rnn_backward", _backward_kernel, _device)
LIB.impl("rnn_forward_input", _forward_input_cpu, "CPU")
LIB.impl("rnn_forward_input", _forward_input_cuda, "CUDA")
LIB.impl("rnn_backward_input", _backward_input_cpu, "CPU")


@torch.library.register_fake("fastpaper::rnn_forward", lib=LIB)
def _forward_fake(Wx, R, b, states, lengths, cell, save):
    B, T, _, NH, DH = Wx.shape
    return _forward_outputs(Wx, B, T, NH, DH, cell, save)


@torch.library.register_fake("fastpaper::rnn_forward_input", lib=LIB)
def _forward_input_fake(x, W, R, b, states, lengths, cell, save):
    B, T, _ = x.shape
    _, NH, DH, _ = R.shape
    return _forward_outputs(x, B, T, NH, DH, cell, save)


@torch.library.register_fake("fastpaper::rnn_backward_input", lib=LIB)
def _backward_input_fake(dh_all, dlast, x, W, R, hist, cache, lengths, cell, need_dx,
                         need_dstates):
    S, T1, B, NH, DH = hist.shape
    _, GB, _ = DIMS[cell]
    dstates = R.new_empty((S, B, NH, DH)) if need_dstates else R.new_empty((0,))
    dx = x.new_empty((B, T1 - 1, x.shape[2]) if need_dx else (0,))
    return dx, torch.empty_like(W), torch.empty_like(R), R.new_empty((GB, NH, DH)), dstates


@torch.library.register_fake("fastpaper::rnn_backward", lib=LIB)
def _backward_fake(dh_all, dlast, R, hist, cache, lengths, cell, need_dstates):
    S, T1, B, NH, DH = hist.shape
    G, GB, _ = DIMS[cell]
    dstates = R.new_empty((S, B, NH, DH)) if need_dstates else R.new_empty((0,))
    return (R.new_empty((B, T1 - 1, G, NH, DH)), torch.empty_like(R), R.new_empty((GB, NH, DH)),
            dstates)


def _setup(ctx, inputs, output):
    Wx, R, b, states, lengths, cell, save = inputs
    _, _, hist, cache = output
    if not save:
        # the op was run without the saved tensors its backward needs
        ctx.unsaved = True
        return
    ctx.unsaved = False
    ctx.cell = cell
    ctx.has_states = states is not None
    ctx.save_for_backward(R, hist, cache, lengths)


def _backward(ctx, dh_all, dlast, _dhist, _dcache):
    if ctx.unsaved:
        raise RuntimeError("fastpaper::rnn_forward was called with save=False; call it with "
                           "save=True (fastpaper.rnn.flashrnn does when gradients are needed)")
    R, hist, cache, lengths = ctx.saved_tensors
    need_dstates = ctx.has_states and ctx.needs_input_grad[3]
    dWx, dR, db, dstates = torch.ops.fastpaper.rnn_backward(
        dh_all, dlast, R, hist, cache, lengths, ctx.cell, need_dstates)
    return dWx, dR, db, (dstates if need_dstates else None), None, None, None


torch.library.register_autograd("fastpaper::rnn_forward", _backward, setup_context=_setup, lib=LIB)


def _setup_input(ctx, inputs, output):
    x, W, R, b, states, lengths, cell, save = inputs
    _, _, hist, cache = output
    ctx.unsaved = not save
    if not save:
        return
    ctx.cell = cell
    ctx.has_states = states is not None
    ctx.save_for_backward(x, W, R, hist, cache, lengths)


def _backward_input(ctx, dh_all, dlast, _dhist, _dcache):
    """rnn_backward gives d(x W^T) = dWx; then dx = dWx W and dW = dWx^T x (two GEMMs)."""
    if ctx.unsaved:
        raise RuntimeError("fastpaper::rnn_forward_input was called with save=False; call it with "
                           "save=True (fastpaper.rnn.flashrnn_input does when gradients are "
                           "needed)")
    x, W, R, hist, cache, lengths = ctx.saved_tensors
    need_dstates = ctx.has_states and ctx.needs_input_grad[4]
    if x.device.type == "cpu":  # the fused backward: dx per step, dW from the workspace
        need_dx = ctx.needs_input_grad[0]  # e.g. not for a first layer's input
        dx, dW, dR, db, dstates = torch.ops.fastpaper.rnn_backward_input(
            dh_all, dlast, x, W, R, hist, cache, lengths, ctx.cell, need_dx, need_dstates)
        return ((dx if need_dx else None), dW, dR, db, (dstates if need_dstates else None), None,
                None, None)
    dWx, dR, db, dstates = torch.ops.fastpaper.rnn_backward(
        dh_all, dlast, R, hist, cache, lengths, ctx.cell, need_dstates)
    B, T, I = x.shape
    d2 = dWx.reshape(B * T, W.shape[0])
    dx = torch.mm(d2, W).view(B, T, I) if ctx.needs_input_grad[0] else None
    dW = torch.mm(d2.t(), x.reshape(B * T, I)) if ctx.needs_input_grad[1] else None
    return dx, dW, dR, db, (dstates if need_dstates else None), None, None, None


torch.library.register_autograd("fastpaper::rnn_forward_input", _backward_input,
                                setup_context=_setup_input, lib=LIB)
