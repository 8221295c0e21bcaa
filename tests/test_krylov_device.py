"""fastpaper.krylov's torch backend (fastpaper.krylov_device): the code that runs on CUDA, run here
on torch's CPU kernels (device="cpu") against scipy's sparse direct solve and the C++ path, plus
the same checks on CUDA tensors (marked cuda)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl
import torch

from fastpaper import krylov, krylov_device
from fastpaper import krylov_pde as pde

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # n <= 1024 here: torch's CPU kernels spend more on waking a second OpenMP thread than on the
    # work (on a loaded 2-core CI machine, 10x more); the C++ path runs its BLAS on one thread too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_res(A, x, b) -> float:
    A64 = A.astype(np.complex128 if np.iscomplexobj(A.data) else np.float64)
    x64 = np.asarray(x).astype(A64.dtype)
    b64 = np.asarray(b).astype(A64.dtype)
    return float(np.linalg.norm(b64 - A64 @ x64) / np.linalg.norm(b64))


def torch_csr(A, device="cpu"):
    A = sp.csr_array(A)
    return torch.sparse_csr_tensor(torch.from_numpy(A.indptr), torch.from_numpy(A.indices),
                                   torch.from_numpy(A.data), size=A.shape,
                                   check_invariants=True).to(device)


@pytest.fixture(scope="module")
def darcy():
    fam = pde.Darcy(34)  # n = 1024, SPD, hard without a preconditioner
    return fam.assemble(fam.sample(0))


@pytest.fixture(scope="module")
def helmholtz():
    fam = pde.Helmholtz(18)  # n = 256, complex non-Hermitian, ~550 GCRO-DR(30, 10) steps
    return fam.assemble(fam.sample(0))


@pytest.mark.parametrize("family", ["darcy", "helmholtz"])
@pytest.mark.parametrize("method", ["gmres", "gcrodr"])
def test_torch_backend_matches_spsolve_and_the_cpp_iteration_counts(family, method, request):
    A, b = request.getfixturevalue(family)
    kw = dict(rtol=1e-9, m=30) | ({"k": 10} if method == "gcrodr" else {})
    x, info = getattr(krylov, method)(A, b, device="cpu", **kw)
    assert isinstance(x, np.ndarray) and x.dtype == A.dtype
    assert info.converged and rel_res(A, x, b) <= 1e-9 * (1 + 1e-6)
    assert info.residual_norm == pytest.approx(np.linalg.norm(b - A @ x), rel=1e-6)
    xs = spl.spsolve(A.tocsc(), b)
    np.testing.assert_allclose(x, xs, rtol=0, atol=1e-6 * np.abs(xs).max())
    assert info.residuals[0] == pytest.approx(np.linalg.norm(b))
    # the same algorithm as the C++ solver: iteration counts agree up to rounding
    _, ref = getattr(krylov, method)(A, b, **kw)
    assert ref.converged
    assert abs(info.iterations - ref.iterations) <= max(3, 0.05 * ref.iterations)
    assert info.cycles == pytest.approx(ref.cycles, abs=1)


def test_recycled_sequence_uses_fewer_matvecs_than_fresh_and_matches_cpp():
    params, As, bs = pde.sample_systems("darcy", 30, 5, seed=3)
    kw = dict(params=params, sort="greedy", m=30, k=10, rtol=1e-8)
    fresh = krylov.solve_sequence(As, bs, recycle=False, device="cpu", **kw)
    rec = krylov.solve_sequence(As, bs, device="cpu", **kw)
    cpp = krylov.solve_sequence(As, bs, **kw)
    assert all(i.converged for i in fresh.infos + rec.infos)
    assert rec.stats["matvecs"] < 0.9 * fresh.stats["matvecs"]
    first = int(rec.order[0])
    assert rec.infos[first].matvecs == fresh.infos[first].matvecs
    assert rec.stats["matvecs"] == pytest.approx(cpp.stats["matvecs"], rel=0.1)
    for A, b, x in zip(As, bs, rec.solutions):
        assert rel_res(A, x, b) <= 1e-8 * (1 + 1e-6)


def test_recycling_solver_keeps_U_as_a_tensor_and_moves_it_between_backends(helmholtz):
    A, b = helmholtz
    At, bt = torch_csr(A), torch.from_numpy(b)
    solver = krylov.RecyclingSolver(m=30, k=8, rtol=1e-8, device="cpu")
    x1, i1 = solver.solve(At, bt)
    assert isinstance(x1, torch.Tensor) and x1.dtype == torch.complex128
    assert solver.recycle.device == torch.device("cpu") and solver.recycle.dim == i1.recycle_dim >= 8
    U = solver.recycle.U
    assert isinstance(U, torch.Tensor) and U.shape == (A.shape[0], solver.recycle.dim)
    assert solver.recycle.dtype == np.complex128 and solver.recycle.is_complex
    # the same system again: range(U) holds the hard part
    _, i2 = solver.solve(At, bt)
    assert i2.converged and i2.iterations < i1.iterations
    # the space moves to the C++ backend (a host solve) and back
    x3, i3 = krylov.gcrodr(A, b, m=30, k=8, recycle=solver.recycle)
    assert i3.converged and i3.iterations < i1.iterations and solver.recycle.device is None
    _, i4 = solver.solve(At, bt)
    assert i4.converged and i4.iterations < i1.iterations
    solver.reset()
    assert solver.recycle.dim == 0


@pytest.mark.parametrize("family", ["darcy", "helmholtz"])
def test_single_precision_is_mixed_and_reaches_the_double_tolerance(family, request):
    A, b = request.getfixturevalue(family)
    dt = np.complex64 if family == "helmholtz" else np.float32
    A32, b32 = sp.csr_array(A, dtype=dt), b.astype(dt)
    x, info = krylov.gcrodr(A32, b32, rtol=1e-8, m=30, k=10, device="cpu")
    assert x.dtype == dt
    # the double iterate reached 1e-8, below float32's resolution; x is it rounded to float32
    assert info.converged and info.relative_residual <= 1e-8
    assert rel_res(A32, x, b32) <= 1e-5
    _, ref = krylov.gcrodr(A32, b32, rtol=1e-8, m=30, k=10)
    assert ref.converged
    assert info.iterations == pytest.approx(ref.iterations, rel=0.25, abs=5)


def test_preconditioners_and_torch_inputs(darcy):
    A, b = darcy
    At, bt = torch_csr(A), torch.from_numpy(b)
    xs = spl.spsolve(A.tocsc(), b)
    x0, plain = krylov.gmres(At, bt, rtol=1e-8, m=30, device="cpu")
    xj, jac = krylov.gmres(At, bt, rtol=1e-8, m=30, M="jacobi", device="cpu")
    _, jac_cpp = krylov.gmres(A, b, rtol=1e-8, m=30, M="jacobi")
    assert plain.converged and jac.converged
    assert abs(jac.iterations - jac_cpp.iterations) <= max(3, 0.05 * jac_cpp.iterations)
    dinv = 1.0 / torch.from_numpy(A.diagonal())
    seen = []
    xc, cal = krylov.gcrodr(At, bt, rtol=1e-8, m=30, k=10, M=lambda v: dinv * v,
                            callback=seen.append, device="cpu")
    assert cal.converged and len(seen) == cal.iterations
    for x in (x0, xj, xc):
        assert isinstance(x, torch.Tensor)
        np.testing.assert_allclose(x.numpy(), xs, rtol=0, atol=1e-6 * np.abs(xs).max())
    # a dense (strided) A and x0 = the solution: nothing to do
    Ad = torch.from_numpy(A.toarray())
    x2, i2 = krylov.gcrodr(Ad, bt, x0=xj, rtol=1e-6, device="cpu")
    assert i2.converged and i2.iterations == 0 and i2.matvecs == 1
    # the callback can stop the solve
    _, early = krylov.gmres(At, bt, callback=lambda r: True, device="cpu")
    assert early.iterations == 1 and not early.converged


def test_happy_breakdown_maxiter_and_stagnation():
    d = np.repeat([1.0, 2.0, 5.0], 20)
    A = sp.diags_array(d, format="csr")
    b = np.arange(1.0, 61.0)
    x, info = krylov.gcrodr(A, b, rtol=1e-12, m=10, k=4, device="cpu")
    assert info.converged and info.breakdown and info.iterations <= 3
    np.testing.assert_allclose(x, b / d, rtol=1e-10)
    x3, info3 = krylov.gcrodr(A, np.zeros(60), device="cpu")
    assert info3.converged and info3.iterations == 0 and not x3.any()
    S = sp.diags_array([1.0, 1.0, 0.0], format="csr")
    _, si = krylov.gmres(S, np.ones(3), m=2, maxiter=100, device="cpu")
    assert not si.converged and si.stagnated
    C = pde.Darcy(20)
    A, b = C.assemble(C.sample(0))
    x, mi = krylov.gmres(A, b, m=5, maxiter=7, rtol=1e-12, device="cpu")
    assert not mi.converged and mi.iterations == 7
    assert mi.residual_norm == pytest.approx(np.linalg.norm(b - A @ x), rel=1e-8)


def test_new_system_drops_dependent_columns_of_U(darcy):
    A, b = darcy
    n = A.shape[0]
    u = np.random.default_rng(2).standard_normal((n, 2))
    space = krylov.RecycleSpace()
    space.set(torch.from_numpy(np.column_stack([u[:, 0], u[:, 1], u[:, 0] + u[:, 1]])))
    assert space.dim == 3
    x, info = krylov.gcrodr(A, b, rtol=1e-8, m=30, k=10, recycle=space, device="cpu")
    assert info.converged and rel_res(A, x, b) <= 1e-8 * (1 + 1e-6)
    # C = A U computed for 3 columns, found rank 2, recomputed for 2; then one product per
    # Arnoldi step, one true residual for x0 and one per cycle
    assert info.matvecs == 3 + 2 + 1 + info.iterations + info.cycles
    assert space.dim >= 10 and space.device == torch.device("cpu")


@pytest.mark.parametrize("cplx", [False, True])
def test_harmonic_ritz_selection_reduced_and_pencil_paths_agree(cplx):
    # Ghat (mm + 1) x mm and Vhat^H What as in a cycle with kc = 2 recycled vectors, p = 6 steps
    rng = np.random.default_rng(5)
    kc, p = 2, 6
    mm = kc + p
    G = np.zeros((mm + 1, mm), dtype=complex if cplx else float)
    G[:kc, :kc] = np.diag(rng.uniform(0.5, 2, kc))
    G[:kc, kc:] = rng.standard_normal((kc, p))
    G[kc:, kc:] = np.triu(rng.standard_normal((p + 1, p)), -1)
    if cplx:
        G[kc:, kc:] += 1j * np.triu(rng.standard_normal((p + 1, p)), -1)
    VW = np.zeros_like(G)
    VW[:, :kc] = rng.standard_normal((mm + 1, kc))
    VW[np.arange(kc, mm), np.arange(kc, mm)] = 1
    tol = krylov_device._TOL[False]
    P1 = krylov_device._harmonic_select(G, VW, 3, 20, cplx, tol)
    # an impossible rank tolerance forces LAPACK ggev on the pencil (G^H G, G^H VW)
    P2 = krylov_device._harmonic_select(G, VW, 3, 20, cplx, dict(tol, rank_new=2.0))
    assert P1.shape == P2.shape and P1.shape[1] in (3, 4)  # 4: a real system kept a pair
    if not cplx:
        assert np.isrealobj(P1) and np.isrealobj(P2)
    Aq, Bq = G.conj().T @ G, G.conj().T @ VW
    theta = np.linalg.eigvals(np.linalg.solve(Bq, Aq))
    smallest = np.sort(np.abs(theta))[: P1.shape[1]]
    for P in (P1, P2):
        # range(P) is invariant: Aq P = Bq P L, and L's eigenvalues are the smallest |theta|
        L = np.linalg.lstsq(Bq @ P, Aq @ P, rcond=None)[0]
        assert np.linalg.norm(Aq @ P - Bq @ P @ L) <= 1e-9 * np.linalg.norm(Aq @ P)
        np.testing.assert_allclose(np.sort(np.abs(np.linalg.eigvals(L))), smallest, rtol=1e-8)


@pytest.mark.parametrize("M", [None, "jacobi"])
def test_block_product_for_a_new_system_equals_the_column_products(darcy, M):
    # the SpMM the CUDA path uses for C = A M^{-1} U, checked here on torch's CPU kernels
    A, _ = darcy
    op = krylov_device._Operator(torch_csr(A), torch.float64, M)
    U = torch.from_numpy(np.random.default_rng(4).standard_normal((5, A.shape[0])))
    rows = op.amv_rows(U)
    op.block = True
    torch.testing.assert_close(op.amv_rows(U), rows, rtol=1e-12, atol=1e-12)
    d = A.diagonal() if M == "jacobi" else np.ones(A.shape[0])
    np.testing.assert_allclose(rows.numpy(), (A @ (U.numpy() / d).T).T, rtol=1e-12, atol=1e-9)


class FakeCupyCsr:
    """Shaped like a cupyx.scipy.sparse.csr_matrix: CSR arrays that export DLPack."""

    format = "csr"

    def __init__(self, A):
        self.data, self.indices, self.indptr, self.shape = A.data, A.indices, A.indptr, A.shape


def test_cupy_like_sparse_matrix_is_taken_over_through_dlpack(darcy):
    A, b = darcy
    T = krylov_device.to_device_matrix(FakeCupyCsr(A), torch.device("cpu"))
    assert T.layout == torch.sparse_csr and T.shape == A.shape
    np.testing.assert_array_equal(T.values().numpy(), A.data)
    assert T.values().data_ptr() == A.data.ctypes.data  # zero-copy on the same device
    x, info = krylov.gcrodr(FakeCupyCsr(A), torch.from_numpy(b), rtol=1e-8, m=30, k=10,
                            device="cpu")
    assert info.converged and rel_res(A, x.numpy(), b) <= 1e-8 * (1 + 1e-6)
    assert krylov_device.device_of(FakeCupyCsr(A)) is None  # numpy arrays: host objects
    # arrays that export DLPack (as cupy's do) say where they live
    Tt = torch_csr(A)
    fake = FakeCupyCsr(A)
    fake.data, fake.indices, fake.indptr = Tt.values(), Tt.col_indices(), Tt.crow_indices()
    assert krylov_device.device_of(fake) == torch.device("cpu")
    assert krylov._array_device(fake) == ("cpu", None)


def test_bad_input_errors(darcy):
    A, b = darcy
    At, bt = torch_csr(A), torch.from_numpy(b)
    meta = torch.empty(A.shape[0], dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="b: is on meta, A is on the host"):
        krylov.gcrodr(At, meta)
    with pytest.raises(ValueError, match="x0: is on meta"):
        krylov.gmres(A, b, x0=meta)
    with pytest.raises(ValueError, match="M: 'ilu0' is only"):
        krylov.gcrodr(At, bt, M="ilu0", device="cpu")
    with pytest.raises(TypeError, match="M: on a device"):
        krylov.gcrodr(At, bt, M=spl.aslinearoperator(A), device="cpu")
    with pytest.raises(ValueError, match="M: returned 3 values"):
        krylov.gmres(At, bt, M=lambda v: v[:3], device="cpu")
    with pytest.raises(ValueError, match="M: Jacobi needs a non-zero diagonal"):
        krylov.gmres(sp.csr_array(np.array([[0.0, 1.0], [1.0, 1.0]])), np.ones(2), M="jacobi",
                     device="cpu")
    with pytest.raises(ValueError, match="A: must be square"):
        krylov.gcrodr(torch.ones(3, 4), torch.ones(3), device="cpu")
    with pytest.raises(ValueError, match="b: expected 1024 values"):
        krylov.gcrodr(At, torch.ones(5), device="cpu")
    with pytest.raises(ValueError, match="b: contains NaN"):
        krylov.gcrodr(At, torch.full((A.shape[0],), float("nan")), device="cpu")
    bad = At.values().clone()
    bad[3] = float("inf")
    with pytest.raises(ValueError, match="A: contains NaN"):
        krylov.gcrodr(torch.sparse_csr_tensor(At.crow_indices(), At.col_indices(), bad,
                                              size=At.shape, check_invariants=True), bt,
                      device="cpu")
    with pytest.raises(ValueError, match="device:"):
        krylov.gcrodr(A, b, device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda' asked for, but torch sees no CUDA"):
            krylov.gcrodr(A, b, device="cuda")
    with pytest.raises(ValueError, match="k: must be smaller than m"):
        krylov.gcrodr(At, bt, m=5, k=5, device="cpu")
    space = krylov.RecycleSpace()
    krylov.gcrodr(At, bt, m=20, k=4, recycle=space, device="cpu", maxiter=40)
    with pytest.raises(ValueError, match="recycle: the space holds float64"):
        krylov.gcrodr(At.to(torch.complex128), bt.to(torch.complex128), recycle=space,
                      device="cpu")


def test_the_numpy_path_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, numpy as np, scipy.sparse as sp; from fastpaper import krylov; "
            "krylov.gcrodr(sp.eye_array(4, format='csr'), np.ones(4)); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- CUDA: the same checks on device tensors (skipped without a GPU) -------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("family", ["darcy", "helmholtz"])
@pytest.mark.parametrize("single", [False, True])
def test_cuda_gcrodr_recycled_sequence_matches_spsolve_and_the_cpp_path(family, single):
    params, As, bs = pde.sample_systems(family, 50, 3, seed=1)
    cplx = family == "helmholtz"
    dt = (torch.complex64 if cplx else torch.float32) if single else (
        torch.complex128 if cplx else torch.float64)
    solver = krylov.RecyclingSolver(40, 20, rtol=1e-8)
    host = krylov.RecyclingSolver(40, 20, rtol=1e-8)  # the C++ path on the same sequence
    mv = []
    for A, b in zip(As, bs):
        At = torch_csr(A, "cuda").to(dt)
        bt = torch.from_numpy(b).to("cuda", dt)
        x, info = solver.solve(At, bt)
        assert x.device.type == "cuda" and x.dtype == dt
        assert solver.recycle.device.type == "cuda"
        assert info.converged and info.relative_residual <= 1e-8
        assert rel_res(A, x.cpu().numpy(), b) <= (1e-5 if single else 1e-8 * (1 + 1e-6))
        xs = spl.spsolve(A.tocsc(), b)
        np.testing.assert_allclose(x.cpu().numpy(), xs, rtol=0, atol=1e-4 * np.abs(xs).max())
        mv.append(info.matvecs)
        _, ref = host.solve(A.astype(_NP[dt]), b.astype(_NP[dt]))
        assert info.iterations == pytest.approx(ref.iterations, rel=0.25, abs=5)
    assert np.mean(mv[1:]) < mv[0]  # recycling helps once U exists


_NP = {torch.float32: np.float32, torch.float64: np.float64, torch.complex64: np.complex64,
       torch.complex128: np.complex128}


@pytest.mark.cuda
def test_cuda_gmres_jacobi_callable_and_device_mismatch(darcy):
    A, b = darcy
    At, bt = torch_csr(A, "cuda"), torch.from_numpy(b).cuda()
    xs = spl.spsolve(A.tocsc(), b)
    dinv = 1.0 / torch.from_numpy(A.diagonal()).cuda()
    for M in (None, "jacobi", lambda v: dinv * v):
        x, info = krylov.gmres(At, bt, rtol=1e-9, m=30, M=M)
        assert info.converged and x.is_cuda
        np.testing.assert_allclose(x.cpu().numpy(), xs, rtol=0, atol=1e-6 * np.abs(xs).max())
    with pytest.raises(ValueError, match="b: is on the host, A is on cuda"):
        krylov.gmres(At, b)
    with pytest.raises(ValueError, match="M: 'ilu0'"):
        krylov.gmres(At, bt, M="ilu0")
    # numpy inputs forced onto the GPU come back as numpy
    x, info = krylov.gcrodr(A, b, rtol=1e-9, m=30, k=10, device="cuda")
    assert isinstance(x, np.ndarray) and info.converged
