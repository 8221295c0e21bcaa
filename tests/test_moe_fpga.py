"""fastpaper.moe_fpga: the DRAM layout of the FPGA design (pure packing functions) and the PYNQ
driver, checked without a board: against an independent element-by-element statement of the
layout, against the C-simulation's output files, and with a fake PYNQ whose 'IP' decodes the
buffers it is given and computes the layer."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from fastpaper import moe_fpga, moe_hls
from moe_hls_reference import CSIM, ReferenceMoE, compiled_testbenches

D, H, E, K, TASKS = 16, 24, 5, 2, 2


def _params(seed=0, router="multi-gate"):
    return moe_fpga.layer_params(ReferenceMoE(D, H, E, K, TASKS, router=router, seed=seed))


def test_to_fixed_rounds_half_to_even_and_saturates():
    words, sat = moe_fpga.to_fixed([0.5 / 2**14, 1.5 / 2**14, -2.5 / 2**14, 1.0, 2.0, -2.5],
                                   (16, 2))
    assert words.dtype == np.int16 and sat == 2
    assert words.tolist() == [0, 2, -2, 2**14, 2**15 - 1, -(2**15)]
    v = np.linspace(-1.9, 1.9, 101)
    back = moe_fpga.from_fixed(moe_fpga.to_fixed(v, (16, 2))[0], (16, 2))
    assert np.abs(back - v).max() <= 2.0**-15
    with pytest.raises(ValueError, match="finite"):
        moe_fpga.to_fixed([np.nan], (16, 2))


@pytest.mark.parametrize("build", ["fixed", "float"])
def test_pack_experts_layout(build):
    p = _params()
    raw, sat = moe_fpga.pack_experts(p["w1"], p["b1"], p["w2"], p["b2"], build)
    dtype = np.int16 if build == "fixed" else np.float32
    words = raw.view(dtype).reshape(E, 2 * D * H + H + D)
    rng = np.random.default_rng(0)

    def q(v, kind):
        if build == "float":
            return np.float32(v)
        bits, ib = moe_fpga.FORMATS[kind]
        return np.int16(np.clip(np.rint(v * 2.0 ** (bits - ib)), -(2**15), 2**15 - 1))

    for _ in range(200):  # element (e, d, h) of each part at its documented offset
        e, d, h = rng.integers(E), rng.integers(D), rng.integers(H)
        assert words[e, d * H + h] == q(p["w1"][e, d, h], "weight")
        assert words[e, D * H + h] == q(p["b1"][e, h], "bias")
        assert words[e, D * H + H + h * D + d] == q(p["w2"][e, h, d], "weight")
        assert words[e, 2 * D * H + H + d] == q(p["b2"][e, d], "bias")
    assert sat == 0
    with pytest.raises(ValueError, match="shapes"):
        moe_fpga.pack_experts(p["w1"], p["b1"], p["w1"], p["b2"])
    with pytest.raises(ValueError, match="build"):
        moe_fpga.pack_experts(p["w1"], p["b1"], p["w2"], p["b2"], "bf16")


def test_pack_gates_and_activations():
    p = _params(router="task-embedding")
    raw, _ = moe_fpga.pack_gates(p["gates"], p["gate_biases"], "float")
    ge = moe_fpga.gate_columns(E)
    assert ge == 8
    words = raw.view(np.float32).reshape(TASKS, D * ge + ge)
    g = words[:, : D * ge].reshape(TASKS, D, ge)
    np.testing.assert_array_equal(g[:, :, :E], p["gates"].astype(np.float32))
    assert not g[:, :, E:].any() and not words[:, D * ge + E:].any()
    np.testing.assert_array_equal(words[:, D * ge: D * ge + E], p["gate_biases"].astype(np.float32))
    x = np.random.default_rng(1).normal(size=(7, D))
    for build in ("fixed", "float"):
        back = moe_fpga.unpack_activations(moe_fpga.pack_activations(x, build), 7, D, build)
        np.testing.assert_allclose(back, x, atol=2.0**-20 if build == "fixed" else 1e-6)
    with pytest.raises(ValueError, match="range"):
        moe_fpga.pack_activations(np.full((1, D), 5000.0))
    with pytest.raises(ValueError, match="bytes"):
        moe_fpga.unpack_activations(np.zeros(10, np.uint8), 7, D)


@pytest.mark.parametrize("build", ["fixed", "float"])
def test_unpack_the_csim_output(tmp_path, tmp_path_factory, build):
    """The words the C-simulated design wrote, decoded by the driver, are the layer's output; the
    driver's packing of the torch layer is byte-identical to the files the C-sim read."""
    d, e = CSIM["D"], CSIM["E"]
    layer = ReferenceMoE(d, CSIM["H"], e, CSIM["K"], CSIM["TASKS"], seed=4).double()
    vec = tmp_path / "vec"
    m = moe_hls.export_hls(layer, 0, vec, n_tokens=20, max_tokens=CSIM["MAX_N"])
    tb = compiled_testbenches(tmp_path_factory)[build]
    res = moe_hls.run_testbench(tb, vec, dump_dir=tmp_path)
    assert res["returncode"] == 0, res["stdout"]
    ext = "fx" if build == "fixed" else "f32"
    p = moe_fpga.layer_params(layer)
    raw, _ = moe_fpga.pack_experts(p["w1"], p["b1"], p["w2"], p["b2"], build)
    assert raw.tobytes() == (vec / f"experts.{ext}.bin").read_bytes()
    graw, _ = moe_fpga.pack_gates(p["gates"], p["gate_biases"], build)
    assert graw.tobytes() == (vec / f"gate.{ext}.bin").read_bytes()
    for task in m["tasks"]:
        y = moe_fpga.unpack_activations(
            np.fromfile(tmp_path / f"task{task}.y_out.{ext}.bin", dtype=np.uint8), 20, d, build)
        x = np.fromfile(vec / f"task{task}.x.f32.bin", dtype=np.float32).reshape(20, d)
        with torch.no_grad():
            ref = layer(torch.as_tensor(x, dtype=torch.float64)[None], task)[0].numpy()
        tol = moe_hls.TOLERANCES[build]
        assert np.sqrt(((y - ref) ** 2).sum() / (ref**2).sum()) <= tol["rel_rms"]


