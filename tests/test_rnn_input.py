"""rnn: flashrnn_input (the input projection x W^T fused into the per-step product on the CPU)
against the float64 reference loop on Wx = x W^T: outputs, last states, gradients of x, W, R, b
and the initial states, gradcheck, thread-count invariance, opcheck, the fallbacks (GRU, half
precision) and hostile input."""

from __future__ import annotations

import pytest
import torch

from fastpaper import rnn
from rnn_reference import DIMS, at_thread_counts, flashrnn_reference, random_inputs

ATOL = {torch.float64: 1e-12, torch.float32: 3e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# B, T, NH, DH, I: partial unit blocks (DH = 24), several heads, odd input sizes, B > 6 (several
# register row blocks of the micro-kernel)
SHAPES = [(1, 1, 1, 16, 1), (3, 7, 2, 24, 5), (9, 4, 3, 16, 33), (2, 5, 1, 40, 16)]


def _inputs(cell, B, T, NH, DH, I, dtype, seed):
    _, R, b, st = random_inputs(cell, B, T, NH, DH, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    G = DIMS[cell][0]
    x = torch.randn(B, T, I, generator=g, dtype=torch.float64)
    W = torch.randn(G * NH * DH, I, generator=g, dtype=torch.float64) / I ** 0.5
    return [t.to(dtype) for t in (x, W, R, b, st)]


def _reference(x, W, R, b, st, cell, lengths=None):
    B, T, _ = x.shape
    G, NH, DH, _ = R.shape
    Wx = (x.double() @ W.double().t()).view(B, T, G, NH, DH)
    return flashrnn_reference(Wx, R.double(), b.double(), None if st is None else st.double(),
                              cell, lengths)


@pytest.mark.parametrize("cell", ["lstm", "elman", "slstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(cell, dtype, shape):
    x, W, R, b, st = _inputs(cell, *shape, dtype, seed=sum(shape))
    lengths = torch.arange(shape[0]) % (shape[1] + 1)
    for s, ln in ((st, None), (None, lengths)):
        h, last = rnn.flashrnn_input(x, W, R, b, s, cell, ln)
        want_h, want_last = _reference(x, W, R, b, s, cell, ln)
        tol = ATOL[dtype] * (1 if dtype != torch.float32 else shape[4] ** 0.5)
        torch.testing.assert_close(h.double(), want_h, atol=tol, rtol=tol)
        torch.testing.assert_close(last.double(), want_last, atol=tol, rtol=tol)


@pytest.mark.parametrize("cell", ["lstm", "elman", "slstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_gradients_match_reference(cell, dtype):
    B, T, NH, DH, I = 3, 6, 2, 24, 7
    ins = _inputs(cell, B, T, NH, DH, I, dtype, seed=5)
    lengths = torch.tensor([6, 2, 5])
    gh = torch.randn(B, T, NH, DH, dtype=torch.float64)
    gl = torch.randn(DIMS[cell][2], B, NH, DH, dtype=torch.float64)

    def grads(fn, ts):
        ts = [t.detach().clone().requires_grad_() for t in ts]
        h, last = fn(*ts)
        ((h.double() * gh).sum() + (last.double() * gl).sum()).backward()
        return [t.grad.double() for t in ts]

    got = grads(lambda *a: rnn.flashrnn_input(*a, cell=cell, lengths=lengths), ins)
    want = grads(lambda *a: _reference(*a, cell=cell, lengths=lengths),
                 [t.double() for t in ins])
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    for name, g, w in zip(("x", "W", "R", "b", "states"), got, want):
        torch.testing.assert_close(g, w, atol=tol, rtol=tol, msg=lambda m: f"d{name}: {m}")


def test_weight_gradients_without_input_gradient():
    """x without requires_grad (a first layer's input): dx is skipped, dW / dR / db unchanged."""
    x, W, R, b, st = _inputs("lstm", 4, 5, 1, 16, 6, torch.float32, seed=12)

    def grads(x_grad):
        ts = [W.clone().requires_grad_(), R.clone().requires_grad_(), b.clone().requires_grad_()]
        xx = x.clone().requires_grad_(x_grad)
        h, last = rnn.flashrnn_input(xx, *ts[:1], *ts[1:], st)
        (h.sum() + last.sum()).backward()
        assert (xx.grad is not None) == x_grad
        return [t.grad for t in ts]

    for g1, g2 in zip(grads(False), grads(True)):
        assert torch.equal(g1, g2)


def test_gradcheck_float64():
    ins = [t.requires_grad_() for t in _inputs("lstm", 2, 3, 2, 3, 4, torch.float64, seed=7)]
    lengths = torch.tensor([3, 1])
    assert torch.autograd.gradcheck(
        lambda *a: rnn.flashrnn_input(*a, cell="lstm", lengths=lengths), ins)


@pytest.mark.parametrize("cell", ["lstm", "elman"])
def test_thread_count_invariant(cell):
    """Above the threading threshold, with partial unit blocks: 1 and 2 threads give bitwise
    equal outputs and gradients."""
    B, T, NH, DH, I = 16, 4, 3, 72, 40
    ins = _inputs(cell, B, T, NH, DH, I, torch.float32, seed=9)
    lengths = torch.tensor([4, 3, 0, 2] * 4)

    def run():
        ts = [t.clone().requires_grad_() for t in ins]
        h, last = rnn.flashrnn_input(*ts, cell=cell, lengths=lengths)
        (h.sum() + (last * 0.5).sum()).backward()
        return [h.detach(), last.detach()] + [t.grad for t in ts]

    one, two = at_thread_counts(run)
    for a, c in zip(one, two):
        assert torch.equal(a, c)


def test_opcheck():
    x, W, R, b, st = _inputs("lstm", 2, 3, 2, 4, 5, torch.float64, seed=3)
    c = rnn._ops.CELLS["lstm"]
    grad = lambda t: t.clone().requires_grad_()
    torch.library.opcheck(torch.ops.fastpaper.rnn_forward_input,
                          (grad(x), grad(W), grad(R), grad(b), grad(st), torch.tensor([3, 1]), c,
                           True))
    torch.library.opcheck(torch.ops.fastpaper.rnn_forward_input,
                          (x, W, R, b, None, None, c, False))


def test_no_grad_matches_and_time_zero():
    x, W, R, b, st = _inputs("lstm", 2, 4, 1, 8, 3, torch.float32, seed=4)
    with torch.no_grad():
        h0, l0 = rnn.flashrnn_input(x, W, R, b, st)
    h1, l1 = rnn.flashrnn_input(x, W.clone().requires_grad_(), R, b, st)
    assert torch.equal(h0, h1.detach()) and torch.equal(l0, l1.detach())
    h, last = rnn.flashrnn_input(x[:, :0], W, R, b, st)
    assert h.shape == (2, 0, 1, 8) and torch.equal(last, st)


def test_bad_input():
    x, W, R, b, st = _inputs("lstm", 2, 3, 2, 4, 5, torch.float32, seed=1)
    with pytest.raises(ValueError, match="W"):
        rnn.flashrnn_input(x, W[:-1], R, b)
    with pytest.raises(ValueError, match="W"):
        rnn.flashrnn_input(x[..., :4], W, R, b)
    with pytest.raises(TypeError, match="W"):
        rnn.flashrnn_input(x, W.double(), R, b)
    with pytest.raises(ValueError, match="x"):
        rnn.flashrnn_input(x[0], W, R, b)
    with pytest.raises(ValueError, match="R"):
        rnn.flashrnn_input(x, W, R[:3], b)
    with pytest.raises(ValueError, match="b"):
        rnn.flashrnn_input(x, W, R, b[:2])
    with pytest.raises(TypeError, match="b"):
        rnn.flashrnn_input(x, W, R, b.double())
    with pytest.raises(ValueError, match="lengths"):
        rnn.flashrnn_input(x, W, R, b, lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="cell"):
        rnn.flashrnn_input(x, W, R, b, cell="rnn")
