"""torch.library ops of the multi-head recurrent cells: ``torch.ops.fastpaper.rnn_forward`` and
``torch.ops.fastpaper.rnn_backward`` (the public, validated entry point is
:func:`fastpaper.rnn.flashrnn`).

rnn_forward returns, besides the hidden states and the last states, what its backward needs:
``hist`` [S, T+1, B, NH, DH] (every state after every step; hist[:, 0] are the initial states)
and ``cache`` [T, B, NH, GB, DH] (the pre-activations), in float32 (float64 for float64 data);
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
LIB.define("rnn_backward(Tensor? dh_all, Tensor? dlast, Tensor R, Tensor hist, Tensor cache, "
           "Tensor? lengths, int cell, bool need_dstates) -> (Tensor, Tensor, Tensor, Tensor)")


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _forward_shapes(Wx, cell):
    B, T, G, NH, DH = Wx.shape
    _, GB, S = DIMS[cell]
    return ((B, T, NH, DH), (S, B, NH, DH), (S, T + 1, B, NH, DH), (T, B, NH, GB, DH))


def _forward_outputs(Wx, cell, save):
    h_shape, last_shape, hist_shape, cache_shape = _forward_shapes(Wx, cell)
    cd = _compute_dtype(Wx)
    h_all = Wx.new_empty(h_shape)
    last = Wx.new_empty(last_shape)
    hist = Wx.new_empty(hist_shape if save else (0,), dtype=cd)
    cache = Wx.new_empty(cache_shape if save else (0,), dtype=cd)
    return h_all, last, hist, cache


def _c(t):
    return None if t is None else t.detach().contiguous()


def _forward_kernel(Wx, R, b, states, lengths, cell, save):
    h_all, last, hist, cache = _forward_outputs(Wx, cell, save)
    B, T, G, NH, DH = Wx.shape
    with device_guard(R):
        _C.forward(_c(Wx), _c(R), _c(b), _c(states), _c(lengths), h_all, last,
                   hist if save else None, cache if save else None, B, T, NH, DH, cell,
                   stream_of(R))
    return h_all, last, hist, cache


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


for _device in ("CPU", "CUDA"):
    LIB.impl("rnn_forward", _forward_kernel, _device)
    LIB.impl("rnn_backward", _backward_kernel, _device)


@torch.library.register_fake("fastpaper::rnn_forward", lib=LIB)
def _forward_fake(Wx, R, b, states, lengths, cell, save):
    return _forward_outputs(Wx, cell, save)


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
