r"""Device backend of :mod:`fastpaper.krylov`: GCRO-DR(m, k) and GMRES(m) on torch tensors.

The same algorithm as the C++ solver (``csrc/krylov/gcrodr.cpp``), written on torch tensors so a
solve on a CUDA device never leaves it:

* **Operator.** :math:`A` is a torch sparse CSR tensor (or a strided dense matrix) on the device;
  :math:`y = A v` is ``torch.mv`` -> cuSPARSE SpMV on CUDA (a torch CPU kernel on the CPU), and
  :math:`C = A M^{-1} U` for a new system one cuSPARSE SpMM.
* **Orthogonalization.** Arnoldi with :math:`(I - C C^H) A M^{-1}`, CGS2 against :math:`[C, V]`
  stored as the rows of one ``(m + 1, n)`` tensor W: two passes of :math:`h = W_j^H w`,
  :math:`w \leftarrow w - W_j h` (``torch.mv`` / ``addmv`` -> cuBLAS gemv), both always (the C++
  solver skips the second update when the first pass is already orthogonal to working precision;
  deciding that here would cost a second device-to-host synchronization per step). Basis updates
  (:math:`C \leftarrow \hat V Q`, :math:`U \leftarrow \hat W P R^{-1}`) are cuBLAS gemm; the QR of
  :math:`A M^{-1} U` for a new system is ``torch.linalg.qr`` on the device (cuSOLVER), followed by
  :math:`U \leftarrow U R^{-1}` (``torch.linalg.solve_triangular``).
* **Small dense problems on the host**, in float64 / complex128 with numpy/scipy: the Givens
  rotations of the Hessenberg least-squares problem :math:`\min_y \|\beta e_1 - \bar H y\|`, and
  the harmonic Ritz problem :math:`\hat G^H \hat G z = \theta\, \hat G^H \hat V^H \hat W z`
  (reduced by :math:`\hat G = Q_g R_g` to the standard eigenproblem
  :math:`R_g^{-1} Q_g^H \hat V^H \hat W z = \mu z`, :math:`\mu = 1/\theta`; LAPACK ``ggev`` on
  the pencil when :math:`\hat G` is rank deficient), keeping the k smallest :math:`|\theta|`
  (a real system keeps both halves of a complex pair), then :math:`\hat G P = Q R`. Only the
  :math:`(m+k+1) \times (m+k)` matrices cross the bus.
* **Synchronization.** One device -> host copy per Arnoldi step: the new Hessenberg column and
  the two norms the breakdown and convergence tests need, in one transfer. One per restart cycle
  for the true residual norm.

Single precision (float32 / complex64) is mixed precision as in the C++ path: A, M^{-1}, the basis
and U in single precision; the iterate :math:`x` and the true residual :math:`b - A x` in double
(a double copy of A's values computes it), so each restart is a step of iterative refinement.

Stopping rule: :math:`\|b - A x\|_2 \le \max(\text{rtol}\,\|b\|_2, \text{atol})` on the true
residual, recomputed after every cycle (the Arnoldi estimate only ends a cycle early).

Cost per Arnoldi step: one SpMV, four gemv over the ``(kc + j) x n`` panel, two norms, about a
dozen kernel launches and one small device -> host copy; per cycle a few gemm of the ``k x n``
recycle space and the host eigenproblem of size m + k. On CUDA the step should be bounded by launch
and Python overhead (estimated 0.1-0.2 ms) below n ~ 10^5 rather than by memory bandwidth (see
bench/bench_krylov.py --device cuda for the measurement). On the CPU this code is
2-6x slower than the C++ path (torch's generic sparse and BLAS-2 kernels plus Python per step;
measured at n = 10^4 on 2 cores): use it there for testing, or for A / M given as torch tensors.

Use it through :func:`fastpaper.krylov.gcrodr` / :func:`~fastpaper.krylov.gmres` /
:class:`~fastpaper.krylov.RecyclingSolver`: it runs when A is a CUDA tensor (torch sparse CSR or
strided) or a ``cupyx.scipy.sparse`` matrix, or when ``device=`` is given (``device="cpu"`` runs
this code on torch's CPU kernels: slower than the C++ path, used to test the GPU code on CPU).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import numpy as np
import torch

__all__ = ["solve", "to_device_matrix", "device_of"]

# Thresholds relative to the working precision (the C++ Tol<T>): happy breakdown, and the rank
# tests of QR(A U) for a new system and of QR(Ghat P) in the harmonic update.
_TOL = {
    True: {"breakdown": 1e-6, "rank_new": 1e-5, "rank_harmonic": 1e-4},   # single precision
    False: {"breakdown": 1e-14, "rank_new": 1e-12, "rank_harmonic": 1e-10},
}

_WIDE = {torch.float32: torch.float64, torch.float64: torch.float64,
         torch.complex64: torch.complex128, torch.complex128: torch.complex128}
_NP = {torch.float32: np.float32, torch.float64: np.float64, torch.complex64: np.complex64,
       torch.complex128: np.complex128}
_TORCH = {np.dtype(v): k for k, v in _NP.items()}


# ---- conversion -----------------------------------------------------------------------------------

def _dlpack_device(obj: Any):
    """torch.device of an array that implements ``__dlpack_device__`` (1: CPU, 2: CUDA,
    3: pinned host), else None."""
    f = getattr(obj, "__dlpack_device__", None)
    if f is None:
        return None
    kind, index = f()
    if int(kind) == 2:
        return torch.device("cuda", int(index))
    if int(kind) in (1, 3):
        return torch.device("cpu")
    raise ValueError(f"unsupported DLPack device type {kind} (CPU and CUDA are supported)")


def _is_cupy_like_sparse(A: Any) -> bool:
    """A cupyx.scipy.sparse matrix, or anything shaped like one: CSR arrays data / indices / indptr
    that torch can take over through DLPack or ``__cuda_array_interface__``."""
    import scipy.sparse as sp

    if sp.issparse(A) or isinstance(A, torch.Tensor):
        return False
    return all(hasattr(A, a) for a in ("data", "indices", "indptr", "shape"))


def _as_torch_array(a: Any, name: str) -> torch.Tensor:
    """Zero-copy view of a device array (DLPack first, then ``__cuda_array_interface__``)."""
    if isinstance(a, torch.Tensor):
        return a
    if hasattr(a, "__dlpack__"):
        return torch.from_dlpack(a)
    if hasattr(a, "__cuda_array_interface__"):
        return torch.as_tensor(a, device="cuda")
    return torch.as_tensor(np.asarray(a))


def device_of(v: Any):
    """torch.device of a torch tensor, a DLPack array or a cupy-like sparse matrix; None for host
    objects without a device (numpy, scipy, lists)."""
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        return v.device
    if _is_cupy_like_sparse(v):
        return device_of(v.data)
    if isinstance(v, np.ndarray):
        return None
    if hasattr(v, "__dlpack_device__"):
        return _dlpack_device(v)
    if hasattr(v, "__cuda_array_interface__"):
        return torch.device("cuda", torch.cuda.current_device())
    return None


def _np_dtype(t: torch.dtype) -> np.dtype:
    if t in (torch.float16, torch.bfloat16):
        return np.dtype(np.float16)
    if t == torch.complex32:
        return np.dtype(np.complex64)
    return np.dtype(torch.empty(0, dtype=t).numpy().dtype)


def to_device_matrix(A: Any, device: torch.device) -> torch.Tensor:
    """A as a torch sparse CSR (or strided 2-D) tensor on ``device``, dtype unchanged.

    Accepts torch tensors (strided, sparse CSR / COO / CSC), cupyx.scipy.sparse matrices (and any
    object with CSR ``data`` / ``indices`` / ``indptr`` arrays exposing DLPack or
    ``__cuda_array_interface__``; taken over without a copy), scipy.sparse matrices and numpy arrays.
    """
    import warnings

    with warnings.catch_warnings():  # torch's one-time "sparse CSR is in beta" notice
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return _to_device_matrix(A, device)


def _to_device_matrix(A: Any, device: torch.device) -> torch.Tensor:
    import scipy.sparse as sp

    if isinstance(A, torch.Tensor):
        T = A.detach()
        if T.layout in (torch.sparse_coo, torch.sparse_csc):
            T = T.to_sparse_csr()
        elif T.layout not in (torch.sparse_csr, torch.strided):
            raise TypeError(f"A: torch tensors must be strided or sparse CSR/COO/CSC, got {T.layout}")
    elif _is_cupy_like_sparse(A):
        fmt = getattr(A, "format", "csr")
        if fmt != "csr":
            if not hasattr(A, "tocsr"):
                raise TypeError(f"A: a sparse matrix in format {fmt!r} without tocsr()")
            A = A.tocsr()
        if len(A.shape) != 2:
            raise ValueError(f"A: expected a 2-D matrix, got shape {tuple(A.shape)}")
        data = _as_torch_array(A.data, "A.data")
        crow = _as_torch_array(A.indptr, "A.indptr")
        col = _as_torch_array(A.indices, "A.indices")
        if crow.dtype != col.dtype:  # torch needs one index type
            crow, col = crow.to(torch.int64), col.to(torch.int64)
        T = torch.sparse_csr_tensor(crow, col, data, size=tuple(int(s) for s in A.shape),
                                    check_invariants=True)  # foreign arrays: check the structure
    elif sp.issparse(A):
        A = sp.csr_array(A)
        if not A.has_canonical_format:  # sorted, no duplicates: what cuSPARSE expects
            A = A.copy()
            A.sum_duplicates()
        idx = np.int32 if A.indptr.dtype == np.int32 and A.indices.dtype == np.int32 else np.int64
        T = torch.sparse_csr_tensor(torch.from_numpy(np.ascontiguousarray(A.indptr, dtype=idx)),
                                    torch.from_numpy(np.ascontiguousarray(A.indices, dtype=idx)),
                                    torch.from_numpy(np.ascontiguousarray(A.data)), size=A.shape,
                                    check_invariants=False)  # scipy's CSR is well formed
    elif isinstance(A, np.ndarray):
        T = torch.from_numpy(np.ascontiguousarray(A))
    else:
        raise TypeError("A: on a device, expected a torch tensor (sparse CSR or strided), a "
                        "cupyx.scipy.sparse matrix, a scipy.sparse matrix or a numpy array, got "
                        f"{type(A).__name__}")
    if T.dim() != 2:
        raise ValueError(f"A: expected a 2-D matrix, got {T.dim()} dimensions")
    if T.shape[0] != T.shape[1]:
        raise ValueError(f"A: must be square, got shape {tuple(T.shape)}")
    return T.to(device)


def _values(A: torch.Tensor) -> torch.Tensor:
    return A.values() if A.layout == torch.sparse_csr else A


def _with_values(A: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    if A.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(A.crow_indices(), A.col_indices(), values, size=A.shape,
                                       check_invariants=False)  # A's own, checked structure
    return values


def _vector(v: Any, n: int, name: str, device, dtype) -> torch.Tensor:
    t = _as_torch_array(v, name) if not isinstance(v, (list, tuple)) else torch.as_tensor(v)
    if t.dim() > 2 or t.numel() != n:
        raise ValueError(f"{name}: expected {n} values (A is {n} x {n}), got shape {tuple(t.shape)}")
    if t.is_complex() and not dtype.is_complex:
        raise TypeError(f"{name}: complex values for a real system")
    t = t.detach().reshape(-1).to(device=device, dtype=dtype)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or infinity")
    return t


# ---- the operator and preconditioner ---------------------------------------------------------------

class _Operator:
    """A in the working type T (Arnoldi), A in double D (true residual), M^{-1} in T."""

    def __init__(self, A: torch.Tensor, dtype: torch.dtype, M: Any):
        self.dtype, self.wide = dtype, _WIDE[dtype]
        vals = _values(A)
        if vals.is_complex() and not dtype.is_complex:
            raise TypeError("A: complex matrix for a real system")
        self.A = _with_values(A, vals.to(dtype))
        # Single precision: the residual uses A's single values exactly, accumulated in double.
        self.Aw = self.A if self.wide == dtype else _with_values(A, vals.to(dtype).to(self.wide))
        # abs(): torch's complex isfinite views the values as real, which CSR values refuse
        if not bool(torch.isfinite(_values(self.A).abs()).all()):
            raise ValueError("A: contains NaN or infinity")
        self.n = A.shape[0]
        self.sparse = A.layout == torch.sparse_csr
        # C = A M^{-1} U as one SpMM (cuSPARSE) on CUDA; torch's CPU SpMM is slower than k SpMVs
        self.block = A.device.type == "cuda"
        self.dinv = None
        self.mfn = None
        if isinstance(M, str) and M == "jacobi":
            d = self._diagonal()
            zero = torch.nonzero(d == 0)
            if zero.numel() > 0:
                i = int(zero[0, 0])
                raise ValueError(f"M: Jacobi needs a non-zero diagonal, A[{i}, {i}] is 0")
            self.dinv = 1.0 / d
        elif isinstance(M, str) and M == "ilu0":
            raise ValueError("M: 'ilu0' is only implemented by the C++ (host) backend; on a device "
                             "use None, 'jacobi' or a callable on device tensors")
        elif M is None or (isinstance(M, str) and M == "none"):
            pass
        elif isinstance(M, str):
            raise ValueError(f"M: expected None, 'jacobi', 'ilu0' or a callable, got {M!r}")
        elif isinstance(M, torch.Tensor):
            if tuple(M.shape) != (self.n, self.n):
                raise ValueError(f"M: expected shape {(self.n, self.n)}, got {tuple(M.shape)}")
            Mt = to_device_matrix(M, self.A.device)
            Mt = _with_values(Mt, _values(Mt).to(dtype))
            self.mfn = lambda v: torch.mv(Mt, v)
        elif callable(M) and not _is_linear_operator(M):
            self.mfn = M
        else:
            raise TypeError("M: on a device, expected None, 'jacobi', a torch matrix or a callable "
                            f"taking and returning device tensors, got {type(M).__name__}")

    def _diagonal(self) -> torch.Tensor:
        if not self.sparse:
            return torch.diagonal(self.A).clone()
        crow, col, val = self.A.crow_indices(), self.A.col_indices(), self.A.values()
        rows = torch.repeat_interleave(torch.arange(self.n, device=val.device, dtype=col.dtype),
                                       crow[1:] - crow[:-1])
        on = col == rows
        d = torch.zeros(self.n, dtype=val.dtype, device=val.device)
        return d.index_add_(0, rows[on].to(torch.int64), val[on])

    def precond(self, v: torch.Tensor) -> torch.Tensor:
        if self.dinv is not None:
            return self.dinv * v
        if self.mfn is not None:
            y = self.mfn(v)
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"M: expected a torch tensor back, got {type(y).__name__}")
            if y.numel() != self.n:
                raise ValueError(f"M: returned {y.numel()} values, expected {self.n}")
            if y.is_complex() and not self.dtype.is_complex:
                raise TypeError("M: returned complex values for a real system")
            return y.reshape(-1).to(device=v.device, dtype=self.dtype)
        return v

    def amv(self, v: torch.Tensor) -> torch.Tensor:
        """A M^{-1} v."""
        return torch.mv(self.A, self.precond(v))

    def amv_rows(self, U: torch.Tensor) -> torch.Tensor:
        """Rows of (A M^{-1} U^T)^T for U (kc, n): one SpMM on CUDA without a user M."""
        if self.mfn is None and self.block:
            Z = U.t() if self.dinv is None else self.dinv[:, None] * U.t()
            return (self.A @ Z.contiguous()).t().contiguous()
        return torch.stack([self.amv(U[i]) for i in range(U.shape[0])])


def _is_linear_operator(M: Any) -> bool:
    try:
        from scipy.sparse.linalg import LinearOperator
    except ImportError:  # pragma: no cover - scipy is a dependency
        return False
    return isinstance(M, LinearOperator)


# ---- host-side small dense problems --------------------------------------------------------------

def _rank_ok(diag: np.ndarray, tol: float) -> int:
    """-1 when |R_jj| > tol * max|R_ii| for every j (and finite), else the first bad column."""
    d = np.abs(np.asarray(diag))
    if d.size == 0:
        return -1
    rmax = d.max()
    for j, v in enumerate(d):
        if not (v > tol * rmax) or not np.isfinite(v):
            return j
    return -1


def _harmonic_select(G: np.ndarray, VW: np.ndarray, k: int, m: int, cplx: bool, tol: dict):
    """P (mm x knew): harmonic Ritz vectors of the k smallest |theta| for
    G^H G z = theta G^H VW z, or None when LAPACK fails (keep the old space)."""
    import scipy.linalg as sl

    mm = G.shape[1]
    inf = math.inf
    try:
        reduced = False
        Qg, Rg = np.linalg.qr(G)
        if _rank_ok(np.diag(Rg), tol["rank_new"]) < 0:
            Mx = sl.solve_triangular(Rg, Qg.conj().T @ VW, check_finite=False)
            reduced = bool(np.isfinite(Mx).all())
        if reduced:
            w, vr = sl.eig(Mx, check_finite=False)
            w = np.asarray(w, dtype=np.complex128)
            a = np.abs(w)
            mag = np.where(a > 0, 1.0 / np.where(a > 0, a, 1.0), inf)
            im = w.imag
        else:
            ab, vr = sl.eig(G.conj().T @ G, G.conj().T @ VW, homogeneous_eigvals=True,
                            check_finite=False)
            al, be = np.asarray(ab[0]), np.asarray(ab[1])
            babs = np.abs(be)
            mag = np.where(babs != 0, np.abs(al) / np.where(babs != 0, babs, 1.0), inf)
            im = np.asarray(al).imag  # real ggev: a pair has alphai > 0 first, beta >= 0
    except (np.linalg.LinAlgError, ValueError):
        return None
    target = min(k, m - 1, mm)
    order = [int(i) for i in np.argsort(mag, kind="stable") if np.isfinite(mag[i])]
    if cplx:
        cols = order[:target]
        return vr[:, cols] if cols else np.zeros((mm, 0), dtype=vr.dtype)
    limit = min(k + 1, m - 1, mm)
    vecs = []
    taken = np.zeros(mm, dtype=bool)
    for i in order:
        if len(vecs) >= target:
            break
        if taken[i]:
            continue
        if im[i] == 0.0:
            vecs.append(np.real(vr[:, i]))
            taken[i] = True
            continue
        first = i if im[i] > 0 else i - 1
        if first < 0 or first + 1 >= mm:
            continue
        if len(vecs) + 2 > limit:
            continue
        v = vr[:, first]  # LAPACK's pair: v = Re + i Im for the eigenvalue with Im > 0
        vecs.append(np.real(v).copy())
        vecs.append(np.imag(v).copy())
        taken[first] = taken[first + 1] = True
    return np.stack(vecs, axis=1) if vecs else np.zeros((mm, 0))


# ---- the solver -------------------------------------------------------------------------------------

class _Solver:
    def __init__(self, op: _Operator, m: int, rtol: float, atol: float, maxiter: int,
                 callback: Optional[Callable]):
        self.op, self.m, self.rtol, self.atol, self.maxiter = op, m, rtol, atol, maxiter
        self.callback = callback
        self.dtype, self.wide = op.dtype, op.wide
        self.cplx = op.dtype.is_complex
        self.host = np.complex128 if self.cplx else np.float64
        self.tol = _TOL[op.dtype in (torch.float32, torch.complex64)]
        self.iterations = self.matvecs = self.cycles = 0
        self.stagnated = self.breakdown = False
        self.history: list = []

    # rd = b - A x in D, r = rd rounded to T
    def residual(self):
        self.matvecs += 1
        rd = self.bd - torch.mv(self.op.Aw, self.xd)
        return rd, rd.to(self.dtype)

    def update_x(self, z: torch.Tensor) -> None:
        self.xd += self.op.precond(z).to(self.wide)

    def amv(self, v):
        self.matvecs += 1
        return self.op.amv(v)

    def dot_rows(self, Wc: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Wc^H-style inner products of each row of Wc with w: h_i = <Wc_i, w>."""
        if self.cplx:
            return torch.mv(Wc, w.conj().resolve_conj()).conj().resolve_conj()
        return torch.mv(Wc, w)

    def run(self, b: torch.Tensor, x: torch.Tensor, U: Optional[torch.Tensor], k: int,
            recycling: bool):
        """Returns (x in D, U rows or None)."""
        m, n = self.m, self.op.n
        self.xd = x.to(self.wide).clone()
        self.bd = b.to(self.wide)
        self.b_norm = float(torch.linalg.vector_norm(self.bd))
        tol = max(self.rtol * self.b_norm, self.atol)
        self.tol_abs = tol
        rd, r = self.residual()
        rnorm = float(torch.linalg.vector_norm(rd))
        self.history.append(rnorm)
        if not math.isfinite(rnorm):
            raise ValueError("A produced non-finite values")
        self.W = torch.zeros((m + 1, n), dtype=self.dtype, device=b.device)
        kc = 0
        self.U = U  # kept as is when the solve needs no iteration
        if recycling and U is not None and U.shape[0] > 0 and rnorm > tol:
            kc = self.new_system(U)
        prev, stall, r_true, stop = rnorm, 0, True, False
        while rnorm > tol and not stop and self.iterations < self.maxiter:
            if kc > 0:  # r <- (I - C C^H) r, x <- x + M^{-1} U C^H r
                C = self.W[:kc]
                c = self.dot_rows(C, r)
                r = r - C.t() @ c
                self.update_x(self.U.t() @ c)
                rnorm = float(torch.linalg.vector_norm(r))
                r_true = False
                if rnorm <= tol:
                    break
            pmax = min(m - kc, self.maxiter - self.iterations)
            p, y, Hbar, B, broke, stop = self.arnoldi(r, rnorm, kc, pmax, tol)
            if broke:
                self.breakdown = True
            # x <- x + M^{-1} (V_p y - U B y)
            if p > 0:
                z = self.W[kc:kc + p].t() @ torch.as_tensor(y.astype(_NP[self.dtype]),
                                                             device=b.device)
                if kc > 0:
                    By = B[:kc, :p] @ y
                    z -= self.U.t() @ torch.as_tensor(By.astype(_NP[self.dtype]), device=b.device)
                self.update_x(z)
            if recycling and p > 0:
                kc = self.harmonic_update(kc, p, Hbar, B, k)
            self.cycles += 1
            rd, r = self.residual()
            rnorm = float(torch.linalg.vector_norm(rd))
            r_true = True
            self.history.append(rnorm)
            if not math.isfinite(rnorm):
                raise ValueError("A or M produced non-finite values")
            stall = stall + 1 if rnorm > prev * (1 - 1e-12) else 0
            prev = rnorm
            if stall >= 3:
                self.stagnated = True
                break
        if not r_true:
            rd, r = self.residual()
            rnorm = float(torch.linalg.vector_norm(rd))
        self.residual_norm = rnorm
        self.converged = rnorm <= tol
        return self.xd, self.U

    def new_system(self, U: torch.Tensor) -> int:
        """C = A M^{-1} U, C = QR (on the device), U <- U R^{-1}; drops columns of U that make C
        rank deficient. Returns the recycle dimension."""
        kc = min(U.shape[0], self.m - 1)
        U = U[:kc].to(self.dtype)
        while kc > 0:
            self.matvecs += kc
            C = self.op.amv_rows(U)                    # (kc, n)
            Q, R = torch.linalg.qr(C.t())              # (n, kc), (kc, kc)
            bad = _rank_ok(torch.diagonal(R).cpu().numpy(), self.tol["rank_new"])
            if bad < 0:
                self.W[:kc] = Q.t()
                self.U = torch.linalg.solve_triangular(R, U.t(), upper=True, left=False).t().contiguous()
                return kc
            U = torch.cat([U[:bad], U[bad + 1:]])
            kc -= 1
        self.U = None
        return 0

    def arnoldi(self, r, beta, kc, pmax, tol):
        """p <= pmax Arnoldi steps of (I - C C^H) A M^{-1} from v_1 = r / beta, CGS2 against
        [C, V]; Givens on the host. Returns (p, y, Hbar, B, broke, stop)."""
        m = self.m
        W = self.W
        host = self.host
        Hbar = np.zeros((m + 1, m), dtype=host)
        B = np.zeros((max(kc, 1), m), dtype=host)
        Rc: list = []            # columns of the rotated Hessenberg
        cs: list = []
        sn: list = []
        g = [complex(beta) if self.cplx else float(beta)]
        W[kc] = r / beta
        conj = (lambda v: v.conjugate()) if self.cplx else (lambda v: v)
        p, broke, stop = 0, False, False
        for j in range(pmax):
            w = self.amv(W[kc + j])
            self.iterations += 1
            cols = kc + j + 1
            Wc = W[:cols]
            WcT = Wc.t()
            w0 = torch.linalg.vector_norm(w)
            h = self.dot_rows(Wc, w)
            w.addmv_(WcT, h, alpha=-1)
            h2 = self.dot_rows(Wc, w)
            w.addmv_(WcT, h2, alpha=-1)
            h += h2
            hn = torch.linalg.vector_norm(w)
            # the one synchronization of the step: h, ||w|| before and after, in one copy; the
            # Givens work below is on Python scalars (double), cheaper than numpy at this size
            vals = torch.cat([h, torch.stack([w0, hn]).to(h.dtype)]).cpu().tolist()
            w0v, hnv = vals[cols].real, vals[cols + 1].real
            if not (hnv > self.tol["breakdown"] * w0v) or w0v == 0.0:
                broke, hnv = True, 0.0
                W[kc + j + 1].zero_()
            else:
                torch.mul(w, 1.0 / hnv, out=W[kc + j + 1])
            if kc:
                B[:kc, j] = vals[:kc]
            col = vals[kc:cols]
            col.append(hnv)
            Hbar[:j + 2, j] = col
            for i in range(j):
                a, c = col[i], col[i + 1]
                col[i] = cs[i] * a + sn[i] * c
                col[i + 1] = -conj(sn[i]) * a + cs[i] * c
            a, c = col[j], col[j + 1]
            aa = abs(a)
            d = math.hypot(aa, abs(c))
            if d == 0.0:
                cj, sj = 1.0, 0.0 * a
            elif aa == 0.0:
                cj, sj = 0.0, conj(c) / abs(c)
            else:
                cj, sj = aa / d, (a / aa) * conj(c) / d
            cs.append(cj)
            sn.append(sj)
            col[j] = cj * a + sj * c
            col[j + 1] = 0.0
            g.append(-conj(sj) * g[j])
            g[j] = cj * g[j]
            Rc.append(col[:j + 1])
            p = j + 1
            est = abs(g[j + 1])
            self.history.append(est)
            if self.callback is not None and self.callback(est):
                stop = True
            if est <= tol or broke or stop:
                break
        # back substitution R_p y = g; a zero pivot gets y_i = 0 (least squares on that direction)
        y = np.zeros(p, dtype=host)
        for i in range(p - 1, -1, -1):
            s = g[i]
            for l in range(i + 1, p):
                s -= Rc[l][i] * y[l]
            dd = Rc[i][i]
            y[i] = s / dd if dd != 0 else 0.0
        return p, y, Hbar, B, broke, stop

    def harmonic_update(self, kc: int, p: int, Hbar: np.ndarray, B: np.ndarray, k: int) -> int:
        """Ghat = [[D, B], [0, Hbar]], What = [U D, V_p]: keep the k harmonic Ritz vectors of
        smallest |theta|; C <- Vhat Q, U <- What P R^{-1} with QR(Ghat P) = Q R."""
        m, W, dev = self.m, self.W, self.W.device
        mm, ld = kc + p, kc + p + 1
        host = self.host
        G = np.zeros((ld, mm), dtype=host)
        VW = np.zeros((ld, mm), dtype=host)
        if kc > 0:
            U = self.U
            # one transfer: ||u_i|| and Vhat^H U = conj(W[:ld] U^H)
            top = (W[:ld] @ U.conj().t()).conj() if self.cplx else W[:ld] @ U.t()
            unorm = torch.linalg.vector_norm(U, dim=1).to(top.dtype)
            both = torch.cat([unorm[None, :], top]).cpu().numpy().astype(host)
            D = 1.0 / both[0].real
            G[np.arange(kc), np.arange(kc)] = D
            VW[:, :kc] = both[1:] * D[None, :]
        else:
            D = np.zeros(0)
        G[:kc, kc:] = B[:kc, :p]
        G[kc:, kc:] = Hbar[:p + 1, :p]
        VW[np.arange(kc, mm), np.arange(kc, mm)] = 1.0
        P = _harmonic_select(G, VW, k, m, self.cplx, self.tol)
        if P is None:
            return kc
        knew = P.shape[1]
        while knew > 0:
            Q, R = np.linalg.qr(G @ P)
            bad = _rank_ok(np.diag(R), self.tol["rank_harmonic"])
            if bad < 0:
                break
            P = np.delete(P, bad, axis=1)
            knew -= 1
        if knew == 0:
            self.U = None
            return 0
        import scipy.linalg as sl

        X = P.astype(host).copy()
        X[:kc] *= D[:, None]
        X = X @ sl.solve_triangular(R, np.eye(knew, dtype=R.dtype), check_finite=False)
        npd = _NP[self.dtype]
        Qt = torch.as_tensor(np.ascontiguousarray(Q.T).astype(npd), device=dev)   # (knew, ld)
        Xt = torch.as_tensor(np.ascontiguousarray(X.T).astype(npd), device=dev)   # (knew, mm)
        Cn = Qt @ W[:ld]
        Un = Xt[:, kc:] @ W[kc:kc + p]
        if kc > 0:
            Un += Xt[:, :kc] @ self.U
        W[:knew] = Cn
        self.U = Un
        return knew


