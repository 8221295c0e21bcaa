"""ParaRNN: fastpaper's parallel-in-time solver vs the sequential PyTorch loop, side by side.

Usage::

    python bench/bench_pararnn.py                          # CPU sizes that run in seconds
    python bench/bench_pararnn.py --device cuda --B 8 --T 2048 --N 1024 --json out.json

Rows (all in this one process, same inputs):

* ``scan``: the linear recurrence h_t = J_t h_{t-1} + r_t (diag, and 2 x 2 blocks) —
  ``fastpaper.pararnn.linear_scan`` vs a Python loop over t of torch ops.
* ``ParaGRU`` / ``ParaLSTM`` ``fwd`` and ``fwd+bwd``: ``fastpaper.nn.ParaGRU/ParaLSTM`` with
  ``mode="loop"`` (a Python loop over t, autograd through it: the ParaRNN paper's baseline) vs
  ``mode="sequential"`` (fastpaper's C++/CUDA sequential kernel, fused backward),
  ``mode="parallel"`` (the fused Newton kernel: residual, Jacobian and scan in one kernel, fused
  backward) and ``mode="parallel-generic"`` (Newton with torch.func Jacobians + the scan op,
  implicit-function backward). The table also gives Newton's iteration count and
  max |implementation - loop|.
* ``ParaGRU`` / ``ParaLSTM`` ``recurrence fwd`` / ``bwd``: the same without the input projection
  (``pre = Bx + b`` given): the torch loop of the step vs the sequential and fused Newton ops,
  and the fused backward op alone (the numbers to compare with the memory floor).
* ``--scan-long`` (CUDA; only these rows): the scan at B=1, N=64, T=2^20 (few channel tiles, long
  T), the per-chain kernel (one CTA per 32 channels walks all of T; the baseline of the speedup
  column) vs the multi-block look-back kernel, forced with FASTPAPER_PARARNN_SCAN.

``--dtype`` sets the storage type of the scan inputs and of the cells' inputs/outputs (float32
by default; bfloat16/float16 are computed in float32, float64 throughout). ``max|diff|`` compares
with the loop in the same dtype; a 16-bit loop rounds its state at every step, the kernel only
its outputs, so they differ by the 16-bit rounding error.

Timings are the median of --repeats runs after --warmup runs (CUDA: events on the current
stream). A benchmark is not a test: differences are reported, not asserted. On a CPU shared with
other jobs, ``--threads 1`` gives steadier numbers: a loop of small torch ops with several threads
waits for descheduled peers at every op.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from bench_common import device_name, time_ms

import fastpaper
from fastpaper import pararnn
from fastpaper.nn import ParaGRU, ParaLSTM
from fastpaper.nn.pararnn import gru_step, lstm_step

DEFAULTS = {"cpu": dict(B=4, T=1024, N=128, D=64, repeats=3, warmup=1),
            "cuda": dict(B=8, T=2048, N=1024, D=1024, repeats=10, warmup=2)}


def loop_scan(J: torch.Tensor, r: torch.Tensor, k: int) -> torch.Tensor:
    """The sequential recurrence as a Python loop of torch ops (the baseline)."""
    b, t, n = r.shape
    h = r.new_zeros(b, n)
    out = torch.empty_like(r)
    for s in range(t):
        if k == 1:
            h = J[:, s] * h + r[:, s]
        else:
            h = (J[:, s] @ h.view(b, n // k, k, 1)).view(b, n) + r[:, s]
        out[:, s] = h
    return out


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def run(device: torch.device, B: int, T: int, N: int, D: int, warmup: int, repeats: int,
        skip_loop_bwd: bool = False, dtype_name: str = "float32") -> dict:
    dtype = DTYPES[dtype_name]
    # 16-bit: tensors are stored in that type, the cells keep float32 parameters and math
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(0)
    rows = []

    def add(workload, impl, ms, base_ms, **extra):
        rows.append({"workload": workload, "implementation": impl, "ms": ms,
                     "speedup_vs_loop": None if base_ms is None else base_ms / ms, **extra})

    with torch.no_grad():
        for k in (1, 2):
            r = torch.randn(B, T, N, generator=g).to(device, dtype)
            if k == 1:
                J = (torch.rand(B, T, N, generator=g) * 1.8 - 0.9).to(device, dtype)
            else:
                J = (torch.randn(B, T, N // 2, 2, 2, generator=g) * 0.45).to(device, dtype)
            structure = "diag" if k == 1 else "block"
            name = f"scan {structure}" + ("" if k == 1 else " 2x2")
            err = float((pararnn.linear_scan(J, r, structure=structure).double()
                         - loop_scan(J, r, k).double()).abs().max())
            base = time_ms(lambda: loop_scan(J, r, k), device, warmup, repeats)
            add(name, "torch loop over t", base, base)
            ms = time_ms(lambda: pararnn.linear_scan(J, r, structure=structure), device, warmup, repeats)
            add(name, "fastpaper linear_scan", ms, base, max_abs_diff=err)

    x = torch.randn(B, T, D, generator=g).to(device, dtype)
    impls = (("sequential kernel (C++/CUDA)", "sequential"),
             ("fastpaper parallel fused (Newton kernel)", "parallel"),
             ("fastpaper parallel generic (Newton+scan)", "parallel-generic"))
    for cls in (ParaGRU, ParaLSTM):
        torch.manual_seed(0)
        m = cls(D, N).to(device, param_dtype)
        name = cls.__name__
        with torch.no_grad():
            m.mode = "loop"
            y_seq = m(x)[0]
            base = time_ms(lambda: m(x), device, warmup, repeats)
            add(f"{name} fwd", "sequential torch loop", base, base)
            for label, mode in impls:
                m.mode = mode
                y = m(x)[0]
                info = m.last_info
                ms = time_ms(lambda: m(x), device, warmup, repeats)
                extra = {} if info is None else {"newton_iterations": info.iterations,
                                                 "converged": info.converged}
                add(f"{name} fwd", label, ms, base,
                    max_abs_diff=float((y.double() - y_seq.double()).abs().max()), **extra)
        xg = x.clone().requires_grad_()

        def fwd_bwd(mode):
            m.mode = mode
            m.zero_grad(set_to_none=True)
            xg.grad = None
            m(xg)[0].float().square().sum().backward()

        base = None
        if not skip_loop_bwd:
            base = time_ms(lambda: fwd_bwd("loop"), device, warmup, repeats)
            add(f"{name} fwd+bwd", "sequential torch loop", base, base)
        for label, mode in impls:
            ms = time_ms(lambda: fwd_bwd(mode), device, warmup, repeats)
            add(f"{name} fwd+bwd", label, ms, base)

    # the recurrence alone (pre = Bx + b given, no projection GEMM): the numbers to hold against
    # the memory floor (read 3 gate inputs, write the state) and the targets
    ops = torch.ops.fastpaper
    for cell, (cls, step) in enumerate(((ParaGRU, gru_step), (ParaLSTM, lstm_step))):
        name, k, npar = cls.__name__, cell + 1, 3 + 2 * cell
        pre = (torch.randn(B, T, 3 * N, generator=g) * 0.5).to(device, dtype)
        diag = (torch.randn(npar, N, generator=g) * 0.3).to(device, param_dtype)
        work = f"{name} recurrence fwd"
        with torch.no_grad():
            pre_c = pre.to(param_dtype)
            params = tuple(diag.unbind(0))

            def loop_cells():
                s, out = pre_c.new_zeros(B, k * N), []
                for i in range(T):
                    s = step(s, pre_c[:, i], params)
                    out.append(s)
                return torch.stack(out, 1)

            ref = loop_cells()
            base = time_ms(loop_cells, device, warmup, repeats)
            add(work, "torch loop of the step", base, base)
            seq = ops.pararnn_cell_sequential(cell, pre, diag, None)
            ms = time_ms(lambda: ops.pararnn_cell_sequential(cell, pre, diag, None), device,
                         warmup, repeats)
            add(work, "sequential kernel (C++/CUDA)", ms, base,
                max_abs_diff=float((seq.double() - ref.double()).abs().max()))
            tol = 1e-10 if dtype == torch.float64 else 1e-5
            st, info = ops.pararnn_cell_newton(cell, pre, diag, None, 50, tol, tol)
            its, failed = info.tolist()
            ms = time_ms(lambda: ops.pararnn_cell_newton(cell, pre, diag, None, 50, tol, tol),
                         device, warmup, repeats)
            add(work, "fastpaper parallel fused (Newton kernel)", ms, base,
                newton_iterations=its, converged=failed == 0,
                max_abs_diff=float((st.double() - ref.double()).abs().max()))
            grad = torch.randn(st.shape, generator=g).to(device, dtype)
            ms_b = time_ms(lambda: ops.pararnn_cell_backward(cell, pre, diag, None, st, grad),
                           device, warmup, repeats)
            add(f"{name} recurrence bwd", "fused backward kernel", ms_b, None)

    metadata = {"B": B, "T": T, "N": N, "D": D, "dtype": dtype_name, "device": str(device),
                "device_name": device_name(device), "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats,
                "fastpaper": fastpaper.info()}
    return {"metadata": metadata, "rows": rows}


def run_scan_long(device: torch.device, warmup: int, repeats: int, dtype_name: str = "float32",
                  B: int = 1, T: int = 1 << 20, N: int = 64) -> dict:
    """The two CUDA scan kernels side by side at few channel tiles and long T (diag and 2x2)."""
    import os

    dtype = DTYPES[dtype_name]
    g = torch.Generator().manual_seed(0)
    rows = []
    old = os.environ.get("FASTPAPER_PARARNN_SCAN")
    try:
        with torch.no_grad():
            for k in (1, 2):
                r = torch.randn(B, T, N, generator=g).to(device, dtype)
                shape = (B, T, N) if k == 1 else (B, T, N // 2, 2, 2)
                J = ((torch.rand(shape, generator=g) * 1.8 - 0.9) / k).to(device, dtype)
                structure = "diag" if k == 1 else "block"
                name = f"scan {structure}" + ("" if k == 1 else " 2x2")
                out, base = {}, None
                for path in ("chain", "lookback"):
                    os.environ["FASTPAPER_PARARNN_SCAN"] = path
                    out[path] = pararnn.linear_scan(J, r, structure=structure)
                    ms = time_ms(lambda: pararnn.linear_scan(J, r, structure=structure), device,
                                 warmup, repeats)
                    base = ms if base is None else base
                    extra = {} if path == "chain" else {"max_abs_diff": float(
                        (out["lookback"].double() - out["chain"].double()).abs().max())}
                    rows.append({"workload": name, "implementation": f"fastpaper {path} kernel",
                                 "ms": ms, "speedup_vs_loop": base / ms, **extra})
    finally:
        if old is None:
            os.environ.pop("FASTPAPER_PARARNN_SCAN", None)
        else:
            os.environ["FASTPAPER_PARARNN_SCAN"] = old
    metadata = {"B": B, "T": T, "N": N, "D": 0, "dtype": dtype_name, "device": str(device),
                "device_name": device_name(device), "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats,
                "speedup_baseline": "chain kernel", "fastpaper": fastpaper.info()}
    return {"metadata": metadata, "rows": rows}


def format_table(result: dict) -> str:
    md = result["metadata"]
    cells = f" (input size {md['D']})" if md["D"] else ""
    head = (f"ParaRNN, {md['dtype']}, B={md['B']} T={md['T']} N={md['N']}{cells} on "
            f"{md['device_name']} ({md['device']}, {md['torch_threads']} threads), median of "
            f"{md['repeats']}")
    cols = ("workload", "implementation", "ms", "vs " + md.get("speedup_baseline", "loop"),
            "Newton its", "max|diff|")
    body = []
    for r in result["rows"]:
        sp = r["speedup_vs_loop"]
        body.append((r["workload"], r["implementation"], f"{r['ms']:.2f}",
                     "" if sp is None else f"{sp:.2f}x",
                     str(r.get("newton_iterations", "")),
                     f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else ""))
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    fmt_row = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [head, "", fmt_row(cols), fmt_row(tuple("-" * w for w in widths))]
    lines.extend(fmt_row(b) for b in body)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    for name in ("B", "T", "N", "D"):
        p.add_argument(f"--{name}", type=int, default=None,
                       help=f"default {DEFAULTS['cpu'][name]} on CPU, {DEFAULTS['cuda'][name]} on CUDA"
                       + (" (input size of the cells)" if name == "D" else ""))
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="storage type of the scan inputs and the cells' input/output (16-bit "
                        "types compute in float32); default float32")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--skip-loop-backward", action="store_true",
                   help="do not time the sequential loop's backward (slow at large T)")
    p.add_argument("--scan-long", action="store_true",
                   help="CUDA only: just the scan at B=1, N=64, T=2^20 (or --B/--T/--N), chain vs "
                        "look-back kernel (speedup column: vs the chain kernel)")
    p.add_argument("--json", metavar="PATH", help="also write the rows and metadata as JSON here")
    args = p.parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    d = DEFAULTS[device.type]
    sizes = {k: getattr(args, k) if getattr(args, k) is not None else d[k] for k in ("B", "T", "N", "D")}
    if any(v < 1 for v in sizes.values()) or sizes["N"] % 2:
        p.error("--B, --T, --N, --D must be >= 1 and --N even (the 2x2 block scan)")
    repeats = args.repeats if args.repeats is not None else d["repeats"]
    warmup = args.warmup if args.warmup is not None else d["warmup"]
    if repeats < 1 or warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.scan_long:
        if device.type != "cuda":
            p.error("--scan-long compares the two CUDA kernels: it needs --device cuda")
        long_sizes = {"B": args.B or 1, "T": args.T or 1 << 20, "N": args.N or 64}
        result = run_scan_long(device, warmup, repeats, args.dtype, **long_sizes)
    else:
        result = run(device, warmup=warmup, repeats=repeats, skip_loop_bwd=args.skip_loop_backward,
                     dtype_name=args.dtype, **sizes)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
