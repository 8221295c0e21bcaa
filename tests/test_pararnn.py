"""ParaRNN: the scan op against a sequential float64 recurrence (diag and blocks, reverse, h0,
long T, CPU time chunking), its gradients (gradcheck, opcheck, torch.compile), Newton against the
sequential loop for ParaGRU / ParaLSTM / a custom cell, implicit-function gradients against
autograd through the loop, non-convergence reporting and hostile input."""

from __future__ import annotations

import warnings

import pytest
import torch

from fastpaper import pararnn
from fastpaper.nn import ParaGRU, ParaLSTM
from fastpaper.nn.pararnn import gru_step, lstm_step

BLOCKS = [1, 2, 3, 4]


def structure_of(k: int) -> str:
    return "diag" if k == 1 else "block"


def make_scan_inputs(b, t, n, k, dtype=torch.float64, seed=0, device="cpu", scale=0.95):
    """Random contractive Jacobians (spectral norm <= scale) so long sequences stay bounded."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(b, t, n, generator=g, dtype=torch.float64)
    h0 = torch.randn(b, n, generator=g, dtype=torch.float64)
    if k == 1:
        J = (torch.rand(b, t, n, generator=g, dtype=torch.float64) * 2 - 1) * scale
    else:
        J = torch.randn(b, t, n // k, k, k, generator=g, dtype=torch.float64)
        J = J / torch.linalg.matrix_norm(J, ord=2).clamp_min(1e-3)[..., None, None] * scale
    return J.to(device, dtype), r.to(device, dtype), h0.to(device, dtype)


def reference_scan(J, r, h0=None, k=1, reverse=False):
    """The recurrence as written, one step at a time, in float64."""
    J, r = J.double(), r.double()
    b, t, n = r.shape
    h = torch.zeros(b, n, dtype=torch.float64) if h0 is None else h0.double().clone()
    out = torch.empty(b, t, n, dtype=torch.float64)
    steps = range(t - 1, -1, -1) if reverse else range(t)
    for s in steps:
        if k == 1:
            h = J[:, s] * h + r[:, s]
        else:
            h = (J[:, s] @ h.reshape(b, n // k, k, 1)).reshape(b, n) + r[:, s]
        out[:, s] = h
    return out


def reference_adjoint(J, r, k=1, reverse=False):
    """The adjoint recurrence with an explicitly shifted, transposed J (J_{T+1} = J_0 = 0)."""
    Jt = J if k == 1 else J.transpose(-1, -2)
    zero = torch.zeros_like(Jt[:, :1])
    if not reverse:  # h_t = J_{t+1}^T h_{t+1} + r_t, t = T..1
        return reference_scan(torch.cat([Jt[:, 1:], zero], 1), r, None, k, reverse=True)
    return reference_scan(torch.cat([zero, Jt[:, :-1]], 1), r, None, k, reverse=False)


# ------------------------------------------------------------------------------ linear_scan

@pytest.mark.parametrize("k", BLOCKS)
@pytest.mark.parametrize("t", [1, 2, 3, 1000, 4097])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_matches_sequential_float64(k, t, reverse):
    b, n = 2, 12
    J, r, h0 = make_scan_inputs(b, t, n, k, seed=t + k)
    for init in (None, h0):
        h = pararnn.linear_scan(J, r, init, structure=structure_of(k), reverse=reverse)
        torch.testing.assert_close(h, reference_scan(J, r, init, k, reverse), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", BLOCKS + [6])
@pytest.mark.parametrize("t", [1, 2, 1000, 4097])
@pytest.mark.parametrize("reverse", [False, True])
def test_adjoint_scan_matches_shifted_transposed_reference(k, t, reverse):
    for b, n in ((2, 3 * k), (1, 8 * k)):  # (1, 8k): the time-chunked CPU path at long T
        J, r, _ = make_scan_inputs(b, t, n, k, seed=t + k)
        h = pararnn.linear_scan(J, r, None, structure_of(k), reverse, adjoint=True)
        torch.testing.assert_close(h, reference_adjoint(J, r, k, reverse), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_time_chunked_path(k, reverse):
    """B=1 and few channels leave fewer (batch x channel) units than threads, so the CPU kernel
    cuts time into chunks (three-phase scan); uneven chunk lengths via T = 4097."""
    J, r, h0 = make_scan_inputs(1, 4097, 8 * k, k, seed=k)
    h = pararnn.linear_scan(J, r, h0, structure=structure_of(k), reverse=reverse)
    torch.testing.assert_close(h, reference_scan(J, r, h0, k, reverse), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", BLOCKS)
def test_scan_float32_tolerance(k):
    """float32: the error grows like eps * T for |J| ~ 1; 1e-4 relative covers T = 4097."""
    J, r, h0 = make_scan_inputs(3, 4097, 24, k, dtype=torch.float32, seed=7)
    h = pararnn.linear_scan(J, r, h0, structure=structure_of(k))
    assert h.dtype == torch.float32
    ref = reference_scan(J, r, h0, k)
    torch.testing.assert_close(h.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scan_half_inputs_use_float32_math(dtype):
    J, r, h0 = make_scan_inputs(2, 300, 16, 2, dtype=torch.float32, seed=3)
    J, r, h0 = J.to(dtype), r.to(dtype), h0.to(dtype)
    for args in ((J, r, h0), (J, r, None)):
        for reverse in (False, True):
            h = pararnn.linear_scan(*args, structure="block", reverse=reverse)
            assert h.dtype == dtype
            # the kernel reads 16-bit values, computes in float32 and rounds each output once
            up = [None if a is None else a.float() for a in args]
            expect = pararnn.linear_scan(*up, structure="block", reverse=reverse).to(dtype)
            assert torch.equal(h, expect)
            ref = reference_scan(*up, k=2, reverse=reverse)
            torch.testing.assert_close(h.double(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scan_half_inputs_chunked_and_grad(dtype):
    """The time-chunked CPU path with 16-bit storage, and autograd through it."""
    J, r, h0 = make_scan_inputs(1, 4097, 8, 1, dtype=torch.float32, seed=9)
    J, r, h0 = (a.to(dtype).requires_grad_() for a in (J, r, h0))
    h = pararnn.linear_scan(J, r, h0)
    up = [a.detach().float() for a in (J, r, h0)]
    assert torch.equal(h, pararnn.linear_scan(*up).to(dtype))
    h.float().sum().backward()
    assert J.grad.dtype == dtype and torch.isfinite(J.grad.float()).all()


def test_scan_many_units_and_big_channels():
    """Many batch x channel tiles (the one-pass-per-unit path) and a partial last tile."""
    J, r, h0 = make_scan_inputs(5, 200, 3 * 70, 3, seed=11)
    h = pararnn.linear_scan(J, r, h0, structure="block")
    torch.testing.assert_close(h, reference_scan(J, r, h0, 3), rtol=1e-12, atol=1e-12)
    J, r, h0 = make_scan_inputs(4, 300, 130, 1, seed=12)
    torch.testing.assert_close(pararnn.linear_scan(J, r, h0), reference_scan(J, r, h0), rtol=1e-12, atol=1e-12)


def test_scan_exactly_representable_is_bit_exact():
    """J in {-1, 0, 1} and small integer r: every partial result is an exact integer, so the
    chunked scan must agree with the sequential loop bit for bit, in float32 too."""
    g = torch.Generator().manual_seed(5)
    J = torch.randint(-1, 2, (2, 3000, 8, 2, 2), generator=g).float()
    r = torch.randint(-3, 4, (2, 3000, 16), generator=g).float()
    h = pararnn.linear_scan(J, r, structure="block")
    ref = reference_scan(J, r, None, 2)
    finite = ref.abs() < 2**24
    assert torch.equal(h.double()[finite], ref[finite])


def test_scan_empty_and_noncontiguous():
    J, r, h0 = make_scan_inputs(2, 0, 4, 1)
    assert pararnn.linear_scan(J, r, h0).shape == (2, 0, 4)
    J, r, h0 = make_scan_inputs(2, 50, 6, 1)
    Jt = J.transpose(0, 1).contiguous().transpose(0, 1)   # same values, non-contiguous
    assert not Jt.is_contiguous()
    torch.testing.assert_close(pararnn.linear_scan(Jt, r, h0), reference_scan(J, r, h0))


@pytest.mark.parametrize("k", BLOCKS)
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_gradcheck(k, reverse):
    J, r, h0 = make_scan_inputs(2, 7, 2 * k, k, seed=k)
    args = [a.clone().requires_grad_() for a in (J, r, h0)]
    fn = lambda J, r, h0: pararnn.linear_scan(J, r, h0, structure_of(k), reverse)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)
    adj = lambda J, r: pararnn.linear_scan(J, r, None, structure_of(k), reverse, True)  # noqa: E731
    assert torch.autograd.gradcheck(adj, args[:2])
    assert torch.autograd.gradgradcheck(adj, args[:2])


@pytest.mark.parametrize("k", [1, 3])
def test_scan_gradient_matches_autograd_of_loop(k):
    J, r, h0 = make_scan_inputs(3, 500, 6, k, seed=2)
    a = [x.clone().requires_grad_() for x in (J, r, h0)]
    b = [x.clone().requires_grad_() for x in (J, r, h0)]
    w = torch.randn(3, 500, 6, dtype=torch.float64)
    (pararnn.linear_scan(*a, structure_of(k)) * w).sum().backward()
    (reference_scan(b[0], b[1], b[2], k) * w).sum().backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k", [1, 2])
def test_scan_opcheck(k):
    J, r, h0 = make_scan_inputs(2, 9, 4, k)
    for args in ((J, r, h0, k, False, False), (J, r, None, k, True, False),
                 (J, r, None, k, False, True), (J, r, None, k, True, True)):
        args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(torch.ops.fastpaper.pararnn_linear_scan, args)


def test_scan_torch_compile():
    J, r, h0 = make_scan_inputs(2, 64, 8, 2, dtype=torch.float32)
    fn = torch.compile(lambda J, r, h0: pararnn.linear_scan(J, r, h0, "block") * 2.0, fullgraph=True)
    torch.testing.assert_close(fn(J, r, h0), 2.0 * pararnn.linear_scan(J, r, h0, "block"))
    # backward through the compiled graph (the autograd formula is traced too)
    J, r = J.double().requires_grad_(), r.double().requires_grad_()
    loss = lambda J, r: (pararnn.linear_scan(J, r, None, "block") ** 2).sum()  # noqa: E731
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(J, r), [J, r])
    for a, b in zip(compiled, torch.autograd.grad(loss(J, r), [J, r])):
        torch.testing.assert_close(a, b)


def test_scan_bad_input():
    J, r, h0 = make_scan_inputs(2, 5, 6, 1)
    with pytest.raises(ValueError, match="structure"):
        pararnn.linear_scan(J, r, structure="dense")
    with pytest.raises(TypeError, match="J and r"):
        pararnn.linear_scan(J.float(), r)
    with pytest.raises(TypeError, match="r must"):
        pararnn.linear_scan(J, r.to(torch.int64))
    with pytest.raises(TypeError, match="J must be a torch.Tensor"):
        pararnn.linear_scan(J.numpy(), r)
    with pytest.raises(ValueError, match="r must have shape"):
        pararnn.linear_scan(J[0], r[0])
    with pytest.raises(ValueError, match="J must have the shape"):
        pararnn.linear_scan(J[:, :4], r)
    with pytest.raises(ValueError, match="h0 must have shape"):
        pararnn.linear_scan(J, r, h0[:1])
    with pytest.raises(TypeError, match="h0"):
        pararnn.linear_scan(J, r, h0.float())
    with pytest.raises(ValueError, match="J must have shape"):
        pararnn.linear_scan(J, r, structure="block")
    Jb = torch.zeros(2, 5, 2, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="J has shape"):
        pararnn.linear_scan(Jb, torch.zeros(2, 5, 7, dtype=torch.float64), structure="block")
    with pytest.raises(ValueError, match="block size"):
        pararnn.linear_scan(torch.zeros(2, 5, 1, 9, 9, dtype=torch.float64),
                            torch.zeros(2, 5, 9, dtype=torch.float64), structure="block")
    with pytest.raises(TypeError, match="reverse"):
        pararnn.linear_scan(J, r, reverse=1)
    with pytest.raises(TypeError, match="adjoint"):
        pararnn.linear_scan(J, r, adjoint=None)
    with pytest.raises(ValueError, match="adjoint"):
        pararnn.linear_scan(J, r, h0, adjoint=True)


def test_native_rejects_bad_sizes():
    """The nanobind layer checks element counts and dtypes itself (no crash on misuse)."""
    from fastpaper import _pararnn as C

    r = torch.zeros(2, 3, 4, dtype=torch.float64)
    h = torch.empty_like(r)
    with pytest.raises(ValueError):
        C.linear_scan(torch.zeros(5, dtype=torch.float64), r, None, h, 2, 3, 4, 1, False)
    with pytest.raises(ValueError):
        C.linear_scan(r, r, None, h, 2, 3, 5, 1, False)
    with pytest.raises(ValueError):
        C.linear_scan(torch.zeros(2, 3, 1, 4, 4, dtype=torch.float64), r, None, h, 2, 3, 4, 9, False)
    with pytest.raises(ValueError):
        C.linear_scan(r, r, None, h, 2, 3, 4, 0, False)
    with pytest.raises(TypeError):
        C.linear_scan(r.float(), r, None, h, 2, 3, 4, 1, False)
    with pytest.raises(ValueError, match="multiple of block"):
        r3 = torch.zeros(2, 3, 3, dtype=torch.float64)
        C.linear_scan(torch.zeros(2 * 3 * 3 * 2, dtype=torch.float64), r3, None, torch.empty_like(r3),
                      2, 3, 3, 2, False)


# ------------------------------------------------------------------------------ Newton

def sequential(step, x, h0, params):
    """h_t = step(h_{t-1}, x_t, params), one step at a time (autograd flows through the loop)."""
    out, h = [], h0
    for t in range(x.shape[1]):
        h = step(h, x[:, t], params)
        out.append(h)
    return torch.stack(out, dim=1) if out else x.new_zeros(x.shape[0], 0, h0.shape[1])


def sine_cell(h, x, params):
    """A custom diagonal cell: h' = a * sin(h) + x (contractive for |a| < 1)."""
    (a,) = params
    return a * torch.sin(h) + x


