"""Resumable data generation: sample a PDE family, sort, solve with recycling, write a Zarr store.

Store layout (``zarr`` >= 3, one chunk per sample so that every write is independent):

* ``params``    (count, grid, grid) float64 -- the sampled parameter (sample i from seed and i)
* ``solutions`` (count, grid-2, grid-2) float64 (complex128 for helmholtz; float32 / complex64 with
  ``precision="single"``) -- interior solution (``precision="mixed"``: float64 / complex128 systems
  and solutions, solved with a single-precision Krylov basis)
* ``stats``     (count, 6) float64 -- iterations, matvecs, relative residual, converged, seconds,
  position in the solve order
* ``order``     (count,) int64 -- the solve order (from :func:`fastpaper.krylov.sort_systems`)
* attributes: the settings; ``progress.json`` (sampling and sorting) and ``progress/chunk_*.json``
  (systems solved per chunk of the solve order) next to them: how far the run got.

Chunks. The sorted sequence is cut into contiguous chunks of ``chunk_size`` positions (default: one
chunk); each chunk is solved in order by its own :class:`~fastpaper.krylov.RecyclingSolver`, so
recycling stays inside a chunk. With ``scheduler`` (a Dask scheduler address, or a
``distributed.Client``) the chunks run as Dask tasks that write their samples into the store
themselves (workers must see the same filesystem); the result equals a single-process run with the
same ``chunk_size``.

Resuming. Progress is committed after every sample (the chunk's progress file is replaced atomically
after the sample's arrays are written), so a killed run loses at most the samples in flight;
rerunning the same command skips what is committed and never writes a sample twice (writes go to
sample i's own chunk). Samples are drawn from ``default_rng([seed, i])``, so a resumed run has
exactly the inputs of an uninterrupted one. The recycle space U of each chunk is saved with its
progress (``progress/recycle_*.npy``, tagged with the number of systems it follows), so a resumed
chunk continues with the U an uninterrupted run would have: the resumed run's solutions, iterations
and matvecs are the uninterrupted run's, bit for bit. A saved U that does not match the committed
progress (killed between the two writes) is ignored and the chunk restarts recycling from scratch.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import numpy as np

from . import krylov
from .krylov_pde import make_family

__all__ = ["generate", "read_progress", "solve_chunk", "STATS_COLUMNS"]

STATS_COLUMNS = ("iterations", "matvecs", "relative_residual", "converged", "seconds", "position")
_FORMAT = "fastpaper.krylov.generate/1"


def read_progress(out: str) -> dict:
    """The committed progress of a store: ``{"sampled": int, "sorted": bool, "done": int}``
    (``done``: systems solved, over all chunks)."""
    path = os.path.join(out, "progress.json")
    if not os.path.exists(path):
        return {"sampled": 0, "sorted": False, "done": 0}
    with open(path) as f:
        prog = json.load(f)
    folder = os.path.join(out, "progress")
    prog["done"] = 0
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith("chunk_") and name.endswith(".json"):
                prog["done"] += _read_json(os.path.join(folder, name))["done"]
    return prog


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX


def _write_progress(out: str, progress: dict) -> None:
    _write_json(os.path.join(out, "progress.json"),
                {k: v for k, v in progress.items() if k != "done"})


def _chunk_path(out: str, chunk: int) -> str:
    return os.path.join(out, "progress", f"chunk_{chunk:06d}.json")


def _chunk_done(out: str, chunk: int) -> int:
    path = _chunk_path(out, chunk)
    return _read_json(path)["done"] if os.path.exists(path) else 0


def _recycle_path(out: str, chunk: int) -> str:
    return os.path.join(out, "progress", f"recycle_{chunk:06d}.npy")


def _save_recycle(out: str, chunk: int, done: int, U: np.ndarray) -> None:
    # Row 0 holds the tag (systems solved before this U), rows 1.. hold U: one file, one atomic
    # replace, so the tag and the basis can never disagree.
    tagged = np.empty((U.shape[0] + 1, U.shape[1] if U.ndim == 2 else 0), dtype=U.dtype)
    tagged[0] = done
    tagged[1:] = U
    path = _recycle_path(out, chunk)
    tmp = f"{path}.tmp{os.getpid()}.npy"
    with open(tmp, "wb") as f:
        np.save(f, tagged)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_recycle(out: str, chunk: int, done: int) -> Optional[np.ndarray]:
    """The chunk's saved U if it follows exactly ``done`` systems, else None."""
    path = _recycle_path(out, chunk)
    if done == 0 or not os.path.exists(path):
        return None
    try:
        tagged = np.load(path)
    except (OSError, ValueError):  # a torn file cannot happen (atomic replace), a foreign one can
        return None
    if tagged.ndim != 2 or tagged.shape[0] < 1 or tagged.shape[1] == 0 or tagged[0, 0] != done:
        return None
    return tagged[1:]


