"""Decode attention over a BFP-packed KV cache vs dense SDPA, and cache appends, side by side.

For each context length T, one decode step of a Llama-like attention layer (batch B, 32 query heads,
8 KV heads, head_dim 128 by default):

* ``sdpa dense``: ``torch.nn.functional.scaled_dot_product_attention`` over a dense [B, H_kv, T, d]
  cache in --dtype (bf16 by default; GQA via ``enable_gqa``);
* ``fastpaper packed K``: ``fastpaper.bfp.decode_attention`` with BFP12 keys and dense values;
* ``fastpaper packed K+V``: keys and values BFP12;
* ``dequantize + sdpa``: unpack the packed keys, then SDPA (what a cache without a fused kernel does).

Bytes read per step are reported for each (the ceiling of a memory-bound decode), plus the time of
appending one token to the packed cache (``pack(out=...)``) vs a dense ``copy_`` into a
preallocated cache. Before timing, every fastpaper output is compared with SDPA on the dequantized
cache (max abs error printed; a benchmark is not a test). Median of --repeats runs.

Usage::

    python bench/bench_bfp_attention.py                              # CPU here, CUDA if available
    python bench/bench_bfp_attention.py --device cuda --contexts 4096,32768,131072 --json att.json
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_common import device_name, time_ms
import torch.nn.functional as F

from fastpaper import bfp

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def run(T, B, hq, hkv, d, dtype, device, fmt, warmup, repeats):
    g = torch.Generator().manual_seed(0)
    k_tok = torch.randn(T, B, hkv, d, generator=g)
    k_tok[..., :: d // 8] *= 20.0                       # outlier channels
    k_tok = k_tok.to(device, dtype)
    v_tok = torch.randn(T, B, hkv, d, generator=g).to(device, dtype)
    q = torch.randn(B, hq, d, generator=g).to(device, dtype)
    pk, pv = bfp.pack(k_tok, fmt), bfp.pack(v_tok, fmt)
    k = k_tok.permute(1, 2, 0, 3).contiguous()          # dense cache [B, H_kv, T, d]
    v = v_tok.permute(1, 2, 0, 3).contiguous()
    kq = bfp.unpack(pk).permute(1, 2, 0, 3)
    vq = bfp.unpack(pv).permute(1, 2, 0, 3)
    q4 = q.unsqueeze(2)

    def sdpa(kk, vv):
        return F.scaled_dot_product_attention(q4, kk, vv, enable_gqa=True)[:, :, 0]

    ref_k = sdpa(kq, v).float()
    ref_kv = sdpa(kq, vq).float()
    err_k = (bfp.decode_attention(q, pk, v_tok).float() - ref_k).abs().max().item()
    err_kv = (bfp.decode_attention(q, pk, pv).float() - ref_kv).abs().max().item()

    esz = torch.tensor([], dtype=dtype).element_size()
    dense_kv = 2 * T * B * hkv * d * esz
    packed_k = pk.nbytes
    cases = [
        ("sdpa dense", lambda: sdpa(k, v), dense_kv),
        ("fastpaper packed K", lambda: bfp.decode_attention(q, pk, v_tok), packed_k + dense_kv // 2),
        ("fastpaper packed K+V", lambda: bfp.decode_attention(q, pk, pv), packed_k + pv.nbytes),
        ("dequantize K + sdpa", lambda: sdpa(bfp.unpack(pk).permute(1, 2, 0, 3), v),
         packed_k + dense_kv),
    ]
    # appending one token to a preallocated cache: packed vs dense
    new_k = k_tok[:1].clone()
    slot = bfp.PackedBFP(pk.mantissas[T - 1:T], pk.exponents[T - 1:T], tuple(new_k.shape), dtype, fmt)
    dense_slot = k_tok[T - 1:T]
    appends = [("append dense copy_", lambda: dense_slot.copy_(new_k)),
               ("append pack(out=)", lambda: bfp.pack(new_k, fmt, out=slot))]
    rows = []
    with torch.inference_mode():
        for name, fn, nbytes in cases:
            ms = time_ms(fn, device, warmup, repeats)
            rows.append({"T": T, "op": name, "ms": ms, "bytes": nbytes, "gb_per_s": nbytes / ms / 1e6})
        for name, fn in appends:
            rows.append({"T": T, "op": name, "ms": time_ms(fn, device, warmup, repeats)})
    base = rows[0]["ms"]
    for r in rows[:4]:
        r["speedup_vs_sdpa"] = base / r["ms"]
    return rows, {"T": T, "max_abs_err_packed_K": err_k, "max_abs_err_packed_KV": err_kv}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    ap.add_argument("--contexts", default=None, help="comma-separated context lengths")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--q-heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--block", type=int, default=64, help="BFP12 block size")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json")
    args = ap.parse_args()
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    contexts = ([int(c) for c in args.contexts.split(",")] if args.contexts
                else ([1024, 4096, 16384] if cpu else [4096, 16384, 32768, 65536, 131072]))
    repeats = args.repeats or (5 if cpu else 50)
    fmt = bfp.Format(args.block, 4)
    name = device_name(device)
    print(f"# decode attention, B={args.batch} q_heads={args.q_heads} kv_heads={args.kv_heads} "
          f"d={args.head_dim} {args.dtype}, keys BFP12_{args.block}; {name}, torch {torch.__version__}")
    all_rows, checks = [], []
    print(f"{'T':>7} {'op':24} {'ms':>9} {'GB/s':>8} {'vs sdpa':>8}")
    for T in contexts:
        rows, check = run(T, args.batch, args.q_heads, args.kv_heads, args.head_dim, DTYPES[args.dtype],
                          device, fmt, 1 if cpu else 5, repeats)
        checks.append(check)
        for r in rows:
            gbs = f"{r['gb_per_s']:8.1f}" if "gb_per_s" in r else " " * 8
            sp = f"{r['speedup_vs_sdpa']:7.2f}x" if "speedup_vs_sdpa" in r else ""
            print(f"{T:>7} {r['op']:24} {r['ms']:9.3f} {gbs} {sp}")
        print(f"{T:>7} max |err| vs sdpa on the dequantized cache: packed K {check['max_abs_err_packed_K']:.2e}, "
              f"packed K+V {check['max_abs_err_packed_KV']:.2e}")
        all_rows += rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "args": vars(args), "rows": all_rows, "checks": checks}, f, indent=1)


if __name__ == "__main__":
    main()