def rotation_cell(h, x, params):
    """A custom 3 x 3 block cell: h'_g = tanh(W_g h_g + x_g) with one W per group of 3 channels."""
    (W,) = params
    m, n = h.shape
    hg = h.reshape(m, n // 3, 3, 1)
    return torch.tanh((W @ hg).reshape(m, n) + x)


def gru_params(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, generator=g, dtype=torch.float64) * 0.5 for _ in range(3))


@pytest.mark.parametrize("t", [1, 2, 3, 1000, 4097])
def test_newton_gru_equals_sequential_float64(t):
    b, n = 2, 8
    g = torch.Generator().manual_seed(t)
    pre = torch.randn(b, t, 3 * n, generator=g, dtype=torch.float64)
    h0 = torch.randn(b, n, generator=g, dtype=torch.float64)
    params = gru_params(n)
    h, info = pararnn.newton_solve(gru_step, pre, h0, params)
    assert info.converged and info.iterations <= min(t, 10)
    assert info.converged_batch.shape == (b,) and bool(info.converged_batch.all())
    torch.testing.assert_close(h, sequential(gru_step, pre, h0, params), rtol=0, atol=1e-10)


@pytest.mark.parametrize("t", [1, 3, 1000])
def test_newton_lstm_block2_equals_sequential_float64(t):
    b, n = 3, 6
    g = torch.Generator().manual_seed(t)
    pre = torch.randn(b, t, 3 * n, generator=g, dtype=torch.float64)
    s0 = torch.randn(b, 2 * n, generator=g, dtype=torch.float64) * 0.5
    params = tuple(torch.randn(n, generator=g, dtype=torch.float64) * 0.5 for _ in range(5))
    s, info = pararnn.newton_solve(lstm_step, pre, s0, params, structure="block", block_size=2)
    assert info.converged
    torch.testing.assert_close(s, sequential(lstm_step, pre, s0, params), rtol=0, atol=1e-10)


