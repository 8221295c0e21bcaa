"""rnn: every CUDA kernel family (persistent, cluster, cooperative, step), forced through
fastpaper._rnn.set_cuda_path (the FASTPAPER_RNN_PATH setting), against the CPU op in float64 on the
same rounded inputs: large heads (DH 128, 256, 768), one and two heads, all cells and storage
types, variable lengths and initial states, forward outputs and all gradients. A forced family that
cannot run a shape must say so (ValueError naming the path) rather than run another one; the ones
that must fit an H100/H200 are asserted to run. The setter's validation runs on the CPU too."""

from __future__ import annotations

import pytest
import torch

from fastpaper import rnn
from rnn_reference import DIMS, random_inputs

CELLS = ["lstm", "gru", "elman", "slstm"]
CELL_ID = {"lstm": 0, "gru": 1, "elman": 2, "slstm": 3}
PATHS = ["persistent", "cluster", "cooperative", "step"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# as test_rnn.test_cuda_forward_backward_matches_cpu: the GPU feeds h to the tensor cores in the
# storage type, so errors grow with DH and T
TOL = {torch.float32: 2e-3, torch.float16: 2e-2, torch.bfloat16: 8e-2}


def _native():
    from fastpaper import _native as loader

    return loader.load("rnn")


@pytest.fixture
def forced_path():
    """Yields a setter for the CUDA path; restores the previous setting afterwards."""
    nat = _native()
    before = nat.get_cuda_path()
    yield nat.set_cuda_path
    nat.set_cuda_path(before)


def test_set_cuda_path_validates_and_round_trips(forced_path):
    nat = _native()
    with pytest.raises(ValueError, match="path must be"):
        forced_path("fastest")
    for p in PATHS + ["auto"]:
        forced_path(p)
        assert nat.get_cuda_path() == p


def _hopper_class() -> bool:
    """sm_90+ with H100/H200 resources (227 KB shared memory per block, >= 132 SMs)."""
    p = torch.cuda.get_device_properties(0)
    optin = getattr(p, "shared_memory_per_block_optin", 0)
    return p.major >= 9 and optin >= 227 * 1024 and p.multi_processor_count >= 132


def _must_run(path, dtype, DH) -> bool:
    """Shapes below (B <= 18, NH <= 2) that each family must accept on an H100/H200."""
    if path == "step":
        return True
    if not _hopper_class():
        return False
    if path == "cooperative":
        return True
    if path == "cluster":
        return DH <= 256
    return DH == 128 and dtype != torch.float32  # persistent: R_n (128 KB in 16 bit) fits


def _path_or_error(dtype, B, T, NH, DH, cell, backward):
    try:
        return _native().cuda_path(str(dtype)[6:], B, T, NH, DH, CELL_ID[cell], backward), None
    except ValueError as e:
        return None, str(e)


def _case(cell, dtype, DH, NH):
    """Inputs (rounded to dtype), lengths and output cotangents of one forced-path case."""
    B, T = (18, 7) if NH == 1 else (5, 9)  # B = 18: two batch tiles, the second mostly padding
    Wx, R, b, st = (t.to(dtype) for t in random_inputs(cell, B, T, NH, DH, seed=DH + NH))
    lengths = torch.randint(0, T + 1, (B,), generator=torch.Generator().manual_seed(DH))
    lengths[0] = T
    gen = torch.Generator().manual_seed(1)
    gh = torch.randn(B, T, NH, DH, generator=gen)
    gl = torch.randn(DIMS[cell][2], B, NH, DH, generator=gen)
    return (Wx, R, b, st), lengths, gh, gl


def _run(case, cell, device, cast, grad):
    (Wx, R, b, st), lengths, gh, gl = case
    ins = [t.to(device=device, dtype=cast).requires_grad_(grad) for t in (Wx, R, b, st)]
    h, last = rnn.flashrnn(*ins, cell=cell, lengths=lengths.to(device))
    if not grad:
        return [h.double().cpu(), last.double().cpu()]
    loss = (h.float() * gh.to(device)).sum() + (last.float() * gl.to(device)).sum()
    loss.backward()
    return [h.double().cpu(), last.double().cpu()] + [i.grad.double().cpu() for i in ins]


@pytest.mark.cuda
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("DH", [128, 256, 768])
@pytest.mark.parametrize("NH", [1, 2])
def test_forced_paths_match_cpu(forced_path, cell, dtype, DH, NH):
    B, T = (18, 7) if NH == 1 else (5, 9)
    case = _case(cell, dtype, DH, NH)
    want = {True: None, False: None}  # the CPU op in float64, with and without the backward
    for path in PATHS:
        forced_path(path)
        fwd_path, fwd_err = _path_or_error(dtype, B, T, NH, DH, cell, False)
        bwd_path, bwd_err = _path_or_error(dtype, B, T, NH, DH, cell, True)
        if _must_run(path, dtype, DH):
            assert fwd_err is None and bwd_err is None, (path, fwd_err, bwd_err)
        for p, err in ((fwd_path, fwd_err), (bwd_path, bwd_err)):
            assert p == path if err is None else f"'{path}'" in err and "cannot run" in err
        if fwd_err is not None:
            with pytest.raises(ValueError, match="cannot run"):
                _run(case, cell, "cuda", dtype, False)
            continue
        grad = bwd_err is None
        if not grad:  # the forward runs; the backward refuses
            with pytest.raises(ValueError, match="cannot run"):
                _run(case, cell, "cuda", dtype, True)
        got = _run(case, cell, "cuda", dtype, grad)
        if want[grad] is None:
            want[grad] = _run(case, cell, "cpu", torch.float64, grad)
        for name, g, w in zip(("h", "last", "dWx", "dR", "db", "dstates"), got, want[grad]):
            scale = max(1.0, w.abs().max().item())
            torch.testing.assert_close(g, w, atol=TOL[dtype] * scale, rtol=TOL[dtype],
                                       msg=f"{path}: {name}")


@pytest.mark.cuda
@pytest.mark.parametrize("path", ["cluster", "cooperative"])
@pytest.mark.parametrize("cell", CELLS)
def test_sliced_paths_zero_initial_states_long_sequence(forced_path, path, cell):
    # without initial states, over T = 64 (the double buffers wrap many times)
    B, T, NH, DH = 3, 64, 1, 256
    Wx, R, b, _ = random_inputs(cell, B, T, NH, DH, states=False, seed=5)
    Wx, R, b = (t.to(torch.bfloat16) for t in (Wx, R, b))
    forced_path(path)
    got_path, err = _path_or_error(torch.bfloat16, B, T, NH, DH, cell, False)
    if err is not None:
        assert not _must_run(path, torch.bfloat16, DH), err
        with pytest.raises(ValueError, match="cannot run"):
            rnn.flashrnn(Wx.cuda(), R.cuda(), b.cuda(), cell=cell)
        return
    assert got_path == path
    want = rnn.flashrnn(Wx.double(), R.double(), b.double(), cell=cell)
    got = rnn.flashrnn(Wx.cuda(), R.cuda(), b.cuda(), cell=cell)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double().cpu(), w, atol=8e-2, rtol=8e-2)


