r"""Krylov solvers with subspace recycling for sequences of linear systems (SKR, Wang et al. 2024).

Solves :math:`A_i x_i = b_i`, :math:`i = 1..N`, in float32, float64, complex64 or complex128 (the
common type of A, b and x0 as numpy promotes it; integers and float16 work in float64 / float32;
complex systems use conjugate transposes), with

* :func:`gmres` -- restarted GMRES(m);
* :func:`gcrodr` -- GCRO-DR(m, k) (Parks, de Sturler, Mackey, Johnson, Maiti 2006): each restart
  cycle keeps the k harmonic Ritz vectors of smallest :math:`|\theta|` as a recycle space
  :math:`U \in \mathbb{R}^{n \times k}` with :math:`C = A M^{-1} U`, :math:`C^T C = I`, and runs
  m - k Arnoldi steps with :math:`(I - C C^T) A M^{-1}`; passing the same :class:`RecycleSpace`
  (or using :class:`RecyclingSolver`) carries U to the next system, where :math:`C = A M^{-1} U`
  is recomputed and re-orthonormalized (:math:`C R = A M^{-1} U`, :math:`U \leftarrow U R^{-1}`);
* :func:`sort_systems` -- orders the systems so that neighbours are similar (greedy nearest-neighbour
  chain, the paper's Algorithm 1, or an O(N) FFT -> PCA -> Gray-code cell order);
* :func:`solve_sequence` -- sort, solve in order with recycling, return in the caller's order.

Both solvers run in C++ (``fastpaper._krylov``: OpenMP SpMV, OpenBLAS/LAPACK from
scipy-openblas32, CGS2 orthogonalization, LAPACK ``?geev``/``?ggev`` for the harmonic Ritz
problem) for host arrays, and in :mod:`fastpaper.krylov_device` (the same algorithm on torch
tensors: cuSPARSE SpMV and cuBLAS through torch on CUDA, small dense problems on the host) for
torch CUDA tensors and cupy sparse matrices, or any input with ``device=``.
``precision="mixed"`` solves a float64 / complex128 system to rtol on its own residual with a
single-precision basis (GMRES-IR; usually the fastest setting). Single precision (float32 /
complex64) systems always run that way: A, the preconditioner, the
Krylov basis and the recycle space are single (half the memory traffic that bounds large solves:
2-3x faster per iteration at n = 6.5e4), while the iterate and the true residual of a matrix A are
accumulated in double, so each restart refines the solution and rtol may go below float32's own
resolution; x is returned rounded to the single-precision type (``info.residual_norm`` is the
residual before that rounding).
Preconditioning is on the right, so the residual reported is the true
:math:`\|b - A x\|_2`; a solve converges when :math:`\|b - A x\|_2 \le \max(\text{rtol}\,\|b\|_2,
\text{atol})`, checked on the recomputed residual after every cycle.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import _native

_C = _native.load("krylov")

__all__ = [
    "SolveInfo",
    "RecycleSpace",
    "RecyclingSolver",
    "SequenceResult",
    "gcrodr",
    "gmres",
    "sort_systems",
    "solve_sequence",
]

_PRECONDS = {None: 0, "none": 0, "jacobi": 1, "ilu0": 2}


@dataclass
class SolveInfo:
    """Statistics of one solve.

    ``iterations`` counts Arnoldi steps; ``matvecs`` every product with A (Arnoldi steps,
    :math:`C = A M^{-1} U` for a new system, one true-residual check per cycle);
    ``residuals`` holds the residual estimate after every Arnoldi step and the true residual after
    every cycle (first entry: :math:`\\|b - A x_0\\|`); ``residual_norm`` is the final true
    residual; ``stagnated`` means three cycles in a row made no progress; ``breakdown`` that an
    Arnoldi step produced a zero vector (exact solution in the Krylov space when converged).
    """

    converged: bool
    iterations: int
    matvecs: int
    cycles: int
    residual_norm: float
    b_norm: float
    stagnated: bool
    breakdown: bool
    recycle_dim: int
    residuals: np.ndarray
    seconds: float

    @property
    def relative_residual(self) -> float:
        return self.residual_norm / self.b_norm if self.b_norm > 0 else self.residual_norm


class RecycleSpace:
    """The recycle space U (n x dim) carried from one :func:`gcrodr` call to the next.

    Empty when created. Its scalar type (``dtype``) is the one of the systems that filled it;
    systems of another scalar type are refused. ``U`` returns a copy; ``set(U)`` installs a basis
    of your own (columns need not be orthonormal: the solver re-orthonormalizes
    :math:`A M^{-1} U` per system; its dtype becomes the space's: float32, float64, complex64 or
    complex128).
    """

    def __init__(self) -> None:
        self._space = _C.RecycleSpace()
        # Filled by the device backend (krylov_device): U's rows, a (dim, n) torch tensor kept on
        # its device between solves; None while the space lives in the C++ object.
        self._dev = None

    @property
    def dim(self) -> int:
        return int(self._dev.shape[0]) if self._dev is not None else int(self._space.dim)

    @property
    def n(self) -> int:
        return int(self._dev.shape[1]) if self._dev is not None else int(self._space.n)

    @property
    def is_complex(self) -> bool:
        return self.dtype.kind == "c" if self._dev is not None else bool(self._space.is_complex)

    @property
    def dtype(self) -> np.dtype:
        if self._dev is not None:
            return np.dtype(str(self._dev.dtype).replace("torch.", ""))
        return np.dtype(self._space.dtype)

    @property
    def device(self):
        """The torch.device holding U (a device solve filled it), or None (host, C++ backend)."""
        return None if self._dev is None else self._dev.device

    @property
    def U(self):
        """A copy of U, (n, dim): a numpy array, or a torch tensor on ``device`` when a device
        solve filled the space."""
        if self._dev is not None:
            return self._dev.t().clone()
        out = np.empty(self.n * self.dim, dtype=self.dtype)
        getattr(self._space, f"get_{self.dtype.name}")(out)
        return out.reshape(self.dim, self.n).T.copy()

    def _to_host(self) -> None:
        """Moves a device-held U into the C++ space (before a C++ solve)."""
        if self._dev is not None:
            U = self._dev.t().cpu().numpy()
            self._dev = None
            self._space = _C.RecycleSpace()
            if U.shape[1] > 0:
                self.set(U)

    def _device_rows(self, device):
        """U's rows (dim, n) as a torch tensor on ``device`` (for a device solve)."""
        import torch

        if self._dev is not None:
            return self._dev.to(device)
        return torch.from_numpy(np.ascontiguousarray(self.U.T)).to(device)

    def _store_device(self, rows) -> None:
        self._space = _C.RecycleSpace()
        self._dev = rows

    def set(self, U: Any) -> None:
        self._dev = None
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(U, torch.Tensor):
            if U.device.type != "cpu":
                if U.dim() != 2:
                    raise ValueError(f"U: expected a 2-D array (n, k), got shape {tuple(U.shape)}")
                if not bool(torch.isfinite(U).all()):
                    raise ValueError("U: contains NaN or infinity")
                dt = _working_dtype(np.dtype(str(U.dtype).replace("torch.", "")
                                             .replace("bfloat16", "float16")))
                self._space = _C.RecycleSpace()
                self._dev = U.detach().t().to(getattr(torch, dt.name)).contiguous()
                return
            U = U.detach().numpy()
        U = np.asarray(U)
        if not (np.issubdtype(U.dtype, np.number) or U.dtype == bool):
            raise TypeError(f"U: expected numbers, got dtype {U.dtype}")
        dt = _working_dtype(U.dtype)
        U = U.astype(dt)
        if U.ndim != 2:
            raise ValueError(f"U: expected a 2-D array (n, k), got shape {U.shape}")
        if not np.isfinite(U).all():
            raise ValueError("U: contains NaN or infinity")
        flat = np.ascontiguousarray(U.T).ravel()
        getattr(self._space, f"set_{dt.name}")(U.shape[0], U.shape[1], flat)

    def reset(self) -> None:
        """Forget U (the next solve starts fresh)."""
        self._space = _C.RecycleSpace()
        self._dev = None


