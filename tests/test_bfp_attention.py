"""Decode attention over a packed KV cache vs dequantize-then-attend in float64, GQA, packed and
dense values, every dtype, special values, torch.library checks and hostile input."""

from __future__ import annotations

import math

import pytest
import torch

from fastpaper import bfp

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def make(seq, batch, q_heads, kv_heads, d, dv, dtype, device, kf, vf, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_heads, d, generator=g).to(dtype).to(device)
    k = torch.randn(seq, batch, kv_heads, d, generator=g)
    k[..., 3] *= 25.0                                   # an outlier channel
    v = torch.randn(seq, batch, kv_heads, dv, generator=g)
    k, v = k.to(dtype).to(device), v.to(dtype).to(device)
    pk = bfp.pack(k, kf)
    pv = bfp.pack(v, vf) if vf is not None else v
    return q, pk, pv


def reference(q, pk, pv, scale, bias=None):
    """dequantize, then attention in float64: [batch, q_heads, dv]."""
    k = bfp.unpack(pk, dtype=torch.float32).double()                # [T, B, Hkv, d]
    v = (bfp.unpack(pv, dtype=torch.float32) if isinstance(pv, bfp.PackedBFP) else pv).double()
    rep = q.shape[1] // k.shape[2]
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    s = torch.einsum("bhd,tbhd->bht", q.double(), k) * scale
    if bias is not None:
        s = s + bias.double()
    return torch.einsum("bht,tbhd->bhd", torch.softmax(s, -1), v)


CASES = [  # seq, batch, q_heads, kv_heads, d, dv, key format, value format
    (1, 1, 1, 1, 64, 64, bfp.BFP12, None),
    (37, 2, 6, 2, 64, 64, bfp.Format(16, 4), bfp.Format(32, 8)),
    (130, 1, 9, 3, 64, 64, bfp.Format(32, 4), None),
    (70, 2, 4, 4, 128, 96, bfp.BFP16, bfp.MXINT8),
    (300, 1, 8, 1, 40, 24, bfp.MXINT8, bfp.Format(16, 3)),       # padded blocks, MQA
    (5, 3, 2, 1, 256, 256, bfp.Format(128, 6), None),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}B{c[1]}H{c[2]}/{c[3]}d{c[4]}")
