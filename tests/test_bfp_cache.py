"""BFPCache: appends equal the codec, storage grows in chunks, bytes accounting, generate() on a
tiny random Llama (no download), the fused decode path equals dequantize-then-SDPA, bad input."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastpaper import bfp  # noqa: E402
from test_bfp_ksort import ids, tiny_llama  # noqa: E402


@pytest.mark.parametrize("vf", [None, bfp.Format(32, 8)])
def test_append_equals_codec_and_grows(vf):
    layer = bfp.BFPLayer(bfp.Format(16, 4), vf, chunk=4)
    g = torch.Generator().manual_seed(0)
    ks, vs = [], []
    for t in (5, 1, 1, 3, 1, 7):                          # prefill, then decode steps and a chunk
        k = torch.randn(2, 3, t, 32, generator=g)
        v = torch.randn(2, 3, t, 32, generator=g)
        ks.append(k)
        vs.append(v)
        kd, vd = layer.update(k, v)
        assert kd.shape == (2, 3, sum(x.shape[2] for x in ks), 32)
    assert layer.get_seq_length() == 18
    assert layer._k.m.data.shape[0] % 4 == 0 and layer._k.m.data.shape[0] >= 18
    k_all = torch.cat(ks, 2).permute(2, 0, 1, 3).contiguous()        # token-major
    want = bfp.pack(k_all, bfp.Format(16, 4))
    got = layer.packed_keys()
    assert torch.equal(got.mantissas, want.mantissas) and torch.equal(got.exponents, want.exponents)
    torch.testing.assert_close(layer.keys_dense(), bfp.quantize(torch.cat(ks, 2), bfp.Format(16, 4)),
                               rtol=0, atol=0)
    v_all = torch.cat(vs, 2)
    v_want = v_all if vf is None else bfp.quantize(v_all, vf)
    torch.testing.assert_close(layer.values_dense(), v_want, rtol=0, atol=0)
    # 3 heads x (16 mantissa bytes + 2 exponent bytes) per sequence and token
    assert layer.key_bytes_per_token() == 3 * 18
    assert layer.value_bytes_per_token() == 3 * (32 * 4 if vf is None else 33)
    layer.crop(-3)
    assert layer.get_seq_length() == 15
    assert torch.equal(layer.packed_keys().mantissas, want.mantissas[:15])


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
def test_generate_and_accounting():
    model = tiny_llama()
    x = ids(batch=1, seq=12)
    cache = bfp.BFPCache(bfp.BFP12)
    out = model.generate(x, past_key_values=cache, max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 18)
    assert cache.get_seq_length() == 17                   # the last token is never fed back
    # 2 layers x 2 KV heads x head_dim 32 padded to a 64-block: 32 + 1 bytes of keys, 128 of values
    assert cache.bytes_per_token() == 2 * 2 * (33 + 32 * 4)
    assert cache.key_bits_per_element() == pytest.approx(8 * 33 / 32)
    # scores (logits) of greedy decoding: 8-bit mantissas are far closer to full precision than 4-bit
    kw = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    ref = torch.stack(model.generate(x, **kw).scores)
    err = {}
    for m in (4, 8):
        got = model.generate(x, cache=bfp.BFPCache(bfp.Format(16, m), bfp.Format(16, m)), **kw)
        err[m] = (torch.stack(got.scores) - ref).abs().max().item()
    assert err[8] < 0.1 * err[4], err


def test_fused_decode_equals_dense_path():
    x = ids(batch=2, seq=9)
    outs = []
    for fused in (False, True):
        model = tiny_llama()
        if fused:
            bfp.use_bfp_attention(model)
            assert model.config._attn_implementation == "fastpaper_bfp"
        cache = bfp.BFPCache(bfp.Format(32, 4), bfp.BFP16, config=model.config)
        r = model.generate(x, attention_mask=torch.ones_like(x), cache=cache, max_new_tokens=5,
                           do_sample=False, output_scores=True, return_dict_in_generate=True)
        outs.append(r)
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    torch.testing.assert_close(torch.stack(outs[1].scores), torch.stack(outs[0].scores), rtol=1e-4, atol=1e-4)


def test_fused_path_is_taken(monkeypatch):
    import fastpaper.bfp_attention as fa

    calls = []
    orig = fa.decode_attention
    monkeypatch.setattr(fa, "decode_attention", lambda *a, **k: calls.append(1) or orig(*a, **k))
    model = tiny_llama()
    bfp.use_bfp_attention(model)
    model.generate(ids(batch=1, seq=6), cache=bfp.BFPCache(config=model.config),
                   max_new_tokens=3, do_sample=False)
    assert len(calls) == 2 * 2                            # 2 decode steps x 2 layers


def test_bad_input():
    with pytest.raises(TypeError, match="key_format"):
        bfp.BFPCache("BFP12")
    with pytest.raises(TypeError, match="value_format"):
        bfp.BFPCache(bfp.BFP12, 8)
    with pytest.raises(ValueError, match="scale"):
        bfp.BFPCache(scale="ceil")
    with pytest.raises(ValueError, match="chunk"):
        bfp.BFPCache(chunk=0)
    layer = bfp.BFPLayer()
    with pytest.raises(ValueError, match="key_states"):
        layer.update(torch.zeros(2, 8), torch.zeros(2, 8))
    layer.update(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8))
    with pytest.raises(ValueError, match="key_states"):
        layer.update(torch.zeros(1, 3, 1, 8), torch.zeros(1, 3, 1, 8))


def test_beam_search_reorders_and_expands():
    """Beam search expands the batch (batch_repeat_interleave) and reorders it (reorder_cache)."""
    model = tiny_llama()
    x = ids(batch=2, seq=7)
    kw = dict(num_beams=3, max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(x))
    got = model.generate(x, cache=bfp.BFPCache(bfp.Format(16, 8), bfp.Format(16, 8)), **kw)
    want = model.generate(x, **kw)
    assert torch.equal(got, want)