# ---- input conversion -----------------------------------------------------------------------------

def _working_dtype(*dtypes) -> np.dtype:
    """The solver's scalar type for inputs of these dtypes: float32 / complex64 when all of them
    are single precision or narrower floats, float64 / complex128 otherwise (integers count as
    float64, as in numpy's promotion)."""
    t = np.result_type(*dtypes)
    if t.kind == "c":
        return np.dtype(np.complex64 if t.itemsize <= 8 else np.complex128)
    if t.kind == "f" and t.itemsize <= 4:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _csr_of(A: Any):
    """(n, csr tuple, matvec callable, dtype) for A, raising TypeError/ValueError naming A."""
    import scipy.sparse as sp

    # A torch tensor implies torch is imported already; importing it here would cost seconds.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(A, torch.Tensor):
        if A.layout == torch.sparse_csr:
            A = sp.csr_array((A.values().detach().cpu().numpy(), A.col_indices().cpu().numpy(),
                              A.crow_indices().cpu().numpy()), shape=tuple(A.shape))
        elif A.layout == torch.strided:
            A = A.detach().cpu().numpy()
        else:
            raise TypeError(f"A: torch tensors must be strided or sparse CSR, got {A.layout}")
    if sp.issparse(A) or isinstance(A, np.ndarray):
        if A.ndim != 2:
            raise ValueError(f"A: expected a 2-D matrix, got {A.ndim} dimensions")
        if A.shape[0] != A.shape[1]:
            raise ValueError(f"A: must be square, got shape {A.shape}")
        vals = A.data if sp.issparse(A) else A
        if not (np.issubdtype(vals.dtype, np.number) or vals.dtype == bool):
            raise TypeError(f"A: expected a numeric matrix, got dtype {A.dtype}")
        dt = _working_dtype(vals.dtype)
        A = sp.csr_array(A, dtype=dt)
        if not A.has_canonical_format:
            A = A.copy()
            A.sum_duplicates()  # also sorts the indices (needed by ILU(0))
        if not np.isfinite(A.data).all():
            raise ValueError("A: contains NaN or infinity")
        idx = np.int32 if A.indptr.dtype == np.int32 and A.indices.dtype == np.int32 else np.int64
        csr = (A.shape[0], A.shape[1], np.ascontiguousarray(A.indptr, dtype=idx),
               np.ascontiguousarray(A.indices, dtype=idx), np.ascontiguousarray(A.data))
        return A.shape[0], csr, None, dt
    from scipy.sparse.linalg import LinearOperator

    if isinstance(A, LinearOperator):
        if A.shape[0] != A.shape[1]:
            raise ValueError(f"A: must be square, got shape {A.shape}")
        return A.shape[0], None, A.matvec, _working_dtype(A.dtype)
    raise TypeError("A: expected a scipy.sparse matrix, a 2-D numpy array, a "
                    f"scipy.sparse.linalg.LinearOperator or a torch sparse CSR tensor, got {type(A).__name__}")