@pytest.mark.cuda
def test_auto_path_takes_the_sliced_kernels_for_large_heads(forced_path):
    forced_path("auto")
    nat = _native()
    cases = [  # (dtype, B, T, NH, DH, cell id, backward) -> the family on an H100/H200
        (("bfloat16", 16, 1024, 1, 768, 0, False), "cooperative"),  # the LSTM 1 x 768
        (("bfloat16", 16, 1024, 1, 768, 0, True), "cooperative"),
        (("bfloat16", 16, 1024, 3, 256, 0, False), "cluster"),
        (("bfloat16", 16, 1024, 3, 256, 0, True), "cluster"),
        (("float32", 16, 64, 1, 128, 0, True), "cluster"),
        (("bfloat16", 16, 1024, 12, 64, 3, False), "persistent"),
    ]
    for args, want in cases:
        got = nat.cuda_path(*args)
        if _hopper_class():
            assert got == want, (args, got)
        else:  # other GPUs: no cluster before sm_90; the rest depends on their resources
            assert got in PATHS and (got != "cluster" or torch.cuda.get_device_capability()[0] >= 9)


@pytest.mark.cuda
@pytest.mark.parametrize("path", ["cluster", "cooperative"])
def test_sliced_paths_capture_in_cuda_graphs(forced_path, path):
    forced_path(path)
    Wx, R, b, st = (t.to(torch.bfloat16).cuda() for t in random_inputs("lstm", 16, 32, 1, 256))
    got_path, err = _path_or_error(torch.bfloat16, 16, 32, 1, 256, "lstm", False)
    if err is not None:
        assert not _must_run(path, torch.bfloat16, 256), err
        return
    assert got_path == path
    with torch.no_grad():
        want = rnn.flashrnn(Wx, R, b, st, "lstm")[0]
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            rnn.flashrnn(Wx, R, b, st, "lstm")
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            out = rnn.flashrnn(Wx, R, b, st, "lstm")[0]
        g.replay()
        torch.cuda.synchronize()
    torch.testing.assert_close(out, want, atol=0, rtol=0)
