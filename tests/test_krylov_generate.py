"""`fastpaper krylov generate`: the Zarr store, resuming after SIGKILL (nothing lost or duplicated),
and refusing a store made with other settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.sparse.linalg as spl

zarr = pytest.importorskip("zarr")

from fastpaper import cli  # noqa: E402
from fastpaper.krylov_generate import STATS_COLUMNS, generate, read_progress  # noqa: E402
from fastpaper.krylov_pde import make_family  # noqa: E402

ARGS = ["--family", "darcy", "--grid", "26", "--count", "14", "--m", "20", "--k", "6",
        "--no-progress"]


def _check_store(out: str, family: str, grid: int, count: int) -> None:
    g = zarr.open_group(out, mode="r")
    fam = make_family(family, grid)
    stats = g["stats"][:]
    assert not np.isnan(stats).any()
    col = {c: i for i, c in enumerate(STATS_COLUMNS)}
    assert (stats[:, col["converged"]] == 1).all()
    # every position of the solve order was solved exactly once
    assert sorted(stats[:, col["position"]].astype(int).tolist()) == list(range(count))
    order = g["order"][:]
    np.testing.assert_array_equal(order[stats[:, col["position"]].astype(int)], np.arange(count))
    for i in range(count):
        param = g["params"][i]
        np.testing.assert_array_equal(param, fam.sample(i, 0))  # inputs are reproducible
        A, b = fam.assemble(param)
        x = g["solutions"][i].ravel()
        assert np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b) * (1 + 1e-6)
    i = count - 1
    A, b = fam.assemble(g["params"][i])
    xs = spl.spsolve(A.tocsc(), b)
    np.testing.assert_allclose(g["solutions"][i].ravel(), xs, rtol=0, atol=1e-5 * np.abs(xs).max())


def test_generate_in_process_then_resume_with_stop_after(tmp_path):
    out = str(tmp_path / "d.zarr")
    assert cli.main(["krylov", "generate", *ARGS, "--out", out, "--stop-after", "5"]) == 0
    assert read_progress(out)["done"] == 5
    assert cli.main(["krylov", "generate", *ARGS, "--out", out]) == 0
    assert read_progress(out)["done"] == 14
    _check_store(out, "darcy", 26, 14)
    # a finished run is a no-op
    assert generate("darcy", 26, 14, out, m=20, k=6, progress=False)["solved"] == 0
    # other settings on the same store are refused
    assert cli.main(["krylov", "generate", *ARGS[:-1], "--out", out, "--seed", "1"]) == 2


def test_resume_after_sigkill(tmp_path):
    out = str(tmp_path / "k.zarr")
    cmd = [sys.executable, "-c", "import sys; from fastpaper.cli import main; sys.exit(main())",
           "krylov", "generate", "--family", "poisson", "--grid", "34", "--count", "60",
           "--m", "20", "--k", "6", "--precond", "none", "--precision", "double",  # slow enough
           "--no-progress", "--out", out]                                          # to be killed
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        done = read_progress(out)["done"] if os.path.exists(os.path.join(out, "progress.json")) else 0
        if done >= 3:
            break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = read_progress(out)["done"]
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 3 <= killed_at < 60
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["done"] == 60 and summary["solved"] == 60 - killed_at
    _check_store(out, "poisson", 34, 60)


def test_resume_ignores_a_recycle_space_that_does_not_match_progress(tmp_path):
    from fastpaper.krylov_generate import _recycle_path

    kw = dict(m=20, k=6, progress=False)
    out, ref = str(tmp_path / "a.zarr"), str(tmp_path / "ref.zarr")
    generate("darcy", 26, 8, ref, **kw)
    assert generate("darcy", 26, 8, out, stop_after=3, **kw)["done"] == 3
    saved = np.load(_recycle_path(out, 0))
    assert saved[0, 0] == 3 and saved.shape[1] == 6  # follows 3 systems, k = 6 columns
    # as if killed after the recycle file of system 4 was written but before its progress was
    saved[0, 0] = 4
    np.save(_recycle_path(out, 0), saved)
    assert generate("darcy", 26, 8, out, **kw)["solved"] == 5
    g, gr = zarr.open_group(out, mode="r"), zarr.open_group(ref, mode="r")
    col = STATS_COLUMNS.index("matvecs")
    order = gr["order"][:]
    # the first system after the resume started without a recycle space: more matvecs than in
    # the uninterrupted run; it still converged, and the store is complete and correct
    assert g["stats"][order[3], col] > gr["stats"][order[3], col]
    _check_store(out, "darcy", 26, 8)


@pytest.mark.parametrize("family", ["darcy", "helmholtz"])
def test_single_precision_store(tmp_path, family):
    out = str(tmp_path / "s.zarr")
    args = ["krylov", "generate", "--family", family, "--grid", "22", "--count", "4", "--m", "30",
            "--k", "6", "--precond", "ilu0", "--precision", "single", "--no-progress", "--out", out]
    assert cli.main(args) == 0
    g = zarr.open_group(out, mode="r")
    sol = g["solutions"][:]
    assert sol.dtype == (np.complex64 if family == "helmholtz" else np.float32)
    fam = make_family(family, 22)
    for i in range(4):
        A, b = fam.assemble(g["params"][i])
        xs = spl.spsolve(A.tocsc(), b)
        # solved to rtol 1e-8 in mixed precision, then rounded to single
        err = np.linalg.norm(sol[i].ravel() - xs) / np.linalg.norm(xs)
        assert err <= 1e-5, err
    assert cli.main(args) == 0 and read_progress(out)["done"] == 4  # resumes as a finished run
    with pytest.raises(ValueError, match="precision"):
        generate(family, 22, 4, str(tmp_path / "x.zarr"), precision="half", progress=False)


@pytest.mark.parametrize("family", ["darcy", "helmholtz"])
def test_mixed_precision_store_holds_double_solutions_to_rtol(tmp_path, family):
    out = str(tmp_path / "m.zarr")
    args = ["krylov", "generate", "--family", family, "--grid", "22", "--count", "4", "--m", "30",
            "--k", "6", "--precond", "ilu0", "--precision", "mixed", "--no-progress", "--out", out]
    assert cli.main(args) == 0
    g = zarr.open_group(out, mode="r")
    sol = g["solutions"][:]
    assert sol.dtype == (np.complex128 if family == "helmholtz" else np.float64)
    fam = make_family(family, 22)
    col = STATS_COLUMNS.index("relative_residual")
    for i in range(4):
        A, b = fam.assemble(g["params"][i])
        x = sol[i].ravel()
        # the stored double solution meets rtol = 1e-8 on the double system itself
        assert np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b) * (1 + 1e-6)
        assert g["stats"][i, col] <= 1e-8
    assert dict(g.attrs["settings"])["precision"] == "mixed"


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="family"):
        generate("heat", 20, 3, str(tmp_path / "a.zarr"), progress=False)
    with pytest.raises(ValueError, match="count"):
        generate("darcy", 20, 0, str(tmp_path / "b.zarr"), progress=False)
    (tmp_path / "c.zarr").mkdir()
    (tmp_path / "c.zarr" / "other").write_text("x")
    with pytest.raises(ValueError, match="not a fastpaper"):
        generate("darcy", 20, 3, str(tmp_path / "c.zarr"), progress=False)


def test_chunks_resume_and_dask_equals_single_process(tmp_path):
    distributed = pytest.importorskip("distributed")
    single, chunked = str(tmp_path / "single.zarr"), str(tmp_path / "dask.zarr")
    kw = dict(m=20, k=6, chunk_size=4, progress=False)
    # single process, interrupted after 6 systems (mid-chunk), then resumed
    assert generate("darcy", 26, 10, single, stop_after=6, **kw)["done"] == 6
    assert generate("darcy", 26, 10, single, **kw)["solved"] == 4
    # a fresh single-process run for the bitwise comparison
    ref = str(tmp_path / "ref.zarr")
    generate("darcy", 26, 10, ref, **kw)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        # an address string, as `--scheduler` passes it
        r = generate("darcy", 26, 10, chunked, scheduler=cluster.scheduler_address, **kw)
    assert r["done"] == 10 and r["solved"] == 10
    gr, gd = zarr.open_group(ref, mode="r"), zarr.open_group(chunked, mode="r")
    np.testing.assert_array_equal(gr["solutions"][:], gd["solutions"][:])
    keep = [i for i, c in enumerate(STATS_COLUMNS) if c != "seconds"]
    np.testing.assert_array_equal(gr["stats"][:][:, keep], gd["stats"][:][:, keep])
    # the interrupted run continued with its saved recycle space: bit for bit the fresh run
    gs = zarr.open_group(single, mode="r")
    np.testing.assert_array_equal(gr["solutions"][:], gs["solutions"][:])
    np.testing.assert_array_equal(gr["stats"][:][:, keep], gs["stats"][:][:, keep])
    _check_store(single, "darcy", 26, 10)
    _check_store(chunked, "darcy", 26, 10)
    with pytest.raises(ValueError, match="chunk_size"):
        generate("darcy", 26, 10, str(tmp_path / "x.zarr"), chunk_size=0, progress=False)
