"""K-sort folding: exact without quantization (tiny random Llama with GQA and RoPE, no download),
bit-exact unfold, the permutation keeps RoPE pairs together, and it does group outlier pairs."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastpaper import bfp  # noqa: E402


def tiny_llama(seed=0, bias=False):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   head_dim=32, max_position_embeddings=128, attention_bias=bias)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # outlier key channels in low-frequency RoPE pairs, as in real models
        for layer in model.model.layers:
            w = layer.self_attn.k_proj.weight
            w[13] *= 20.0
            w[30] *= 15.0
            w[32 + 15] *= 10.0
            w[32 + 28] *= 8.0
            if bias:
                layer.self_attn.k_proj.bias.normal_()
                layer.self_attn.q_proj.bias.normal_()
    return model


def ids(seed=1, batch=2, seq=24):
    return torch.randint(0, 97, (batch, seq), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


@pytest.mark.parametrize("method,smoothing", [("norm", False), ("calibrated", False),
                                              ("calibrated", True), ("norm", True)])
@pytest.mark.parametrize("bias", [False, True])
def test_fold_is_exact_and_unfold_restores(method, smoothing, bias):
    model = tiny_llama(bias=bias)
    x = ids()
    ref = logits(model, x)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    plans = bfp.ksort(model, method=method, calib_inputs=ids(seed=7) if method == "calibrated" or smoothing else None,
                      smoothing=smoothing)
    assert len(plans) == 2
    changed = any(not torch.equal(p, w0[n]) for n, p in model.named_parameters())
    assert changed
    torch.testing.assert_close(logits(model, x), ref, rtol=1e-5, atol=1e-5)
    bfp.unfold(model)
    for n, p in model.named_parameters():
        assert torch.equal(p, w0[n]), n
    torch.testing.assert_close(logits(model, x), ref, rtol=0, atol=0)


def test_rope_gather_is_needed():
    """Permuting W_q/W_k rows without gathering the RoPE tables changes the model: the gather is
    what makes the fold exact (this guards the test above against being vacuous)."""
    model = tiny_llama()
    x = ids()
    ref = logits(model, x)
    bfp.ksort(model, method="norm")
    state = model._fastpaper_ksort
    for h in state[2]:
        h.remove()
    assert (logits(model, x) - ref).abs().max() > 1e-3
    model._fastpaper_ksort = (state[0], state[1], [])
    bfp.unfold(model)
    torch.testing.assert_close(logits(model, x), ref, rtol=0, atol=0)


def test_plan_structure_and_outliers_first():
    model = tiny_llama()
    plans = bfp.ksort(model, method="norm")
    d = 32
    for plan in plans:
        assert plan.perm.shape == (2, d) and plan.scale is None
        for h in range(2):
            p = plan.perm[h]
            assert sorted(p.tolist()) == list(range(d))
        assert plan.perm[0, :2].tolist() == [13, 30]     # the boosted channels of KV head 0 lead
        assert plan.perm[1, :2].tolist() == [15, 28]     # rows 47 and 60 = KV head 1
    bfp.unfold(model)


def test_smoothing_scales_are_powers_of_two_and_shrink_key_spread():
    model = tiny_llama()
    calib = ids(seed=5, batch=4, seq=32)
    plans = bfp.ksort(model, method="calibrated", calib_inputs=calib, smoothing=True, alpha=1.0)
    for plan in plans:
        s = plan.scale
        assert s is not None and s.shape == plan.perm.shape
        assert torch.equal(torch.exp2(torch.round(torch.log2(s))), s)
        partner_new = torch.argsort(plan.perm, -1).gather(-1, (plan.perm + 16) % 32)
        assert torch.equal(s, s.gather(-1, partner_new))     # equal within each RoPE pair
    # with alpha = 1, folded key pair RMS spread (max/min) is within a factor ~2 per head
    k = []
    h = model.model.layers[0].self_attn.k_proj.register_forward_hook(lambda m, i, o: k.append(o))
    logits(model, calib)
    h.remove()
    ms = k[0].reshape(-1, 2, 32).square().mean(0)
    partner_new = torch.argsort(plans[0].perm, -1).gather(-1, (plans[0].perm + 16) % 32)
    pair = (ms + ms.gather(-1, partner_new)).sqrt()
    assert (pair.max(-1).values / pair.min(-1).values).max() < 2.1
    bfp.unfold(model)


def test_bad_input():
    model = tiny_llama()
    with pytest.raises(TypeError, match="model"):
        bfp.ksort("not a model")
    with pytest.raises(ValueError, match="method"):
        bfp.ksort(model, method="magic")
    with pytest.raises(ValueError, match="calib_inputs"):
        bfp.ksort(model, method="calibrated")
    with pytest.raises(ValueError, match="alpha"):
        bfp.ksort(model, calib_inputs=ids(), smoothing=True, alpha=2.0)
    with pytest.raises(TypeError, match="calib_inputs"):
        bfp.ksort(model, method="calibrated", calib_inputs=[torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="no attention layers"):
        bfp.ksort(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="not folded"):
        bfp.unfold(model)
    bfp.ksort(model)
    with pytest.raises(ValueError, match="already folded"):
        bfp.ksort(model)


def test_sorting_reduces_cache_quantization_error():
    """4-bit keys of block 16 (two blocks per 32-wide head) in a BFPCache, i.e. after RoPE: with
    the sort folded in, the outlier pairs share a block with each other instead of with small
    channels, so the layer-0 key error (a permutation-invariant sum) drops."""
    model = tiny_llama()
    x = ids(batch=2, seq=32)

    def key_error():
        dense = transformers.DynamicCache(config=model.config)
        packed = bfp.BFPCache(bfp.Format(16, 4))
        with torch.no_grad():
            model(input_ids=x, past_key_values=dense)
            model(input_ids=x, past_key_values=packed)
        return (packed.layers[0].keys_dense() - dense.layers[0].keys).square().sum().item()

    plain = key_error()
    bfp.ksort(model, method="norm")
    sorted_ = key_error()
    bfp.unfold(model)
    assert sorted_ < 0.85 * plain, (sorted_, plain)
