"""fastpaper.krylov: GMRES / GCRO-DR against scipy's sparse direct solve, recycling, edge cases,
bad input, sorting and solve_sequence."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl

from fastpaper import krylov
from fastpaper import krylov_pde as pde


def convdiff_matrix(s: int, c: float = 20.0) -> sp.csr_array:
    """Central-difference convection-diffusion on an s x s grid (nonsymmetric, h^2-scaled)."""
    h = 1.0 / (s + 1)
    T = sp.diags_array([-1.0 - c * h / 2, 2.0, -1.0 + c * h / 2], offsets=[-1, 0, 1], shape=(s, s))
    I = sp.eye_array(s)
    return sp.csr_array(sp.kron(I, T) + sp.kron(T, sp.eye_array(s)))


def rel_res(A, x, b) -> float:
    return float(np.linalg.norm(b - A @ x) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def system():
    A = convdiff_matrix(30)
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    return A, b


@pytest.mark.parametrize("method", ["gmres", "gcrodr"])
@pytest.mark.parametrize("M", [None, "jacobi", "ilu0"])
def test_solvers_reach_tolerance_and_match_spsolve(system, method, M):
    A, b = system
    f = getattr(krylov, method)
    x, info = f(A, b, rtol=1e-10, m=30, M=M)
    assert info.converged and not info.stagnated
    assert rel_res(A, x, b) <= 1e-10 * (1 + 1e-6)
    assert info.residual_norm == pytest.approx(np.linalg.norm(b - A @ x), rel=1e-6, abs=1e-14)
    xs = spl.spsolve(A.tocsc(), b)
    np.testing.assert_allclose(x, xs, rtol=0, atol=1e-7 * np.abs(xs).max())
    assert info.residuals[0] == pytest.approx(np.linalg.norm(b))
    assert info.matvecs >= info.iterations > 0


def test_gcrodr_deflation_beats_gmres_on_hard_problem():
    # Darcy at 48^2 unknowns: GMRES(20) restarts lose the small eigenvalues, GCRO-DR keeps them.
    fam = pde.Darcy(50)
    A, b = fam.assemble(fam.sample(0))
    _, g = krylov.gmres(A, b, m=20)
    _, d = krylov.gcrodr(A, b, m=20, k=10)
    assert g.converged and d.converged
    assert d.matvecs < 0.8 * g.matvecs


def test_recycling_across_sorted_darcy_sequence_uses_fewer_matvecs():
    params, As, bs = pde.sample_systems("darcy", 40, 10, seed=3)
    fresh = krylov.solve_sequence(As, bs, params=params, sort="greedy", recycle=False, m=30, k=10)
    rec = krylov.solve_sequence(As, bs, params=params, sort="greedy", m=30, k=10)
    assert all(i.converged for i in fresh.infos + rec.infos)
    assert rec.stats["matvecs"] < 0.85 * fresh.stats["matvecs"]
    # the first solved system has no recycle space yet: identical work in both runs
    first = int(rec.order[0])
    assert rec.infos[first].matvecs == fresh.infos[first].matvecs
    for A, b, x in zip(As, bs, rec.solutions):
        assert rel_res(A, x, b) <= 1e-8 * (1 + 1e-6)


def test_recycling_solver_keeps_U_and_resets(system):
    A, b = system
    solver = krylov.RecyclingSolver(m=30, k=8)
    _, i1 = solver.solve(A, b)
    assert solver.recycle.dim in (8, 9) and solver.recycle.n == A.shape[0]
    U = solver.recycle.U
    assert U.shape == (A.shape[0], solver.recycle.dim) and np.isfinite(U).all()
    _, i2 = solver.solve(A, b)  # same system again: range(U) already holds the hard part
    assert i2.converged and i2.iterations < i1.iterations
    solver.reset()
    assert solver.recycle.dim == 0
    with pytest.raises(ValueError, match="recycle space has length"):
        solver.solve(A, b)  # builds a space for n
        solver.solve(convdiff_matrix(5), np.ones(25))


def test_recycle_space_set_get_roundtrip(system):
    A, b = system
    n = A.shape[0]
    space = krylov.RecycleSpace()
    U = np.random.default_rng(1).standard_normal((n, 4))
    space.set(U)
    np.testing.assert_array_equal(space.U, U)
    x, info = krylov.gcrodr(A, b, m=20, k=4, recycle=space)
    assert info.converged and space.dim >= 4
    with pytest.raises(ValueError, match="U"):
        space.set(np.full((n, 2), np.nan))


def test_happy_breakdown_and_already_converged():
    d = np.repeat([1.0, 2.0, 5.0], 20)
    A = sp.diags_array(d, format="csr")
    b = np.arange(1.0, 61.0)
    x, info = krylov.gcrodr(A, b, rtol=1e-12, m=10, k=4)
    assert info.converged and info.breakdown and info.iterations <= 3
    np.testing.assert_allclose(x, b / d, rtol=1e-10)
    x2, info2 = krylov.gmres(A, b, x, rtol=1e-10)
    assert info2.converged and info2.iterations == 0 and info2.matvecs == 1
    # zero right-hand side: x = 0 immediately
    x3, info3 = krylov.gcrodr(A, np.zeros(60))
    assert info3.converged and info3.iterations == 0 and not x3.any()


def test_maxiter_and_stagnation_are_reported(system):
    A, b = system
    x, info = krylov.gmres(A, b, m=5, maxiter=7, rtol=1e-12)
    assert not info.converged and info.iterations == 7
    assert info.residual_norm == pytest.approx(np.linalg.norm(b - A @ x), rel=1e-8)
    # a singular, inconsistent system: GMRES can only stall
    S = sp.diags_array([1.0, 1.0, 0.0], format="csr")
    _, si = krylov.gmres(S, np.ones(3), m=2, maxiter=100)
    assert not si.converged and si.stagnated


def test_linear_operator_callable_preconditioner_callback(system):
    A, b = system
    op = spl.aslinearoperator(A)
    dinv = 1.0 / A.diagonal()
    seen = []
    x, info = krylov.gcrodr(op, b, M=lambda v: dinv * v, callback=seen.append, m=30, k=10)
    assert info.converged and rel_res(A, x, b) <= 1e-8 * (1 + 1e-6)
    assert len(seen) == info.iterations and seen[-1] <= seen[0]
    # the callback can stop the solve
    _, early = krylov.gmres(A, b, callback=lambda r: True)
    assert early.iterations == 1 and not early.converged
    # an exception inside a user callback propagates unchanged
    with pytest.raises(ZeroDivisionError):
        krylov.gcrodr(op, b, M=lambda v: 1 / 0)
    with pytest.raises(ValueError, match="M: returned 3 values"):
        krylov.gcrodr(A, b, M=lambda v: np.ones(3))


def test_int64_indices_and_dense_input(system):
    A, b = system
    A64 = sp.csr_array((A.data, A.indices.astype(np.int64), A.indptr.astype(np.int64)), shape=A.shape)
    x64, i64 = krylov.gcrodr(A64, b)
    x32, i32 = krylov.gcrodr(A, b)
    assert i64.matvecs == i32.matvecs
    np.testing.assert_allclose(x64, x32, rtol=1e-12, atol=1e-14)
    small = convdiff_matrix(6)
    xd, _ = krylov.gmres(small.toarray(), np.ones(36))
    np.testing.assert_allclose(xd, np.linalg.solve(small.toarray(), np.ones(36)), rtol=1e-7)


def test_torch_sparse_csr_input(system):
    A, b = system
    torch = pytest.importorskip("torch")
    x32, _ = krylov.gcrodr(A, b)
    T = torch.sparse_csr_tensor(torch.from_numpy(A.indptr.astype(np.int64)),
                                torch.from_numpy(A.indices.astype(np.int64)),
                                torch.from_numpy(A.data), size=A.shape)
    xt, it = krylov.gcrodr(T, torch.from_numpy(b).numpy())
    np.testing.assert_allclose(xt, x32, rtol=1e-12, atol=1e-14)


def test_bad_input_raises_naming_the_argument(system):
    A, b = system
    n = A.shape[0]
    with pytest.raises(ValueError, match="b: expected"):
        krylov.gcrodr(A, b[:-1])
    bn = b.copy()
    bn[5] = np.nan
    with pytest.raises(ValueError, match="b: contains NaN"):
        krylov.gcrodr(A, bn)
    An = A.copy()
    An.data[3] = np.nan
    with pytest.raises(ValueError, match="A: contains NaN"):
        krylov.gcrodr(An, b)
    with pytest.raises(ValueError, match="A: must be square"):
        krylov.gcrodr(sp.random_array((n, n + 1), density=0.01, format="csr"), b)
    with pytest.raises(ValueError, match="x0"):
        krylov.gmres(A, b, x0=np.ones(n + 1))
    with pytest.raises(ValueError, match="k: must be smaller than m"):
        krylov.gcrodr(A, b, m=10, k=10)
    with pytest.raises(ValueError, match="m:"):
        krylov.gmres(A, b, m=0)
    with pytest.raises(ValueError, match="rtol"):
        krylov.gmres(A, b, rtol=-1.0)
    with pytest.raises(ValueError, match="M:"):
        krylov.gmres(A, b, M="amg")
    with pytest.raises(TypeError, match="A:"):
        krylov.gmres("matrix", b)
    with pytest.raises(TypeError, match="b: expected numbers"):
        krylov.gmres(A, np.array(["x"] * n))
    with pytest.raises(TypeError, match="complex values for a real system"):
        krylov.gmres(A, b, M=lambda v: v + 1j)
    Z = A.copy()
    Z.setdiag(0.0)
    with pytest.raises(ValueError, match="Jacobi"):
        krylov.gmres(Z, b, M="jacobi")
    space = krylov.RecycleSpace()
    space.set(np.ones((n + 3, 2)))
    with pytest.raises(ValueError, match="recycle"):
        krylov.gcrodr(A, b, recycle=space)
    with pytest.raises(TypeError, match="recycle"):
        krylov.gcrodr(A, b, recycle=np.ones((n, 2)))


@pytest.mark.parametrize("method", ["gmres", "gcrodr"])
def test_complex_systems_match_spsolve(system, method):
    A, b = system
    Az = (A + 0.5j * sp.eye_array(A.shape[0])).tocsr()
    bz = b + 1j * np.roll(b, 3)
    x, info = getattr(krylov, method)(Az, bz, rtol=1e-10, m=30, M="ilu0")
    assert x.dtype == np.complex128 and info.converged
    xs = spl.spsolve(Az.tocsc(), bz)
    np.testing.assert_allclose(x, xs, rtol=0, atol=1e-7 * np.abs(xs).max())
    # a real matrix with a complex right-hand side is promoted
    xr, ir = getattr(krylov, method)(A, bz, rtol=1e-10)
    assert ir.converged and xr.dtype == np.complex128
    np.testing.assert_allclose(xr, spl.spsolve(A.tocsc().astype(complex), bz), atol=1e-6)


def test_complex_recycling_and_space_kind(system):
    A, b = system
    solver = krylov.RecyclingSolver(m=30, k=8)
    Az = (A + 0.2j * sp.eye_array(A.shape[0])).tocsr()
    _, i1 = solver.solve(Az, b + 0j)
    _, i2 = solver.solve((Az + 0.01j * sp.eye_array(A.shape[0])).tocsr(), b + 0j)
    assert i1.converged and i2.converged and i2.matvecs < i1.matvecs
    assert solver.recycle.is_complex and solver.recycle.U.dtype == np.complex128
    with pytest.raises(ValueError, match="recycle: the space holds complex"):
        solver.solve(A, b)


def test_gray_rank_visits_cells_one_bit_apart():
    bits = np.array([[int(c) for c in f"{i ^ (i >> 1):04b}"] for i in range(16)])
    np.testing.assert_array_equal(krylov._gray_rank(bits), np.arange(16))


@pytest.mark.parametrize("method", ["greedy", "fft-gray", "auto"])
def test_sort_systems_returns_a_permutation_that_shortens_the_chain(method):
    rng = np.random.default_rng(0)
    fam = pde.Darcy(24)
    params = np.stack([fam.sample(i, 5) for i in range(60)])
    order = krylov.sort_systems(params, method)
    assert sorted(order.tolist()) == list(range(60))
    random_len = np.mean([krylov.chain_length(params, rng.permutation(60)) for _ in range(5)])
    assert krylov.chain_length(params, order) < random_len


def test_greedy_sort_recovers_a_shuffled_line():
    t = np.linspace(0, 1, 30)
    perm = np.random.default_rng(2).permutation(30)
    params = t[perm][:, None]
    start = int(np.argmin(params[:, 0]))
    order = krylov.sort_systems(params, "greedy", start=start)
    np.testing.assert_array_equal(params[order, 0], t)
    with pytest.raises(ValueError, match="method"):
        krylov.sort_systems(params, "random")
    with pytest.raises(ValueError, match="params"):
        krylov.sort_systems(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="start"):
        krylov.sort_systems(params, start=30)


def test_solve_sequence_returns_callers_order():
    params, As, bs = pde.sample_systems("convdiff", 20, 6, seed=4)
    res = krylov.solve_sequence(As, bs, params=params, sort="greedy", m=20, k=5)
    assert sorted(res.order.tolist()) == list(range(6))
    for A, b, x, info in zip(As, bs, res.solutions, res.infos):
        assert info.converged and rel_res(A, x, b) <= 1e-8 * (1 + 1e-6)
    with pytest.raises(ValueError, match="bs"):
        krylov.solve_sequence(As, bs[:-1])
