"""M3ViT model: routers, single-task pathway, FLOPs accounting, checkpoints, training."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastpaper import moe
from fastpaper.models import M3ViT
from fastpaper.moe_data import TASK_CHANNELS, make_scenes
from fastpaper.moe_train import evaluate, tiny_model, train


def _small(**kw):
    cfg = dict(img_size=(32, 48), patch_size=8, dim=32, depth=4, heads=2, mlp_ratio=2.0,
               num_experts=6, k=2, expert_hidden=24, decoder_channels=[16, 8, 8])
    cfg.update(kw)
    torch.manual_seed(0)
    return M3ViT(**cfg).eval()


# -------------------------------------------------------------------------------- routers

@pytest.mark.parametrize("router", moe.ROUTERS)
def test_route_matches_manual_softmax_topk(router):
    torch.manual_seed(1)
    layer = moe.MoE(16, 8, num_experts=5, k=3, num_tasks=3, router=router, task_embed_dim=4)
    torch.nn.init.normal_(layer.gate_weight)
    torch.nn.init.normal_(layer.gate_bias)
    x = torch.randn(11, 16)
    for task in range(3):
        scores, idx = layer.route(x, task)
        if router == "multi-gate":
            logits = x.double() @ layer.gate_weight[task].double() + layer.gate_bias[task].double()
        else:
            z = torch.cat([x.double(), layer.task_embed[task].double().expand(11, -1)], 1)
            logits = z @ layer.gate_weight.double() + layer.gate_bias.double()
        p = torch.softmax(logits, -1)
        for t in range(11):
            order = sorted(range(5), key=lambda e: (-p[t, e].item(), e))[:3]
            assert idx[t].tolist() == order
            torch.testing.assert_close(scores[t].double(), p[t, order], rtol=1e-5, atol=1e-6)
        assert scores.dtype == torch.float32 and idx.dtype == torch.int64
        # not renormalized: the k kept probabilities sum to less than 1
        assert (scores.sum(1) < 1).all()


def test_route_ties_lowest_index_first():
    layer = moe.MoE(4, 4, num_experts=6, k=3)
    with torch.no_grad():
        layer.gate_weight.zero_()
        layer.gate_bias.copy_(torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0, 0.0]]))
    scores, idx = layer.route(torch.randn(3, 4), 0)
    assert idx.tolist() == [[1, 3, 4]] * 3
    layer.gate_bias.data.zero_()
    _, idx = layer.route(torch.randn(2, 4), 0)
    assert idx.tolist() == [[0, 1, 2]] * 2


def test_tasks_route_differently_and_noise_only_in_training():
    torch.manual_seed(0)
    layer = moe.MoE(16, 8, num_experts=8, k=2, num_tasks=2, noisy_gating=True, noise_std=50.0)
    torch.nn.init.normal_(layer.gate_weight)
    x = torch.randn(64, 16)
    layer.eval()
    a, b = layer.route(x, 0)[1], layer.route(x, 1)[1]
    assert not torch.equal(a, b)
    assert torch.equal(layer.route(x, 0)[1], a)           # eval: deterministic
    layer.train()
    assert not torch.equal(layer.route(x, 0)[1], a)       # training: noisy


def test_load_balancing_loss():
    even = torch.full((8, 4), 0.25)
    idx = torch.tensor([[0, 1], [2, 3]] * 4)
    assert moe.load_balancing_loss(even, idx).item() == pytest.approx(0.0, abs=1e-7)
    skew = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 8, requires_grad=True)
    loss = moe.load_balancing_loss(skew, torch.tensor([[0, 1]] * 8))
    # importance (5.6, .8, .8, .8): cv2 = var/mean^2 = 4.32/4 = 1.08; load (5.6, .8, 0, 0)
    assert loss.item() == pytest.approx(1.08 + (((5.6 - 1.6) ** 2 + 0.64 + 2 * 2.56) / 4) / 2.56,
                                        rel=1e-5)
    loss.backward()
    assert skew.grad.abs().sum() > 0


@pytest.mark.parametrize("impl", ["loop", "dense"])
def test_moe_forward_impls_agree(impl):
    torch.manual_seed(2)
    layer = moe.MoE(12, 10, num_experts=5, k=2, num_tasks=2, impl="op").double()
    torch.nn.init.normal_(layer.gate_weight)
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    ref = layer(x, 1)
    layer.impl = impl
    torch.testing.assert_close(layer(x, 1), ref)


def test_moe_bad_arguments():
    with pytest.raises(ValueError, match="k"):
        moe.MoE(8, 8, num_experts=2, k=3)
    with pytest.raises(ValueError, match="router"):
        moe.MoE(8, 8, router="hash")
    with pytest.raises(ValueError, match="dim"):
        moe.MoE(0, 8)
    layer = moe.MoE(8, 8, num_experts=4, k=1, num_tasks=2)
    with pytest.raises(ValueError, match="task"):
        layer(torch.randn(3, 8), 2)
    with pytest.raises(TypeError, match="task"):
        layer(torch.randn(3, 8), "semseg")
    with pytest.raises(ValueError, match="x"):
        layer(torch.randn(3, 7), 0)


# -------------------------------------------------------------------------------- model

def test_model_structure_defaults():
    model = M3ViT(img_size=(64, 64))
    assert model.tasks == ["semseg", "depth", "normals", "edges", "saliency"]
    assert len(model.blocks) == 12 and len(model.moe_layers) == 6
    assert [isinstance(b.mlp, moe.MoE) for b in model.blocks] == [i % 2 == 1 for i in range(12)]
    layer = model.moe_layers[0]
    assert (layer.dim, layer.hidden, layer.num_experts, layer.k, layer.num_tasks) == \
        (384, 384, 16, 4, 5)
    assert tuple(layer.w1.shape) == (16, 384, 384) and tuple(layer.gate_weight.shape) == (5, 384, 16)
    assert model.blocks[0].attn.heads == 12
    assert M3ViT(img_size=(32, 32), heads=6).blocks[0].attn.heads == 6
    assert model.task_id("depth") == 1 and model.task_id(3) == 3


@pytest.mark.parametrize("router", moe.ROUTERS)
def test_single_task_pathway_equals_full_model(router):
    model = _small(router=router, task_embed_dim=8)
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        full = model.forward_all(x)
        model.set_moe_impl("dense")  # every expert computed, then masked: the full network
        dense = model.forward_all(x)
        model.set_moe_impl("op")
        for t in model.tasks:
            out = model(x, t)
            assert out.shape == (2, model.task_channels[t], 32, 48)
            torch.testing.assert_close(out, full[t])
            torch.testing.assert_close(out, dense[t], rtol=1e-4, atol=1e-5)
    # different tasks route the same tokens to different experts
    assert not torch.allclose(full["semseg"][:, :1], full["depth"])


def _counted(fc, model, passes):
    """FlopCounterMode's total, plus the attention core (QK^T and PV, 4 n^2 d per block) when the
    CPU's fused SDPA kernel is not among the ops it counts."""
    total = fc.get_total_flops()
    if not any("scaled_dot_product" in str(op) for op in fc.get_flop_counts()["Global"]):
        n = 1 + model.grid[0] * model.grid[1]
        total += passes * len(model.blocks) * 4 * n * n * model.dim
    return total


