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
    h = pararnn.linear_scan(J, r, h0, structure="block")
    assert h.dtype == dtype
    expect = reference_scan(J.float(), r.float(), h0.float(), 2).to(dtype)
    torch.testing.assert_close(h, expect, rtol=0, atol=0)


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
    for args in ((J, r, h0, k, False), (J, r, None, k, True)):
        args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(torch.ops.fastpaper.pararnn_linear_scan, args)


def test_scan_torch_compile():
    J, r, h0 = make_scan_inputs(2, 64, 8, 2, dtype=torch.float32)
    fn = torch.compile(lambda J, r, h0: pararnn.linear_scan(J, r, h0, "block") * 2.0, fullgraph=True)
    torch.testing.assert_close(fn(J, r, h0), 2.0 * pararnn.linear_scan(J, r, h0, "block"))


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