def _vector_fn(f: Callable, n: int, name: str, dtype=np.float64) -> Callable:
    def apply(x: np.ndarray) -> np.ndarray:
        y = np.asarray(f(x))
        if np.iscomplexobj(y) and np.dtype(dtype).kind != "c":
            raise TypeError(f"{name}: returned complex values for a real system")
        y = np.ascontiguousarray(y, dtype=dtype).reshape(-1)
        if y.shape[0] != n:
            raise ValueError(f"{name}: returned {y.shape[0]} values, expected {n}")
        return y

    return apply


def _precond_of(M: Any, n: int, dtype=np.float64):
    """(kind, callable or None) for M: None, "jacobi", "ilu0", or an approximation of A^{-1}."""
    if M is None or isinstance(M, str):
        if M not in _PRECONDS:
            raise ValueError(f"M: expected None, 'jacobi', 'ilu0', a LinearOperator or a callable, got {M!r}")
        return _PRECONDS[M], None
    import scipy.sparse as sp
    from scipy.sparse.linalg import LinearOperator

    if isinstance(M, LinearOperator) or sp.issparse(M) or isinstance(M, np.ndarray):
        if M.shape != (n, n):
            raise ValueError(f"M: expected shape {(n, n)}, got {M.shape}")
        return 3, _vector_fn(M.matvec if isinstance(M, LinearOperator) else M.__matmul__, n, "M",
                             dtype)
    if callable(M):
        return 3, _vector_fn(M, n, "M", dtype)
    raise TypeError(f"M: expected None, 'jacobi', 'ilu0', a LinearOperator or a callable, got {type(M).__name__}")


