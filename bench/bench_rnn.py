"""rnn: fastpaper's fused multi-head cells vs torch.nn.LSTM / GRU (oneDNN on CPU, cuDNN on GPU),
a plain PyTorch loop, and the ``flashrnn`` package when importable — side by side, one process.

Usage::

    python bench/bench_rnn.py                                  # CPU: B=16, T=256, hidden 256
    python bench/bench_rnn.py --threads 1                      # steadier on a shared CPU
    python bench/bench_rnn.py --device cuda --dtype bfloat16 --B 16 --T 1024 --hidden 768 \\
        --configs lstm:1,lstm:12,slstm:12,slstm:48,gru:1 --json out.json

Each config ``cell:NH`` splits ``--hidden`` into NH heads of DH = hidden / NH. Rows per config:

* ``fastpaper.nn``: the nn.Module, fwd and fwd+bwd (backward of sum(output)), in --dtype. On the
  CPU (float32) the input projection runs inside the recurrence's per-step product
  (fastpaper.rnn.flashrnn_input; the GRU and other devices: one GEMM, then the fused recurrence).
* ``fastpaper.rnn.flashrnn``: the op alone (Wx given), what FlashRNN's figures time.
* ``CUDA kernel family`` (CUDA): the family forward / backward run (persistent, cluster,
  cooperative, step); ``--paths auto,cluster,cooperative,step`` adds an op row per forced family
  (``flashrnn op [family]``; fastpaper._rnn.set_cuda_path, i.e. FASTPAPER_RNN_PATH), or the
  reason it cannot run the shape. ``--op-only``: only these rows.
* ``torch.nn.LSTM / GRU`` (single-head lstm/gru configs): cuDNN on GPU (fp16 and the --dtype), the
  native CPU implementation on CPU.
* ``plain loop``: a Python loop over t of torch ops (autograd for the backward).
* ``flashrnn`` (NX-AI): its fused CUDA backend when the package imports and builds; otherwise the
  reason it is not available.

Timings: median of --repeats after --warmup (CUDA: events on the current stream). On the CPU the
implementations of a config are timed in turns (round robin); on a shared CPU (other jobs
running) ``--stat min`` and ``--clock cpu`` (process CPU time instead of wall time, only with
``--threads 1``) give steadier numbers: time slices lost to other processes then do not count. A benchmark is not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from bench_common import device_name, time_ms

import fastpaper
from fastpaper import _native
from fastpaper import nn as fnn
from fastpaper import rnn

MODULES = {"lstm": fnn.LSTM, "gru": fnn.GRU, "slstm": fnn.SLSTM, "elman": fnn.Elman}
TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "elman": torch.nn.RNN}


def kernel_family(path, cell, dtype, B, T, NH, DH):
    """Sets the CUDA kernel family (auto or forced) and names what forward / backward then run."""
    nat = _native.load("rnn")
    nat.set_cuda_path(path)
    cid = rnn.CELLS.index(cell)
    try:
        fp, bp = (nat.cuda_path(str(dtype)[6:], B, T, NH, DH, cid, bw) for bw in (False, True))
    except ValueError as e:
        return None, "cannot run: " + str(e).split("cannot run", 1)[-1].strip(" :")
    return fp, f"fwd {fp}, bwd {bp}"


def family_rows(add, args, device, dtype, cell, B, T, NH, DH, config):
    """The CUDA kernel family auto picks, and an op row per forced family in --paths."""
    G, GB, S = rnn.cell_dims(cell)
    Wx = torch.randn(B, T, G, NH, DH, device=device, dtype=dtype)
    R = (torch.randn(G, NH, DH, DH, device=device) / DH ** 0.5).to(dtype)
    b = torch.zeros(GB, NH, DH, device=device, dtype=dtype)
    ins = [t.detach().requires_grad_() for t in (Wx, R, b)]

    def fwd():
        with torch.no_grad():
            rnn.flashrnn(Wx, R, b, cell=cell)

    def fwd_bwd():
        rnn.flashrnn(*ins, cell=cell)[0].float().sum().backward()
    try:
        for path in ["auto"] + [p for p in args.paths.split(",") if p and p != "auto"]:
            ok, note = kernel_family(path, cell, dtype, B, T, NH, DH)
            if path == "auto":
                add(config, "CUDA kernel family (auto)", None, None, note)
            elif ok is None:
                add(config, f"flashrnn op [{path}]", None, None, note)
            else:
                tm = [time_ms(f, device, args.warmup, args.repeats) for f in (fwd, fwd_bwd)]
                add(config, f"flashrnn op [{path}]", tm[0], tm[1], note)
    finally:
        _native.load("rnn").set_cuda_path("auto")


def plain_loop(cell, Wx, R, b):
    """The recurrence as a Python loop of torch ops (the FlashRNN paper's 'vanilla' baseline)."""
    B, T, G, NH, DH = Wx.shape
    h = Wx.new_zeros(B, NH, DH)
    c = torch.zeros_like(h)
    n = torch.zeros_like(h)
    m = torch.zeros_like(h)
    outs = []
    for t in range(T):
        rec = torch.einsum("gnjk,bnk->bgnj", R, h)
        if cell == "gru":
            r = torch.sigmoid(Wx[:, t, 0] + rec[:, 0] + b[0])
            z = torch.sigmoid(Wx[:, t, 1] + rec[:, 1] + b[1])
            nn_ = torch.tanh(Wx[:, t, 2] + b[2] + r * (rec[:, 2] + b[3]))
            h = (1 - z) * nn_ + z * h
        elif cell == "elman":
            h = torch.tanh(Wx[:, t, 0] + rec[:, 0] + b[0])
        elif cell == "lstm":
            i, f, g, o = (Wx[:, t] + rec + b).unbind(1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:  # slstm
            it, ft, zt, ot = (Wx[:, t] + rec + b).unbind(1)
            a = torch.nn.functional.logsigmoid(ft) + m
            m_new = torch.where((n == 0) | (it >= a), it, a)
            i, f = torch.exp(it - m_new), torch.exp(a - m_new)
            c = f * c + i * torch.tanh(zt)
            n = torch.clamp_min(f * n + i, 1.0)
            m = m_new
            h = torch.sigmoid(ot) * c / n
        outs.append(h)
    return torch.stack(outs, 1)


def flashrnn_package(cell, Wx, R, b):
    """A callable running NX-AI's flashrnn (fused backend), or the reason it cannot run."""
    try:
        import flashrnn as fr  # noqa: F401
    except Exception as e:  # ImportError, or its import-time build failing
        return None, f"not available: {type(e).__name__}: {e}".splitlines()[0][:160]
    if Wx.device.type != "cuda":
        return None, "not available: flashrnn has no CPU backend besides its Python loop"
    try:
        from flashrnn import flashrnn as run
        states = None
        fn = lambda: run(Wx, R, b[:R.shape[0]] if cell != "gru" else b, states=states,
                         function=cell, backend="cuda_fused", dtype=str(Wx.dtype).split(".")[1])
        fn()
        return fn, "ok"
    except Exception as e:
        return None, f"not available: {type(e).__name__}: {e}".splitlines()[0][:160]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--configs", default="lstm:1,gru:1")
    ap.add_argument("--paths", default="auto",
                    help="CUDA: op rows with each kernel family forced (cluster,cooperative,...)")
    ap.add_argument("--op-only", action="store_true", help="CUDA: only the kernel family rows")
    ap.add_argument("--threads", type=int, default=0, help="torch/OpenMP threads (0: default)")
    ap.add_argument("--no-loop", action="store_true", help="skip the plain PyTorch loop")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stat", default="median", choices=["median", "min"],
                    help="statistic over the repeats (CPU only for min)")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="cpu: process CPU time (CPU device, --threads 1 only)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    B, T, H = args.B, args.T, args.hidden
    x = torch.randn(B, T, H, device=device, dtype=dtype)
    rows = []
    if args.clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        ap.error("--clock cpu needs the CPU and --threads 1 (process CPU time sums over threads)")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    stat = min if args.stat == "min" else statistics.median

    def measure(fns):
        """Milliseconds of each fn. On the CPU the fns of a config are timed in turns (round
        robin), so that load from other processes shifts every implementation alike."""
        if device.type != "cpu":
            return [time_ms(f, device, args.warmup, args.repeats) for f in fns]
        for f in fns:
            for _ in range(args.warmup):
                f()
        samples = [[] for _ in fns]
        for _ in range(args.repeats):
            for i, f in enumerate(fns):
                t0 = clock()
                f()
                samples[i].append((clock() - t0) * 1e3)
        return [stat(v) for v in samples]

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    def add(config, impl, fwd, fwdbwd, note=""):
        rows.append({"config": config, "impl": impl, "fwd_ms": fwd, "fwdbwd_ms": fwdbwd,
                     "note": note})
        f = "-" if fwd is None else f"{fwd:9.2f}"
        fb = "-" if fwdbwd is None else f"{fwdbwd:9.2f}"
        print(f"{config:>14} | {impl:<34} | {f:>9} | {fb:>9} | {note}", flush=True)

    print(f"rnn benchmark on {device_name(device)}: B={B} T={T} hidden={H} dtype={args.dtype} "
          f"threads={torch.get_num_threads()} fastpaper {fastpaper.__version__} "
          f"({args.stat} of {args.repeats}, {args.clock} clock)")
    print(f"{'config':>14} | {'implementation':<34} | {'fwd ms':>9} | {'fwd+bwd':>9} | note")

    def fwd_bwd(module):
        xr = x.detach().requires_grad_()

        def run():
            out = module(xr)[0]
            out.float().sum().backward()
        return run

    for spec in args.configs.split(","):
        cell, nh = spec.split(":")
        NH = int(nh)
        if H % NH:
            print(f"skipping {spec}: hidden {H} not divisible by {NH}")
            continue
        DH = H // NH
        config = f"{cell} {NH}x{DH}"
        if device.type == "cuda":
            family_rows(add, args, device, dtype, cell, B, T, NH, DH, config)
            if args.op_only:
                continue
        mod = MODULES[cell](H, H, num_heads=NH).to(device=device, dtype=dtype)
        jobs = [(f"fastpaper.nn.{type(mod).__name__}", no_grad(lambda: mod(x)), fwd_bwd(mod))]
        G, GB, S = rnn.cell_dims(cell)
        Wx = torch.randn(B, T, G, NH, DH, device=device, dtype=dtype)
        R = (torch.randn(G, NH, DH, DH, device=device) / DH ** 0.5).to(dtype)
        b = torch.zeros(GB, NH, DH, device=device, dtype=dtype)
        ins = [t.detach().requires_grad_() for t in (Wx, R, b)]

        def op_fb():
            rnn.flashrnn(*ins, cell=cell)[0].float().sum().backward()
        jobs.append(("fastpaper.rnn.flashrnn (op)",
                     no_grad(lambda: rnn.flashrnn(Wx, R, b, cell=cell)), op_fb))
        if cell in TORCH and NH == 1:
            dtypes = [dtype] if device.type == "cpu" else sorted({torch.float16, dtype}, key=str)
            for dt in dtypes:
                ref = TORCH[cell](H, H, batch_first=True).to(device=device, dtype=dt)
                xd = x.to(dt)
                xr = xd.detach().requires_grad_()

                def ref_fb(ref=ref, xr=xr):
                    ref(xr)[0].float().sum().backward()
                backend = "cuDNN" if device.type == "cuda" else "CPU"
                jobs.append((f"torch.nn.{TORCH[cell].__name__} ({backend}, {str(dt)[6:]})",
                             no_grad(lambda ref=ref, xd=xd: ref(xd)), ref_fb))
        times = measure([f for job in jobs for f in job[1:]])
        for i, (impl, _, _) in enumerate(jobs):
            add(config, impl, times[2 * i], times[2 * i + 1])
        if not args.no_loop:
            with torch.no_grad():
                f = time_ms(lambda: plain_loop(cell, Wx, R, b), device, 1, max(1, args.repeats // 2))

            def loop_fb():
                plain_loop(cell, *ins)[0].float().sum().backward()
            add(config, "plain PyTorch loop", f, time_ms(loop_fb, device, 1, max(1, args.repeats // 2)))
        fn, note = flashrnn_package(cell, Wx, R, b)
        if fn is None:
            add(config, "flashrnn (NX-AI)", None, None, note)
        else:
            add(config, "flashrnn (NX-AI, cuda_fused)", measure([no_grad(fn)])[0], None,
                "fwd only")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device_name(device), "B": B, "T": T, "hidden": H,
                       "dtype": args.dtype, "threads": torch.get_num_threads(), "stat": args.stat,
                       "clock": args.clock, "rows": rows},
                      fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
