"""The M3ViT MoE FPGA design (hls/m3vit_moe), C-simulated with g++ against float64 torch.

The testbench (fixed-point and float builds of the same source) runs the reordered design and the
token-by-token baseline on vectors exported from a torch MoE layer and checks: outputs within the
fixed-point tolerance, routing as in the reference, each active expert's weights read exactly
once and inactive experts never, the baseline's traffic N*k blocks, identical outputs.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

from fastpaper import cli, moe_fpga, moe_hls
from moe_hls_reference import CSIM, ReferenceMoE, compiled_testbenches

D, H, E, K, TASKS, MAX_N = (CSIM[k] for k in ("D", "H", "E", "K", "TASKS", "MAX_N"))
N = 40

@pytest.fixture(scope="module")
def testbenches(tmp_path_factory):
    return compiled_testbenches(tmp_path_factory)


def _layer(router, seed=0):
    layer = ReferenceMoE(D, H, E, K, TASKS, router=router, seed=seed).double()
    with torch.no_grad():  # task 2: only experts 0..2 can win, so 3..5 stay inactive
        if router == "multi-gate":
            layer.gate_bias[2] = torch.tensor([6.0, 6.0, 6.0, -6.0, -6.0, -6.0])
        else:
            layer.task_embed[2] = 0
            layer.gate_bias[:] = torch.tensor([0.0, 0.1, -0.1, 0.2, -0.2, 0.0])
    return layer


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = {}
    for router in ("multi-gate", "task-embedding"):
        path = tmp_path_factory.mktemp(router)
        out[router] = (path, moe_hls.export_hls(_layer(router), 0, path, n_tokens=N,
                                                max_tokens=MAX_N, seed=1))
    return out


def test_tables_header_is_current():
    assert (moe_hls.hls_source_dir() / "m3vit_moe_tables.h").read_text() == moe_hls.tables_header()


def test_formats_match_the_design_header():
    text = (moe_hls.hls_source_dir() / "m3vit_moe_config.h").read_text()
    macro = lambda name: int(re.search(rf"#define M3VIT_{name} (\d+)", text).group(1))  # noqa
    for kind, tag in (("weight", "WGT"), ("bias", "BIAS"), ("io", "IO")):
        assert moe_fpga.FORMATS[kind] == (macro(f"{tag}_W"), macro(f"{tag}_I"))
    assert macro("TO") == moe_fpga.WEIGHT_BEAT_WORDS and macro("AV") == moe_fpga.IO_BEAT_WORDS


def test_reference_is_the_layer(exported):
    """The exported float64 reference equals the torch layer's forward (both routers), and the
    folded task-embedding gate gives the layer's logits."""
    for router in ("multi-gate", "task-embedding"):
        layer = _layer(router)
        params = moe_fpga.layer_params(layer)
        x = torch.randn(N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        for task in range(TASKS):
            ref = moe_hls.reference(params, x.numpy(), task)
            with torch.no_grad():
                y = layer(x[None], task)[0].numpy()
                logits = layer.logits(x, task).numpy()
            np.testing.assert_allclose(ref["y"], y, rtol=1e-12, atol=1e-12)
            for t in range(0, N, 7):  # token by token, straight from the definition
                p = torch.softmax(torch.as_tensor(logits[t]), 0)
                top = sorted(range(E), key=lambda e: (-float(p[e]), e))[:K]
                yt = sum(float(p[e]) * (torch.nn.functional.gelu(x[t] @ layer.w1[e] + layer.b1[e])
                                        @ layer.w2[e] + layer.b2[e]).detach().numpy() for e in top)
                np.testing.assert_allclose(ref["y"][t], yt, rtol=1e-12, atol=1e-12)
                assert sorted(ref["idx"][t].tolist()) == sorted(top)
            folded = x.numpy() @ params["gates"][task] + params["gate_biases"][task]
            np.testing.assert_allclose(folded, logits, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("build", ["fixed", "float"])
@pytest.mark.parametrize("router", ["multi-gate", "task-embedding"])
def test_csim_matches_torch_and_reads_each_expert_once(testbenches, exported, tmp_path, build,
                                                        router):
    path, manifest = exported[router]
    res = moe_hls.run_testbench(testbenches[build], path, out_json=tmp_path / "r.json")
    assert res["returncode"] == 0 and res["pass"], res["stdout"]
    assert [t["task"] for t in res["tasks"]] == [0, 1, 2]
    tol = moe_hls.TOLERANCES[build]
    block = (2 * D * H + H + D) * (2 if build == "fixed" else 4)
    assert res["expert_bytes"] == block
    for t in res["tasks"]:
        assert t["rel_rms_error"] <= tol["rel_rms"]
        assert t["max_abs_error"] <= tol["max"] * t["max_abs_ref"]
        assert t["unexcused_mismatches"] == 0 and t["routing_mismatches"] <= 1
        routed = np.array(t["routed"])
        assert routed.sum() == N * K
        # the proof: one read per active expert, none for an inactive one
        assert t["expert_loads"] == [int(r > 0) for r in routed]
        assert t["weight_bytes"] == t["active_experts"] * block
        assert t["tiles"] == sum(-(-int(r) // 8) for r in routed)  # TT-token tiles per expert
        assert t["baseline_run"] and t["baseline_weight_bytes"] == N * K * block
        assert t["traffic_ratio"] == pytest.approx(N * K / t["active_experts"])
        if build == "fixed":
            assert t["baseline_max_abs_diff"] == 0.0  # exact adds: order-independent
    if router == "multi-gate":
        assert res["tasks"][2]["active_experts"] == 3
        assert res["tasks"][2]["expert_loads"][3:] == [0, 0, 0]
    if build == "fixed":
        assert 0 < res["gelu_max_abs_error"] < 2e-4
        assert 0 < res["exp_max_abs_error"] < 5e-5
    else:
        assert res["gelu_max_abs_error"] < 1e-6


def test_csim_fails_on_wrong_weights_or_reference(testbenches, exported, tmp_path):
    src, _ = exported["multi-gate"]
    # a different reference output
    bad = tmp_path / "bad_ref"
    shutil.copytree(src, bad)
    y = np.fromfile(bad / "task1.y_ref.f64")
    (y + 0.05 * np.abs(y).max()).tofile(bad / "task1.y_ref.f64")
    res = moe_hls.run_testbench(testbenches["fixed"], bad)
    assert res["returncode"] == 1 and not res["pass"]
    assert [t["pass"] for t in res["tasks"]] == [True, False, True]
    # one expert's second-layer weights scaled: outputs off for its tokens
    bad = tmp_path / "bad_w"
    shutil.copytree(src, bad)
    words = np.fromfile(bad / "experts.fx.bin", dtype=np.int16).reshape(E, -1)
    words[1, D * H + H:] //= 2
    words.tofile(bad / "experts.fx.bin")
    res = moe_hls.run_testbench(testbenches["fixed"], bad)
    assert res["returncode"] == 1 and not res["tasks"][0]["pass"]


def test_export_manifest(exported):
    path, m = exported["task-embedding"]
    assert m["hardware"] == {"D": D, "H": H, "E": E, "K": K, "MAX_N": MAX_N, "TASKS": TASKS,
                             "TT": 8, "TI": 8, "TO": 8, "AV": 4, "GE": 8}
    assert m["router"] == "task-embedding" and m["tasks"] == [0, 1, 2]
    assert m["formats"]["weight"] == {"type": "ap_fixed<16,2>", "bits": 16, "int_bits": 2}
    for name, meta in m["files"].items():
        assert (path / name).stat().st_size == meta["bytes"]
        assert moe_hls._sha256(path / name) == meta["sha256"]
    assert m["files"]["experts.fx.bin"]["bytes"] == E * (2 * D * H + H + D) * 2
    assert m["files"]["gate.f32.bin"]["bytes"] == TASKS * (D * 8 + 8) * 4


def test_export_bad_input():
    layer = _layer("multi-gate")
    with pytest.raises(ValueError, match="task"):
        moe_hls.export_hls(layer, 0, "/tmp/unused_hls_export", tasks=[5])
    with pytest.raises(ValueError, match="x must have shape"):
        moe_hls.export_hls(layer, 0, "/tmp/unused_hls_export", x=np.zeros((4, D + 1)))
    with pytest.raises(ValueError, match="max_tokens"):
        moe_hls.export_hls(layer, 0, "/tmp/unused_hls_export", n_tokens=10, max_tokens=5)
    with pytest.raises(TypeError, match="moe_layers"):
        moe_hls.export_hls(torch.nn.Linear(3, 3), 0, "/tmp/unused_hls_export")
    odd = ReferenceMoE(12, 16, 4, 2, 1)
    with pytest.raises(ValueError, match="multiple of 8"):
        moe_hls.export_hls(odd, 0, "/tmp/unused_hls_export")


# ---- estimate ----------------------------------------------------------------------------------
def test_estimate_arithmetic():
    """Hand-computed for N=10, D=H=16, E=4, k=2, TT=TI=TO=8, AV=4, depth 2."""
    est = moe_hls.estimate(n_tokens=10, dim=16, hidden=16, experts=4, k=2, layers=3,
                           clock_mhz=100, tt=8, ti=8, to=8, av=4, depth=2, counts=[9, 0, 6, 5])
    row = 16 // 4                                   # 4 beats per token row
    expert_beats = (2 * 16 * 16 + 16 + 16) // 8     # 68
    gate_beats = (16 * 8 + 8) // 8                  # 17 (GE = 8)
    front = (gate_beats + 2) + (10 * row + 2) + 10 * row + (4 + 2 * 10 * 2)  # 19+42+40+44 = 145
    load = expert_beats + 4 * 2                     # 76
    tile = lambda nt: 8 * row + 2 * (2 + 2) + 2 * (2 + 2) + 2 * nt * row  # noqa: E731
    # tiles stream through gather (32) -> fc1 (8) -> fc2 (8) -> scatter (8 nt): after the first
    # tile, each further tile adds its slowest stage
    compute = {9: tile(8) + max(32, 8, 8, 8 * 1), 6: tile(6), 5: tile(5)}  # 144, 96, 88
    reordered = front + load + max(compute[9], load) + max(compute[6], load) + compute[5]
    assert est["reordered"]["cycles_per_layer"] == reordered == 145 + 76 + 144 + 96 + 88
    assert est["token_by_token"]["cycles_per_layer"] == front + 20 * (load + tile(1))
    assert est["reordered"]["ms_per_layer"] == pytest.approx(reordered / 1e5)
    assert est["reordered"]["ms_per_image"] == pytest.approx(3 * reordered / 1e5)
    assert est["active_experts"] == 3 and est["expert_bytes"] == 68 * 16
    assert est["reordered"]["weight_bytes_per_layer"] == 3 * 68 * 16
    assert est["token_by_token"]["weight_bytes_per_layer"] == 20 * 68 * 16
    assert est["traffic_ratio"] == pytest.approx(20 / 3)
    r = est["resources"]
    assert r["MAC_per_cycle"] == 1024 and r["DSP"] == 1024 + 4 * 4 + 64 + 8 + 12
    assert est["mac_utilization"] == pytest.approx(20 * 2 * 16 * 16 / (reordered * 1024))
    assert r["URAM"] == 2 * 2 * 8 * 2 * 1           # 8 banks x 2 URAM columns (128 bit), x4
    assert r["onchip_expert_buffer_bytes"] == 2 * (2 * 256 + 32) * 2


def test_estimate_vit_s_defaults():
    est = moe_hls.estimate()  # 1201 tokens, D = H = 384, E = 16, k = 4, 200 MHz
    assert est["config"]["n_tokens"] == 1201 and est["active_experts"] == 16
    assert est["expert_bytes"] == (2 * 384 * 384 + 768) * 2
    assert est["traffic_ratio"] == pytest.approx(1201 * 4 / 16)
    assert est["reordered"]["cycles_per_layer"] < est["token_by_token"]["cycles_per_layer"] / 10
    res = est["resources"]
    assert res["DSP"] <= res["available"]["DSP"] and res["URAM"] <= res["available"]["URAM"]
    assert res["BRAM18"] <= res["available"]["BRAM18"]
    # on-chip expert storage does not depend on E; the traffic does
    assert moe_hls.estimate(experts=64, k=4)["resources"]["onchip_expert_buffer_bytes"] == \
        res["onchip_expert_buffer_bytes"]
    with pytest.raises(ValueError, match="counts"):
        moe_hls.estimate(counts=[1, 2, 3])


def test_estimate_predicts_the_csim_traffic(testbenches, exported, tmp_path, capsys):
    path, _ = exported["multi-gate"]
    for build in ("float", "fixed"):
        res = moe_hls.run_testbench(testbenches[build], path, out_json=tmp_path / "r.json")
        for i, t in enumerate(res["tasks"]):
            est = moe_hls.estimate_for_csim(res, i)
            assert est["reordered"]["weight_bytes_per_layer"] == t["weight_bytes"]
            assert est["token_by_token"]["weight_bytes_per_layer"] == t["baseline_weight_bytes"]
            assert est["active_experts"] == t["active_experts"]
    assert cli.main(["hls", "estimate", "--csim", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "weight bytes measured" in out and "token-by-token" in out


def test_cli_estimate_json(capsys):
    assert cli.main(["hls", "estimate", "--json", "--tokens", "197", "--clock-mhz", "300"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["n_tokens"] == 197 and data["config"]["clock_mhz"] == 300
    assert data == json.loads(json.dumps(moe_hls.estimate(n_tokens=197, clock_mhz=300)))


# ---- bundle ------------------------------------------------------------------------------------
class _ToyModel(torch.nn.Module):
    """Stands in for M3ViT where only .tasks and .moe_layers matter (see test_moe_fpga for the real
    model once available)."""

    def __init__(self):
        super().__init__()
        self.tasks = ["semseg", "depth", "normals"]
        self.moe_layers = torch.nn.ModuleList([_layer("multi-gate", 0), _layer("task-embedding", 1)])


def test_bundle_of_a_loaded_model(tmp_path):
    out = tmp_path / "bundle"
    m = moe_hls.bundle("toy.ckpt", out, model=_ToyModel(), n_tokens=24, max_tokens=MAX_N)
    for name in moe_hls.SOURCES + ("m3vit_moe_params.h", "manifest.json"):
        assert (out / name).is_file(), name
    assert m["hardware"]["MAX_N"] == MAX_N and m["task_names"] == ["semseg", "depth", "normals"]
    assert [entry["dir"] for entry in m["layers"]] == ["vectors/layer0", "vectors/layer1"]
    assert [entry["router"] for entry in m["layers"]] == ["multi-gate", "task-embedding"]
    for name, meta in m["files"].items():
        assert moe_hls._sha256(out / name) == meta["sha256"], name
    tcl = (out / "run_hls.tcl").read_text()
    assert "xczu7ev-ffvc1156-2-e" in tcl and "csim_design" in tcl and "export_design" in tcl
    assert "cosim_design" in tcl and "csynth_design" in tcl


# ---- the real layer and model (fastpaper.moe, fastpaper.models.M3ViT) -------------------------
@pytest.mark.parametrize("router", ["multi-gate", "task-embedding"])
def test_fastpaper_moe_layer_csim(testbenches, tmp_path, router):
    from fastpaper import moe

    torch.manual_seed(7)
    layer = moe.MoE(D, H, E, K, num_tasks=TASKS, router=router, task_embed_dim=8).eval()
    m = moe.export_hls(layer, 0, tmp_path, n_tokens=N, max_tokens=MAX_N, tasks=[0, 2])
    assert m["router"] == router
    res = moe_hls.run_testbench(testbenches["fixed"], tmp_path)
    assert res["returncode"] == 0 and res["pass"], res["stdout"]
    assert all(t["each_active_expert_read_once"] for t in res["tasks"])
    assert moe.fpga is moe_fpga


def test_bundle_cli_from_an_m3vit_checkpoint(tmp_path):
    """`fastpaper hls bundle --model CKPT --out DIR` -> the bundle's own sources compiled with g++
    -> its testbench passes on every MoE layer's vectors (the layer's real inputs)."""
    from fastpaper.models import M3ViT

    torch.manual_seed(0)
    model = M3ViT(img_size=(32, 48), patch_size=8, dim=32, depth=4, heads=2, mlp_ratio=2.0,
                  num_experts=6, k=2, expert_hidden=48, decoder_channels=[8, 8, 8],
                  tasks=["semseg", "depth", "normals"])
    ckpt = tmp_path / "m3vit.pt"
    model.save_checkpoint(ckpt)
    out = tmp_path / "bundle"
    assert cli.main(["hls", "bundle", "--model", str(ckpt), "--out", str(out),
                     "--tokens", "20"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["hardware"]["MAX_N"] == 4 * 6 + 1 and m["moe_layers"] == len(model.moe_layers) == 2
    assert m["task_names"] == ["semseg", "depth", "normals"]
    assert m["inputs"].startswith("procedural scene")
    for name, meta in m["files"].items():
        assert moe_hls._sha256(out / name) == meta["sha256"], name
    tb = moe_hls.compile_testbench(tmp_path / "tb", source_dir=out, opt="-Og")
    for layer in range(2):
        res = moe_hls.run_testbench(tb, out / "vectors" / f"layer{layer}")
        assert res["returncode"] == 0 and res["pass"], res["stdout"]
        assert res["N"] == 20 and [t["task"] for t in res["tasks"]] == [0, 1, 2]
    # the vectors are the model's own activations: layer 1's input depends on the task
    x0 = np.fromfile(out / "vectors/layer1/task0.x.f32.bin", dtype=np.float32)
    x1 = np.fromfile(out / "vectors/layer1/task1.x.f32.bin", dtype=np.float32)
    assert x0.shape == x1.shape == (20 * 32,) and not np.array_equal(x0, x1)


def test_bundle_cli_bad_checkpoint(tmp_path, capsys):
    assert cli.main(["hls", "bundle", "--model", str(tmp_path / "missing.pt"), "--out",
                     str(tmp_path / "b")]) == 2
    assert "fastpaper hls bundle" in capsys.readouterr().err