def test_newton_custom_cells():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 500, 9, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, 9, generator=g, dtype=torch.float64)
    a = torch.full((9,), 0.7, dtype=torch.float64)
    h, info = pararnn.newton_solve(sine_cell, x, h0, (a,))
    assert info.converged
    torch.testing.assert_close(h, sequential(sine_cell, x, h0, (a,)), rtol=0, atol=1e-10)
    W = torch.randn(3, 3, 3, generator=g, dtype=torch.float64) * 0.4
    h, info = pararnn.newton_solve(rotation_cell, x, h0, (W,), structure="block", block_size=3)
    assert info.converged
    torch.testing.assert_close(h, sequential(rotation_cell, x, h0, (W,)), rtol=0, atol=1e-10)


def test_jacobian_structures_match_autograd():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(4, 9, generator=g, dtype=torch.float64)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64)
    W = torch.randn(3, 3, 3, generator=g, dtype=torch.float64)
    f, J = pararnn.jacobian(rotation_cell, h, x, (W,), "block", 3)
    full = torch.func.vmap(torch.func.jacrev(lambda hh, xx: rotation_cell(hh[None], xx[None], (W,))[0]))(h, x)
    for grp in range(3):
        s = slice(3 * grp, 3 * grp + 3)
        torch.testing.assert_close(J[:, grp], full[:, s, s])
    torch.testing.assert_close(f, rotation_cell(h, x, (W,)))
    a = torch.rand(9, generator=g, dtype=torch.float64)
    _, Jd = pararnn.jacobian(sine_cell, h, x, (a,), "diag")
    torch.testing.assert_close(Jd, a * torch.cos(h))