def solve_chunk(out: str, chunk: int, start: int, end: int, limit: Optional[int] = None,
                on_system=None) -> dict:
    """Solve positions [start, end) of the store's solve order (one chunk) with a recycling
    solver, skipping what the chunk already committed and continuing from its saved recycle space;
    commit after every system. Runs in the calling process or as a Dask task. Returns
    ``{"chunk", "solved", "matvecs"}``."""
    zarr = _zarr()
    g = zarr.open_group(out, mode="r+")
    st = dict(g.attrs["settings"])
    fam = make_family(st["family"], st["grid"])
    s = st["grid"] - 2
    order = g["order"][start:end]
    solver = krylov.RecyclingSolver(st["m"], st["k"], rtol=st["rtol"], M=st["precond"],
                                    maxiter=st["maxiter"],
                                    precision="mixed" if st.get("precision") == "mixed" else "full")
    done = _chunk_done(out, chunk)
    saved = _load_recycle(out, chunk, done)
    if saved is not None:
        solver.recycle.set(saved)
    stop = end if limit is None else min(end, start + done + int(limit))
    matvecs = 0
    for pos in range(start + done, stop):
        i = int(order[pos - start])
        A, b = fam.assemble(g["params"][i])
        if st.get("precision", "double") == "single":
            A, b = _single(A), _single(b)
        x, info = solver.solve(A, b)
        g["solutions"][i] = x.reshape(s, s)
        g["stats"][i] = [info.iterations, info.matvecs, info.relative_residual,
                         float(info.converged), info.seconds, pos]
        if solver.recycle.dim > 0 and pos + 1 < end:
            _save_recycle(out, chunk, pos - start + 1, solver.recycle.U)
        _write_json(_chunk_path(out, chunk), {"done": pos - start + 1})
        matvecs += info.matvecs
        if on_system is not None:
            on_system(info)
    return {"chunk": chunk, "solved": stop - (start + done), "matvecs": matvecs}


def _single(a):
    """float32 / complex64 of a matrix or vector: the single-precision systems of
    ``precision="single"`` (solved in mixed precision by fastpaper.krylov)."""
    return a.astype(np.complex64 if np.iscomplexobj(a) else np.float32)


def _zarr():
    try:
        import zarr
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("fastpaper krylov generate writes Zarr stores: pip install 'fastpaper[krylov]' "
                          "(zarr>=3)") from e
    return zarr


