r"""PDE families that produce sequences of sparse linear systems (training data for neural operators).

Every family discretizes a 2-D problem on the unit square with a uniform grid of ``grid x grid``
nodes (boundary included, :math:`h = 1/(\text{grid}-1)`), Dirichlet boundary conditions, and
unknowns at the :math:`n = (\text{grid}-2)^2` interior nodes in row-major order (index
:math:`(i - 1)(\text{grid} - 2) + (j - 1)` for node :math:`(x_j, y_i) = (jh, ih)`). A system is
defined by one parameter array ``param`` of shape (grid, grid) sampled by :meth:`Family.sample`
from ``numpy.random.default_rng([seed, index])``, so sample i is the same whichever process draws
it and in whatever order. :meth:`Family.assemble` returns ``(A, b)`` with A a
``scipy.sparse.csr_array`` (int32 indices, float64).

* ``darcy``: :math:`-\nabla\cdot(a \nabla u) = f`, :math:`f = 1`, :math:`a = \exp(g)` with g a
  Gaussian random field of covariance :math:`\propto (-\Delta + \tau^2)^{-\alpha}`
  (:math:`\alpha = 2.5, \tau = 7`, as in FNO / SKR); param = a at the nodes. 5-point
  finite volumes: face coefficients :math:`a_{i+1/2,j} = (a_{i,j} + a_{i+1,j})/2`, so A is
  symmetric positive definite.
* ``poisson``: :math:`-\Delta u = f` with random Gaussian sources f and random smooth boundary
  data g (Chebyshev polynomials of degree <= 5); param = f in the interior and g on the boundary.
  A is the same for every sample (a direct factorization then wins; kept as the paper's case).
* ``helmholtz``: :math:`-\Delta u - k(x)^2 (1 + i\sigma(x)) u = f`, complex non-Hermitian:
  wave number :math:`k = k_0 (1 + 0.25 g)` with g a Gaussian random field (param = k), an
  absorbing layer :math:`\sigma = \sigma_0 ((L - d)/L)^2` within distance L = 0.1 of the boundary
  (d: distance to it), Dirichlet u = 0 behind it, and a Gaussian point source f at the centre.
* ``convdiff``: :math:`-\varepsilon \Delta u + v\cdot\nabla u = 1`, :math:`\varepsilon = 0.01`,
  divergence-free :math:`v = (\partial_y \psi, -\partial_x \psi)` from a random stream function
  :math:`\psi` (param), first-order upwind convection: nonsymmetric, an M-matrix.
"""

from __future__ import annotations

import abc
from typing import Optional

import numpy as np

__all__ = ["Family", "Darcy", "Poisson", "ConvectionDiffusion", "Helmholtz", "FAMILIES", "make_family",
           "gaussian_random_field", "sample_systems"]


def gaussian_random_field(grid: int, rng: np.random.Generator, alpha: float = 2.5,
                          tau: float = 7.0) -> np.ndarray:
    r"""A (grid, grid) sample of a zero-mean Gaussian random field on the unit square with
    covariance operator :math:`\tau^{2\alpha - 2} (-\Delta + \tau^2)^{-\alpha}` (Neumann cosine
    modes :math:`\cos(\pi k_1 x)\cos(\pi k_2 y)`, constant mode removed)."""
    from scipy.fft import idctn

    k = np.arange(grid)
    lam = np.pi ** 2 * (k[:, None] ** 2 + k[None, :] ** 2)
    coef = tau ** (alpha - 1) * (lam + tau ** 2) ** (-alpha / 2)
    coef[0, 0] = 0.0
    xi = rng.standard_normal((grid, grid))
    # The "backward" inverse DCT-II is DCT-III / (2 grid) per axis, and DCT-III weights modes k >= 1
    # by 2: multiplying by grid^2 gives sum_k coef_k xi_k cos(pi k1 x) cos(pi k2 y) (cell-centred).
    return idctn(coef * xi, type=2, norm="backward") * grid ** 2


def _interior_index(grid: int) -> np.ndarray:
    s = grid - 2
    idx = -np.ones((grid, grid), dtype=np.int64)
    idx[1:-1, 1:-1] = np.arange(s * s).reshape(s, s)
    return idx