def test_matches_dequantize_then_attend(case, dtype, device):
    seq, batch, hq, hkv, d, dv, kf, vf = case
    q, pk, pv = make(seq, batch, hq, hkv, d, dv, dtype, device, kf, vf)
    scale = 1.0 / math.sqrt(d)
    got = bfp.decode_attention(q, pk, pv)
    assert got.dtype == dtype and got.shape == (batch, hq, dv) and got.device.type == device
    want = reference(q.cpu(), bfp.PackedBFP(pk.mantissas.cpu(), pk.exponents.cpu(), pk.shape, pk.dtype, pk.format),
                     bfp.PackedBFP(pv.mantissas.cpu(), pv.exponents.cpu(), pv.shape, pv.dtype, pv.format)
                     if isinstance(pv, bfp.PackedBFP) else pv.cpu(), scale)
    torch.testing.assert_close(got.cpu().double(), want, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_4d_query_and_custom_scale_and_sdpa(device):
    q, pk, pv = make(50, 2, 4, 2, 64, 64, torch.float32, device, bfp.BFP12, None)
    got = bfp.decode_attention(q.unsqueeze(2), pk, pv, scale=0.3)
    assert got.shape == (2, 4, 1, 64)
    k = bfp.unpack(pk).permute(1, 2, 0, 3).repeat_interleave(2, dim=1)
    v = pv.permute(1, 2, 0, 3).repeat_interleave(2, dim=1)
    want = torch.nn.functional.scaled_dot_product_attention(q.unsqueeze(2), k, v, scale=0.3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_nonfinite_block_gives_nan():
    q, pk, pv = make(8, 1, 2, 1, 64, 64, torch.float32, "cpu", bfp.Format(32, 4), None)
    pk.exponents[3, 0, 0, 1] = 255
    out = bfp.decode_attention(q, pk, pv)
    assert torch.isnan(out).all()


def test_large_scores_are_stable():
    """online softmax with a running max: scores of ~1e4 do not overflow."""
    q, pk, pv = make(64, 1, 2, 2, 64, 64, torch.float32, "cpu", bfp.BFP16, None)
    q = q * 400.0
    got = bfp.decode_attention(q, pk, pv)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), reference(q, pk, pv, 1 / 8), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_additive_logit_bias(device, dtype):
    """bias[b, g, t] is added to the scaled scores (what BFPCache's key centering needs)."""
    seq, batch, hq, hkv, d = 45, 2, 6, 2, 64
    q, pk, pv = make(seq, batch, hq, hkv, d, d, dtype, device, bfp.Format(16, 4), bfp.BFP16)
    bias = torch.randn(batch, hq, seq, generator=torch.Generator().manual_seed(3)).mul(2).to(device)
    got = bfp.decode_attention(q, pk, pv, scale=0.2, bias=bias)
    cpu = lambda p: bfp.PackedBFP(p.mantissas.cpu(), p.exponents.cpu(), p.shape, p.dtype, p.format)
    want = reference(q.cpu(), cpu(pk), cpu(pv), 0.2, bias.cpu())
    torch.testing.assert_close(got.cpu().double(), want, rtol=TOL[dtype], atol=TOL[dtype])
    without = reference(q.cpu(), cpu(pk), cpu(pv), 0.2)
    assert (want - without).abs().max() > 10 * TOL[dtype]  # the bias matters in this case
    with pytest.raises(ValueError, match="bias must be"):
        bfp.decode_attention(q, pk, pv, bias=bias[:, :, :-1])
    with pytest.raises(TypeError, match="float32"):
        bfp.decode_attention(q, pk, pv, bias=bias.double())


def test_opcheck_and_compile():
    q, pk, pv = make(20, 1, 4, 2, 64, 64, torch.float32, "cpu", bfp.BFP12, bfp.BFP16)
    args = (q, pk.mantissas, pk.exponents, *pk.format._args(), pv.mantissas, pv.exponents, None,
            *pv.format._args(), 64, 0.125)
    torch.library.opcheck(torch.ops.fastpaper.bfp_decode_attention.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    f = torch.compile(lambda *a: torch.ops.fastpaper.bfp_decode_attention(*a) * 2, fullgraph=True)
    torch.testing.assert_close(f(*args), torch.ops.fastpaper.bfp_decode_attention(*args) * 2)
    bias = torch.randn(1, 4, 20)
    torch.library.opcheck(torch.ops.fastpaper.bfp_decode_attention.default, (*args, bias),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_input():
    q, pk, pv = make(10, 2, 4, 2, 64, 64, torch.float32, "cpu", bfp.BFP12, None)
    with pytest.raises(TypeError, match="q"):
        bfp.decode_attention(q.numpy(), pk, pv)
    with pytest.raises(TypeError, match="q"):
        bfp.decode_attention(q.to(torch.int32), pk, pv)
    with pytest.raises(ValueError, match="single query"):
        bfp.decode_attention(q.unsqueeze(2).expand(2, 4, 2, 64), pk, pv)
    with pytest.raises(TypeError, match="keys"):
        bfp.decode_attention(q, "k", pv)
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        bfp.decode_attention(q[:, :3], pk, pv)
    with pytest.raises(ValueError, match="does not match"):
        bfp.decode_attention(q[:1], pk, pv)
    with pytest.raises(ValueError, match="values"):
        bfp.decode_attention(q, pk, pv[:5])
    with pytest.raises(TypeError, match="dtype"):
        bfp.decode_attention(q, pk, pv.double())
    with pytest.raises(ValueError, match="keys.mantissas"):
        bad = bfp.PackedBFP(pk.mantissas[..., :5], pk.exponents, pk.shape, pk.dtype, pk.format)
        bfp.decode_attention(q, bad, pv)
    with pytest.raises(TypeError, match="scale"):
        bfp.decode_attention(q, pk, pv, scale="big")
    # the op itself (bypassing the Python checks) refuses inconsistent sizes instead of reading out of bounds
    with pytest.raises(ValueError, match="k_mantissas"):
        torch.ops.fastpaper.bfp_decode_attention(q, pk.mantissas[:, :, :, :5].contiguous(), pk.exponents,
                                                 *pk.format._args(), None, None, pv, 64, 4, 0, 64, 0.1)
    with pytest.raises(ValueError, match="v"):
        torch.ops.fastpaper.bfp_decode_attention(q, pk.mantissas, pk.exponents, *pk.format._args(),
                                                 None, None, pv, 64, 4, 0, 65, 0.1)
    with pytest.raises(ValueError, match="values"):
        torch.ops.fastpaper.bfp_decode_attention(q, pk.mantissas, pk.exponents, *pk.format._args(),
                                                 None, None, None, 64, 4, 0, 64, 0.1)
    with pytest.raises(ValueError, match="block"):
        torch.ops.fastpaper.bfp_decode_attention(q, pk.mantissas, pk.exponents, 48, 4, 0,
                                                 None, None, pv, 64, 4, 0, 64, 0.1)
