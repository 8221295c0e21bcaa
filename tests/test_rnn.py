"""rnn: the fused multi-head cells (LSTM, GRU, Elman, sLSTM) against a plain-PyTorch loop in
float64 (tests/rnn_reference.py) for every cell and dtype, initial states, variable lengths,
gradients against autograd of the loop, gradcheck in float64, opcheck / torch.compile, the nn
modules against torch.nn.LSTM / GRU / RNN with loaded weights (multi-layer, bidirectional,
packed sequences), step() against the full sequence, hostile input, and (cuda-marked) CUDA
against the CPU path."""

from __future__ import annotations

import pytest
import torch

from fastpaper import rnn
from fastpaper import nn as fnn
from rnn_reference import DIMS, at_thread_counts, flashrnn_reference, random_inputs

CELLS = ["lstm", "gru", "elman", "slstm"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# outputs are rounded once to the storage type from float32 arithmetic: a few ulp of the output
ATOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SHAPES = [(1, 1, 1, 16), (3, 7, 4, 16), (2, 5, 1, 64), (16, 3, 2, 32)]  # B, T, NH, DH


def _as(dtype, *ts):
    return [None if t is None else t.to(dtype) for t in ts]


def _check_close(got, want, dtype):
    torch.testing.assert_close(got.double(), want, atol=ATOL[dtype], rtol=ATOL[dtype])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(cell, dtype, shape):
    B, T, NH, DH = shape
    Wx, R, b, st = _as(dtype, *random_inputs(cell, B, T, NH, DH, seed=B + T))
    # the reference runs in float64 on the same (rounded) inputs
    want_h, want_last = flashrnn_reference(*(t.double() for t in (Wx, R, b, st)), cell=cell)
    h, last = rnn.flashrnn(Wx, R, b, st, cell=cell)
    assert h.shape == (B, T, NH, DH) and h.dtype == dtype
    assert last.shape == (DIMS[cell][2], B, NH, DH) and last.dtype == dtype
    _check_close(h, want_h, dtype)
    _check_close(last, want_last, dtype)


@pytest.mark.parametrize("cell", CELLS)
def test_zero_initial_states_and_lengths(cell):
    Wx, R, b, _ = random_inputs(cell, 4, 6, 2, 8, seed=3)
    lengths = torch.tensor([6, 0, 3, 1])
    h, last = rnn.flashrnn(Wx, R, b, None, cell, lengths)
    want_h, want_last = flashrnn_reference(Wx, R, b, None, cell, lengths)
    torch.testing.assert_close(h, want_h, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(last, want_last, atol=1e-12, rtol=1e-12)
    assert (h[1] == 0).all() and (h[2, 3:] == 0).all()
    assert (last[:, 1] == 0).all()  # length 0: the (zero) initial states
    # a sequence's result does not depend on what follows its end
    Wx2 = Wx.clone()
    Wx2[2, 3:] = 100.0
    h2, last2 = rnn.flashrnn(Wx2, R, b, None, cell, lengths)
    torch.testing.assert_close(h2[2], h[2], atol=0, rtol=0)
    torch.testing.assert_close(last2[:, 2], last[:, 2], atol=0, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_gradients_match_reference(cell, dtype):
    Wx, R, b, st = random_inputs(cell, 3, 6, 2, 16, seed=5)
    lengths = torch.tensor([6, 2, 5])
    gen = torch.Generator().manual_seed(1)
    gh = torch.randn(3, 6, 2, 16, generator=gen, dtype=torch.float64)
    gl = torch.randn(DIMS[cell][2], 3, 2, 16, generator=gen, dtype=torch.float64)

    def grads(fn, ins, cast):
        ins = [t.to(cast).requires_grad_() for t in ins]
        h, last = fn(*ins, cell=cell, lengths=lengths)
        loss = (h.double() * gh).sum() + (last.double() * gl).sum()
        return torch.autograd.grad(loss, ins)

    got = grads(rnn.flashrnn, (Wx, R, b, st), dtype)
    want = grads(flashrnn_reference, (Wx, R, b, st), torch.float64)
    if dtype == torch.float32:  # zero initial states: gradients of Wx, R, b only
        got += grads(rnn.flashrnn, (Wx, R, b), dtype)
        want += grads(flashrnn_reference, (Wx, R, b), torch.float64)
    tol = 1e-11 if dtype == torch.float64 else 2e-4
    for name, g, w in zip(("Wx", "R", "b", "states", "Wx", "R", "b"), got, want):
        torch.testing.assert_close(g.double(), w, atol=tol, rtol=tol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_gradients_close_to_float32(dtype):
    Wx, R, b, st = _as(dtype, *random_inputs("lstm", 2, 5, 2, 16, seed=9))

    def grads(cast):
        ins = [t.detach().to(cast).requires_grad_() for t in (Wx, R, b, st)]
        h, last = rnn.flashrnn(*ins, cell="lstm")
        (h.float().sum() + last.float().sum()).backward()
        return [i.grad.float() for i in ins]

    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    for g, w in zip(grads(dtype), grads(torch.float32)):
        torch.testing.assert_close(g, w, atol=tol * max(1.0, w.abs().max().item()), rtol=tol)


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_float64(cell):
    Wx, R, b, st = random_inputs(cell, 2, 3, 2, 3, seed=11)
    ins = [t.clone().requires_grad_() for t in (Wx, R, b, st)]
    lengths = torch.tensor([3, 2])
    assert torch.autograd.gradcheck(lambda *a: rnn.flashrnn(*a, cell=cell, lengths=lengths), ins)


def test_gradients_deterministic():
    Wx, R, b, st = random_inputs("slstm", 5, 9, 3, 32, dtype=torch.float32, seed=2)

    def grads():
        ins = [t.clone().requires_grad_() for t in (Wx, R, b, st)]
        h, last = rnn.flashrnn(*ins, cell="slstm")
        (h.sum() + last.sum()).backward()
        return [i.grad for i in ins]

    for g1, g2 in zip(grads(), grads()):
        assert torch.equal(g1, g2)


@pytest.mark.parametrize("cell", CELLS)
def test_thread_count_invariant(cell):
    """Large enough for the threaded CPU path (>= 2^20 flops per step: hidden units split across
    threads, one barrier per step), with partial unit blocks (DH = 16 k + 8), heads and lengths:
    1 and 2 threads give bitwise equal outputs and gradients, close to the float64 reference."""
    B, T, NH, DH = (16, 5, 2, 136) if cell == "elman" else (16, 5, 3, 72)
    Wx, R, b, st = random_inputs(cell, B, T, NH, DH, dtype=torch.float32, seed=21)
    lengths = torch.tensor([5, 3, 0, 4] * 4)

    def run():
        ins = [t.clone().requires_grad_() for t in (Wx, R, b, st)]
        h, last = rnn.flashrnn(*ins, cell=cell, lengths=lengths)
        (h.sum() + (last * 0.5).sum()).backward()
        return [h.detach(), last.detach()] + [i.grad for i in ins]

    one, two = at_thread_counts(run)
    for x, y in zip(one, two):
        assert torch.equal(x, y)
    want_h, _ = flashrnn_reference(*(t.double() for t in (Wx, R, b, st)), cell=cell,
                                   lengths=lengths)
    _check_close(one[0], want_h, torch.float32)


def test_no_grad_saves_nothing_and_matches():
    Wx, R, b, st = random_inputs("lstm", 2, 4, 1, 8, seed=4)
    with torch.no_grad():
        h0, l0 = rnn.flashrnn(Wx, R, b, st)
    h1, l1 = rnn.flashrnn(Wx, R.clone().requires_grad_(), b, st)
    torch.testing.assert_close(h0, h1.detach(), atol=0, rtol=0)
    torch.testing.assert_close(l0, l1.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_opcheck(cell):
    Wx, R, b, st = random_inputs(cell, 2, 3, 2, 4, seed=6)
    c = rnn._ops.CELLS[cell]
    grad = lambda a: a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
    args = [(Wx, R, b, st, torch.tensor([3, 1]), c, True)]
    if cell == "lstm":  # the optional-argument and inference variants once
        args += [(Wx, R, b, None, None, c, True)]
    for a in args:
        torch.library.opcheck(torch.ops.fastpaper.rnn_forward, tuple(map(grad, a)))
    if cell == "lstm":  # inference: nothing saved for backward
        torch.library.opcheck(torch.ops.fastpaper.rnn_forward, (Wx, R, b, st, None, c, False))


def test_torch_compile():
    Wx, R, b, st = random_inputs("gru", 2, 5, 2, 8, dtype=torch.float32, seed=8)
    fn = torch.compile(lambda *a: rnn.flashrnn(*a, cell="gru")[0] * 2.0, fullgraph=True)
    torch.testing.assert_close(fn(Wx, R, b, st), 2.0 * rnn.flashrnn(Wx, R, b, st, "gru")[0])


def test_time_zero():
    Wx, R, b, st = random_inputs("lstm", 2, 0, 1, 4)
    h, last = rnn.flashrnn(Wx, R, b, st)
    assert h.shape == (2, 0, 1, 4)
    torch.testing.assert_close(last, st, atol=0, rtol=0)
    # with gradients (the saved buffers of an empty sequence)
    ins = [t.clone().requires_grad_() for t in (Wx, R, b, st)]
    h, last = rnn.flashrnn(*ins)
    last.sum().backward()
    assert torch.equal(ins[3].grad, torch.ones_like(st)) and not ins[1].grad.any()


# ---- nn modules --------------------------------------------------------------------------------

TORCH_PAIRS = [(torch.nn.LSTM, fnn.LSTM), (torch.nn.GRU, fnn.GRU), (torch.nn.RNN, fnn.Elman)]


def _tuple(s):
    return s if isinstance(s, tuple) else (s,)


@pytest.mark.parametrize("pair", TORCH_PAIRS, ids=lambda p: p[0].__name__)
@pytest.mark.parametrize("layers,bidir", [(1, False), (2, True)])
def test_nn_matches_torch_with_loaded_weights(pair, layers, bidir):
    torch.manual_seed(0)
    tcls, fcls = pair
    ref = tcls(5, 8, num_layers=layers, bidirectional=bidir, batch_first=True).double()
    mod = fcls(5, 8, num_layers=layers, bidirectional=bidir).double()
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    D = 2 if bidir else 1
    S = mod.S
    h0 = tuple(torch.randn(layers * D, 3, 8, dtype=torch.float64) for _ in range(S))
    h0 = h0[0] if S == 1 else h0
    y_ref, s_ref = ref(x, h0)
    y, s = mod(x, h0)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    for a, w in zip(_tuple(s), _tuple(s_ref)):
        torch.testing.assert_close(a, w, atol=1e-12, rtol=1e-12)
    # gradients of the weights agree too (parameter names differ: compare input gradients)
    xr = x.clone().requires_grad_()
    xr2 = x.clone().requires_grad_()
    mod(xr)[0].square().sum().backward()
    ref(xr2)[0].square().sum().backward()
    torch.testing.assert_close(xr.grad, xr2.grad, atol=1e-11, rtol=1e-11)
    # variable lengths == packed sequences
    lengths = torch.tensor([6, 2, 4])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                     enforce_sorted=False)
    yp, sp = ref(packed)
    yp, _ = torch.nn.utils.rnn.pad_packed_sequence(yp, batch_first=True, total_length=6)
    y, s = mod(x, lengths=lengths)
    torch.testing.assert_close(y, yp, atol=1e-12, rtol=1e-12)
    for a, w in zip(_tuple(s), _tuple(sp)):
        torch.testing.assert_close(a, w, atol=1e-12, rtol=1e-12)


def test_nn_batch_first_false():
    torch.manual_seed(1)
    ref = torch.nn.LSTM(4, 6, batch_first=False)
    mod = fnn.LSTM(4, 6, batch_first=False)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(7, 2, 4)
    torch.testing.assert_close(mod(x)[0], ref(x)[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cls", [fnn.LSTM, fnn.GRU, fnn.SLSTM, fnn.Elman], ids=lambda c: c.__name__)
def test_step_matches_sequence(cls):
    torch.manual_seed(2)
    mod = cls(5, 12, num_heads=3, num_layers=2).double()
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    y, s = mod(x)
    st, ys = None, []
    for t in range(7):
        yt, st = mod.step(x[:, t], st)
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, 1), y, atol=1e-12, rtol=1e-12)
    for a, w in zip(_tuple(st), _tuple(s)):
        torch.testing.assert_close(a, w, atol=1e-12, rtol=1e-12)


def test_multihead_loads_block_diagonal_only():
    torch.manual_seed(3)
    ref = torch.nn.LSTM(4, 8)
    mod = fnn.LSTM(4, 8, num_heads=2)
    with pytest.raises(RuntimeError, match="block-diagonal"):
        mod.load_state_dict(ref.state_dict())
    with torch.no_grad():  # a block-diagonal weight_hh loads into heads exactly
        w = ref.weight_hh_l0.view(4, 2, 4, 2, 4)
        w[:, 0, :, 1] = 0
        w[:, 1, :, 0] = 0
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(mod(x)[0], ref(x.transpose(0, 1))[0].transpose(0, 1), atol=1e-6, rtol=1e-6)


# ---- hostile input -----------------------------------------------------------------------------

def test_bad_input():
    Wx, R, b, st = random_inputs("lstm", 2, 3, 2, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="cell"):
        rnn.flashrnn(Wx, R, b, cell="rnn")
    with pytest.raises(ValueError, match="Wx"):
        rnn.flashrnn(Wx[:, :, :3], R, b)
    with pytest.raises(ValueError, match="Wx"):
        rnn.flashrnn(Wx[0], R, b)
    with pytest.raises(ValueError, match="R"):
        rnn.flashrnn(Wx, R[:, :, :3], b)
    with pytest.raises(ValueError, match="b"):
        rnn.flashrnn(Wx, R, b[:3])
    with pytest.raises(ValueError, match="states"):
        rnn.flashrnn(Wx, R, b, st[:1])
    with pytest.raises(TypeError, match="R"):
        rnn.flashrnn(Wx, R.double(), b)
    with pytest.raises(TypeError, match="Wx"):
        rnn.flashrnn(Wx.int(), R, b)
    with pytest.raises(TypeError, match="b"):
        rnn.flashrnn(Wx, R, b.numpy())
    with pytest.raises(ValueError, match="lengths"):
        rnn.flashrnn(Wx, R, b, lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="lengths"):
        rnn.flashrnn(Wx, R, b, lengths=torch.tensor([1.0, 2.0]))
    if torch.device("meta").type == "meta":
        with pytest.raises(ValueError, match="device"):
            rnn.flashrnn(Wx, R.to("meta"), b)
    with pytest.raises(ValueError, match="divisible"):
        fnn.LSTM(4, 6, num_heads=4)
    with pytest.raises(ValueError, match="input"):
        fnn.GRU(4, 6)(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="states"):
        fnn.LSTM(4, 6)(torch.randn(2, 3, 4), torch.zeros(1, 2, 6))
    with pytest.raises(ValueError, match="unidirectional"):
        fnn.LSTM(4, 6, bidirectional=True).step(torch.randn(2, 4))


def test_lengths_out_of_range_are_clamped():
    Wx, R, b, st = random_inputs("gru", 2, 3, 1, 4)
    h, last = rnn.flashrnn(Wx, R, b, st, "gru", torch.tensor([-2, 9]))
    want_h, want_last = flashrnn_reference(Wx, R, b, st, "gru", torch.tensor([0, 3]))
    torch.testing.assert_close(h, want_h)
    torch.testing.assert_close(last, want_last)


# ---- CUDA ---------------------------------------------------------------------------------------

CUDA_SHAPES = [(1, 1, 1, 16), (3, 7, 4, 32), (16, 64, 12, 64), (3, 20, 1, 128), (2, 9, 2, 256),
               (16, 33, 48, 16), (2, 5, 1, 768)]


@pytest.mark.cuda
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=str)
def test_cuda_forward_backward_matches_cpu(cell, dtype, shape):
    B, T, NH, DH = shape
    Wx, R, b, st = _as(dtype, *random_inputs(cell, B, T, NH, DH, seed=T))
    lengths = torch.randint(0, T + 1, (B,), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    gh = torch.randn(B, T, NH, DH, generator=gen)
    gl = torch.randn(DIMS[cell][2], B, NH, DH, generator=gen)

    def run(device, cast):
        ins = [t.to(device=device, dtype=cast).requires_grad_() for t in (Wx, R, b, st)]
        h, last = rnn.flashrnn(*ins, cell=cell, lengths=lengths.to(device))
        loss = (h.float() * gh.to(device)).sum() + (last.float() * gl.to(device)).sum()
        loss.backward()
        return [h.double().cpu(), last.double().cpu()] + [i.grad.double().cpu() for i in ins]

    got = run("cuda", dtype)
    want = run("cpu", torch.float64)  # float64 on the same rounded inputs
    # the GPU feeds h to the tensor cores in the storage type: errors grow with T and DH
    tol = {torch.float32: 2e-3, torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype]
    for name, g, w in zip(("h", "last", "dWx", "dR", "db", "dstates"), got, want):
        scale = max(1.0, w.abs().max().item())
        torch.testing.assert_close(g, w, atol=tol * scale, rtol=tol, msg=f"{name}")


@pytest.mark.cuda
def test_cuda_nn_lstm_matches_cudnn():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(64, 128, num_layers=2, bidirectional=True, batch_first=True).cuda()
    mod = fnn.LSTM(64, 128, num_layers=2, bidirectional=True).cuda()
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(4, 50, 64, device="cuda")
    torch.testing.assert_close(mod(x)[0], ref(x)[0], atol=2e-3, rtol=2e-3)


@pytest.mark.cuda
def test_cuda_graph_capture():
    Wx, R, b, st = _as(torch.bfloat16, *random_inputs("slstm", 16, 32, 12, 64))
    Wx, R, b, st = (t.cuda() for t in (Wx, R, b, st))
    with torch.no_grad():
        want = rnn.flashrnn(Wx, R, b, st, "slstm")[0]
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            rnn.flashrnn(Wx, R, b, st, "slstm")
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            out = rnn.flashrnn(Wx, R, b, st, "slstm")[0]
        g.replay()
        torch.cuda.synchronize()
    torch.testing.assert_close(out, want, atol=0, rtol=0)