def generate(family: str, grid: int, count: int, out: str, *, seed: int = 0,
             sort: Optional[str] = "auto", m: int = 40, k: int = 20, rtol: float = 1e-8,
             precond: Optional[str] = "ilu0", maxiter: Optional[int] = None,
             chunk_size: Optional[int] = None, scheduler=None,
             progress: bool = True, stop_after: Optional[int] = None,
             precision: str = "mixed") -> dict:
    """Generate ``count`` solved systems of ``family`` into the Zarr store ``out`` (resumable).

    ``sort``: a :func:`fastpaper.krylov.sort_systems` method, or None to solve in sample order.
    ``chunk_size``: systems per recycling chunk (default: all in one chunk). ``scheduler``: run the
    chunks on Dask (address string or ``distributed.Client``).
    ``precond``: ``"ilu0"`` (default), ``"jacobi"`` or None/``"none"``.
    ``stop_after``: solve at most this many systems in this call, single-process only (for tests and
    for splitting a run into sessions). ``precision="single"``: assemble float32 / complex64
    systems and store single-precision solutions (half the storage; the solver keeps a double
    iterate, so ``rtol`` below float32's resolution is still reached before rounding).
    ``precision="mixed"`` (default): double systems and solutions, each solved to ``rtol`` on its
    double residual with a single-precision Krylov basis (:func:`fastpaper.krylov.gcrodr`'s
    ``precision="mixed"``; usually the fastest); ``"double"``: everything in double. Returns a summary dict (totals of this call and
    overall progress).
    """
    zarr = _zarr()
    fam = make_family(family, grid)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count: expected an integer >= 1, got {count!r}")
    if sort not in (None, "none", "auto", "greedy", "fft-gray"):
        raise ValueError(f"sort: expected none, auto, greedy or fft-gray, got {sort!r}")
    sort = None if sort == "none" else sort
    if precond not in (None, "none", "jacobi", "ilu0"):
        raise ValueError(f"precond: expected none, jacobi or ilu0, got {precond!r}")
    precond = None if precond == "none" else precond
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")
    if precision not in ("double", "mixed", "single"):
        raise ValueError(f"precision: expected 'double', 'mixed' or 'single', got {precision!r}")
    if scheduler is not None and stop_after is not None:
        raise ValueError("stop_after: only for single-process runs (no scheduler)")
    settings = {"format": _FORMAT, "family": family, "grid": int(grid), "count": int(count),
                "seed": int(seed), "sort": sort, "m": int(m), "k": int(k), "rtol": float(rtol),
                "precond": precond, "maxiter": maxiter, "chunk_size": chunk_size}
    if precision != "double":  # absent for double: stores written before this option still resume
        settings["precision"] = precision
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
        sol_dtype = {(False, "double"): "f8", (True, "double"): "c16", (False, "mixed"): "f8",
                     (True, "mixed"): "c16", (False, "single"): "f4",
                     (True, "single"): "c8"}[(cplx, precision)]
        g.create_array("solutions", shape=(count, s, s), chunks=(1, s, s),
                       dtype=sol_dtype, fill_value=np.nan)
        g.create_array("stats", shape=(count, len(STATS_COLUMNS)), chunks=(1, len(STATS_COLUMNS)),
                       dtype="f8", fill_value=np.nan)
        g.create_array("order", shape=(count,), chunks=(count,), dtype="i8", fill_value=-1)
        os.makedirs(os.path.join(out, "progress"), exist_ok=True)
        _write_progress(out, {"sampled": 0, "sorted": False})
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
    # 3. solve the chunks of the order, each with its own recycling solver
    size = chunk_size or count
    chunks = [(c, c * size, min(count, (c + 1) * size)) for c in range(-(-count // size))]
    pending = [(c, a, e) for c, a, e in chunks if _chunk_done(out, c) < e - a]
    start_done = read_progress(out)["done"]
    solved = matvecs = 0
    t1 = time.perf_counter()
    with tqdm(total=count, initial=start_done, desc=f"solve {family}", unit="system",
              **bar_kw) as bar:
        if scheduler is None:
            budget = None if stop_after is None else int(stop_after)
            for c, a, e in pending:
                if budget is not None and budget <= 0:
                    break
                r = solve_chunk(out, c, a, e, limit=budget,
                                on_system=lambda info: (bar.update(1),
                                                        bar.set_postfix(matvecs=info.matvecs,
                                                                        refresh=False)))
                solved += r["solved"]
                matvecs += r["matvecs"]
                if budget is not None:
                    budget -= r["solved"]
        else:
            from distributed import Client, as_completed

            client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
            try:
                futures = [client.submit(solve_chunk, out, c, a, e, pure=False)
                           for c, a, e in pending]
                for fut in as_completed(futures):
                    r = fut.result()
                    solved += r["solved"]
                    matvecs += r["matvecs"]
                    bar.update(r["solved"])
            finally:
                if client is not scheduler:
                    client.close()
    return {"out": out, "solved": solved, "done": read_progress(out)["done"], "count": count,
            "matvecs": matvecs, "seconds": time.perf_counter() - t1,
            "sort_seconds": prog.get("sort_seconds", 0.0)}