def _dtype_of(v: Any, name: str) -> np.dtype:
    if isinstance(v, torch.Tensor):
        return _np_dtype(v.dtype)
    if not isinstance(v, np.ndarray) and hasattr(v, "dtype") and hasattr(v, "shape"):
        return np.dtype(v.dtype)  # a cupy array: no copy to learn its type
    a = np.asarray(v)
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise TypeError(f"{name}: expected numbers, got dtype {a.dtype}")
    return a.dtype


def solve(method: str, A: Any, b: Any, x0: Any, *, rtol: float, atol: float, m: int, k: int,
          M: Any, recycle: Any, callback: Optional[Callable], maxiter: int, device):
    """Run GCRO-DR (``method="gcrodr"``) or GMRES(m) on ``device``; arguments already checked by
    :func:`fastpaper.krylov._solve` except the array ones. Returns ``(x, SolveInfo)`` with x the
    same kind of array as b (torch tensor on b's device, cupy array, or numpy)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    At = to_device_matrix(A, device)
    n = At.shape[0]
    a_np = _np_dtype(_values(At).dtype)
    if not (np.issubdtype(a_np, np.number) or a_np == bool):
        raise TypeError(f"A: expected a numeric matrix, got dtype {_values(At).dtype}")
    from .krylov import SolveInfo, _working_dtype

    dts = [a_np, _dtype_of(b, "b")] + ([] if x0 is None else [_dtype_of(x0, "x0")])
    T = _TORCH[np.dtype(_working_dtype(*dts))]
    op = _Operator(At, T, M)
    bt = _vector(b, n, "b", device, T)
    xt = torch.zeros(n, dtype=T, device=device) if x0 is None else _vector(x0, n, "x0", device, T)
    recycling = method == "gcrodr" and k > 0
    U = None
    if recycle is not None and recycle.dim > 0:
        if recycle.n != n:
            raise ValueError(f"recycle: the space holds vectors of length {recycle.n}, A is {n} x {n}")
        if np.dtype(recycle.dtype) != np.dtype(_NP[T]):
            raise ValueError(f"recycle: the space holds {recycle.dtype} vectors, this system is "
                             f"{np.dtype(_NP[T])} (solve systems of one scalar type with one space)")
        U = recycle._device_rows(device)
    t0 = time.perf_counter()
    s = _Solver(op, m, float(rtol), float(atol), maxiter, callback)
    if n == 0:
        xd, Un = xt.to(_WIDE[T]), U
        s.b_norm, s.residual_norm, s.converged = 0.0, 0.0, True
    else:
        xd, Un = s.run(bt, xt, U, k, recycling)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if recycle is not None and recycling:
        recycle._store_device(Un if Un is not None else torch.zeros((0, n), dtype=T, device=device))
    info = SolveInfo(converged=bool(s.converged), iterations=s.iterations, matvecs=s.matvecs,
                    cycles=s.cycles, residual_norm=float(s.residual_norm), b_norm=float(s.b_norm),
                    stagnated=s.stagnated, breakdown=s.breakdown,
                    recycle_dim=0 if Un is None else int(Un.shape[0]),
                    residuals=np.asarray(s.history, dtype=np.float64), seconds=seconds)
    return _like(xd.to(T), b), info


def _like(x: torch.Tensor, b: Any):
    """x as the kind of array b is: a torch tensor on b's device, a cupy array, or numpy."""
    if isinstance(b, torch.Tensor):
        return x.to(b.device)
    if not isinstance(b, np.ndarray) and (hasattr(b, "__cuda_array_interface__")
                                          or type(b).__module__.split(".")[0] == "cupy"):
        import cupy

        return cupy.from_dlpack(x.contiguous())
    return x.cpu().numpy()
