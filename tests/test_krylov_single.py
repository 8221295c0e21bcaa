"""fastpaper.krylov in single precision (float32 / complex64, mixed with a double iterate and
residual): every PDE family against scipy's float64 direct solve, refinement below float32's
resolution, recycling, preconditioners, the recycle space's scalar type, and the dtype the solver
picks from its inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl

from fastpaper import krylov
from fastpaper.krylov_pde import FAMILIES, sample_systems


def rel_res64(A, x, b) -> float:
    """The relative residual evaluated in float64 / complex128 (not in the solver's precision)."""
    A64 = A.astype(np.complex128 if np.iscomplexobj(A.data) else np.float64)
    x64, b64 = x.astype(A64.dtype), b.astype(A64.dtype)
    return float(np.linalg.norm(b64 - A64 @ x64) / np.linalg.norm(b64))


def single(A, b):
    cplx = np.iscomplexobj(A.data) or np.iscomplexobj(b)
    dt = np.complex64 if cplx else np.float32
    return sp.csr_array(A, dtype=dt), b.astype(dt)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", ["gmres", "gcrodr"])
def test_every_family_in_single_precision_matches_the_float64_direct_solve(family, method):
    _, As, bs = sample_systems(family, 26, 1, seed=3)
    A, b = single(As[0], bs[0])
    x, info = getattr(krylov, method)(A, b, rtol=1e-4, m=40, M="ilu0")
    assert x.dtype == A.dtype  # float32, or complex64 for helmholtz
    assert info.converged and info.relative_residual <= 1e-4
    # the solver's float32 residual is the float64 one up to rounding
    assert rel_res64(A, x, b) <= 1.5e-4
    xs = spl.spsolve(As[0].tocsc(), bs[0])
    err = np.linalg.norm(x - xs) / np.linalg.norm(xs)
    assert err <= 5e-3, err


@pytest.mark.parametrize("M", [None, "jacobi", "ilu0"])
def test_float32_preconditioners_and_residual_history(M):
    _, As, bs = sample_systems("convdiff", 30, 1)
    A, b = single(As[0], bs[0])
    x, info = krylov.gcrodr(A, b, rtol=1e-5, m=30, k=10, M=M)
    assert x.dtype == np.float32 and info.converged
    assert info.residuals[0] == pytest.approx(np.linalg.norm(b.astype(np.float64)), rel=1e-5)
    assert info.residuals[-1] <= 1e-5 * info.b_norm


def test_float32_recycling_across_a_sorted_sequence_saves_matvecs():
    params, As, bs = sample_systems("darcy", 34, 6, seed=1)
    order = krylov.sort_systems(params, "greedy")
    fresh, recycled = [], []
    solver = krylov.RecyclingSolver(m=40, k=12, rtol=1e-4)
    for i in order:
        A, b = single(As[i], bs[i])
        _, f = krylov.gcrodr(A, b, rtol=1e-4, m=40, k=12)
        x, r = solver.solve(A, b)
        assert f.converged and r.converged and x.dtype == np.float32
        fresh.append(f.matvecs)
        recycled.append(r.matvecs)
    assert solver.recycle.dtype == np.float32 and solver.recycle.U.dtype == np.float32
    assert sum(recycled[1:]) < 0.8 * sum(fresh[1:])
    # a float64 system cannot use a float32 space
    with pytest.raises(ValueError, match="recycle: the space holds float32 vectors, this system.s basis is float64"):
        solver.solve(As[0], bs[0])


def test_complex64_recycling_and_space_roundtrip():
    _, As, bs = sample_systems("helmholtz", 26, 3, seed=2)
    solver = krylov.RecyclingSolver(m=40, k=10, rtol=1e-5, M="ilu0")
    mv = []
    for A, b in zip(As, bs):
        A, b = single(A, b)
        x, info = solver.solve(A, b)
        assert x.dtype == np.complex64 and info.converged
        mv.append(info.matvecs)
    assert solver.recycle.dtype == np.complex64
    U = solver.recycle.U
    space = krylov.RecycleSpace()
    space.set(U)
    assert space.dtype == np.complex64 and space.dim == U.shape[1]
    np.testing.assert_array_equal(space.U, U)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
def test_recycle_space_set_get_keeps_the_dtype(dtype):
    rng = np.random.default_rng(0)
    U = rng.standard_normal((50, 3)).astype(dtype)
    space = krylov.RecycleSpace()
    space.set(U)
    assert space.dtype == dtype and space.U.dtype == dtype
    np.testing.assert_array_equal(space.U, U)


def test_working_dtype_follows_numpy_promotion():
    _, As, bs = sample_systems("poisson", 18, 1)
    A, b = As[0], bs[0]
    f32 = sp.csr_array(A, dtype=np.float32)
    assert krylov.gmres(f32, b.astype(np.float32), rtol=1e-5)[0].dtype == np.float32
    assert krylov.gmres(f32, b, rtol=1e-8)[0].dtype == np.float64  # a float64 b promotes
    # float16 (a dense array: scipy.sparse has no float16) is solved in float32
    assert krylov.gmres(A.toarray().astype(np.float16), b.astype(np.float16),
                        rtol=1e-3)[0].dtype == np.float32
    Ai = sp.csr_array(np.rint(A.toarray() * 4).astype(np.int64))
    assert krylov.gmres(Ai, b, rtol=1e-8)[0].dtype == np.float64
    x, info = krylov.gmres(f32, (b + 1j * b).astype(np.complex64), rtol=1e-5)
    assert x.dtype == np.complex64 and info.converged
    op = spl.LinearOperator(A.shape, matvec=lambda v: f32 @ v, dtype=np.float32)
    x, info = krylov.gcrodr(op, b.astype(np.float32), rtol=1e-5, m=30, k=5)
    assert x.dtype == np.float32 and info.converged


@pytest.mark.parametrize("family", ["darcy", "helmholtz"])
def test_single_precision_refines_below_its_own_resolution(family):
    """The double iterate reaches rtol = 1e-9, far below what float32 arithmetic resolves
    (~1e-5 on Darcy), in the iterations float64 needs; the returned x is that iterate rounded."""
    _, As, bs = sample_systems(family, 34, 1, seed=4)
    A, b = single(As[0], bs[0])
    x, info = krylov.gcrodr(A, b, rtol=1e-9, m=40, k=10, M="ilu0")
    x64, i64 = krylov.gcrodr(As[0], bs[0], rtol=1e-9, m=40, k=10, M="ilu0")
    assert info.converged and info.relative_residual <= 1e-9
    assert info.iterations <= 1.5 * i64.iterations + 40
    xs = spl.spsolve(As[0].tocsc(), bs[0])
    err = np.linalg.norm(x - xs) / np.linalg.norm(xs)
    assert err <= 1e-6, err  # float32 rounding of an accurate solution
    # a single-precision iterate alone stalls far above 1e-9
    assert rel_res64(A, x, b) > 1e-9


def test_single_precision_callback_operator_cannot_claim_what_it_cannot_resolve():
    """With A as a callable (products in float32) the residual is float32-accurate only: a
    tolerance below that stops stagnated, not converged."""
    _, As, bs = sample_systems("darcy", 34, 1)
    A, b = single(As[0], bs[0])
    op = spl.LinearOperator(A.shape, matvec=lambda v: A @ v, dtype=np.float32)
    x, info = krylov.gmres(op, b, rtol=1e-10, m=30, maxiter=3000)
    assert not info.converged
    assert info.stagnated or info.iterations == 3000
    assert rel_res64(A, x, b) <= 1e-3


# ---- precision="mixed": a float64 / complex128 system with a single-precision basis ----------

@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("M", [None, "ilu0"])
def test_mixed_precision_solves_the_double_system_to_a_double_tolerance(family, M):
    """rtol = 1e-10 on the float64 system's own residual (not a float32 copy's), float64 x, the
    same solution as scipy's direct solve; float32 alone cannot get below ~1e-6 here."""
    _, As, bs = sample_systems(family, 26, 1, seed=5)
    A, b = As[0], bs[0]
    x, info = krylov.gcrodr(A, b, rtol=1e-10, m=40, k=10, M=M, precision="mixed")
    assert x.dtype == A.dtype  # float64, or complex128 for helmholtz
    assert info.converged
    assert np.linalg.norm(b - A @ x) <= 1e-10 * np.linalg.norm(b) * (1 + 1e-6)
    assert info.residual_norm == pytest.approx(np.linalg.norm(b - A @ x), rel=1e-6, abs=1e-14)
    xs = spl.spsolve(A.tocsc(), b)
    assert np.linalg.norm(x - xs) <= 1e-7 * np.linalg.norm(xs)
    xg, ig = krylov.gmres(A, b, rtol=1e-10, m=40, M=M, precision="mixed")
    assert xg.dtype == A.dtype and ig.converged
    assert np.linalg.norm(b - A @ xg) <= 1e-10 * np.linalg.norm(b) * (1 + 1e-6)


def test_mixed_precision_recycles_a_single_precision_space():
    params, As, bs = sample_systems("darcy", 34, 5, seed=1)
    order = krylov.sort_systems(params, "greedy")
    solver = krylov.RecyclingSolver(m=40, k=12, rtol=1e-9, precision="mixed")
    mv = []
    for i in order:
        x, info = solver.solve(As[i], bs[i])
        assert info.converged and x.dtype == np.float64
        assert np.linalg.norm(bs[i] - As[i] @ x) <= 1e-9 * np.linalg.norm(bs[i]) * (1 + 1e-6)
        mv.append(info.matvecs)
    assert solver.recycle.dtype == np.float32
    _, fresh = krylov.gcrodr(As[order[-1]], bs[order[-1]], rtol=1e-9, m=40, k=12, precision="mixed")
    assert mv[-1] < fresh.matvecs
    # the float32 space belongs to mixed solves: a full-precision float64 solve refuses it
    with pytest.raises(ValueError, match="recycle: the space holds float32 vectors, this system's basis is float64"):
        krylov.gcrodr(As[0], bs[0], recycle=solver.recycle)
    seq = krylov.solve_sequence(As, bs, params=params, rtol=1e-9, m=40, k=12, precision="mixed")
    assert seq.stats["converged"] == len(As)
    assert all(s.dtype == np.float64 for s in seq.solutions)


def test_mixed_precision_callable_preconditioner_works_in_single():
    _, As, bs = sample_systems("poisson", 26, 1)
    A, b = As[0], bs[0]
    d = A.diagonal()
    seen = []

    def M(v):
        seen.append(v.dtype)
        return v / d.astype(np.float32)

    x, info = krylov.gcrodr(A, b, rtol=1e-10, M=M, precision="mixed")
    assert info.converged and x.dtype == np.float64
    assert set(seen) == {np.dtype(np.float32)}


def test_mixed_precision_bad_input():
    _, As, bs = sample_systems("poisson", 18, 1)
    A, b = As[0], bs[0]
    with pytest.raises(ValueError, match="precision: expected 'full' or 'mixed'"):
        krylov.gcrodr(A, b, precision="half")
    with pytest.raises(ValueError, match="precision: expected 'full' or 'mixed'"):
        krylov.RecyclingSolver(precision=None)
    op = spl.LinearOperator(A.shape, matvec=lambda v: A @ v, dtype=np.float64)
    with pytest.raises(ValueError, match="precision: 'mixed' needs A as a matrix"):
        krylov.gmres(op, b, precision="mixed")
    big = A.copy()
    big.data[0] = 1e300
    with pytest.raises(ValueError, match="overflows single precision"):
        krylov.gcrodr(big, b, precision="mixed")
    # float32 systems are single precision already: "mixed" changes nothing
    f32 = sp.csr_array(A, dtype=np.float32)
    x, info = krylov.gmres(f32, b.astype(np.float32), rtol=1e-6, precision="mixed")
    assert x.dtype == np.float32 and info.converged
