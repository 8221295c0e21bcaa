"""Fused ParaGRU / ParaLSTM kernels (fastpaper/pararnn.h cell_*; torch ops
``fastpaper::pararnn_cell_{sequential,newton,backward}``) against float64 references: the Python
steps ``gru_step`` / ``lstm_step`` in a loop, and torch.autograd through that loop.

Tolerances: float64 results match the loop to 1e-10. float32 (fp32 math, host exp/tanh
polynomials within 2 ulp) matches the float64 reference within 1e-4 absolute for states of order
1 at T <= 4097 (Newton stops at max|delta| <= 1e-5 + 1e-5 max|s|; its error after that step is
about max|delta|^2). float16/bfloat16 storage: the kernels compute in float32 and round each
stored state once, so outputs are within one 16-bit rounding of the float32 result.
"""

import warnings

import pytest
import torch

import fastpaper._pararnn_torch  # noqa: F401  (registers the ops)
from fastpaper.nn import ParaGRU, ParaLSTM
from fastpaper.nn.pararnn import gru_step, lstm_step

OPS = torch.ops.fastpaper
STEPS = (gru_step, lstm_step)
K = (1, 2)
NP = (3, 5)


def make(cell, b, t, n, dtype=torch.float64, seed=0, h0=True, scale=1.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(b, t, 3 * n, generator=g, dtype=torch.float64) * scale
    params = torch.randn(NP[cell], n, generator=g, dtype=torch.float64) * 0.8
    s0 = torch.randn(b, K[cell] * n, generator=g, dtype=torch.float64) * 0.5 if h0 else None
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    pre = pre.to(device, dtype)
    params = params.to(device, pdt)
    s0 = None if s0 is None else s0.to(device, dtype)
    return pre, params, s0


def loop(cell, pre, params, s0):
    """The Python loop of the cell's step (float64 reference; autograd flows through it)."""
    b, t, n3 = pre.shape
    n = n3 // 3
    s = s0 if s0 is not None else pre.new_zeros(b, K[cell] * n)
    out = []
    for i in range(t):
        s = STEPS[cell](s, pre[:, i], tuple(params.unbind(0)))
        out.append(s)
    return torch.stack(out, 1) if out else pre.new_zeros(b, 0, K[cell] * n)


def newton(cell, pre, params, s0, max_iters=50, atol=1e-10, rtol=1e-10):
    return OPS.pararnn_cell_newton(cell, pre, params, s0, max_iters, atol, rtol)


# ------------------------------------------------------------------------- forward, float64

@pytest.mark.parametrize("cell", [0, 1])
def test_one_step_matches_python_step(cell):
    pre, params, s0 = make(cell, 3, 1, 7)
    ref = STEPS[cell](s0, pre[:, 0], tuple(params.unbind(0)))
    torch.testing.assert_close(OPS.pararnn_cell_sequential(cell, pre, params, s0)[:, 0], ref,
                               rtol=0, atol=1e-14)
    s, info = newton(cell, pre, params, s0)
    torch.testing.assert_close(s[:, 0], ref, rtol=0, atol=1e-14)
    assert info.tolist() == [1, 0]


@pytest.mark.parametrize("cell", [0, 1])
@pytest.mark.parametrize("t", [1, 2, 3, 1000, 4097])
def test_newton_equals_sequential_equals_loop_float64(cell, t):
    n = 37 if t < 1000 else 5  # 37: a full and a partial 32-channel tile
    pre, params, s0 = make(cell, 2, t, n, seed=t)
    ref = loop(cell, pre, params, s0)
    seq = OPS.pararnn_cell_sequential(cell, pre, params, s0)
    s, info = newton(cell, pre, params, s0)
    torch.testing.assert_close(seq, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(s, ref, rtol=0, atol=1e-10)
    its, failed = info.tolist()
    assert failed == 0 and 1 <= its <= max(t, 1)
    if t >= 1000:
        assert its < 30  # Newton, not the T-step exactness fallback


@pytest.mark.parametrize("cell", [0, 1])
def test_zero_initial_state_and_empty(cell):
    pre, params, _ = make(cell, 2, 9, 4)
    ref = loop(cell, pre, params, None)
    torch.testing.assert_close(OPS.pararnn_cell_sequential(cell, pre, params, None), ref,
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(newton(cell, pre, params, None)[0], ref, rtol=0, atol=1e-10)
    empty = pre[:, :0]
    s, info = newton(cell, empty, params, None)
    assert s.shape == (2, 0, K[cell] * 4) and info.tolist() == [0, 0]
    assert OPS.pararnn_cell_sequential(cell, empty, params, None).shape == (2, 0, K[cell] * 4)


# --------------------------------------------------------------- float32 and 16-bit storage

@pytest.mark.parametrize("cell", [0, 1])
@pytest.mark.parametrize("t", [3, 2049])
def test_float32(cell, t):
    pre, params, s0 = make(cell, 2, t, 33, seed=1)
    ref = loop(cell, pre, params, s0)
    p32, a32, s32 = pre.float(), params.float(), s0.float()
    seq = OPS.pararnn_cell_sequential(cell, p32, a32, s32)
    s, info = newton(cell, p32, a32, s32, atol=1e-5, rtol=1e-5)
    assert seq.dtype == s.dtype == torch.float32 and info[1] == 0
    torch.testing.assert_close(seq.double(), ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(s.double(), ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("cell", [0, 1])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_16bit_storage(cell, dtype, tol):
    pre, params, s0 = make(cell, 2, 300, 20, dtype=dtype, seed=2)
    # reference: the same (rounded) inputs in float64; the kernels keep the state in float32
    ref = loop(cell, pre.double(), params.double(), s0.double())
    seq = OPS.pararnn_cell_sequential(cell, pre, params, s0)
    s, info = newton(cell, pre, params, s0, atol=1e-5, rtol=1e-5)
    assert seq.dtype == s.dtype == dtype and info[1] == 0
    torch.testing.assert_close(seq.double(), ref, rtol=0, atol=tol)
    torch.testing.assert_close(s.double(), ref, rtol=0, atol=tol)
    # backward with 16-bit storage: gradients of pre within 16-bit rounding of float64
    g = torch.randn(seq.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    dpre, dpar, dh0 = OPS.pararnn_cell_backward(cell, pre, params, s0, seq, g)
    rpre, rpar, rh0 = OPS.pararnn_cell_backward(cell, pre.double(), params.double(),
                                                s0.double(), seq.double(), g.double())
    assert dpre.dtype == dh0.dtype == dtype and dpar.dtype == torch.float32
    scale = float(rpre.abs().max())
    torch.testing.assert_close(dpre.double(), rpre, rtol=0, atol=tol * scale)
    torch.testing.assert_close(dpar.double(), rpar, rtol=1e-3, atol=1e-3 * float(rpar.abs().max()))


# ------------------------------------------------------------------------------- backward

@pytest.mark.parametrize("cell", [0, 1])
@pytest.mark.parametrize("t", [1, 2, 65])
def test_backward_matches_autograd_through_loop(cell, t):
    pre, params, s0 = make(cell, 3, t, 6, seed=5)
    g = torch.randn(3, t, K[cell] * 6, dtype=torch.float64)
    leaves = [v.clone().requires_grad_() for v in (pre, params, s0)]
    ref = torch.autograd.grad((loop(cell, *leaves) * g).sum(), leaves)
    states = OPS.pararnn_cell_sequential(cell, pre, params, s0)
    got = OPS.pararnn_cell_backward(cell, pre, params, s0, states, g)
    for name, a, b in zip(("dpre", "dparams", "dh0"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=name)
    # deterministic: the same bits again
    again = OPS.pararnn_cell_backward(cell, pre, params, s0, states, g)
    assert all(torch.equal(a, b) for a, b in zip(got, again))


@pytest.mark.parametrize("cell", [0, 1])
@pytest.mark.parametrize("op", ["newton", "sequential"])
def test_gradcheck(cell, op):
    pre, params, s0 = make(cell, 2, 5, 3, seed=6)

    def f(p, a, s):
        if op == "newton":
            return newton(cell, p, a, s)[0]
        return OPS.pararnn_cell_sequential(cell, p, a, s)

    inputs = tuple(v.clone().requires_grad_() for v in (pre, params, s0))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("cls", [ParaGRU, ParaLSTM])
@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_module_fused_modes_match_loop_with_gradients(cls, mode):
    torch.manual_seed(0)
    m = cls(8, 12, num_heads=2, dtype=torch.float64)
    x = torch.randn(3, 130, 8, dtype=torch.float64, requires_grad=True)
    b = 3
    if cls is ParaGRU:
        st = torch.randn(b, 12, dtype=torch.float64, requires_grad=True)
        args = (st,)
    else:
        st = (torch.randn(b, 12, dtype=torch.float64, requires_grad=True),
              torch.randn(b, 12, dtype=torch.float64, requires_grad=True))
        args = (st,)
    leaves = [x, *m.parameters(), *(st if isinstance(st, tuple) else (st,))]

    def run(md):
        m.mode = md
        y, last = m(x, *args)
        last = last if isinstance(last, tuple) else (last,)
        loss = (y ** 2).sum() + sum((v * 1.5).sum() for v in last)
        return y, torch.autograd.grad(loss, leaves)

    y_ref, g_ref = run("loop")
    y, grads = run(mode)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    for a, r in zip(grads, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-9)
    if mode == "parallel":
        assert m.last_info.converged and m.last_info.iterations >= 1
    # the generic Newton path is still reachable and agrees
    m.mode = "parallel-generic"
    torch.testing.assert_close(m(x, *args)[0], y_ref, rtol=0, atol=1e-10)


def test_module_bf16_io():
    torch.manual_seed(3)
    m = ParaLSTM(6, 40)
    x = torch.randn(2, 100, 6).bfloat16()
    y, (c, h) = m(x)
    assert y.dtype == c.dtype == torch.bfloat16
    m.mode = "loop"
    ref = m(x.float())[0]
    torch.testing.assert_close(y.float(), ref, rtol=0, atol=3e-2)
    m.mode = "sequential"
    torch.testing.assert_close(m(x)[0].float(), ref, rtol=0, atol=3e-2)


# --------------------------------------------------------------------- convergence, errors

def test_non_convergence_is_reported():
    pre, params, s0 = make(1, 2, 500, 4, scale=3.0, seed=7)
    s, info = newton(1, pre, params, s0, max_iters=1)
    assert info.tolist() == [1, 2]  # both (batch, tile, segment) units failed
    pre, params, s0 = make(1, 2, 2500, 4, scale=3.0, seed=7)
    assert newton(1, pre, params, s0, max_iters=1)[1].tolist() == [1, 6]  # 3 CPU segments each
    torch.manual_seed(0)
    m = ParaGRU(4, 8, max_iters=1)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        m(torch.randn(2, 300, 4) * 3)
    assert not m.last_info.converged and m.last_info.iterations == 1
    m.max_iters = 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(torch.randn(2, 300, 4))
    assert m.last_info.converged


def test_nonfinite_input_does_not_converge():
    pre, params, s0 = make(0, 1, 20, 3)
    pre[0, 5, 0] = float("nan")
    s, info = newton(0, pre, params, s0)
    assert info.tolist()[1] == 1


def test_bad_arguments():
    pre, params, s0 = make(0, 2, 4, 3)
    with pytest.raises(TypeError, match="params"):
        OPS.pararnn_cell_sequential(0, pre, params.float(), s0)
    with pytest.raises(TypeError, match="h0"):
        OPS.pararnn_cell_sequential(0, pre, params, s0.float())
    with pytest.raises(ValueError, match="h0"):
        OPS.pararnn_cell_sequential(0, pre, params, s0[:1])
    with pytest.raises(ValueError, match="params"):
        OPS.pararnn_cell_sequential(1, pre, params, None)  # LSTM needs 5 params
    with pytest.raises(ValueError, match="cell"):
        OPS.pararnn_cell_sequential(2, pre, params, s0)
    with pytest.raises(ValueError, match="max_iters"):
        newton(0, pre, params, s0, max_iters=0)
    with pytest.raises(ValueError, match="atol"):
        newton(0, pre, params, s0, atol=-1.0)
    with pytest.raises(TypeError, match="pre"):
        OPS.pararnn_cell_sequential(0, pre.to(torch.int32), params, s0)
    with pytest.raises(ValueError, match="grad"):
        OPS.pararnn_cell_backward(0, pre, params, s0, pre[..., :3], pre[..., :2])
    m = ParaGRU(4, 6)
    with pytest.raises(ValueError, match="max_iters"):
        ParaGRU(4, 6, max_iters=0)(torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="mode"):
        ParaGRU(4, 6, mode="fused")
    assert m(torch.zeros(1, 0, 4))[0].shape == (1, 0, 6)


@pytest.mark.parametrize("cell", [0, 1])
def test_opcheck(cell):
    """Schema, fake (meta) kernels, autograd registration and AOT dispatch of the three ops."""
    pre, params, s0 = make(cell, 2, 6, 3, seed=8)
    args = [v.clone().requires_grad_() for v in (pre, params, s0)]
    torch.library.opcheck(OPS.pararnn_cell_sequential, (cell, *args))
    torch.library.opcheck(OPS.pararnn_cell_newton, (cell, *args, 50, 1e-10, 1e-10))
    st = OPS.pararnn_cell_sequential(cell, pre, params, s0)
    torch.library.opcheck(OPS.pararnn_cell_backward, (cell, pre, params, s0, st, torch.randn_like(st)))


# ------------------------------------------------------------------------------------ CUDA

CUDA_T = [1, 63, 64, 65, 127, 128, 129, 1000, 4097]


@pytest.mark.cuda
@pytest.mark.parametrize("cell", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("t", CUDA_T)
def test_cuda_forward_matches_cpu(cell, dtype, t):
    pre, params, s0 = make(cell, 3, t, 70, dtype=dtype, seed=t)
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 4e-3,
           torch.bfloat16: 3e-2}[dtype]
    at = 1e-10 if dtype == torch.float64 else 1e-5
    cpu_seq = OPS.pararnn_cell_sequential(cell, pre, params, s0)
    dev = [v.cuda() for v in (pre, params, s0)]
    gpu_seq = OPS.pararnn_cell_sequential(cell, *dev)
    gpu_newton, info = newton(cell, *dev, atol=at, rtol=at)
    its, failed = info.tolist()
    assert failed == 0 and its >= 1
    torch.testing.assert_close(gpu_seq.cpu().double(), cpu_seq.double(), rtol=0, atol=tol)
    torch.testing.assert_close(gpu_newton.cpu().double(), cpu_seq.double(), rtol=0, atol=tol)
    # no initial state
    torch.testing.assert_close(newton(cell, dev[0], dev[1], None, atol=at, rtol=at)[0].cpu().double(),
                               OPS.pararnn_cell_sequential(cell, pre, params, None).double(),
                               rtol=0, atol=tol)


@pytest.mark.cuda
@pytest.mark.parametrize("cell", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t", [1, 64, 129, 4097])
def test_cuda_backward_matches_cpu(cell, dtype, t):
    pre, params, s0 = make(cell, 2, t, 40, dtype=dtype, seed=t + 1)
    states = OPS.pararnn_cell_sequential(cell, pre, params, s0)
    g = torch.randn(states.shape, generator=torch.Generator().manual_seed(9)).to(dtype)
    cpu = OPS.pararnn_cell_backward(cell, pre, params, s0, states, g)
    gpu = OPS.pararnn_cell_backward(cell, *(v.cuda() for v in (pre, params, s0, states, g)))
    rel = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype]
    for a, b in zip(gpu, cpu):
        scale = max(float(b.double().abs().max()), 1.0)
        torch.testing.assert_close(a.cpu().double(), b.double(), rtol=0, atol=rel * scale)
    again = OPS.pararnn_cell_backward(cell, *(v.cuda() for v in (pre, params, s0, states, g)))
    assert all(torch.equal(a, b) for a, b in zip(gpu, again))  # deterministic


@pytest.mark.cuda
@pytest.mark.parametrize("cls", [ParaGRU, ParaLSTM])
def test_cuda_module_training_step_matches_cpu(cls):
    torch.manual_seed(0)
    m = cls(16, 64)
    x = torch.randn(2, 300, 16)
    y_cpu = m(x)[0]
    (y_cpu ** 2).sum().backward()
    g_cpu = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    mc = m.cuda()
    y = mc(x.cuda())[0]
    (y ** 2).sum().backward()
    assert mc.last_info.converged
    torch.testing.assert_close(y.cpu(), y_cpu, rtol=0, atol=1e-4)
    for a, b in zip(mc.parameters(), g_cpu):
        torch.testing.assert_close(a.grad.cpu(), b, rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
def test_cuda_non_convergence_and_nonfinite_reported():
    pre, params, s0 = make(1, 2, 500, 40, scale=3.0, seed=7, device="cuda")
    _, info = newton(1, pre, params, s0, max_iters=1)
    its, failed = info.tolist()
    assert its == 1 and failed >= 2  # (batch, tile, segment) units
    pre, params, s0 = make(0, 1, 300, 3, seed=1, device="cuda")
    pre[0, 200, 1] = float("nan")
    _, info = newton(0, pre, params, s0)
    assert info.tolist()[1] >= 1
