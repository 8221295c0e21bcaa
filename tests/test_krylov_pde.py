"""PDE families of fastpaper.krylov_pde: stencils (manufactured solutions converge at O(h^2)),
agreement of GCRO-DR with scipy's sparse direct solve on every family, reproducible sampling."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spl

from fastpaper import krylov
from fastpaper import krylov_pde as pde


def _grid(g):
    t = np.linspace(0, 1, g)
    return np.meshgrid(t, t)  # X along columns, Y along rows


def _max_error_darcy(g):
    X, Y = _grid(g)
    a = 1 + X * Y
    u = np.sin(np.pi * X) * np.sin(np.pi * Y)
    ux = np.pi * np.cos(np.pi * X) * np.sin(np.pi * Y)
    uy = np.pi * np.sin(np.pi * X) * np.cos(np.pi * Y)
    f = -(Y * ux + X * uy) + 2 * np.pi ** 2 * a * u  # -div(a grad u)
    A, b = pde.Darcy(g).assemble(a, f[1:-1, 1:-1])
    return np.abs(spl.spsolve(A.tocsc(), b) - u[1:-1, 1:-1].ravel()).max()


def _max_error_poisson(g):
    X, Y = _grid(g)
    u = np.exp(X) * np.cos(2 * Y) + X * Y
    f = 3 * np.exp(X) * np.cos(2 * Y)  # -Lap u
    p = f.copy()
    for sl in ((0, slice(None)), (-1, slice(None)), (slice(None), 0), (slice(None), -1)):
        p[sl] = u[sl]
    A, b = pde.Poisson(g).assemble(p)
    return np.abs(spl.spsolve(A.tocsc(), b) - u[1:-1, 1:-1].ravel()).max()


def _max_error_convdiff(g):
    # psi = y: v = (1, 0); u = sin(pi x) sin(pi y): -eps Lap u + u_x
    X, Y = _grid(g)
    fam = pde.ConvectionDiffusion(g, eps=0.5)
    A, _ = fam.assemble(Y.copy())
    u = np.sin(np.pi * X) * np.sin(np.pi * Y)
    f = 0.5 * 2 * np.pi ** 2 * u + np.pi * np.cos(np.pi * X) * np.sin(np.pi * Y)
    return np.abs(spl.spsolve(A.tocsc(), f[1:-1, 1:-1].ravel()) - u[1:-1, 1:-1].ravel()).max()


def _max_error_helmholtz(g):
    # no absorption, constant k = 5: -Lap u - 25 u = (2 pi^2 - 25) u for u = sin(pi x) sin(pi y)
    X, Y = _grid(g)
    fam = pde.Helmholtz(g, sigma0=0.0)
    u = np.sin(np.pi * X) * np.sin(np.pi * Y)
    f = (2 * np.pi ** 2 - 25.0) * u
    A, b = fam.assemble(np.full((g, g), 5.0), f[1:-1, 1:-1])
    return np.abs(spl.spsolve(A.tocsc(), b) - u[1:-1, 1:-1].ravel()).max()


@pytest.mark.parametrize("err,order", [(_max_error_darcy, 2), (_max_error_poisson, 2),
                                       (_max_error_convdiff, 1), (_max_error_helmholtz, 2)])
def test_manufactured_solutions_converge_at_the_stencil_order(err, order):
    e1, e2 = err(33), err(65)
    assert e2 < e1
    assert np.log2(e1 / e2) == pytest.approx(order, abs=0.25)


@pytest.mark.parametrize("family", sorted(pde.FAMILIES))
def test_gcrodr_matches_spsolve_on_every_family(family):
    fam = pde.make_family(family, 40)
    for i in range(2):
        A, b = fam.assemble(fam.sample(i, seed=7))
        assert A.shape == (fam.n, fam.n) and A.indices.dtype == np.int32
        xs = spl.spsolve(A.tocsc(), b)
        x, info = krylov.gcrodr(A, b, rtol=1e-11)
        assert info.converged
        np.testing.assert_allclose(x, xs, rtol=0, atol=1e-8 * np.abs(xs).max())


def test_symmetry_of_the_operators():
    for family, symmetric in (("darcy", True), ("poisson", True), ("convdiff", False),
                              ("helmholtz", True)):
        fam = pde.make_family(family, 20)
        A, _ = fam.assemble(fam.sample(0))
        asym = abs(A - A.T).max()
        assert (asym < 1e-12) == symmetric
    # Helmholtz with absorption is complex symmetric, not Hermitian
    A, _ = pde.make_family("helmholtz", 20).assemble(pde.make_family("helmholtz", 20).sample(0))
    assert A.dtype == np.complex128 and abs(A - A.conj().T).max() > 1e-3


def test_sampling_is_reproducible_per_index():
    fam = pde.Darcy(20)
    np.testing.assert_array_equal(fam.sample(3, seed=1), fam.sample(3, seed=1))
    assert not np.array_equal(fam.sample(3, seed=1), fam.sample(4, seed=1))
    a = fam.sample(0)
    assert (a > 0).all() and 0.05 < np.log(a).std() < 2


def test_bad_family_arguments():
    with pytest.raises(ValueError, match="family"):
        pde.make_family("heat", 10)
    with pytest.raises(ValueError, match="grid"):
        pde.Darcy(2)
    with pytest.raises(ValueError, match="param"):
        pde.Darcy(10).assemble(np.ones((9, 9)))
    with pytest.raises(ValueError, match="param"):
        pde.Darcy(10).assemble(-np.ones((10, 10)))
    with pytest.raises(ValueError, match="count"):
        pde.sample_systems("darcy", 10, 0)