def test_newton_init_guess_and_float32():
    """float32: parallel and sequential agree to a few ulps of the state (documented: 1e-5)."""
    g = torch.Generator().manual_seed(3)
    pre = torch.randn(4, 2048, 3 * 16, generator=g)
    h0 = torch.zeros(4, 16)
    params = tuple(p.float() for p in gru_params(16))
    h, info = pararnn.newton_solve(gru_step, pre, h0, params)
    assert info.converged and h.dtype == torch.float32
    ref = sequential(gru_step, pre.double(), h0.double(), tuple(p.double() for p in params))
    torch.testing.assert_close(h.double(), ref, rtol=0, atol=1e-5)
    # starting from the solution: one iteration, delta ~ rounding
    h2, info2 = pararnn.newton_solve(gru_step, pre, h0, params, init=h)
    assert info2.iterations == 1 and info2.converged
    torch.testing.assert_close(h2, h, rtol=0, atol=1e-5)


def test_newton_nonconvergence_is_reported():
    g = torch.Generator().manual_seed(4)
    pre = torch.randn(2, 1000, 3 * 8, generator=g, dtype=torch.float64) * 3
    h0 = torch.zeros(2, 8, dtype=torch.float64)
    params = tuple(p * 4 for p in gru_params(8))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        h, info = pararnn.newton_solve(gru_step, pre, h0, params, max_iters=1)
    assert not info.converged and info.iterations == 1 and len(info.max_delta) == 1
    assert not bool(info.converged_batch.any())
    # a cell that blows up: Newton stops at the non-finite step and says so
    blowup = lambda h, x, p: torch.exp(h) * 50 + x  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, info = pararnn.newton_solve(blowup, pre[..., :8], h0, (), max_iters=20, warn=False)
    assert not info.converged
    # one batch element diverging does not stop the other from converging
    x2 = torch.stack([pre[0, :200, :8] * 0.1, pre[1, :200, :8] * 0.1])
    cell = lambda h, x, p: torch.where(p[0], torch.exp(h) * 50, 0.5 * torch.tanh(h)) + x  # noqa: E731
    which = torch.tensor([[True], [False]]).repeat_interleave(200, 0)
    _, info = pararnn.newton_solve(cell, x2, h0, (which,), max_iters=50, warn=False)
    assert info.converged_batch.tolist() == [False, True] and not info.converged
    # with max_iters >= T the triangular system is solved exactly, even from a bad guess
    h, info = pararnn.newton_solve(gru_step, pre[:, :5], h0, params, max_iters=5)
    assert info.converged
    torch.testing.assert_close(h, sequential(gru_step, pre[:, :5], h0, params), rtol=0, atol=1e-10)