def _dtype_of(v: Any, name: str) -> np.dtype:
    # A torch tensor implies torch is imported already.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    a = np.asarray(v)
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise TypeError(f"{name}: expected numbers, got dtype {a.dtype}")
    return a.dtype


def _vector(v: Any, n: int, name: str, dtype=np.float64) -> np.ndarray:
    a = np.asarray(v)
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise TypeError(f"{name}: expected numbers, got dtype {a.dtype}")
    a = np.array(a, dtype=dtype).reshape(-1) if a.ndim <= 2 else None
    if a is None or a.shape[0] != n:
        raise ValueError(f"{name}: expected {n} values (A is {n} x {n}), got shape {np.shape(v)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinity")
    return a


def _check_int(v: Any, name: str, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {v!r}")
    return int(v)


def _array_device(v: Any):
    """(type, index) of the device holding an array -- a torch tensor, a cupy(x) array or sparse
    matrix, anything with ``__dlpack_device__`` -- or None for host objects. Imports nothing."""
    if v is None:
        return None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(v, torch.Tensor):
        return (v.device.type, v.device.index)
    import scipy.sparse as sp

    if isinstance(v, np.ndarray) or sp.issparse(v):
        return None
    if all(hasattr(v, a) for a in ("data", "indices", "indptr", "shape")):  # cupyx.scipy.sparse
        return _array_device(v.data)
    f = getattr(v, "__dlpack_device__", None)
    if f is not None:
        kind, index = f()
        return ("cuda", int(index)) if int(kind) == 2 else ("cpu", None)
    if hasattr(v, "__cuda_array_interface__"):
        return ("cuda", None)
    return None


def _backend_device(A, b, x0, device):
    """The device for the torch backend (krylov_device), or None for the C++ path: ``device``
    when given, else A's device when A lives on an accelerator (b and x0 must be there too)."""
    if device is not None:
        import torch

        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device: expected 'cpu', 'cuda', 'cuda:N' or a torch.device, got "
                             f"{device!r} ({e})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asked for, but torch sees no CUDA device")
        return dev
    a_dev = _array_device(A)
    on_host = a_dev is None or a_dev[0] == "cpu"
    for name, v in (("b", b), ("x0", x0)):
        d = _array_device(v)
        v_host = d is None or d[0] == "cpu"
        if v is not None and (v_host != on_host or (not on_host and d != a_dev
                                                     and None not in (d[1], a_dev[1]))):
            where = lambda t: "the host" if t is None or t[0] == "cpu" else ":".join(  # noqa: E731
                str(p) for p in t if p is not None)
            raise ValueError(f"{name}: is on {where(d)}, A is on {where(a_dev)}; put A, b and x0 "
                             "on one device (or pass device=... to move them)")
    if on_host:
        return None
    import torch

    return torch.device(a_dev[0], a_dev[1])


