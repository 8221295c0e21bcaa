"""ParaRNN: a nonlinear recurrence solved for all time steps at once by Newton + parallel scan.

A recurrent cell ``h_t = f(h_{t-1}, x_t)``, t = 1..T, is one nonlinear system in all states
``H = (h_1, ..., h_T)``. Newton's method on the residual ``F_t(H) = h_t - f(h_{t-1}, x_t)`` needs,
per iteration k, only the cell's Jacobian ``J_t = df/dh`` at ``(h^k_{t-1}, x_t)`` (all t at once)
and the solution of the *linear* recurrence::

    delta_t = J_t delta_{t-1} + r_t,     r_t = f(h^k_{t-1}, x_t) - h^k_t,     delta_0 = 0
    h^{k+1} = h^k + delta

which is a scan over affine maps with the associative combine
``(J2, r2) o (J1, r1) = (J2 J1, J2 r1 + r2)`` (:func:`linear_scan`, a C++/CUDA kernel). After k
iterations the first k steps are exact, so Newton ends after at most T iterations; for the
contractive cells of the ParaRNN paper a handful suffice at any T.

Entry points:

* :func:`linear_scan` — the differentiable scan op (``torch.ops.fastpaper.pararnn_linear_scan``),
  diagonal or block-diagonal Jacobians, CPU (C++/OpenMP) and CUDA.
* :func:`newton_solve` — any cell written in PyTorch, Jacobians by ``torch.func`` forward-mode AD,
  gradients by the implicit-function theorem (one reversed scan, no backprop through Newton).
* :class:`fastpaper.nn.ParaGRU`, :class:`fastpaper.nn.ParaLSTM` — the paper's cells, by default
  through fused kernels (``torch.ops.fastpaper.pararnn_cell_newton`` /
  ``pararnn_cell_sequential`` / ``pararnn_cell_backward``, C++/OpenMP and CUDA, math in
  ``csrc/include/fastpaper/detail/pararnn_cells.h``): residual, Jacobian, scan and the
  convergence test in one kernel, the iterate in registers on CUDA; a fused adjoint backward
  that returns the gradients of the pre-activations, the initial state and the diagonal
  parameters directly. ``mode="parallel-generic"`` keeps the :func:`newton_solve` path.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from . import _pararnn_torch as _ops

__all__ = ["linear_scan", "newton_solve", "NewtonInfo", "jacobian"]

_STRUCTURES = ("diag", "block")
_NATIVE = (torch.float32, torch.float64)
_UPCAST = (torch.float16, torch.bfloat16)


def _check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _NATIVE + _UPCAST:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on the CPU or a CUDA device, got {t.device}")
    if t.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")


def linear_scan(J: torch.Tensor, r: torch.Tensor, h0: Optional[torch.Tensor] = None,
                structure: str = "diag", reverse: bool = False,
                adjoint: bool = False) -> torch.Tensor:
    """Solve the linear recurrence ``h_t = J_t h_{t-1} + r_t`` for all t by a parallel scan.

    Forward (``reverse=False``)::

        h_t = J_t h_{t-1} + r_t,    t = 1, ..., T,    h_0 = h0 (zeros if None)

    Reverse (``reverse=True``), the form of an adjoint/backward pass::

        h_t = J_t h_{t+1} + r_t,    t = T, ..., 1,    h_{T+1} = h0 (zeros if None)

    Adjoint (``adjoint=True``, ``h0`` must be None): the transposed system of the same J, which
    is what a backward pass solves, computed without a shifted or transposed copy of J::

        reverse=False:  h_t = J_{t+1}^T h_{t+1} + r_t,   t = T, ..., 1   (J_{T+1} = 0)
        reverse=True:   h_t = J_{t-1}^T h_{t-1} + r_t,   t = 1, ..., T   (J_0 = 0)

    Parameters
    ----------
    J : Tensor
        ``structure="diag"``: ``[B, T, N]``, the diagonal of each J_t (elementwise product).
        ``structure="block"``: ``[B, T, N/k, k, k]``, one dense k x k block per group of k
        consecutive channels; ``J[b, t, g, i, j]`` multiplies ``h[g*k + j]`` into ``h[g*k + i]``.
        k in 2..8 on the CPU, 2..4 on CUDA.
    r : Tensor ``[B, T, N]``
    h0 : Tensor ``[B, N]`` or None
    structure : "diag" | "block"
    reverse : bool
    adjoint : bool

    Returns
    -------
    Tensor ``[B, T, N]``, same dtype and device as ``r``.

    float32 and float64 are computed in their own precision; float16/bfloat16 tensors are read
    and written as such by the kernel, which computes in float32 (each output rounded once). Differentiable in J, r and h0: the adjoint
    ``lambda_t = g_t + J_{t+1}^T lambda_{t+1}`` is the reversed scan, then ``dr = lambda``,
    ``dJ_t = lambda_t h_{t-1}^T`` (diag: ``lambda_t * h_{t-1}``) and ``dh0 = J_1^T lambda_1``.
    Rounding error grows with T roughly like ``eps * T * max|h|`` when ``|J| ~ 1``.

    On CUDA, few ``batch x ceil(N / k / 32)`` channel tiles with a long T (fewer than SMs,
    T >= 1024) run a single-pass multi-block scan (decoupled look-back: time is cut across CTAs,
    no host synchronization), whose last bits may vary from run to run; otherwise one CTA walks
    each tile's whole time axis. ``FASTPAPER_PARARNN_SCAN=chain|lookback`` (environment, read at
    every call) forces one of the two kernels.
    """
    _check_tensor(J, "J")
    _check_tensor(r, "r")
    if structure not in _STRUCTURES:
        raise ValueError(f"structure must be one of {_STRUCTURES}, got {structure!r}")
    for name, flag in (("reverse", reverse), ("adjoint", adjoint)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if adjoint and h0 is not None:
        raise ValueError("h0 must be None when adjoint=True (the adjoint has no boundary term)")
    if J.dtype != r.dtype:
        raise TypeError(f"J and r must have the same dtype, got {J.dtype} and {r.dtype}")
    if J.device != r.device:
        raise ValueError(f"J and r must be on the same device, got {J.device} and {r.device}")
    if r.dim() != 3:
        raise ValueError(f"r must have shape [B, T, N], got {tuple(r.shape)}")
    batch, time, channels = r.shape
    if structure == "diag":
        if tuple(J.shape) != tuple(r.shape):
            raise ValueError(f"J must have the shape of r {tuple(r.shape)} for structure='diag', "
                             f"got {tuple(J.shape)}")
        block = 1
    else:
        if J.dim() != 5 or J.shape[3] != J.shape[4]:
            raise ValueError(f"J must have shape [B, T, N/k, k, k] for structure='block', got "
                             f"{tuple(J.shape)}")
        block = int(J.shape[3])
        if tuple(J.shape[:3]) != (batch, time, channels // max(block, 1)) or block * J.shape[2] != channels:
            raise ValueError(f"J has shape {tuple(J.shape)}, expected [{batch}, {time}, N/k, k, k] "
                             f"with N/k * k = N = {channels}")
        limit = _ops.MAX_BLOCK_CUDA if r.device.type == "cuda" else _ops.MAX_BLOCK_CPU
        if not 2 <= block <= limit:
            raise ValueError(f"J: block size k must be in [2, {limit}] on {r.device.type}, got {block}")
    if h0 is not None:
        _check_tensor(h0, "h0")
        if h0.dtype != r.dtype:
            raise TypeError(f"h0 must have the dtype of r ({r.dtype}), got {h0.dtype}")
        if h0.device != r.device:
            raise ValueError(f"h0 must be on the device of r ({r.device}), got {h0.device}")
        if tuple(h0.shape) != (batch, channels):
            raise ValueError(f"h0 must have shape {(batch, channels)}, got {tuple(h0.shape)}")
    return torch.ops.fastpaper.pararnn_linear_scan(J, r, h0, block, reverse, adjoint)


# ------------------------------------------------------------------------------------ Newton

@dataclass
class NewtonInfo:
    """What :func:`newton_solve` did.

    ``iterations``: Newton steps taken (linear scans solved). ``converged``: every batch element
    met ``max|delta| <= atol + rtol * max|h|`` or was solved exactly (``iterations >= T``).
    ``converged_batch``: the same per batch element (bool tensor ``[B]``). ``max_delta``: the
    largest ``|delta|`` of each iteration (a float per iteration; NaN/inf when it diverged).
    """

    iterations: int = 0
    converged: bool = False
    converged_batch: Optional[torch.Tensor] = None
    max_delta: list = field(default_factory=list)


def jacobian(step_fn: Callable, h_prev: torch.Tensor, x: torch.Tensor, params: Sequence[Any],
             structure: str = "diag", block_size: int = 1):
    """``(f, J)`` of ``f = step_fn(h_prev, x, params)`` with ``J = df/dh_prev`` in the given structure.

    ``h_prev`` is ``[M, N]`` (M = any batch of time steps), ``x`` ``[M, ...]``.
    ``structure="diag"``: J is ``[M, N]``, computed by one forward-mode JVP with the all-ones
    tangent, which returns the row sums of df/dh; they equal the diagonal exactly when the cell's
    Jacobian is diagonal (each output depends only on its own channel), which is what "diag"
    declares. ``structure="block"``: J is ``[M, N/k, k, k]``, from one JVP vmapped over the k
    tangents ``e_j`` repeated in every group: JVP j returns column j of every block (exact when
    the Jacobian is block-diagonal).
    """
    fn = lambda h: step_fn(h, x, params)  # noqa: E731
    if structure == "diag":
        f, jd = torch.func.jvp(fn, (h_prev,), (torch.ones_like(h_prev),))
        return f, jd
    m, n = h_prev.shape
    k = block_size
    basis = torch.eye(k, dtype=h_prev.dtype, device=h_prev.device).repeat(1, n // k)  # [k, N]
    tangents = basis.unsqueeze(1).expand(k, m, n)
    # one vmapped JVP per basis tangent; cols[j][:, g*k + i] = J_g[i, j]
    f, cols = torch.func.vmap(lambda v: torch.func.jvp(fn, (h_prev,), (v,)), out_dims=(None, 0))(tangents)
    return f, cols.permute(1, 2, 0).reshape(m, n // k, k, k)


def _shift(h: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """[h0, h_1, ..., h_{T-1}]: the previous state of every step."""
    return torch.cat([h0.unsqueeze(1), h[:, :-1]], dim=1)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _jacobian_bt(step_fn, h, h0, x, params, structure, k):
    """f and J at every step of the iterate h [B, T, N], in the scan's layout."""
    b, t, n = h.shape
    f, J = jacobian(step_fn, _flat(_shift(h, h0)), _flat(x), params, structure, k)
    f = f.reshape(b, t, n)
    J = J.reshape(b, t, n) if structure == "diag" else J.reshape(b, t, n // k, k, k)
    return f, J


def _newton(step_fn, x, h0, params, structure, k, max_iters, atol, rtol, init):
    b, t = x.shape[0], x.shape[1]
    n = h0.shape[1]
    info = NewtonInfo()
    if init is None:
        h = step_fn(torch.zeros(b * t, n, dtype=h0.dtype, device=h0.device), _flat(x), params)
        h = h.reshape(b, t, n)
    else:
        h = init.detach().clone()
    conv = torch.zeros(b, dtype=torch.bool, device=h.device)
    if t == 0:
        info.converged, info.converged_batch = True, torch.ones_like(conv)
        return h, info
    for it in range(1, max_iters + 1):
        f, J = _jacobian_bt(step_fn, h, h0, x, params, structure, k)
        delta = linear_scan(J, f - h, None, structure)
        # from the second iteration on h is our own tensor; before, it may alias the user's x
        # (a step_fn may return a view of its input), so it is not updated in place
        h = h.add_(delta) if it > 1 else h + delta
        dmax = torch.linalg.vector_norm(delta, float("inf"), dim=(1, 2))
        hmax = torch.linalg.vector_norm(h, float("inf"), dim=(1, 2))
        finite = torch.isfinite(dmax) & torch.isfinite(hmax)  # inf <= inf must not pass
        conv = finite & (dmax <= atol + rtol * hmax)
        if it >= t:  # the first `it` steps are exact after `it` iterations: solved, if finite
            conv = finite
        info.iterations = it
        info.max_delta.append(float(dmax.max()))
        # stop once every batch element is solved or diverged (inf/NaN cannot recover); the
        # batch elements are independent, so one diverging does not stop the others
        if bool((conv | ~torch.isfinite(dmax)).all()):
            break
    info.converged_batch = conv
    info.converged = bool(conv.all())
    return h, info


class _NewtonFunction(torch.autograd.Function):
    """Newton forward without a graph; backward by the implicit-function theorem."""

    @staticmethod
    def forward(ctx, step_fn, cfg, holder, x, h0, *params):
        with torch.no_grad():
            h, info = _newton(step_fn, x, h0, params, *cfg)
        holder.append(info)
        ctx.step_fn, ctx.cfg = step_fn, cfg
        ctx.save_for_backward(x, h0, h, *params)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, h0, h, *params = ctx.saved_tensors
        structure, k = ctx.cfg[0], ctx.cfg[1]
        b, t, n = h.shape
        need_x, need_h0 = ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        need_p = ctx.needs_input_grad[5:]
        if t == 0:
            return (None, None, None, torch.zeros_like(x) if need_x else None,
                    torch.zeros_like(h0) if need_h0 else None,
                    *[torch.zeros_like(p) if need else None for p, need in zip(params, need_p)])
        with torch.no_grad():
            _, J = _jacobian_bt(ctx.step_fn, h, h0, x, params, structure, k)
            # lambda_t = g_t + J_{t+1}^T lambda_{t+1}: the adjoint scan of the same J
            lam = linear_scan(J, grad.to(h.dtype), None, structure, adjoint=True)
        # gradients of f over all steps at once: one VJP with cotangent lambda
        with torch.enable_grad():
            hp = _flat(_shift(h, h0)).detach().requires_grad_(need_h0)
            xs = _flat(x).detach().requires_grad_(need_x)
            ps = tuple(p.detach().requires_grad_(bool(need)) for p, need in zip(params, need_p))
            out = ctx.step_fn(hp, xs, ps)
            wrt = [v for v, need in zip((hp, xs, *ps), (need_h0, need_x, *need_p)) if need]
            grads = iter(torch.autograd.grad(out, wrt, _flat(lam), allow_unused=True)) if wrt else iter(())
        dh0 = next(grads) if need_h0 else None
        if dh0 is not None:
            dh0 = dh0.reshape(b, t, n)[:, 0]
        dx = next(grads) if need_x else None
        if dx is not None:
            dx = dx.reshape(x.shape)
        dps = [next(grads) if need else None for need in need_p]
        return (None, None, None, dx, dh0, *dps)


def newton_solve(step_fn: Callable, x: torch.Tensor, h0: torch.Tensor, params: Sequence[torch.Tensor] = (),
                 structure: str = "diag", block_size: int = 1, max_iters: int = 50,
                 atol: Optional[float] = None, rtol: Optional[float] = None,
                 init: Optional[torch.Tensor] = None, warn: bool = True):
    """Solve ``h_t = f(h_{t-1}, x_t)``, t = 1..T, for all t at once by Newton's method.

    ``f(h_prev, x_t) = step_fn(h_prev, x_t, params)`` must work on a leading batch dimension:
    ``h_prev`` ``[M, N]``, ``x_t`` ``[M, ...]`` -> ``[M, N]`` (it is called with M = B*T, all
    steps at once), and be differentiable by ``torch.func`` (forward mode for the Jacobian,
    reverse mode for gradients).

    Iteration k (starting from ``h^0_t = f(0, x_t)`` or ``init``)::

        J_t = df/dh (h^k_{t-1}, x_t),   r_t = f(h^k_{t-1}, x_t) - h^k_t,   h^k_0 = h0
        delta = linear_scan(J, r)       (delta_t = J_t delta_{t-1} + r_t, delta_0 = 0)
        h^{k+1} = h^k + delta

    until ``max|delta| <= atol + rtol * max|h|`` for every batch element (each is checked over
    its own T x N values), or after ``max_iters`` iterations. The first k steps are exact after
    k iterations, so ``max_iters >= T`` always solves the system (up to rounding).

    Parameters
    ----------
    step_fn : callable ``(h_prev [M, N], x [M, ...], params) -> [M, N]``
    x : Tensor ``[B, T, ...]``
    h0 : Tensor ``[B, N]``, the state before step 1 (also fixes N and the state dtype).
    params : sequence of tensors passed to ``step_fn`` unchanged; gradients flow to them.
    structure : "diag" (df/dh is diagonal) or "block" (block-diagonal with ``block_size`` x
        ``block_size`` blocks over consecutive channels). The structure is a promise about f;
        the Jacobian is built from it (see :func:`jacobian`).
    max_iters : int, >= 1
    atol, rtol : stopping tolerances; default 1e-10 (float64 state), 1e-5 (float32) or 1e-2
        (float16/bfloat16, whose spacing near 1 is 1e-3/8e-3). Newton converges quadratically near the solution, so the error after
        the stopping step is about ``C * max|delta|**2``.
    init : Tensor ``[B, T, N]`` or None, the initial guess.
    warn : emit a RuntimeWarning when the iteration did not converge.

    Accuracy: with the default tolerances the result matches the sequential recurrence to about
    1e-12 in float64 and 1e-5 absolute in float32 for states of order 1 (tested up to T = 4097
    and T = 2048 respectively); scan rounding grows roughly like ``eps * T``.

    Returns
    -------
    h : Tensor ``[B, T, N]`` (differentiable w.r.t. x, h0 and params)
    info : :class:`NewtonInfo`

    Gradients come from the implicit-function theorem at the solution (no backprop through the
    iterations): ``lambda_t = dL/dh_t + J_{t+1}^T lambda_{t+1}`` by one reversed
    :func:`linear_scan`, then one VJP of f over all steps gives ``dL/dx``, ``dL/dparams`` and
    ``dL/dh0 = J_1^T lambda_1``. They are exact for the solution, i.e. as accurate as h.
    """
    if not callable(step_fn):
        raise TypeError(f"step_fn must be callable, got {type(step_fn).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have shape [B, T, ...], got {tuple(x.shape)}")
    _check_tensor(h0, "h0")
    if h0.dim() != 2 or h0.shape[0] != x.shape[0]:
        raise ValueError(f"h0 must have shape [B={x.shape[0]}, N], got {tuple(h0.shape)}")
    if h0.device != x.device:
        raise ValueError(f"h0 must be on the device of x ({x.device}), got {h0.device}")
    if structure not in _STRUCTURES:
        raise ValueError(f"structure must be one of {_STRUCTURES}, got {structure!r}")
    n = h0.shape[1]
    if structure == "diag":
        block_size = 1
    elif not isinstance(block_size, int) or block_size < 2 or n % block_size:
        raise ValueError(f"block_size must be an int >= 2 dividing N={n} for structure='block', "
                         f"got {block_size!r}")
    if not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters must be an int >= 1, got {max_iters!r}")
    params = tuple(params) if params is not None else ()
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{i}] must be a torch.Tensor, got {type(p).__name__}")
    if init is not None:
        _check_tensor(init, "init")
        if tuple(init.shape) != (x.shape[0], x.shape[1], n):
            raise ValueError(f"init must have shape {(x.shape[0], x.shape[1], n)}, got {tuple(init.shape)}")
        init = init.to(h0.dtype)
    default = {torch.float64: 1e-10, torch.float32: 1e-5}.get(h0.dtype, 1e-2)
    atol = default if atol is None else float(atol)
    rtol = default if rtol is None else float(rtol)
    if not (atol >= 0 and rtol >= 0):
        raise ValueError(f"atol and rtol must be >= 0, got {atol} and {rtol}")
    cfg = (structure, block_size, max_iters, atol, rtol, init)
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, h0, *params))
    if needs_grad:
        holder: list = []
        h = _NewtonFunction.apply(step_fn, cfg, holder, x, h0, *params)
        info = holder[0]
    else:
        with torch.no_grad():
            h, info = _newton(step_fn, x, h0, params, *cfg)
    if warn and not info.converged:
        warnings.warn(f"newton_solve did not converge in {info.iterations} iterations "
                      f"(max|delta| per iteration: {info.max_delta})", RuntimeWarning, stacklevel=2)
    return h, info