@pytest.mark.parametrize("structure", ["diag", "block"])
def test_newton_gradients_match_autograd_of_loop(structure):
    g = torch.Generator().manual_seed(5)
    if structure == "diag":
        step, n, k = gru_step, 6, 1
        x = torch.randn(2, 300, 3 * n, generator=g, dtype=torch.float64)
        params = gru_params(n, 1)
    else:
        step, n, k = rotation_cell, 6, 3
        x = torch.randn(2, 300, n, generator=g, dtype=torch.float64)
        params = (torch.randn(2, 3, 3, generator=g, dtype=torch.float64) * 0.5,)
    h0 = torch.randn(2, n, generator=g, dtype=torch.float64)
    w = torch.randn(2, 300, n, generator=g, dtype=torch.float64)
    a = [t.clone().requires_grad_() for t in (x, h0, *params)]
    b = [t.clone().requires_grad_() for t in (x, h0, *params)]
    h, _ = pararnn.newton_solve(step, a[0], a[1], tuple(a[2:]), structure=structure, block_size=k)
    (h * w).sum().backward()
    (sequential(step, b[0], b[1], tuple(b[2:])) * w).sum().backward()
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10)


def test_newton_gradcheck():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.rand(4, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda x, h0, a: pararnn.newton_solve(sine_cell, x, h0, (a,), atol=1e-14, rtol=1e-14)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, h0, a))


