"""BFP codec throughput: fastpaper.bfp vs plain PyTorch vs a tensor copy (the bandwidth ceiling).

Usage::

    python bench/bench_bfp.py                               # BFP12, bf16, CUDA if available
    python bench/bench_bfp.py --format MXINT8 --device cpu --numel 4194304 --json out.json

Throughput counts the bytes an op must read plus the bytes it must write (pack: the dense input
plus the packed mantissas and exponents; unpack: the reverse; quantize: input plus output), so it
is directly comparable with the copy, which reads and writes the input once. Each implementation
is run on the same input in this one process; timings are the median of --repeats runs after
--warmup runs. Before timing, the baseline's output is compared with fastpaper's bit for bit
(a mismatch is reported, not raised: a benchmark is not a test).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from bench_common import device_name, time_ms

import fastpaper
import fastpaper.bfp as fbfp
from fastpaper.baselines import bfp as base

FORMATS = {"BFP12": fbfp.BFP12, "BFP16": fbfp.BFP16, "MXINT8": fbfp.MXINT8}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# On CPU, 2^23 values (16 MiB of bf16 in, as much out for the copy) no longer fit a 32 MiB L3 next to
# their float32 temporaries, yet all rows still finish in a few seconds on 2 cores; 2^24 takes ~10 s.
DEFAULT_NUMEL = {"cpu": 1 << 23, "cuda": 1 << 28}
DEFAULT_REPEATS = {"cpu": 3, "cuda": 20}
DEFAULT_WARMUP = {"cpu": 1, "cuda": 3}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    view = torch.int32 if a.dtype == torch.float32 else torch.int16
    if a.dtype == torch.uint8:
        view = torch.uint8
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(view), b.view(view))


def make_input(numel: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[numel / cols, cols] activations with a few 20x outlier channels, like a KV cache."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(numel // cols, cols, generator=g)
    x[:, :: max(cols // 4, 1)] *= 20.0
    return x.to(device=device, dtype=dtype)


def run(fmt_name: str, dtype_name: str, device: torch.device, numel: int, cols: int, scale: str,
        warmup: int, repeats: int) -> dict:
    fmt, dtype = FORMATS[fmt_name], DTYPES[dtype_name]
    x = make_input(numel, cols, dtype, device)
    packed = fbfp.pack(x, fmt, scale=scale)
    dense_bytes = x.numel() * x.element_size()
    packed_bytes = packed.nbytes

    bl_packed = base.pack(x, fmt, scale=scale)
    identical = {
        "pack": _same_bits(bl_packed.mantissas, packed.mantissas)
        and _same_bits(bl_packed.exponents, packed.exponents),
        "unpack": _same_bits(base.unpack(packed), fbfp.unpack(packed)),
        "quantize": _same_bits(base.quantize(x, fmt, scale=scale),
                               fbfp.quantize(x, fmt, scale=scale)),
    }

    dst = torch.empty_like(x)
    packed_out = fbfp.pack(x, fmt, scale=scale)
    # Allocating ops pay for fresh output memory (on CPU: first-touch page faults of large
    # buffers), so they are compared with clone(); the out= variants with copy_ into a reused
    # buffer. "% of copy" uses the matching copy row.
    cases = [
        ("copy", "torch copy_", lambda: dst.copy_(x), 2 * dense_bytes),
        ("copy", "torch clone", lambda: x.clone(), 2 * dense_bytes),
        ("pack", "fastpaper out=", lambda: fbfp.pack(x, fmt, scale=scale, out=packed_out),
         dense_bytes + packed_bytes),
        ("unpack", "fastpaper out=", lambda: fbfp.unpack(packed, out=dst), packed_bytes + dense_bytes),
        ("quantize", "fastpaper out=", lambda: fbfp.quantize(x, fmt, scale=scale, out=dst),
         2 * dense_bytes),
        ("pack", "fastpaper", lambda: fbfp.pack(x, fmt, scale=scale), dense_bytes + packed_bytes),
        ("pack", "plain torch", lambda: base.pack(x, fmt, scale=scale), dense_bytes + packed_bytes),
        ("unpack", "fastpaper", lambda: fbfp.unpack(packed), packed_bytes + dense_bytes),
        ("unpack", "plain torch", lambda: base.unpack(packed), packed_bytes + dense_bytes),
        ("quantize", "fastpaper", lambda: fbfp.quantize(x, fmt, scale=scale), 2 * dense_bytes),
        ("quantize", "plain torch", lambda: base.quantize(x, fmt, scale=scale), 2 * dense_bytes),
    ]
    rows = []
    with torch.inference_mode():
        for op, impl, fn, nbytes in cases:
            ms = time_ms(fn, device, warmup, repeats)
            rows.append({"op": op, "implementation": impl, "ms": ms, "bytes": nbytes,
                         "gb_per_s": nbytes / ms / 1e6})
    copy_gbs, clone_gbs = rows[0]["gb_per_s"], rows[1]["gb_per_s"]
    base_ms = {r["op"]: r["ms"] for r in rows if r["implementation"] == "plain torch"}
    for r in rows:
        preallocated = r["implementation"] in ("torch copy_", "fastpaper out=")
        r["pct_of_copy"] = 100.0 * r["gb_per_s"] / (copy_gbs if preallocated else clone_gbs)
        r["speedup_vs_baseline"] = base_ms[r["op"]] / r["ms"] if r["op"] in base_ms else None
        is_base = r["implementation"] == "plain torch"
        r["bit_identical_to_fastpaper"] = identical.get(r["op"]) if is_base else None

    metadata = {
        "format": fmt_name,
        "format_fields": {"block": fmt.block, "mantissa_bits": fmt.mantissa_bits, "element": fmt.element},
        "scale": scale,
        "dtype": dtype_name,
        "shape": list(x.shape),
        "numel": x.numel(),
        "dense_bytes": dense_bytes,
        "packed_bytes": packed_bytes,
        "bits_per_element": packed.bits_per_element,
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "warmup": warmup,
        "repeats": repeats,
        "baseline_bit_identical": identical,
        "fastpaper": fastpaper.info(),
    }
    return {"metadata": metadata, "rows": rows}


def format_table(result: dict) -> str:
    md = result["metadata"]
    head = (f"BFP codec throughput: {md['format']} ({md['bits_per_element']:.3f} bits/element, "
            f"scale={md['scale']}), {md['dtype']} {tuple(md['shape'])} = {md['numel']:,} values "
            f"on {md['device_name']} ({md['device']}), median of {md['repeats']}")
    cols = ("op", "implementation", "ms", "GB/s", "% of copy", "vs plain torch")
    lines = [head, ""]
    body = []
    for r in result["rows"]:
        sp = r["speedup_vs_baseline"]
        body.append((r["op"], r["implementation"], f"{r['ms']:.3f}", f"{r['gb_per_s']:.2f}",
                     f"{r['pct_of_copy']:.1f}", "" if sp is None else f"{sp:.2f}x"))
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    fmt_row = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines.append(fmt_row(cols))
    lines.append(fmt_row(tuple("-" * w for w in widths)))
    lines.extend(fmt_row(b) for b in body)
    bad = [op for op, ok in md["baseline_bit_identical"].items() if not ok]
    lines.append("")
    lines.append("baseline bit-identical to fastpaper: "
                 + ("yes (pack, unpack, quantize)" if not bad else f"NO for {', '.join(bad)}"))
    return "\n".join(lines)


def per_call_latency(fmt_name: str, device: torch.device, calls: int = 2000) -> list[dict]:
    """Microseconds per call on a tiny [1, 64] tensor: the fixed cost of the Python layer, the
    torch dispatcher and the native call, next to torch's own clone() of the same tensor."""
    fmt = FORMATS[fmt_name]
    x = torch.randn(1, 64, device=device)
    packed = fbfp.pack(x, fmt)
    out = torch.empty_like(x)
    cases = [("torch clone", lambda: x.clone()),
             ("pack", lambda: fbfp.pack(x, fmt)),
             ("unpack", lambda: fbfp.unpack(packed)),
             ("quantize", lambda: fbfp.quantize(x, fmt)),
             ("quantize out=", lambda: fbfp.quantize(x, fmt, out=out))]
    rows = []
    for name, fn in cases:
        ms = time_ms(lambda: [fn() for _ in range(calls)], device, 1, 3)
        rows.append({"op": name, "us_per_call": 1e3 * ms / calls})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--format", choices=sorted(FORMATS), default="BFP12")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when torch sees a GPU, else cpu")
    p.add_argument("--numel", type=int, default=None,
                   help=f"values in the input tensor (default {DEFAULT_NUMEL['cpu']} on CPU, "
                        f"{DEFAULT_NUMEL['cuda']} on CUDA)")
    p.add_argument("--cols", type=int, default=128, help="row length (head_dim); default 128")
    p.add_argument("--scale", choices=("no_clip", "floor"), default="no_clip")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed runs (default {DEFAULT_REPEATS['cpu']} on CPU, "
                        f"{DEFAULT_REPEATS['cuda']} on CUDA)")
    p.add_argument("--warmup", type=int, default=None,
                   help=f"untimed runs first (default {DEFAULT_WARMUP['cpu']} on CPU, "
                        f"{DEFAULT_WARMUP['cuda']} on CUDA)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (torch.set_num_threads; fastpaper's OpenMP loops follow it when "
                        "both use the same OpenMP runtime, as with torch's bundled libgomp)")
    p.add_argument("--json", metavar="PATH", help="also write the rows and metadata as JSON here")
    args = p.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    numel = args.numel if args.numel is not None else DEFAULT_NUMEL[device.type]
    repeats = args.repeats if args.repeats is not None else DEFAULT_REPEATS[device.type]
    warmup = args.warmup if args.warmup is not None else DEFAULT_WARMUP[device.type]
    if args.cols < 1 or numel < args.cols:
        p.error(f"--numel ({numel}) must be at least --cols ({args.cols}) >= 1")
    if repeats < 1 or warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)

    result = run(args.format, args.dtype, device, numel, args.cols, args.scale, warmup, repeats)
    print(format_table(result))
    result["per_call_latency"] = per_call_latency(args.format, device)
    print("\nper-call latency on a [1, 64] float32 tensor (us): " + ", ".join(
        f"{r['op']} {r['us_per_call']:.1f}" for r in result["per_call_latency"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