def _solver_settings(method, m, k, rtol, atol, maxiter, recycle, callback):
    """Checked ``(m, k, maxiter)`` of a solve (C++ or torch backend); raises naming the argument."""
    m = _check_int(m, "m", 1)
    k = _check_int(k, "k", 0)
    if method == "gcrodr" and k >= m:
        raise ValueError(f"k: must be smaller than m, got k={k}, m={m}")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(v, (int, float, np.floating)) and np.isfinite(v) and v >= 0):
            raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    maxiter = 10000 if maxiter is None else _check_int(maxiter, "maxiter", 0)
    if recycle is not None and not isinstance(recycle, RecycleSpace):
        raise TypeError(f"recycle: expected a fastpaper.krylov.RecycleSpace, got {type(recycle).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError("callback: expected a callable f(residual_norm)")
    return m, k, maxiter


_SINGLE_OF = {np.dtype(np.float64): np.dtype(np.float32), np.dtype(np.complex128): np.dtype(np.complex64)}


def _check_precision(precision) -> str:
    if precision not in ("full", "mixed"):
        raise ValueError(f"precision: expected 'full' or 'mixed', got {precision!r}")
    return precision


def _solve(method: str, A, b, x0, rtol, atol, m, k, M, recycle, callback, maxiter, device=None,
           precision="full"):
    precision = _check_precision(precision)
    dev = _backend_device(A, b, x0, device)
    if dev is not None:
        if precision == "mixed":
            raise ValueError("precision: 'mixed' runs on the C++ (host) backend only; pass float32 "
                             "tensors to solve in single precision on a device")
        return _solve_device(method, A, b, x0, rtol, atol, m, k, M, recycle, callback, maxiter, dev)
    if recycle is not None and isinstance(recycle, RecycleSpace):
        recycle._to_host()
    n, csr, afn, a_dtype = _csr_of(A)
    # the common type of A, b and x0 (a real A is promoted for a complex b, float32 for a float64 b)
    dtypes = [a_dtype, _dtype_of(b, "b")] + ([] if x0 is None else [_dtype_of(x0, "x0")])
    dtype = _working_dtype(*dtypes)
    cplx = dtype.kind == "c"
    if csr is not None and csr[4].dtype != dtype:
        csr = (*csr[:4], csr[4].astype(dtype))
    if afn is not None:
        afn = _vector_fn(afn, n, "A", dtype)
    b = _vector(b, n, "b", dtype)
    x = np.zeros(n, dtype=dtype) if x0 is None else _vector(x0, n, "x0", dtype)
    m, k, maxiter = _solver_settings(method, m, k, rtol, atol, maxiter, recycle, callback)
    # mixed precision: a double system, its Krylov basis / recycle space / M in single precision
    mixed = precision == "mixed" and dtype in _SINGLE_OF
    if mixed and csr is None:
        raise ValueError("precision: 'mixed' needs A as a matrix (sparse, dense or torch CSR), "
                         "not a LinearOperator or callable")
    basis = _SINGLE_OF[dtype] if mixed else dtype
    kind, mfn = _precond_of(M, n, basis)
    if recycle is not None and recycle.dim > 0 and recycle.n != n:
        raise ValueError(f"recycle: the space holds vectors of length {recycle.n}, A is {n} x {n}")
    if recycle is not None and recycle.dim > 0 and recycle.dtype != basis:
        raise ValueError(f"recycle: the space holds {recycle.dtype} vectors, this system's basis is "
                         f"{basis} (solve systems of one scalar type and precision with one space)")
    monitor = None
    if callback is not None:
        monitor = lambda it, rn: callback(rn)  # noqa: E731 - scipy's "pr_norm" convention
    # one entry per Arnoldi step, one per cycle (>= m - k - 1 steps unless it converges) and x0's
    history = np.zeros(maxiter + maxiter // max(m - k - 1, 1) + 8)
    t0 = time.perf_counter()
    entry = getattr(_C, f"solve_mixed_{dtype.name}" if mixed else f"solve_{dtype.name}")
    d = entry(method, n, csr, afn, kind, mfn, b, x, m, k, float(rtol), float(atol), maxiter,
              recycle._space if recycle is not None else None, monitor, history)
    seconds = time.perf_counter() - t0
    info = SolveInfo(
        converged=d["converged"], iterations=d["iterations"], matvecs=d["matvecs"],
        cycles=d["cycles"], residual_norm=d["residual_norm"], b_norm=d["b_norm"],
        stagnated=d["stagnated"], breakdown=d["breakdown"], recycle_dim=d["recycle_dim"],
        residuals=history[: min(d["history_length"], history.shape[0])].copy(), seconds=seconds)
    return x, info


def _solve_device(method, A, b, x0, rtol, atol, m, k, M, recycle, callback, maxiter, device):
    """The torch backend (:mod:`fastpaper.krylov_device`) after the same argument checks."""
    m, k, maxiter = _solver_settings(method, m, k, rtol, atol, maxiter, recycle, callback)
    from . import krylov_device

    return krylov_device.solve(method, A, b, x0, rtol=rtol, atol=atol, m=m, k=k, M=M,
                               recycle=recycle, callback=callback, maxiter=maxiter, device=device)


def gcrodr(A, b, x0=None, *, rtol: float = 1e-8, atol: float = 0.0, m: int = 40, k: int = 20,
           M=None, recycle: Optional[RecycleSpace] = None, callback=None,
           maxiter: Optional[int] = None, device=None, precision: str = "full"):
    r"""Solve :math:`A x = b` with GCRO-DR(m, k), optionally recycling U across calls.

    Parameters
    ----------
    A : scipy.sparse matrix/array (any format; converted to CSR, int32 or int64 indices),
        2-D numpy array, ``scipy.sparse.linalg.LinearOperator``, torch sparse CSR (or strided)
        tensor, or ``cupyx.scipy.sparse`` matrix; (n, n), real or complex. A torch tensor on a CUDA
        device or a cupy matrix runs the device backend (:mod:`fastpaper.krylov_device`: SpMV by
        cuSPARSE and BLAS by cuBLAS through torch, the small Hessenberg / harmonic Ritz problems on
        the host) and returns x on the device.
    b : array of n values (real or complex); on A's device when A is on a device.
    x0 : initial guess (default zeros).
    rtol, atol : stop when :math:`\|b - A x\|_2 \le \max(\text{rtol}\,\|b\|_2, \text{atol})`.
    m : Arnoldi vectors per cycle (restart length), >= 1.
    k : recycled vectors, 0 <= k < m (a complex harmonic Ritz pair may make it k + 1).
    M : right preconditioner approximating :math:`A^{-1}`: None, ``"jacobi"``, ``"ilu0"`` (both need
        A as a matrix), or a LinearOperator / matrix / callable ``y = M(x)``.
    recycle : a :class:`RecycleSpace` read at the start and updated at the end (None: a space
        private to this call, still deflating across its restarts).
    callback : ``callback(residual_norm)`` after every Arnoldi step (the recurrence's estimate);
        returning True stops the solve.
    maxiter : cap on Arnoldi steps (default 10000, as the SKR paper's ``-ksp_max_it``).
    device : None (default: the C++ solver for host arrays, the device backend for arrays on a
        GPU), or ``"cuda"`` / ``"cuda:N"`` / ``"cpu"`` / a torch.device to run the torch backend there
        (inputs are moved; ``"cpu"`` runs the GPU code on torch's CPU kernels, slower than the
        C++ path). The torch backend takes M = None, ``"jacobi"``, a torch matrix, or a callable
        on device tensors; ``"ilu0"`` is C++ only.
    precision : ``"full"`` (default): every vector in the working scalar type. ``"mixed"``, for a
        float64 / complex128 system given as a matrix (C++ backend): GMRES-IR, the system solved to
        rtol on its own true residual :math:`b - A x` computed in double against a double iterate
        every cycle, while the Krylov basis, the recycle space (float32 / complex64), the
        preconditioner (built from A rounded to single) and the Arnoldi products are single
        precision: about half the memory traffic per iteration, the same tolerance, a float64 /
        complex128 x. Float32 / complex64 systems always run this way.

    Returns
    -------
    x : ndarray (n,) of the working scalar type: float32, float64, complex64 or complex128; from
        the torch backend the same kind of array as b (torch tensor on b's device, cupy array,
        or numpy)
    info : :class:`SolveInfo`
    """
    return _solve("gcrodr", A, b, x0, rtol, atol, m, k, M, recycle, callback, maxiter, device,
                  precision)


def gmres(A, b, x0=None, *, rtol: float = 1e-8, atol: float = 0.0, m: int = 40, M=None,
          callback=None, maxiter: Optional[int] = None, device=None, precision: str = "full"):
    r"""Solve :math:`A x = b` with restarted GMRES(m) (the GCRO-DR code path with k = 0).

    Same arguments and results as :func:`gcrodr`, without ``k`` and ``recycle``.
    """
    return _solve("gmres", A, b, x0, rtol, atol, m, 0, M, None, callback, maxiter, device,
                  precision)


class RecyclingSolver:
    """GCRO-DR(m, k) that keeps its recycle space U from one :meth:`solve` to the next.

    >>> solver = RecyclingSolver(m=40, k=20, rtol=1e-8)
    >>> for A, b in systems:                 # ideally sorted, see sort_systems
    ...     x, info = solver.solve(A, b)
    """

    def __init__(self, m: int = 40, k: int = 20, *, rtol: float = 1e-8, atol: float = 0.0,
                 M=None, maxiter: Optional[int] = None, device=None, precision: str = "full") -> None:
        m = _check_int(m, "m", 1)
        k = _check_int(k, "k", 0)
        if k >= m:
            raise ValueError(f"k: must be smaller than m, got k={k}, m={m}")
        self.m, self.k, self.rtol, self.atol, self.M, self.maxiter = m, k, rtol, atol, M, maxiter
        self.device = device  # see gcrodr: None picks the backend from A's device
        self.precision = _check_precision(precision)  # see gcrodr
        self.recycle = RecycleSpace()

    def solve(self, A, b, x0=None, *, callback=None):
        """Solve one system, reusing and then updating U. Returns ``(x, SolveInfo)``."""
        n = A.shape[0] if hasattr(A, "shape") else None
        if n is not None and self.recycle.dim > 0 and self.recycle.n != n:
            raise ValueError(f"A: this solver's recycle space has length {self.recycle.n}, A is "
                             f"{n} x {n}; call reset() between problem sizes")
        return gcrodr(A, b, x0, rtol=self.rtol, atol=self.atol, m=self.m, k=self.k, M=self.M,
                      recycle=self.recycle, callback=callback, maxiter=self.maxiter,
                      device=self.device, precision=self.precision)

    def reset(self) -> None:
        self.recycle.reset()


# ---- sorting ----------------------------------------------------------------------------------

def _as_param_matrix(params: Any) -> np.ndarray:
    P = np.asarray(params)
    if P.ndim < 1 or P.shape[0] == 0:
        raise ValueError(f"params: expected an array with one row per system, got shape {P.shape}")
    if np.iscomplexobj(P):
        P = np.concatenate([P.real.reshape(P.shape[0], -1), P.imag.reshape(P.shape[0], -1)], axis=1)
    P = np.asarray(P, dtype=np.float64)
    if not np.isfinite(P).all():
        raise ValueError("params: contains NaN or infinity")
    return P


def _greedy(P: np.ndarray, start: int) -> np.ndarray:
    N = P.shape[0]
    X = P.reshape(N, -1)
    sq = np.einsum("ij,ij->i", X, X)
    visited = np.zeros(N, dtype=bool)
    order = np.empty(N, dtype=np.int64)
    cur = start
    for i in range(N):
        order[i] = cur
        visited[cur] = True
        if i == N - 1:
            break
        d = sq - 2.0 * (X @ X[cur]) + sq[cur]  # squared Frobenius distances to the current system
        d[visited] = np.inf
        cur = int(np.argmin(d))
    return order


def _gray_rank(bits: np.ndarray) -> np.ndarray:
    """Position of each binary-reflected Gray code word (rows of 0/1 bits, MSB first)."""
    g = bits.astype(np.int64)
    b = np.cumsum(g, axis=1) % 2  # inverse Gray code: prefix XOR
    weights = 1 << np.arange(bits.shape[1] - 1, -1, -1, dtype=np.int64)
    return b @ weights


def _fft_gray(P: np.ndarray, modes: int = 12, dims: int = 7) -> np.ndarray:
    N = P.shape[0]
    if P.ndim == 3:  # (N, s, s) fields: 2-D FFT, central modes x modes block after fftshift
        F = np.fft.fftshift(np.fft.fft2(P), axes=(1, 2))
        s0, s1 = P.shape[1], P.shape[2]
        h0, h1 = min(modes, s0), min(modes, s1)
        c0, c1 = s0 // 2 - h0 // 2, s1 // 2 - h1 // 2
        F = F[:, c0:c0 + h0, c1:c1 + h1].reshape(N, -1)
    else:
        X = P.reshape(N, -1)
        F = np.fft.rfft(X, axis=1)[:, : modes * modes]
    feats = np.concatenate([F.real, F.imag], axis=1)
    feats = feats - feats.mean(axis=0)
    q = min(dims, N, feats.shape[1])
    _, _, vt = np.linalg.svd(feats, full_matrices=False)
    Z = feats @ vt[:q].T
    lo, hi = Z.min(axis=0), Z.max(axis=0)
    Z = (Z - lo) / np.where(hi > lo, hi - lo, 1.0)
    cells = _gray_rank(Z >= 0.5)
    return np.argsort(cells, kind="stable")  # generation order inside a cell


def sort_systems(params: Any, method: str = "auto", *, start: int = 0) -> np.ndarray:
    r"""Order systems so that consecutive ones are similar; returns a permutation (int64, (N,)).

    Parameters
    ----------
    params : array (N, ...) -- one parameter array per system (e.g. the coefficient field of a
        Darcy problem, (N, s, s)); complex values are split into real and imaginary parts.
    method :
        ``"greedy"`` -- the SKR paper's Algorithm 1: start at system ``start``, repeatedly append the
        unvisited system nearest in Frobenius norm :math:`\|P_i - P_j\|_F`. O(N^2 |P|).
        ``"fft-gray"`` -- O(N |P| log |P|): FFT of each field, the central 12 x 12 low-frequency
        block (real and imaginary parts), PCA to 7 dimensions, min-max normalization, a 0/1
        threshold at 0.5 per coordinate (2^7 cells), cells visited in binary-reflected Gray-code
        order, generation order kept inside a cell (from the SKR authors' code).
        ``"auto"`` -- greedy for N <= 2000, else fft-gray.
    """
    P = _as_param_matrix(params)
    N = P.shape[0]
    if method not in ("greedy", "fft-gray", "auto"):
        raise ValueError(f"method: expected 'greedy', 'fft-gray' or 'auto', got {method!r}")
    start = _check_int(start, "start", 0)
    if start >= N:
        raise ValueError(f"start: expected an index < {N}, got {start}")
    if method == "auto":
        method = "greedy" if N <= 2000 else "fft-gray"
    if method == "greedy":
        return _greedy(P, start)
    return _fft_gray(P)


def chain_length(params: Any, order: Sequence[int]) -> float:
    """Sum of Frobenius distances between consecutive systems in ``order`` (what sorting shortens)."""
    P = _as_param_matrix(params).reshape(len(params), -1)
    o = np.asarray(order)
    return float(np.linalg.norm(np.diff(P[o], axis=0), axis=1).sum())


# ---- sequences --------------------------------------------------------------------------------

@dataclass
class SequenceResult:
    """Solutions and per-system statistics, both in the caller's order, plus the solve order."""

    solutions: list
    infos: list
    order: np.ndarray
    sort_seconds: float = 0.0
    stats: dict = field(default_factory=dict)


def solve_sequence(As: Sequence[Any], bs: Sequence[Any], *, params: Any = None, sort: Optional[str] = "auto",
                   m: int = 40, k: int = 20, rtol: float = 1e-8, atol: float = 0.0, M=None,
                   maxiter: Optional[int] = None, recycle: bool = True,
                   progress: bool = False, device=None, precision: str = "full") -> SequenceResult:
    """Solve :math:`A_i x_i = b_i` in a similarity order with one :class:`RecyclingSolver`.

    ``params`` (N, ...) drive :func:`sort_systems` (method ``sort``); without params, or with
    ``sort=None``, the systems are solved in the given order. ``recycle=False`` solves each
    system with a fresh GCRO-DR (deflation within the solve only). Returns solutions and
    :class:`SolveInfo` objects in the caller's order (``result.solutions[i]`` solves system i) and
    ``result.stats`` with totals. ``device`` and ``precision`` as in :func:`gcrodr` (U then stays
    on the device from one system to the next).
    """
    N = len(As)
    if len(bs) != N:
        raise ValueError(f"bs: expected {N} right-hand sides (one per matrix), got {len(bs)}")
    t0 = time.perf_counter()
    if params is not None and sort is not None:
        if len(params) != N:
            raise ValueError(f"params: expected {N} rows (one per system), got {len(params)}")
        order = sort_systems(params, sort)
    else:
        order = np.arange(N)
    sort_seconds = time.perf_counter() - t0
    solver = RecyclingSolver(m, k, rtol=rtol, atol=atol, M=M, maxiter=maxiter, device=device,
                             precision=precision)
    solutions: list = [None] * N
    infos: list = [None] * N
    it = order
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(order, desc="solve", unit="system")
    for i in it:
        if not recycle:
            solver.reset()
        solutions[i], infos[i] = solver.solve(As[i], bs[i])
    stats = {
        "matvecs": int(sum(f.matvecs for f in infos)),
        "iterations": int(sum(f.iterations for f in infos)),
        "seconds": float(sum(f.seconds for f in infos)),
        "converged": int(sum(bool(f.converged) for f in infos)),
    }
    return SequenceResult(solutions, infos, order, sort_seconds, stats)