def test_newton_partial_requires_grad():
    """Only some inputs need gradients: the others get none, and the VJP skips them."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 20, 5, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.zeros(2, 5, dtype=torch.float64)
    a = torch.full((5,), 0.5, dtype=torch.float64)
    h, _ = pararnn.newton_solve(sine_cell, x, h0, (a,))
    h.sum().backward()
    xr = x.detach().clone().requires_grad_()
    sequential(sine_cell, xr, h0, (a,)).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    assert a.grad is None and h0.grad is None


def test_newton_bad_input():
    x = torch.zeros(2, 5, 4, dtype=torch.float64)
    h0 = torch.zeros(2, 4, dtype=torch.float64)
    a = (torch.ones(4, dtype=torch.float64),)
    with pytest.raises(TypeError, match="step_fn"):
        pararnn.newton_solve(None, x, h0, a)
    with pytest.raises(ValueError, match="x must have shape"):
        pararnn.newton_solve(sine_cell, x[0, 0], h0, a)
    with pytest.raises(ValueError, match="h0 must have shape"):
        pararnn.newton_solve(sine_cell, x, h0[:1], a)
    with pytest.raises(ValueError, match="structure"):
        pararnn.newton_solve(sine_cell, x, h0, a, structure="dense")
    with pytest.raises(ValueError, match="block_size"):
        pararnn.newton_solve(sine_cell, x, h0, a, structure="block", block_size=3)
    with pytest.raises(ValueError, match="max_iters"):
        pararnn.newton_solve(sine_cell, x, h0, a, max_iters=0)
    with pytest.raises(TypeError, match=r"params\[0\]"):
        pararnn.newton_solve(sine_cell, x, h0, (1.0,))
    with pytest.raises(ValueError, match="init"):
        pararnn.newton_solve(sine_cell, x, h0, a, init=torch.zeros(2, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="atol"):
        pararnn.newton_solve(sine_cell, x, h0, a, atol=-1)


# ------------------------------------------------------------------------------ nn modules

@pytest.mark.parametrize("cls", [ParaGRU, ParaLSTM])
@pytest.mark.parametrize("heads", [1, 2])
def test_modules_parallel_equals_sequential(cls, heads):
    torch.manual_seed(0)
    m = cls(8, 12, num_heads=heads, dtype=torch.float64)
    x = torch.randn(3, 257, 8, dtype=torch.float64, requires_grad=True)
    m.mode = "loop"
    ys, last_s = m(x)
    gs = torch.autograd.grad((ys ** 2).sum(), [x, *m.parameters()])
    m.mode = "parallel"
    yp, last_p = m(x)
    gp = torch.autograd.grad((yp ** 2).sum(), [x, *m.parameters()])
    assert m.last_info.converged
    torch.testing.assert_close(yp, ys, rtol=0, atol=1e-10)
    torch.testing.assert_close(last_p, last_s, rtol=0, atol=1e-10)
    for a, b in zip(gp, gs):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_modules_initial_state_and_half_inputs():
    torch.manual_seed(1)
    lstm = ParaLSTM(4, 6, dtype=torch.float64)
    x = torch.randn(2, 40, 4, dtype=torch.float64)
    state = (torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64))
    yp, (c, h) = lstm(x, state)
    lstm.mode = "loop"
    ys, (cs, hs) = lstm(x, state)
    torch.testing.assert_close(yp, ys, rtol=0, atol=1e-10)
    torch.testing.assert_close(c, cs, rtol=0, atol=1e-10)
    gru = ParaGRU(4, 6, mode="parallel-generic")  # fp32 math on bf16 inputs, outputs rounded
    xb = torch.randn(2, 40, 4).bfloat16()
    y, hT = gru(xb)
    assert y.dtype == torch.bfloat16 and hT.dtype == torch.bfloat16
    torch.testing.assert_close(y, gru(xb.float())[0].bfloat16(), rtol=0, atol=0)


def test_modules_bad_arguments():
    with pytest.raises(ValueError, match="num_heads"):
        ParaGRU(5, 6, num_heads=2)
    with pytest.raises(ValueError, match="mode"):
        ParaGRU(4, 4, mode="fused")
    with pytest.raises(ValueError, match="hidden_size"):
        ParaLSTM(4, 0)
    m = ParaGRU(4, 6)
    with pytest.raises(ValueError, match=r"x must have shape"):
        m(torch.zeros(2, 3, 5))
    with pytest.raises(TypeError, match="floating"):
        m(torch.zeros(2, 3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="h0"):
        m(torch.zeros(2, 3, 4), torch.zeros(1, 6))
    with pytest.raises(TypeError, match="state"):
        ParaLSTM(4, 6)(torch.zeros(2, 3, 4), torch.zeros(2, 6))


# ------------------------------------------------------------------------------ CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("k", BLOCKS)
@pytest.mark.parametrize("t", [1, 3, 127, 4097])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_scan_matches_cpu(k, t, dtype):
    J, r, h0 = make_scan_inputs(3, t, 40 * k, k, dtype=dtype, seed=t)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    for reverse in (False, True):
        cpu = pararnn.linear_scan(J, r, h0, structure_of(k), reverse)
        gpu = pararnn.linear_scan(J.cuda(), r.cuda(), h0.cuda(), structure_of(k), reverse)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=tol, atol=tol)
        cpu = pararnn.linear_scan(J, r, None, structure_of(k), reverse, adjoint=True)
        gpu = pararnn.linear_scan(J.cuda(), r.cuda(), None, structure_of(k), reverse, adjoint=True)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=tol, atol=tol)


@pytest.mark.cuda
def test_cuda_scan_exact_and_gradients():
    g = torch.Generator().manual_seed(5)
    J = torch.randint(-1, 2, (2, 5000, 8, 2, 2), generator=g).float()
    r = torch.randint(-3, 4, (2, 5000, 16), generator=g).float()
    ref = reference_scan(J, r, None, 2)
    gpu = pararnn.linear_scan(J.cuda(), r.cuda(), structure="block").cpu().double()
    finite = ref.abs() < 2**24
    assert torch.equal(gpu[finite], ref[finite])
    J, r, h0 = make_scan_inputs(2, 20, 6, 3, seed=1)
    args = [a.cuda().requires_grad_() for a in (J, r, h0)]
    assert torch.autograd.gradcheck(lambda J, r, h0: pararnn.linear_scan(J, r, h0, "block"), args)


@pytest.mark.cuda
def test_cuda_modules_match_cpu():
    torch.manual_seed(0)
    for cls in (ParaGRU, ParaLSTM):
        m = cls(8, 16, dtype=torch.float64)
        x = torch.randn(2, 500, 8, dtype=torch.float64)
        y_cpu = m(x)[0]
        y_gpu = m.cuda()(x.cuda())[0]
        torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=0, atol=1e-10)


def test_demo_section_small():
    from fastpaper import demo

    (result,) = demo.run(demo.DemoConfig(small=True), ["pararnn"])
    cells, scan = result["tables"]
    assert {r["cell"] for r in cells["rows"]} == {"ParaGRU", "ParaLSTM"}
    assert all(r["converged"] == "True" and r["max_abs_diff"] < 1e-4 for r in cells["rows"])
    assert scan["rows"][0]["max_abs_diff"] < 1e-4
    assert "ParaRNN" in demo.format_section(result)


def test_newton_does_not_modify_inputs():
    """A cell may return a view of its input; Newton must not update it in place."""
    x = torch.randn(2, 50, 4, dtype=torch.float64)
    x_copy = x.clone()
    h0 = torch.zeros(2, 4, dtype=torch.float64)
    h, info = pararnn.newton_solve(lambda h, x, p: x, x, h0)
    assert info.converged and torch.equal(x, x_copy) and torch.equal(h, x)
    h, info = pararnn.newton_solve(lambda h, x, p: x + 0.5 * h, x, h0, max_iters=50)
    assert info.converged and torch.equal(x, x_copy)
    torch.testing.assert_close(h, sequential(lambda h, x, p: x + 0.5 * h, x, h0, ()), rtol=0, atol=1e-10)