def _assemble_diffusion(a_e, a_w, a_n, a_s, grid, extra_diag=None, conv=None):
    """Rows of the 5-point operator with face coefficients a_* (each (grid-2, grid-2)), scaled by
    1/h^2, plus optional (diag, east, west, north, south) convection terms; neighbors on the
    boundary are dropped (their known values go to the right-hand side)."""
    import scipy.sparse as sp

    s = grid - 2
    n = s * s
    h2 = (1.0 / (grid - 1)) ** 2
    idx = _interior_index(grid)
    center = idx[1:-1, 1:-1]
    diag = (a_e + a_w + a_n + a_s) / h2
    off = {"e": -a_e / h2, "w": -a_w / h2, "n": -a_n / h2, "s": -a_s / h2}
    if conv is not None:
        cd, ce, cw, cn, cs = conv
        diag = diag + cd
        off = {"e": off["e"] + ce, "w": off["w"] + cw, "n": off["n"] + cn, "s": off["s"] + cs}
    nb = {"e": idx[1:-1, 2:], "w": idx[1:-1, :-2], "n": idx[2:, 1:-1], "s": idx[:-2, 1:-1]}
    rows = [center.ravel()]
    cols = [center.ravel()]
    vals = [diag.ravel()]
    for d in ("e", "w", "n", "s"):
        mask = nb[d] >= 0
        rows.append(center[mask])
        cols.append(nb[d][mask])
        vals.append(off[d][mask])
    A = sp.coo_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                     shape=(n, n)).tocsr()
    A.sum_duplicates()
    A.indptr = A.indptr.astype(np.int32)
    A.indices = A.indices.astype(np.int32)
    return A, off, nb


class Family(abc.ABC):
    """A PDE family: ``sample(index, seed) -> param`` and ``assemble(param) -> (A, b)``."""

    name = "family"

    def __init__(self, grid: int) -> None:
        if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 4:
            raise ValueError(f"grid: expected an integer >= 4, got {grid!r}")
        self.grid = int(grid)

    @property
    def n(self) -> int:
        return (self.grid - 2) ** 2

    def rng(self, index: int, seed: int) -> np.random.Generator:
        return np.random.default_rng([int(seed), int(index)])

    @abc.abstractmethod
    def sample(self, index: int, seed: int = 0) -> np.ndarray:
        """The parameter field of sample `index` (deterministic in (seed, index))."""

    @abc.abstractmethod
    def assemble(self, param: np.ndarray):
        """(A, b) of the discretized PDE for one parameter field."""

    def _check_param(self, param) -> np.ndarray:
        p = np.asarray(param, dtype=np.float64)
        if p.shape != (self.grid, self.grid):
            raise ValueError(f"param: expected shape {(self.grid, self.grid)}, got {p.shape}")
        if not np.isfinite(p).all():
            raise ValueError("param: contains NaN or infinity")
        return p


class Darcy(Family):
    name = "darcy"

    def __init__(self, grid: int, alpha: float = 2.5, tau: float = 7.0) -> None:
        super().__init__(grid)
        self.alpha, self.tau = alpha, tau

    def sample(self, index: int, seed: int = 0) -> np.ndarray:
        return np.exp(gaussian_random_field(self.grid, self.rng(index, seed), self.alpha, self.tau))

    def assemble(self, param, f: Optional[np.ndarray] = None):
        """A u = b for coefficient ``param`` (a at the nodes, > 0) and source f at the interior
        nodes ((grid-2, grid-2); default 1)."""
        a = self._check_param(param)
        if (a <= 0).any():
            raise ValueError("param: the Darcy coefficient must be > 0")
        c = a[1:-1, 1:-1]
        a_e = (c + a[1:-1, 2:]) / 2
        a_w = (c + a[1:-1, :-2]) / 2
        a_n = (c + a[2:, 1:-1]) / 2
        a_s = (c + a[:-2, 1:-1]) / 2
        A, _, _ = _assemble_diffusion(a_e, a_w, a_n, a_s, self.grid)
        b = np.ones(self.n) if f is None else np.asarray(f, dtype=np.float64).reshape(-1)
        return A, b


class Poisson(Family):
    name = "poisson"

    def sample(self, index: int, seed: int = 0) -> np.ndarray:
        rng = self.rng(index, seed)
        t = np.linspace(0.0, 1.0, self.grid)
        X, Y = np.meshgrid(t, t)  # X varies along columns (x_j), Y along rows (y_i)
        f = np.zeros((self.grid, self.grid))
        for _ in range(rng.integers(1, 6)):
            cx, cy = rng.uniform(0.1, 0.9, 2)
            w = rng.uniform(0.03, 0.15)
            f += rng.uniform(-50, 50) * np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * w * w))
        # boundary data: sum_k c_k T_k(2 x - 1) + d_k T_k(2 y - 1), degree <= 5
        cheb = np.polynomial.chebyshev.chebval
        g = cheb(2 * X - 1, rng.standard_normal(6) / 2) + cheb(2 * Y - 1, rng.standard_normal(6) / 2)
        p = f
        edge = np.zeros_like(p, dtype=bool)
        edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
        p[edge] = g[edge]
        return p

    def assemble(self, param):
        p = self._check_param(param)
        ones = np.ones((self.grid - 2, self.grid - 2))
        A, off, nb = _assemble_diffusion(ones, ones, ones, ones, self.grid)
        b = p[1:-1, 1:-1].copy()
        # known boundary values move to the right-hand side: b -= A_boundary * g
        h2 = (1.0 / (self.grid - 1)) ** 2
        b[:, -1] += p[1:-1, -1] / h2
        b[:, 0] += p[1:-1, 0] / h2
        b[-1, :] += p[-1, 1:-1] / h2
        b[0, :] += p[0, 1:-1] / h2
        return A, b.ravel()


