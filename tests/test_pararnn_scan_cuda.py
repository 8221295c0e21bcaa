"""ParaRNN linear scan on CUDA, both kernels forced on the same inputs
(cuda/pararnn/pararnn_cuda.cu: the per-chain kernel and the multi-block decoupled look-back
kernel, chosen by FASTPAPER_PARARNN_SCAN=chain|lookback), against the CPU op: long T with tiny
batch x channels (where the look-back kernel cuts time into many blocks), block sizes 1..4,
reverse, adjoint, h0 or not, 16-bit storage, exactly representable inputs, autograd and CUDA
graph capture. The host emulation of the look-back kernel is tests/cpp/test_pararnn_lookback.cpp."""

from __future__ import annotations

import pytest
import torch
from test_pararnn import make_scan_inputs, reference_adjoint, reference_scan, structure_of

from fastpaper import pararnn

pytestmark = pytest.mark.cuda

PATHS = ["chain", "lookback"]
BLOCKS = [1, 2, 3, 4]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    monkeypatch.setenv("FASTPAPER_PARARNN_SCAN", request.param)
    return request.param


def assert_matches(gpu, cpu, dtype):
    if dtype == torch.float64:
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-12, atol=1e-12)
    else:  # float32: the error grows like eps * T (test_pararnn.test_scan_float32_tolerance)
        scale = float(cpu.abs().max()) if cpu.numel() else 1.0
        torch.testing.assert_close(gpu.cpu().double(), cpu.double(), rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("k", BLOCKS)
@pytest.mark.parametrize("t", [1, 2, 4097, 100003])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_long_t_small_bn_matches_cpu(path, k, t, dtype):
    # (1, 8k): one chain of 8 groups; (2, 40k): two tiles per batch element, the second partial
    shapes = [(1, 8 * k)] if t > 5000 else [(1, 8 * k), (2, 40 * k)]
    for b, n in shapes:
        J, r, h0 = make_scan_inputs(b, t, n, k, dtype=dtype, seed=t + k)
        Jc, rc, h0c = J.cuda(), r.cuda(), h0.cuda()
        s = structure_of(k)
        for reverse in (False, True):
            for init, init_c in ((h0, h0c), (None, None)):
                cpu = pararnn.linear_scan(J, r, init, s, reverse)
                assert_matches(pararnn.linear_scan(Jc, rc, init_c, s, reverse), cpu, dtype)
            cpu = pararnn.linear_scan(J, r, None, s, reverse, adjoint=True)
            assert_matches(pararnn.linear_scan(Jc, rc, None, s, reverse, adjoint=True), cpu, dtype)


def test_both_paths_agree_and_match_reference_float64(monkeypatch):
    """The two kernels against each other and against the sequential float64 loop."""
    J, r, h0 = make_scan_inputs(1, 30001, 6, 3, seed=3)
    ref = reference_scan(J, r, h0, 3, reverse=True)
    out = {}
    for p in PATHS:
        monkeypatch.setenv("FASTPAPER_PARARNN_SCAN", p)
        out[p] = pararnn.linear_scan(J.cuda(), r.cuda(), h0.cuda(), "block", reverse=True).cpu()
        torch.testing.assert_close(out[p], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["chain"], out["lookback"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("t", [4097, 100003])
def test_half_storage_long_t(path, dtype, k, t):
    """16-bit storage, float32 math, each output rounded once: within a rounding of the CPU op."""
    J, r, h0 = make_scan_inputs(1, t, 8 * k, k, dtype=torch.float32, seed=k)
    J, r, h0 = J.to(dtype), r.to(dtype), h0.to(dtype)
    s = structure_of(k)
    for reverse in (False, True):
        cpu = pararnn.linear_scan(J, r, h0, s, reverse)
        gpu = pararnn.linear_scan(J.cuda(), r.cuda(), h0.cuda(), s, reverse)
        assert gpu.dtype == dtype
        torch.testing.assert_close(gpu.cpu().float(), cpu.float(), rtol=2e-2, atol=2e-2)
        cpu = pararnn.linear_scan(J, r, None, s, reverse, adjoint=True)
        gpu = pararnn.linear_scan(J.cuda(), r.cuda(), None, s, reverse, adjoint=True)
        torch.testing.assert_close(gpu.cpu().float(), cpu.float(), rtol=2e-2, atol=2e-2)


def partial_signed_permutations(shape, k, g):
    """k x k blocks with at most one entry +-1 per row and per column (a signed permutation with
    some rows zeroed): every product of them is again such a block, so all compositions, in any
    association, have entries in {-1, 0, 1}."""
    perm = torch.argsort(torch.rand(*shape, k, generator=g), dim=-1)
    sign = torch.randint(0, 2, (*shape, k), generator=g).float() * 2 - 1
    keep = (torch.rand(*shape, k, generator=g) > 0.2).float()
    J = torch.zeros(*shape, k, k)
    J.scatter_(-1, perm.unsqueeze(-1), (sign * keep).unsqueeze(-1))
    return J


@pytest.mark.parametrize("k", [1, 2, 3])
def test_exactly_representable_is_bit_exact(path, k):
    """Integer r and J blocks whose products stay in {-1, 0, 1}: every partial result is an
    integer below 3 T < 2^24, so any association of the compositions (chunks, blocks, look-back
    windows) must give the sequential loop's bits."""
    g = torch.Generator().manual_seed(k)
    t, n = 20001, 8 * k  # about 300 look-back blocks of 64 steps
    J = partial_signed_permutations((1, t, n // k), k, g)
    if k == 1:
        J = J.reshape(1, t, n)
    r = torch.randint(-3, 4, (1, t, n), generator=g).float()
    for reverse in (False, True):
        ref = reference_scan(J, r, None, k, reverse)
        gpu = pararnn.linear_scan(J.cuda(), r.cuda(), None, structure_of(k), reverse).cpu().double()
        assert torch.equal(gpu, ref)
        ref = reference_adjoint(J, r, k, reverse)
        gpu = pararnn.linear_scan(J.cuda(), r.cuda(), None, structure_of(k), reverse, adjoint=True)
        assert torch.equal(gpu.cpu().double(), ref)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("reverse", [False, True])
def test_autograd_backward_matches_cpu(path, k, reverse):
    """Backward is the adjoint scan (the same CUDA kernels) plus torch ops: gradients of J, r, h0
    equal the CPU op's."""
    J, r, h0 = make_scan_inputs(1, 20001, 4 * k, k, seed=5 + k)
    w = torch.randn(r.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = []
    for dev in ("cpu", "cuda"):
        args = [a.to(dev).requires_grad_() for a in (J, r, h0)]
        h = pararnn.linear_scan(*args, structure_of(k), reverse)
        (h * w.to(dev)).sum().backward()
        grads.append([a.grad.cpu() for a in args])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-11)


def test_gradcheck_lookback(monkeypatch):
    monkeypatch.setenv("FASTPAPER_PARARNN_SCAN", "lookback")
    J, r, h0 = make_scan_inputs(1, 150, 4, 2, seed=2)  # 150 steps: 3 time blocks of 64
    args = [a.cuda().requires_grad_() for a in (J, r, h0)]
    # nondet_tol: the look-back's last bits may vary between runs (see the kernel's header)
    assert torch.autograd.gradcheck(lambda J, r, h0: pararnn.linear_scan(J, r, h0, "block"), args,
                                    nondet_tol=1e-12)


def test_lookback_cuda_graph_capture(monkeypatch):
    """The look-back workspace is a stream-ordered allocation: the op can be captured and replayed
    (replays re-zero the workspace). Look-back results may differ in the last bits from run to run
    (which predecessors a block finds INCLUSIVE depends on timing), hence a tolerance."""
    monkeypatch.setenv("FASTPAPER_PARARNN_SCAN", "lookback")
    J, r, h0 = (a.cuda() for a in make_scan_inputs(1, 40000, 16, 1, seed=4))
    want = reference_scan(J.cpu(), r.cpu(), h0.cpu())
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        pararnn.linear_scan(J, r, h0)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = pararnn.linear_scan(J, r, h0)
    for _ in range(3):
        out.zero_()
        g.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out.cpu(), want, rtol=1e-12, atol=1e-12)


def test_bad_path_env_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FASTPAPER_PARARNN_SCAN", "fastest")
    J, r, _ = make_scan_inputs(1, 10, 4, 1, device="cuda")
    with pytest.raises(ValueError, match="FASTPAPER_PARARNN_SCAN"):
        pararnn.linear_scan(J, r)