def test_driver_needs_pynq(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynq", None)  # import pynq -> ImportError
    with pytest.raises(ImportError, match="PYNQ"):
        moe_fpga.MoEAccelerator("x.bit", {"hardware": {}})


class _Buffer(np.ndarray):
    """pynq.allocate's buffer: an array with a device address."""

    def flush(self):
        pass

    def invalidate(self):
        pass

    def freebuffer(self):
        _FakeBoard.memory.pop(self.device_address, None)


class _FakeBoard:
    memory = {}
    next_address = 0x4000_0000


def _fake_pynq(hw):
    """A fake pynq whose IP, on ap_start, decodes x, experts and gate from the addresses written to
    its registers (the design's layout, decoded independently here) and writes y."""

    def allocate(shape, dtype):
        buf = np.zeros(shape, dtype).view(_Buffer)
        buf.device_address = _FakeBoard.next_address
        _FakeBoard.next_address += 1 << 24
        _FakeBoard.memory[buf.device_address] = buf
        return buf

    class Regs:  # the names Vitis HLS gives the s_axilite registers of the arguments
        x = y = experts = gate = n_tokens = task = 0

    class IP:
        def __init__(self):
            self.register_map = Regs()
            self.done = False

        def write(self, offset, value):
            assert offset == 0 and value == 1
            r = self.register_map
            d, h, e = hw["D"], hw["H"], hw["E"]
            mem = _FakeBoard.memory
            n = r.n_tokens
            x = moe_fpga.from_fixed(np.asarray(mem[r.x]).view(np.int32), (32, 12)).reshape(n, d)
            w = np.asarray(mem[r.experts]).view(np.int16).reshape(e, -1).astype(np.float64)
            w1 = w[:, : d * h].reshape(e, d, h) / 2**14
            b1 = w[:, d * h: d * h + h] / 2**11
            w2 = w[:, d * h + h: 2 * d * h + h].reshape(e, h, d) / 2**14
            b2 = w[:, 2 * d * h + h:] / 2**11
            ge = moe_fpga.gate_columns(e)
            g = np.asarray(mem[r.gate]).view(np.int16).reshape(-1, d * ge + ge).astype(np.float64)
            gates = g[:, : d * ge].reshape(-1, d, ge)[:, :, :e] / 2**14
            gb = g[:, d * ge: d * ge + e] / 2**11
            params = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "gates": gates,
                      "gate_biases": gb, "k": hw["K"]}
            y = moe_hls.reference(params, x, r.task)["y"]
            mem[r.y][:] = moe_fpga.pack_activations(y)
            self.done = True

        def read(self, offset):
            return 0x2 if self.done else 0x0

    class Overlay:
        def __init__(self, path):
            self.path = path
            self.m3vit_moe_0 = IP()

    return types.SimpleNamespace(allocate=allocate, Overlay=Overlay)


def test_driver_with_a_fake_board(monkeypatch):
    hw = {"D": D, "H": H, "E": E, "K": K, "MAX_N": 64}
    monkeypatch.setitem(sys.modules, "pynq", _fake_pynq(hw))
    layer = ReferenceMoE(D, H, E, K, TASKS, router="task-embedding", seed=2).double()
    acc = moe_fpga.MoEAccelerator("m3vit_moe.bit", {"hardware": hw})
    with pytest.raises(RuntimeError, match="load_layer"):
        acc.run(np.zeros((4, D)), 0)
    acc.load_layer(layer)
    x = np.random.default_rng(5).normal(size=(30, D))
    for task in range(TASKS):
        y = acc.run(x, task)
        with torch.no_grad():
            ref = layer(torch.as_tensor(x)[None], task)[0].numpy()
        assert np.sqrt(((y - ref) ** 2).sum() / (ref**2).sum()) < 2e-3
    with pytest.raises(ValueError, match="task"):
        acc.run(x, TASKS)
    with pytest.raises(ValueError, match="tokens"):
        acc.run(np.zeros((65, D)), 0)
    with pytest.raises(ValueError, match="does not match"):
        acc.load_layer(ReferenceMoE(D, H, E + 1, K, TASKS))
