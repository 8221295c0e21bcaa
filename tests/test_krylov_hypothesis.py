"""Hostile and degenerate systems for fastpaper.krylov: random sparse matrices (singular, zero
rows, tiny or huge scales, real and complex), random m, k, maxiter and preconditioners. The solver
must never crash, and the residual it reports must be the true residual of the x it returns."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpaper import krylov


@st.composite
def systems(draw):
    n = draw(st.integers(1, 40))
    density = draw(st.floats(0.0, 0.5))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    rng = np.random.default_rng(seed)
    cplx = draw(st.booleans())
    A = sp.random_array((n, n), density=density, rng=rng, format="csr")
    if cplx:
        A = A + 1j * sp.random_array((n, n), density=density, rng=rng, format="csr")
    shift = draw(st.sampled_from([0.0, 1.0, 1e-8, 10.0]))
    A = (A + shift * sp.eye_array(n)).tocsr() * draw(st.sampled_from([1.0, 1e-150, 1e150]))
    b = rng.standard_normal(n) * draw(st.sampled_from([0.0, 1.0, 1e-200, 1e100]))
    m = draw(st.integers(1, 12))
    k = draw(st.integers(0, m - 1))
    maxiter = draw(st.integers(0, 60))
    return A.tocsr(), b, m, k, maxiter


def _norm(v: np.ndarray) -> float:
    """||v||_2 without the underflow/overflow of a plain sum of squares (like BLAS nrm2)."""
    s = np.abs(v).max() if v.size else 0.0
    return float(s * np.linalg.norm(v / s)) if s > 0 and np.isfinite(s) else float(s)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(systems(), st.sampled_from(["gmres", "gcrodr", "recycled"]))
def test_never_crashes_and_reports_the_true_residual(system, method):
    A, b, m, k, maxiter = system
    if method == "gmres":
        x, info = krylov.gmres(A, b, m=m, maxiter=maxiter)
    elif method == "gcrodr":
        x, info = krylov.gcrodr(A, b, m=m, k=k, maxiter=maxiter)
    else:
        solver = krylov.RecyclingSolver(m=m, k=k, maxiter=maxiter)
        solver.solve(A, b)
        A = (A * 1.01).tocsr()  # a new matrix: C = A U is recomputed from the carried U
        x, info = solver.solve(A, b)
    assert np.isfinite(x).all() or not np.isfinite(A.data).all()
    r = _norm(b - A @ x)
    if np.isfinite(r) and np.isfinite(info.residual_norm):
        assert abs(info.residual_norm - r) <= 1e-6 * max(r, _norm(b)) + 1e-300
    assert info.iterations <= maxiter
    if info.converged:
        assert r <= 1e-8 * _norm(b) * (1 + 1e-6) + 1e-300
