"""BFPCache's key transform (center on the prompt's pre-RoPE mean, rotate by Hadamard): exact
without quantization error, smaller quantization error on LLM-like keys, the fused decode path with
rotated keys, generate() and beam search with centering, bad input."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastpaper import bfp  # noqa: E402
from fastpaper.bfp_cache import BFPLayer, hadamard  # noqa: E402
from test_bfp_ksort import ids, tiny_llama  # noqa: E402


class Rope(torch.nn.Module):
    """A rotate-half RoPE table in the calling convention of transformers' rotary_emb."""

    def forward(self, x, position_ids):
        d = x.shape[-1]
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        f = position_ids[..., None].float() * inv
        emb = torch.cat([f, f], -1)
        return emb.cos(), emb.sin()


def rope(k, start):
    """R_t k for keys [batch, heads, T, d] at positions start.. (reference, float64)."""
    d = k.shape[-1]
    cos, sin = Rope()(k.float(), torch.arange(start, start + k.shape[2])[None])
    cos, sin = cos[0].double(), sin[0].double()
    rh = torch.cat((-k[..., d // 2:], k[..., : d // 2]), -1)
    return k * cos + rh * sin


def llm_like_keys(g, batch, heads, t, d, start=0):
    """Pre-RoPE keys with large per-channel offsets and two outlier channels, then RoPE."""
    offset = torch.randn(batch, heads, 1, d, generator=g, dtype=torch.float64) * 4
    scale = torch.ones(d, dtype=torch.float64)
    scale[[3, 3 + d // 2]] = 12.0
    pre = offset + torch.randn(batch, heads, t, d, generator=g, dtype=torch.float64) * scale
    return rope(pre, start), offset


def test_hadamard_is_orthonormal_and_symmetric():
    for n in (1, 2, 16, 64, 128):
        H = hadamard(n).double()
        torch.testing.assert_close(H @ H.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-6)  # float32 entries
        assert torch.equal(H, H.T)
    with pytest.raises(ValueError, match="power of 2"):
        hadamard(48)


def unrope(k, start):
    """R_t^{-1} k (float64)."""
    d = k.shape[-1]
    cos, sin = Rope()(k.float(), torch.arange(start, start + k.shape[2])[None])
    cos, sin = cos[0].double(), sin[0].double()
    rh = torch.cat((-k[..., d // 2:], k[..., : d // 2]), -1)
    return k * cos - rh * sin


@pytest.mark.parametrize("rotate,center", [(True, False), (False, True), (True, True)])
def test_transform_matches_its_float64_definition(rotate, center):
    """keys_dense == unpack(pack((k - R_t mu) H^T)) H + R_t mu, mu the prompt's mean pre-RoPE key,
    computed here in float64; and with 8-bit mantissas that is k up to the codec's error."""
    fmt = bfp.Format(16, 8)
    g = torch.Generator().manual_seed(0)
    k64, _ = llm_like_keys(g, 2, 3, 9, 32)
    k = k64.float()
    v = torch.randn(2, 3, 9, 32, generator=g)
    layer = BFPLayer(fmt, None, rotate_keys=rotate, rotary_emb=Rope() if center else None)
    layer.update(k[:, :, :6], v[:, :, :6])
    layer.update(k[:, :, 6:7], v[:, :, 6:7])     # decode steps use the prompt's mean
    kd, _ = layer.update(k[:, :, 7:], v[:, :, 7:])
    H = hadamard(32).double() if rotate else torch.eye(32, dtype=torch.float64)
    mu = unrope(k64[:, :, :6], 0).mean(2, keepdim=True) if center else torch.zeros(2, 3, 1, 32, dtype=torch.float64)
    rmu = rope(mu.expand(2, 3, 9, 32), 0)
    stored = ((k64 - rmu) @ H.T).float()
    want = bfp.quantize(stored, fmt).double() @ H + rmu
    torch.testing.assert_close(kd.double(), want, rtol=0, atol=2e-4 * k64.abs().max().item())
    torch.testing.assert_close(kd, k, rtol=0, atol=2e-2 * k.abs().max().item())
    if rotate:  # the query meets the rotated keys: dot products are unchanged
        q = torch.randn(2, 3, 32, generator=g)
        qk = (layer.query_transform(q)[:, :, None] * (k @ hadamard(32).T)).sum(-1)
        torch.testing.assert_close(qk, (q[:, :, None] * k).sum(-1), rtol=1e-4, atol=1e-4)


def test_center_and_rotate_cut_the_4bit_error_on_llm_like_keys():
    g = torch.Generator().manual_seed(1)
    k, _ = llm_like_keys(g, 1, 4, 64, 64)
    k = k.float()
    v = torch.zeros_like(k)
    err = {}
    for name, kw in {"plain": {}, "rotate": {"rotate_keys": True},
                     "center+rotate": {"rotate_keys": True, "rotary_emb": Rope()}}.items():
        layer = BFPLayer(bfp.Format(16, 4), None, **kw)
        kd, _ = layer.update(k, v)
        err[name] = ((kd - k).norm() / k.norm()).item()
    assert err["rotate"] < 0.9 * err["plain"], err  # measured 0.117 vs 0.139
    assert err["center+rotate"] < 0.5 * err["plain"], err  # measured 0.042


@pytest.mark.parametrize("center", [False, True])
def test_fused_decode_with_transformed_keys_equals_dense_path(center, monkeypatch):
    import fastpaper.bfp_attention as fa

    calls = []
    orig = fa.decode_attention
    monkeypatch.setattr(fa, "decode_attention", lambda *a, **k: calls.append(k.get("bias")) or orig(*a, **k))
    x = ids(batch=2, seq=9)
    outs = []
    for fused in (False, True):
        model = tiny_llama()
        if fused:
            bfp.use_bfp_attention(model)
        cache = bfp.BFPCache.for_model(model, bfp.Format(16, 4), bfp.BFP16, rotate_keys=True,
                                       center_keys=center)
        r = model.generate(x, attention_mask=torch.ones_like(x), cache=cache,
                           max_new_tokens=5, do_sample=False, output_scores=True,
                           return_dict_in_generate=True)
        outs.append(r)
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    torch.testing.assert_close(torch.stack(outs[1].scores), torch.stack(outs[0].scores),
                               rtol=1e-4, atol=1e-4)
    # the decode steps ran the packed kernel, with the centering's logit term when centered
    assert calls and all((b is not None) == center for b in calls)


def test_generate_and_beam_search_with_centered_keys():
    model = tiny_llama()
    x = ids(batch=2, seq=10)
    kw = dict(max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True)
    ref = torch.stack(model.generate(x, **kw).scores)
    cache = bfp.BFPCache.for_model(model, bfp.Format(16, 8), rotate_keys=True, center_keys=True)
    got = model.generate(x, cache=cache, **kw)
    torch.testing.assert_close(torch.stack(got.scores), ref, rtol=2e-2, atol=2e-2)
    beams = model.generate(x, cache=bfp.BFPCache.for_model(
        model, bfp.Format(16, 8), rotate_keys=True, center_keys=True), num_beams=3,
        max_new_tokens=4, do_sample=False)
    plain = model.generate(x, num_beams=3, max_new_tokens=4, do_sample=False)
    assert torch.equal(beams, plain)


def test_transform_bad_input():
    with pytest.raises(ValueError, match="center_keys needs rotary_emb"):
        bfp.BFPCache(center_keys=True)
    with pytest.raises(TypeError, match="bool"):
        bfp.BFPCache(rotate_keys="yes")
    layer = BFPLayer(bfp.BFP12, None, rotate_keys=True)
    with pytest.raises(ValueError, match="power of 2"):
        layer.update(torch.zeros(1, 1, 2, 48), torch.zeros(1, 1, 2, 48))
    with pytest.raises(ValueError, match="rotary_emb"):
        bfp.BFPCache.for_model(torch.nn.Linear(2, 2), center_keys=True, config=None)