def test_flops_accounting_matches_counted_matmuls():
    model = _small().set_moe_impl("loop")  # plain matmuls, which FlopCounterMode sees
    x = torch.rand(1, 3, 32, 48)
    for t in model.tasks:
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(x, t)
        f = model.flops(t)
        assert f["sparse"] == _counted(fc, model, 1)
    # dense all-tasks baseline: every task with all experts active (k = E) plus every decoder
    dense_model = _small(k=6).set_moe_impl("loop")
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        dense_model.forward_all(x)
    f = model.flops("depth")
    assert f["dense_all_tasks"] == _counted(fc, model, len(model.tasks))
    assert f["reduction"] == pytest.approx(1 - f["sparse"] / f["dense_all_tasks"])


def test_flops_vit_s_reduction():
    model = M3ViT(img_size=(512, 512))  # PASCAL-Context, 5 tasks
    f = model.flops("semseg")
    n = 1025
    assert f["sparse_breakdown"]["moe"] == 6 * n * (2 * 384 * 16 + 4 * 4 * 384 * 384)
    assert 0.85 < f["reduction"] < 0.9  # the paper reports 88 %


def test_checkpoint_roundtrip(tmp_path):
    model = _small(router="task-embedding", task_embed_dim=8)
    path = tmp_path / "m3vit.pt"
    model.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"config", "state_dict"} and ckpt["config"]["router"] == "task-embedding"
    loaded = M3ViT.from_checkpoint(path).eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, "edges"), model(x, "edges"))
    torch.save({"weights": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="checkpoint"):
        M3ViT.from_checkpoint(tmp_path / "bad.pt")


def test_model_bad_input():
    model = _small()
    with pytest.raises(ValueError, match="task"):
        model(torch.rand(1, 3, 32, 48), "pose")
    with pytest.raises(ValueError, match="images"):
        model(torch.rand(1, 3, 32, 32), "depth")
    with pytest.raises(ValueError, match="img_size"):
        M3ViT(img_size=(30, 32), patch_size=8)
    with pytest.raises(ValueError, match="tasks"):
        M3ViT(img_size=32, tasks=["semseg", "pose"])


# ----------------------------------------------------------------------------- data, training

def test_scenes_targets_consistent():
    d = make_scenes(6, (24, 40), seed=3)
    assert d["images"].shape == (6, 3, 24, 40) and d["semseg"].shape == (6, 24, 40)
    assert torch.equal(d["saliency"][:, 0] > 0, d["semseg"] > 0)
    torch.testing.assert_close(d["normals"].norm(dim=1), torch.ones(6, 24, 40))
    assert d["edges"].sum() > 0 and (d["semseg"] > 0).any()
    assert ((d["depth"] > 0) & (d["depth"] <= 1)).all()
    assert torch.equal(make_scenes(2, (24, 40), seed=3)["images"], d["images"][:2])


def test_training_loss_falls():
    data = make_scenes(64, (32, 32), seed=0)
    held = make_scenes(16, (32, 32), seed=99)
    model = tiny_model((32, 32), noisy_gating=True)
    before = evaluate(model, held)
    hist = train(model, steps=40, batch_size=8, lr=3e-3, data=data)
    after = evaluate(model, held)
    assert len(hist) == 40 and all(math.isfinite(h["total"]) for h in hist)
    for t in ("semseg", "depth"):
        assert after[t] < 0.8 * before[t], (t, before, after)


def test_demo_section_small():
    from fastpaper import demo

    (result,) = demo.run(demo.DemoConfig(small=True), ["moe"])
    layer, flops, training = result["tables"]
    assert layer["rows"][0]["max_abs_diff"] < 1e-4
    assert all(0.8 < r["reduction"] / 100 < 0.95 for r in flops["rows"])
    assert any(r["after"] < r["before"] for r in training["rows"])
    assert "M³ViT" in demo.format_section(result)
