"""Side-by-side benchmark of Krylov solvers on a sorted PDE sequence (SKR setting), one process.

For N systems of a family (default: Darcy, grid 102 -> 10^4 unknowns, N = 20, rtol 1e-8), every
row solving the same float64 / complex128 systems to the same rtol on their own residual:

  scipy gmres(restart=40)          scipy.sparse.linalg.gmres
  scipy gcrotmk(m=40, k=20) + CU   recycled (c, u) pairs carried across systems (c reset to None)
  fastpaper GMRES(40)              same C++ backend as GCRO-DR with k = 0
  fastpaper GCRO-DR(40,20) fresh   a new recycle space per system (deflation within a solve)
  fastpaper GCRO-DR recycled       U carried in generation order
  fastpaper GCRO-DR recycled+sort  U carried in greedy nearest-neighbour order (sort cost reported)
  ... mixed                        the same with precision="mixed" (single-precision basis and
                                   recycle space, double iterate and residual)
  scipy lgmres(inner 30, outer 3)  scipy.sparse.linalg.lgmres (augmented with error approximations)
  Preconditioned (the factorization of each system is part of its time):
  scipy gmres(40) + spilu          scipy's incomplete LU (spilu defaults: ILUTP, drop_tol 1e-4,
  scipy gcrotmk(40,20)+CU + spilu  fill_factor 10) as M
  fastpaper GCRO-DR(40,20) ILU(0)  fastpaper's ILU(0), recycled+sorted, full and mixed precision
  fastpaper GCRO-DR(60,20) ILU(0)  the same at scipy gcrotmk(40,20)'s memory (m + 2k = 80 vectors
                                   there, m + 1 + k = 81 here: both run 40 Arnoldi steps a cycle)
  scipy splu                       sparse LU per system (factor + solve)
  pyamg SA + scipy gmres(40)       smoothed-aggregation AMG as right preconditioner (setup per system)
  pyamg SA + fastpaper GCRO-DR     the same AMG preconditioner, as a callable, with recycling+sort
                                   (pyamg rows are reported as "not available" when it is missing)

Reports mean matvecs and wall time per system, failures (not converged within maxiter) and ratios
against scipy gmres. scipy's matvecs are counted through a LinearOperator wrapper (one Python call
per product, a few microseconds against ~50 us per SpMV at n = 10^4). Threads: whatever OpenMP /
OpenBLAS use by default (fastpaper's solver runs its BLAS single-threaded).

    python bench/bench_krylov.py [--family darcy] [--grid 102 [257 ...]] [--count 20] [--json out.json]
    python bench/bench_krylov.py --device cuda --grid 257 --count 5 --only "GCRO-DR recycled+sorted" \
        --only gcrotmk      # the torch (GPU) backend next to the C++ path and scipy gcrotmk

--device DEV adds rows "fastpaper[DEV] ..." for the torch backend (fastpaper.krylov_device:
cuSPARSE SpMV and cuBLAS on CUDA, small dense problems on the host) on the same systems: GMRES(40),
GCRO-DR recycled+sorted in float64/complex128 and in single (mixed) precision. The matrices are
moved to DEV before the clock starts (assembly happens on the host in this benchmark); the time per
system includes everything else (the solve synchronizes the device before returning).
--device cpu runs the same torch code on torch's CPU kernels (slower than the C++ path: it exists to
test the GPU code on CPU). --only keeps the methods whose name contains one of the given strings.

--grid 102 gives 10^4 unknowns, --grid 257 gives 6.5 x 10^4 (the issue's two sizes).
--single converts every system to float32 / complex64 for every method instead.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import scipy
import scipy.sparse.linalg as spl

from fastpaper import krylov
from fastpaper.krylov_pde import sample_systems


def _counting(A):
    count = [0]

    def mv(v):
        count[0] += 1
        return A @ v

    return spl.LinearOperator(A.shape, matvec=mv, dtype=A.dtype), count


def _spilu(A):
    """scipy's incomplete LU (SuperLU ILUTP, default drop_tol / fill_factor) as a LinearOperator."""
    ilu = spl.spilu(A.tocsc())
    return spl.LinearOperator(A.shape, matvec=ilu.solve, dtype=A.dtype)


