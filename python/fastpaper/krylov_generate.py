"""Resumable data generation: sample a PDE family, sort, solve with recycling, write a Zarr store.

Store layout (``zarr`` >= 3, one chunk per sample so that every write is independent):

* ``params``    (count, grid, grid) float64 -- the sampled parameter (sample i from seed and i)
* ``solutions`` (count, grid-2, grid-2) float64 (complex128 for helmholtz) -- interior solution
* ``stats``     (count, 6) float64 -- iterations, matvecs, relative residual, converged, seconds,
  position in the solve order
* ``order``     (count,) int64 -- the solve order (from :func:`fastpaper.krylov.sort_systems`)
* attributes: the settings; ``progress.json`` next to them: how far the run got.

Resuming. Progress is committed after every sample (``progress.json``, replaced atomically after
the sample's arrays are written), so a killed run loses at most the sample in flight; rerunning the
same command skips what is committed and never writes a sample twice in the statistics (writes go
to sample i's own chunk). Samples are drawn from ``default_rng([seed, i])``, so a resumed run has
exactly the inputs of an uninterrupted one. The recycle space is not stored: the first system after
a resume starts without one.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import numpy as np

from . import krylov
from .krylov_pde import make_family

__all__ = ["generate", "read_progress", "STATS_COLUMNS"]

STATS_COLUMNS = ("iterations", "matvecs", "relative_residual", "converged", "seconds", "position")
_FORMAT = "fastpaper.krylov.generate/1"


def read_progress(out: str) -> dict:
    """The committed progress of a store: ``{"sampled": int, "sorted": bool, "done": int}``."""
    path = os.path.join(out, "progress.json")
    if not os.path.exists(path):
        return {"sampled": 0, "sorted": False, "done": 0}
    with open(path) as f:
        return json.load(f)


def _write_progress(out: str, progress: dict) -> None:
    tmp = os.path.join(out, f"progress.json.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(progress, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(out, "progress.json"))  # atomic on POSIX


def _zarr():
    try:
        import zarr
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("fastpaper krylov generate writes Zarr stores: pip install 'zarr>=3'") from e
    return zarr


def generate(family: str, grid: int, count: int, out: str, *, seed: int = 0,
             sort: Optional[str] = "auto", m: int = 40, k: int = 20, rtol: float = 1e-8,
             precond: Optional[str] = None, maxiter: Optional[int] = None,
             progress: bool = True, stop_after: Optional[int] = None) -> dict:
    """Generate ``count`` solved systems of ``family`` into the Zarr store ``out`` (resumable).

    ``sort``: a :func:`fastpaper.krylov.sort_systems` method, or None to solve in sample order.
    ``stop_after``: solve at most this many systems in this call (for tests and for splitting a
    run into sessions). Returns a summary dict (totals of this call and overall progress).
    """
    zarr = _zarr()
    fam = make_family(family, grid)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count: expected an integer >= 1, got {count!r}")
    if sort not in (None, "none", "auto", "greedy", "fft-gray"):
        raise ValueError(f"sort: expected none, auto, greedy or fft-gray, got {sort!r}")
    sort = None if sort == "none" else sort
    settings = {"format": _FORMAT, "family": family, "grid": int(grid), "count": int(count),
                "seed": int(seed), "sort": sort, "m": int(m), "k": int(k), "rtol": float(rtol),
                "precond": precond, "maxiter": maxiter}
    s = grid - 2
    if os.path.exists(os.path.join(out, "progress.json")):
        g = zarr.open_group(out, mode="r+")
        old = dict(g.attrs.get("settings", {}))
        if old != json.loads(json.dumps(settings)):
            raise ValueError(f"out: {out} holds a run with other settings ({old}); use another "
                             "path or the same settings to resume")
    else:
        if os.path.exists(out) and os.listdir(out):
            raise ValueError(f"out: {out} exists and is not a fastpaper krylov store")
        g = zarr.open_group(out, mode="w")
        g.attrs["settings"] = settings
        g.attrs["stats_columns"] = list(STATS_COLUMNS)
        g.create_array("params", shape=(count, grid, grid), chunks=(1, grid, grid), dtype="f8",
                       fill_value=np.nan)
        cplx = np.iscomplexobj(fam.assemble(fam.sample(0, seed))[1])
        g.create_array("solutions", shape=(count, s, s), chunks=(1, s, s),
                       dtype="c16" if cplx else "f8", fill_value=np.nan)
        g.create_array("stats", shape=(count, len(STATS_COLUMNS)), chunks=(1, len(STATS_COLUMNS)),
                       dtype="f8", fill_value=np.nan)
        g.create_array("order", shape=(count,), chunks=(count,), dtype="i8", fill_value=-1)
        _write_progress(out, {"sampled": 0, "sorted": False, "done": 0})
    prog = read_progress(out)

    bar_kw = {"disable": not progress, "dynamic_ncols": True}
    from tqdm.auto import tqdm

    # 1. sample (each sample committed on its own)
    if prog["sampled"] < count:
        for i in tqdm(range(prog["sampled"], count), desc="sample", unit="sample",
                      initial=prog["sampled"], total=count, **bar_kw):
            g["params"][i] = fam.sample(i, seed)
            prog["sampled"] = i + 1
            _write_progress(out, prog)
    # 2. sort (all parameters in memory: count * grid^2 * 8 bytes)
    t0 = time.perf_counter()
    if not prog["sorted"]:
        params = g["params"][:]
        order = krylov.sort_systems(params, sort) if sort else np.arange(count)
        g["order"][:] = order
        prog["sorted"] = True
        prog["sort_seconds"] = time.perf_counter() - t0
        _write_progress(out, prog)
    order = g["order"][:]
    # 3. solve in order with one recycling solver
    solver = krylov.RecyclingSolver(m, k, rtol=rtol, M=precond, maxiter=maxiter)
    start = prog["done"]
    end = count if stop_after is None else min(count, start + int(stop_after))
    matvecs = 0
    solved = 0
    t1 = time.perf_counter()
    with tqdm(total=count, initial=start, desc=f"solve {family}", unit="system", **bar_kw) as bar:
        for pos in range(start, end):
            i = int(order[pos])
            A, b = fam.assemble(g["params"][i])
            x, info = solver.solve(A, b)
            g["solutions"][i] = x.reshape(s, s)
            g["stats"][i] = [info.iterations, info.matvecs, info.relative_residual,
                             float(info.converged), info.seconds, pos]
            prog["done"] = pos + 1
            _write_progress(out, prog)
            matvecs += info.matvecs
            solved += 1
            bar.update(1)
            bar.set_postfix(matvecs=info.matvecs, refresh=False)
    return {"out": out, "solved": solved, "done": prog["done"], "count": count,
            "matvecs": matvecs, "seconds": time.perf_counter() - t1,
            "sort_seconds": prog.get("sort_seconds", 0.0)}
