"""MoE MLP: fastpaper's expert-by-expert op vs the PyTorch baselines, side by side.

Usage::

    python bench/bench_moe.py                                   # CPU, fp32, the M3ViT ViT-S layer
    python bench/bench_moe.py --device cuda --dtype bfloat16 --json out.json

The layer is one M³ViT ViT-S MoE MLP: 8 images x 1201 tokens (N = 9608), D = H = 384, E = 16
experts, top-4, routed by a softmax router on random tokens. Rows (same inputs, one process):

* ``fastpaper``: ``torch.ops.fastpaper.moe_mlp``, the op behind ``fastpaper.moe.moe_mlp``
  (counting sort by expert + grouped GEMM + deterministic combine; CPU: OpenBLAS per tile, CUDA:
  one tensor-core grouped-GEMM kernel per layer GEMM), timed without the Python argument checks.
* ``torch expert loop``: a Python loop over experts: gather, two GEMMs, index_add (the usual
  PyTorch MoE and the issue's baseline).
* ``dense-masked``: every expert on every token, weighted by a zero-filled [N, E] gate matrix
  (E/k = 4x the FLOPs).
* ``dense MLP, equal FLOPs``: Linear(D, k*H) + GELU + Linear(k*H, D) on all tokens, the same
  FLOPs as the routed computation without any routing (the lower bound a grouped GEMM aims at).

Forward and forward+backward (gradients of x, scores and all weights) are timed; max|diff| is
against the expert loop in the same dtype. Timings are medians of --repeats runs after --warmup
runs (CUDA: events on the current stream). A benchmark is not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from bench_common import device_name, time_ms

import fastpaper
from fastpaper import moe

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
DEFAULTS = {"cpu": dict(repeats=3, warmup=1, dtype="float32"),
            "cuda": dict(repeats=20, warmup=3, dtype="bfloat16")}


def make_inputs(n, d, h, e, k, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    router = torch.randn(d, e, generator=g) / d ** 0.5
    probs = torch.softmax(x @ router, dim=-1)
    scores, indices = probs.topk(k, dim=-1)
    W1 = torch.randn(e, d, h, generator=g) / d ** 0.5
    b1 = torch.randn(e, h, generator=g) * 0.02
    W2 = torch.randn(e, h, d, generator=g) / h ** 0.5
    b2 = torch.randn(e, d, generator=g) * 0.02
    to = lambda t: t.to(device, dtype)  # noqa: E731
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    return (to(x), scores.to(device, sdt), indices.to(device), to(W1), to(b1), to(W2), to(b2))


def dense_equal_flops(x, fc1, b1, fc2, b2):
    return F.linear(F.gelu(F.linear(x, fc1, b1)), fc2, b2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--tokens", type=int, default=8 * 1201)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--skip-dense-masked", action="store_true",
                   help="leave out the all-experts row (slow on a small CPU)")
    p.add_argument("--json", metavar="PATH", help="also write the rows and metadata as JSON here")
    args = p.parse_args(argv)
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    cfg = dict(DEFAULTS[device.type])
    for key in ("repeats", "warmup", "dtype"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[cfg["dtype"]]
    n, d, h, e, k = args.tokens, args.dim, args.hidden, args.experts, args.k
    inputs = make_inputs(n, d, h, e, k, dtype, device)
    x, scores, indices, W1, b1, W2, b2 = inputs
    g = torch.Generator().manual_seed(1)
    fc1 = (torch.randn(k * h, d, generator=g) / d ** 0.5).to(device, dtype)
    fc2 = (torch.randn(d, k * h, generator=g) / (k * h) ** 0.5).to(device, dtype)
    fb1 = torch.zeros(k * h, device=device, dtype=dtype)
    fb2 = torch.zeros(d, device=device, dtype=dtype)
    grad_out = torch.randn(n, d, generator=g).to(device, dtype)

    moe.moe_mlp(*inputs)  # validates once and registers the op
    methods = {
        # the registered op itself (what moe_mlp calls after its Python argument checks)
        "fastpaper": (torch.ops.fastpaper.moe_mlp, inputs),
        "torch expert loop": (moe.moe_mlp_loop, inputs),
    }
    if not args.skip_dense_masked:
        methods["dense-masked (all experts)"] = (moe.moe_mlp_dense, inputs)
    methods["dense MLP, equal FLOPs"] = (dense_equal_flops, (x, fc1, fb1, fc2, fb2))

    ref = moe.moe_mlp_loop(*inputs)
    rows = []
    flops_fwd = n * k * 4 * d * h
    for name, (fn, ins) in methods.items():
        with torch.no_grad():
            out = fn(*ins)
            fwd = time_ms(lambda: fn(*ins), device, cfg["warmup"], cfg["repeats"])
        leaves = [t.detach().requires_grad_() if t.is_floating_point() else t for t in ins]

        def step():
            for t in leaves:
                if t.is_floating_point():
                    t.grad = None
            fn(*leaves).backward(grad_out)

        fwdbwd = time_ms(step, device, cfg["warmup"], cfg["repeats"])
        diff = float((out.float() - ref.float()).abs().max()) if name != "dense MLP, equal FLOPs" \
            else None
        rows.append({"method": name, "fwd_ms": fwd, "fwd_bwd_ms": fwdbwd,
                     "bwd_ms": fwdbwd - fwd, "max_abs_diff_vs_loop": diff})
    loop = next(r for r in rows if r["method"] == "torch expert loop")
    for r in rows:
        r["fwd_speedup_vs_loop"] = loop["fwd_ms"] / r["fwd_ms"]
        r["fwd_bwd_speedup_vs_loop"] = loop["fwd_bwd_ms"] / r["fwd_bwd_ms"]
        r["fwd_tflops"] = flops_fwd * (4 if "dense-masked" in r["method"] else 1) / \
            (r["fwd_ms"] * 1e9)
    result = {"benchmark": "moe_mlp", "device": device_name(device), "dtype": cfg["dtype"],
              "threads": torch.get_num_threads() if device.type == "cpu" else None,
              "shape": dict(tokens=n, dim=d, hidden=h, experts=e, k=k),
              "torch": torch.__version__, "fastpaper": fastpaper.__version__,
              "repeats": cfg["repeats"], "rows": rows}
    print(f"MoE MLP on {result['device']}, {cfg['dtype']}: N={n} D={d} H={h} E={e} k={k} "
          f"(routed fwd {flops_fwd / 1e9:.1f} GFLOP)")
    print(f"{'method':30s} {'fwd ms':>10s} {'fwd+bwd ms':>11s} {'bwd ms':>9s} {'fwd x':>7s} "
          f"{'f+b x':>7s} {'TFLOP/s':>8s} {'max|diff|':>10s}")
    for r in rows:
        diff = "-" if r["max_abs_diff_vs_loop"] is None else f"{r['max_abs_diff_vs_loop']:.2e}"
        print(f"{r['method']:30s} {r['fwd_ms']:10.3f} {r['fwd_bwd_ms']:11.3f} {r['bwd_ms']:9.3f} "
              f"{r['fwd_speedup_vs_loop']:7.2f} {r['fwd_bwd_speedup_vs_loop']:7.2f} "
              f"{r['fwd_tflops']:8.3f} {diff:>10s}")
    print("(x: speedup over the torch expert loop; max|diff| vs the loop in the same dtype)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