def run_scipy_gmres(As, bs, rtol, maxiter, precond=False):
    rows = []
    for A, b in zip(As, bs):
        op, c = _counting(A)
        t = time.perf_counter()
        M = _spilu(A) if precond else None
        x, info = spl.gmres(op, b, rtol=rtol, atol=0.0, restart=40, maxiter=max(1, maxiter // 40),
                            M=M)
        rows.append((c[0], time.perf_counter() - t, info == 0 and _ok(A, x, b, rtol)))
    return rows


def run_scipy_gcrotmk(As, bs, rtol, maxiter, precond=False):
    rows = []
    CU = []
    for A, b in zip(As, bs):
        CU[:] = [(None, u) for _, u in CU]  # a new matrix: C = A U must be recomputed
        op, c = _counting(A)
        t = time.perf_counter()
        M = _spilu(A) if precond else None
        x, info = spl.gcrotmk(op, b, rtol=rtol, atol=0.0, m=40, k=20, CU=CU, discard_C=False,
                              maxiter=max(1, maxiter // 40), M=M)
        rows.append((c[0], time.perf_counter() - t, info == 0 and _ok(A, x, b, rtol)))
    return rows


def run_fastpaper(As, bs, rtol, maxiter, method, recycle, order, m=40, k=20, M=None,
                  precision="full"):
    rows = [None] * len(As)
    solver = krylov.RecyclingSolver(m, k, rtol=rtol, maxiter=maxiter, M=M, precision=precision)
    for i in order:
        A, b = As[i], bs[i]
        t = time.perf_counter()
        if method == "gmres":
            x, info = krylov.gmres(A, b, rtol=rtol, m=m, maxiter=maxiter, M=M, precision=precision)
        else:
            if not recycle:
                solver.reset()
            x, info = solver.solve(A, b)
        rows[i] = (info.matvecs, time.perf_counter() - t, info.converged and _ok(A, x, b, rtol))
    return rows


def run_scipy_lgmres(As, bs, rtol, maxiter):
    rows = []
    for A, b in zip(As, bs):
        op, c = _counting(A)
        t = time.perf_counter()
        x, info = spl.lgmres(op, b, rtol=rtol, atol=0.0, inner_m=30, outer_k=3,
                             maxiter=max(1, maxiter // 33))
        rows.append((c[0], time.perf_counter() - t, info == 0 and _ok(A, x, b, rtol)))
    return rows


def _amg(A):
    import pyamg

    ml = pyamg.smoothed_aggregation_solver(A.tocsr())
    return ml.aspreconditioner(cycle="V")


def run_pyamg_gmres(As, bs, rtol, maxiter):
    rows = []
    for A, b in zip(As, bs):
        op, c = _counting(A)
        t = time.perf_counter()
        M = _amg(A)
        x, info = spl.gmres(op, b, M=M, rtol=rtol, atol=0.0, restart=40,
                            maxiter=max(1, maxiter // 40))
        rows.append((c[0], time.perf_counter() - t, info == 0 and _ok(A, x, b, rtol)))
    return rows


def run_pyamg_gcrodr(As, bs, rtol, maxiter, order):
    rows = [None] * len(As)
    solver = krylov.RecyclingSolver(40, 20, rtol=rtol, maxiter=maxiter)
    for i in order:
        A, b = As[i], bs[i]
        t = time.perf_counter()
        solver.M = _amg(A)
        x, info = solver.solve(A, b)
        rows[i] = (info.matvecs, time.perf_counter() - t, info.converged and _ok(A, x, b, rtol))
    return rows


def run_device(As, bs, rtol, maxiter, method, order, device, single=False):
    """The torch backend on ``device``: A and b moved there first (not timed)."""
    import torch

    from fastpaper.krylov_device import to_device_matrix

    dev = torch.device(device)
    mats = []
    for A, b in zip(As, bs):
        if single:
            dt = np.complex64 if np.iscomplexobj(A.data) or np.iscomplexobj(b) else np.float32
            A, b = A.astype(dt), b.astype(dt)
        mats.append((to_device_matrix(A, dev), torch.from_numpy(np.ascontiguousarray(b)).to(dev)))
    # warm-up (CUDA context, cuSPARSE / cuBLAS handles, the first kernels): a few steps, untimed
    krylov.gcrodr(*mats[0], m=40, k=20, maxiter=45, rtol=rtol, device=dev)
    rows = [None] * len(As)
    solver = krylov.RecyclingSolver(40, 20, rtol=rtol, maxiter=maxiter, device=dev)
    for i in order:
        At, bt = mats[i]
        t = time.perf_counter()
        if method == "gmres":
            x, info = krylov.gmres(At, bt, rtol=rtol, m=40, maxiter=maxiter, device=dev)
        else:
            x, info = solver.solve(At, bt)
        sec = time.perf_counter() - t  # the solve synchronized the device before returning
        ok = info.converged if single else info.converged and _ok(As[i], x.cpu().numpy(), bs[i], rtol)
        rows[i] = (info.matvecs, sec, ok)
    return rows


def run_splu(As, bs, rtol):
    rows = []
    for A, b in zip(As, bs):
        t = time.perf_counter()
        x = spl.splu(A.tocsc()).solve(b)
        rows.append((0, time.perf_counter() - t, _ok(A, x, b, rtol)))
    return rows


def _ok(A, x, b, rtol):
    return bool(np.linalg.norm(b - A @ x) <= rtol * np.linalg.norm(b) * (1 + 1e-6))


def _pyamg_missing():
    try:
        import pyamg  # noqa: F401
    except ImportError as e:
        return f"not available: {e}"
    return None


def run_grid(args, grid):
    t = time.perf_counter()
    params, As, bs = sample_systems(args.family, grid, args.count, args.seed)
    if args.single:
        dt = np.complex64 if np.iscomplexobj(As[0].data) else np.float32
        As = [A.astype(dt) for A in As]
        bs = [b.astype(dt) for b in bs]
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    order = krylov.sort_systems(params, "greedy")
    sort_s = time.perf_counter() - t
    n = As[0].shape[0]
    print(f"{args.family}: {args.count} systems, n = {n}, nnz = {As[0].nnz}, rtol = {args.rtol:g}; "
          f"dtype {As[0].dtype}; sampling+assembly {gen_s:.2f} s, greedy sort {sort_s * 1e3:.1f} ms",
          flush=True)

    ident = list(range(args.count))
    r, mi = args.rtol, args.maxiter
    methods = [
        ("scipy gmres(40)", lambda: run_scipy_gmres(As, bs, r, mi)),
        ("scipy gcrotmk(40,20)+CU", lambda: run_scipy_gcrotmk(As, bs, r, mi)),
        ("scipy lgmres(30,3)", lambda: run_scipy_lgmres(As, bs, r, mi)),
        ("fastpaper GMRES(40)", lambda: run_fastpaper(As, bs, r, mi, "gmres", False, ident)),
        ("fastpaper GCRO-DR fresh", lambda: run_fastpaper(As, bs, r, mi, "gcrodr", False, ident)),
        ("fastpaper GCRO-DR recycled", lambda: run_fastpaper(As, bs, r, mi, "gcrodr", True, ident)),
        ("fastpaper GCRO-DR recycled+sorted", lambda: run_fastpaper(As, bs, r, mi, "gcrodr", True, order)),
        ("fastpaper GCRO-DR recycled+sorted mixed",
         lambda: run_fastpaper(As, bs, r, mi, "gcrodr", True, order, precision="mixed")),
        ("scipy gmres(40) + spilu", lambda: run_scipy_gmres(As, bs, r, mi, precond=True)),
        ("scipy gcrotmk(40,20)+CU + spilu", lambda: run_scipy_gcrotmk(As, bs, r, mi, precond=True)),
        ("fastpaper GCRO-DR(40,20) ILU(0) recycled+sorted",
         lambda: run_fastpaper(As, bs, r, mi, "gcrodr", True, order, M="ilu0")),
        ("fastpaper GCRO-DR(40,20) ILU(0) recycled+sorted mixed",
         lambda: run_fastpaper(As, bs, r, mi, "gcrodr", True, order, M="ilu0", precision="mixed")),
        ("fastpaper GCRO-DR(60,20) ILU(0) recycled+sorted mixed",
         lambda: run_fastpaper(As, bs, r, mi, "gcrodr", True, order, m=60, M="ilu0",
                               precision="mixed")),
        ("scipy splu", lambda: run_splu(As, bs, r)),
        ("pyamg SA + scipy gmres(40)", lambda: run_pyamg_gmres(As, bs, r, mi)),
        ("pyamg SA + fastpaper GCRO-DR recycled+sorted", lambda: run_pyamg_gcrodr(As, bs, r, mi, order)),
    ]
    if args.device:
        dv = args.device
        methods[7:7] = [
            (f"fastpaper[{dv}] GMRES(40)", lambda: run_device(As, bs, r, mi, "gmres", ident, dv)),
            (f"fastpaper[{dv}] GCRO-DR recycled+sorted",
             lambda: run_device(As, bs, r, mi, "gcrodr", order, dv)),
            (f"fastpaper[{dv}] GCRO-DR recycled+sorted single",
             lambda: run_device(As, bs, r, mi, "gcrodr", order, dv, single=True)),
        ]
    missing = _pyamg_missing()
    results = []
    for name, fn in methods:
        if any(s in name for s in args.skip):
            continue
        if args.only and not any(s in name for s in args.only):
            continue
        if name.startswith("pyamg") and missing:
            results.append({"method": name, "unavailable": missing})
            continue
        rows = fn()
        mv = np.array([row[0] for row in rows], dtype=float)
        sec = np.array([row[1] for row in rows])
        results.append({"method": name, "matvecs_mean": float(mv.mean()),
                        "ms_per_system": float(sec.mean() * 1e3),
                        "total_s": float(sec.sum()) + (sort_s if "sorted" in name else 0.0),
                        "failed": int(sum(not row[2] for row in rows))})
        print(f"  done {name}: {mv.mean():.1f} matvecs, {sec.mean() * 1e3:.2f} ms per system, "
              f"{results[-1]['failed']} failed", file=sys.stderr, flush=True)
    base = next((x for x in results if x["method"] == "scipy gmres(40)"), None)
    gcrot = next((x for x in results if x["method"] == "scipy gcrotmk(40,20)+CU"), None)
    w = max([46] + [len(x["method"]) for x in results])
    # the C++ path's best float64 row: the reference for the device rows
    cpp = next((x for x in results if x["method"] == "fastpaper GCRO-DR recycled+sorted"), None)
    head = (f"{'method':{w}s} {'matvecs/system':>15s} {'ms/system':>10s} {'failed':>7s} "
            f"{'speedup vs scipy gmres':>23s} {'vs scipy gcrotmk':>17s} {'vs C++ GCRO-DR rec+sort':>24s}")
    print(head)
    print("-" * len(head))
    for x in results:
        if "unavailable" in x:
            print(f"{x['method']:{w}s} {x['unavailable']}")
            continue
        x["speedup_vs_scipy_gmres"] = base["ms_per_system"] / x["ms_per_system"] if base else None
        sp = f"{x['speedup_vs_scipy_gmres']:.2f}x" if base else "-"
        x["speedup_vs_scipy_gcrotmk"] = gcrot["ms_per_system"] / x["ms_per_system"] if gcrot else None
        sg = f"{x['speedup_vs_scipy_gcrotmk']:.2f}x" if gcrot else "-"
        x["speedup_vs_cpp_gcrodr"] = cpp["ms_per_system"] / x["ms_per_system"] if cpp else None
        sc = f"{x['speedup_vs_cpp_gcrodr']:.2f}x" if cpp else "-"
        print(f"{x['method']:{w}s} {x['matvecs_mean']:15.1f} {x['ms_per_system']:10.2f} "
              f"{x['failed']:7d} {sp:>23s} {sg:>17s} {sc:>24s}")
    return {"family": args.family, "grid": grid, "n": n, "count": args.count, "rtol": args.rtol,
            "device": args.device,
            "dtype": str(As[0].dtype),
            "maxiter": args.maxiter, "sort_seconds": sort_s, "results": results}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="darcy", choices=("darcy", "poisson", "convdiff", "helmholtz"))
    ap.add_argument("--grid", type=int, nargs="+", default=[102],
                    help="nodes per side, one run per value (unknowns (grid-2)^2)")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--rtol", type=float, default=1e-8)
    ap.add_argument("--maxiter", type=int, default=10000, help="matvec / iteration cap per system")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--single", action="store_true", help="float32 / complex64 systems")
    ap.add_argument("--skip", action="append", default=[], help="skip a method (repeatable)")
    ap.add_argument("--only", action="append", default=[],
                    help="run only methods whose name contains this (repeatable)")
    ap.add_argument("--device", default=None,
                    help="also run the torch backend on this device (cuda, cuda:1, cpu)")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads for --device cpu (default: torch's own)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    runs = [run_grid(args, g) for g in args.grid]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "python": platform.python_version(),
                       "scipy": scipy.__version__, "runs": runs}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