class ConvectionDiffusion(Family):
    name = "convdiff"

    def __init__(self, grid: int, eps: float = 0.01, strength: float = 1.0) -> None:
        super().__init__(grid)
        self.eps, self.strength = eps, strength

    def sample(self, index: int, seed: int = 0) -> np.ndarray:
        return self.strength * gaussian_random_field(self.grid, self.rng(index, seed), 2.5, 3.0)

    def assemble(self, param):
        psi = self._check_param(param)
        h = 1.0 / (self.grid - 1)
        # v = (d psi/dy, -d psi/dx) at the nodes by central differences (np.gradient: one-sided at
        # the boundary); axis 0 is y, axis 1 is x.
        dpsi_dy, dpsi_dx = np.gradient(psi, h)
        vx = dpsi_dy[1:-1, 1:-1]
        vy = -dpsi_dx[1:-1, 1:-1]
        e = np.full_like(vx, self.eps)
        # upwind: vx > 0 uses (u_P - u_W)/h, vx < 0 uses (u_E - u_P)/h (same for y)
        vxp, vxm = np.maximum(vx, 0) / h, np.minimum(vx, 0) / h
        vyp, vym = np.maximum(vy, 0) / h, np.minimum(vy, 0) / h
        conv = (vxp - vxm + vyp - vym, vxm, -vxp, vym, -vyp)
        A, _, _ = _assemble_diffusion(e, e, e, e, self.grid, conv=conv)
        return A, np.ones(self.n)


class Helmholtz(Family):
    name = "helmholtz"

    def __init__(self, grid: int, k0: float = 20.0, sigma0: float = 1.0, layer: float = 0.1) -> None:
        super().__init__(grid)
        self.k0, self.sigma0, self.layer = k0, sigma0, layer

    def sample(self, index: int, seed: int = 0) -> np.ndarray:
        g = gaussian_random_field(self.grid, self.rng(index, seed), 2.5, 7.0)
        return self.k0 * (1.0 + 0.25 * np.clip(g, -2.0, 2.0))

    def absorption(self) -> np.ndarray:
        """sigma at the interior nodes, (grid-2, grid-2)."""
        t = np.linspace(0.0, 1.0, self.grid)[1:-1]
        X, Y = np.meshgrid(t, t)
        d = np.minimum(np.minimum(X, 1 - X), np.minimum(Y, 1 - Y))
        return self.sigma0 * np.where(d < self.layer, ((self.layer - d) / self.layer) ** 2, 0.0)

    def assemble(self, param, f: Optional[np.ndarray] = None):
        """A u = b for wave numbers ``param`` (k at the nodes) and source f at the interior nodes
        (default: a Gaussian of width 0.02 at the centre). A is complex128 (complex symmetric)."""
        import scipy.sparse as sp

        kk = self._check_param(param)[1:-1, 1:-1]
        ones = np.ones((self.grid - 2, self.grid - 2))
        L, _, _ = _assemble_diffusion(ones, ones, ones, ones, self.grid)
        shift = -(kk ** 2) * (1.0 + 1j * self.absorption())
        A = (L.astype(np.complex128) + sp.diags_array(shift.ravel())).tocsr()
        A.indptr = A.indptr.astype(np.int32)
        A.indices = A.indices.astype(np.int32)
        if f is None:
            t = np.linspace(0.0, 1.0, self.grid)[1:-1]
            X, Y = np.meshgrid(t, t)
            f = np.exp(-((X - 0.5) ** 2 + (Y - 0.5) ** 2) / (2 * 0.02 ** 2)) / (2 * np.pi * 0.02 ** 2)
        return A, np.asarray(f, dtype=np.complex128).reshape(-1)


FAMILIES = {"darcy": Darcy, "poisson": Poisson, "convdiff": ConvectionDiffusion,
            "helmholtz": Helmholtz}


def make_family(name: str, grid: int, **kwargs) -> Family:
    """The family ``name`` (one of :data:`FAMILIES`) on a ``grid x grid`` node grid."""
    if name not in FAMILIES:
        raise ValueError(f"family: expected one of {sorted(FAMILIES)}, got {name!r}")
    return FAMILIES[name](grid, **kwargs)


def sample_systems(family: str, grid: int, count: int, seed: int = 0):
    """``(params (count, grid, grid), [A_i], [b_i])`` for samples 0..count-1 of ``family``."""
    fam = make_family(family, grid)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count: expected an integer >= 1, got {count!r}")
    params = np.stack([fam.sample(i, seed) for i in range(count)])
    systems = [fam.assemble(p) for p in params]
    return params, [A for A, _ in systems], [b for _, b in systems]
