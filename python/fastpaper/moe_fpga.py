"""Host side of the M3ViT MoE FPGA design (``hls/m3vit_moe``): buffer packing and a PYNQ driver.

The packing functions are pure numpy and define the DRAM layout the design reads (the same files
the C-simulation testbench reads, see :func:`fastpaper.moe_hls.export_hls`):

* expert block ``e`` (one contiguous burst): ``W1 [D, H]`` row-major, ``b1 [H]``, ``W2 [H, D]``
  row-major, ``b2 [D]``; all experts of a layer back to back, ``[E, block]``;
* gate block of task ``t``: ``G [D, GE]`` row-major (``GE`` = E rounded up to the weight beat of
  ``TO`` words, extra columns zero), ``gb [GE]``; all tasks back to back;
* activations ``x`` and ``y``: ``[N, D]`` row-major 32-bit words.

Word formats: the fixed-point build reads signed two's-complement words of
:data:`FORMATS` (``ap_fixed<W, I>``: value = word * 2**-(W - I), rounded half to even and
saturated like ``AP_RND_CONV, AP_SAT``); the float build (``-DM3VIT_FLOAT``) reads float32 words.

:class:`MoEAccelerator` drives the synthesized IP on a board with PYNQ (imported only when a board
object is created).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

# ap_fixed<total bits, integer bits incl. sign>; must match hls/m3vit_moe/m3vit_moe_config.h.
FORMATS: Dict[str, Tuple[int, int]] = {"weight": (16, 2), "bias": (16, 5), "io": (32, 12)}
WEIGHT_BEAT_WORDS = 8  # TO: weight words per 128-bit beat
IO_BEAT_WORDS = 4      # AV: activation words per 128-bit beat
BUILDS = ("fixed", "float")


def _check_build(build: str) -> None:
    if build not in BUILDS:
        raise ValueError(f"build must be 'fixed' or 'float', got {build!r}")


def to_fixed(values, fmt: Tuple[int, int]) -> Tuple[np.ndarray, int]:
    """Round ``values`` to ``ap_fixed<W, I, AP_RND_CONV, AP_SAT>`` words.

    word = clip(rint(v * 2**(W - I)), -2**(W-1), 2**(W-1) - 1) (round half to even). Returns the
    words (int16 for W = 16, int32 for W = 32) and how many values saturated.
    """
    bits, ibits = fmt
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("values to pack must be finite")
    scaled = np.rint(v * 2.0 ** (bits - ibits))
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    saturated = int(np.count_nonzero((scaled < lo) | (scaled > hi)))
    dtype = {16: np.int16, 32: np.int32}[bits]
    return np.clip(scaled, lo, hi).astype(dtype), saturated


def from_fixed(words, fmt: Tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`to_fixed`: words -> float64 values."""
    bits, ibits = fmt
    return np.asarray(words).astype(np.float64) * 2.0 ** -(bits - ibits)


def _words(values, kind: str, build: str) -> Tuple[np.ndarray, int]:
    _check_build(build)
    if build == "float":
        return np.asarray(values, dtype=np.float32), 0
    return to_fixed(values, FORMATS[kind])


def _as_f64(a, name: str, ndim: int) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def pack_experts(w1, b1, w2, b2, build: str = "fixed") -> Tuple[np.ndarray, int]:
    """Expert blocks of one layer as the bytes the design's weights port reads.

    Parameters: ``w1 [E, D, H]``, ``b1 [E, H]``, ``w2 [E, H, D]``, ``b2 [E, D]`` (any float
    arrays or tensors). Returns ``(uint8 array of E * (2DH + H + D) words, saturated count)``;
    words are int16 (fixed) or float32 (float build).
    """
    w1, b1 = _as_f64(w1, "w1", 3), _as_f64(b1, "b1", 2)
    w2, b2 = _as_f64(w2, "w2", 3), _as_f64(b2, "b2", 2)
    e, d, h = w1.shape
    if w2.shape != (e, h, d) or b1.shape != (e, h) or b2.shape != (e, d):
        raise ValueError(f"expert shapes disagree: w1 {w1.shape}, b1 {b1.shape}, w2 {w2.shape}, "
                         f"b2 {b2.shape}")
    if d % WEIGHT_BEAT_WORDS or h % WEIGHT_BEAT_WORDS:
        raise ValueError(f"D={d} and H={h} must be multiples of {WEIGHT_BEAT_WORDS}")
    parts, sat = [], 0
    for src, kind in ((w1.reshape(e, -1), "weight"), (b1, "bias"), (w2.reshape(e, -1), "weight"),
                      (b2, "bias")):
        words, s = _words(src, kind, build)
        parts.append(words)
        sat += s
    block = np.concatenate(parts, axis=1)  # [E, 2DH + H + D]
    return np.ascontiguousarray(block).view(np.uint8).reshape(-1), sat


def gate_columns(experts: int) -> int:
    """GE: gate columns padded to whole weight beats."""
    return -(-experts // WEIGHT_BEAT_WORDS) * WEIGHT_BEAT_WORDS


def pack_gates(gates, gate_biases, build: str = "fixed") -> Tuple[np.ndarray, int]:
    """Per-task gate blocks ``G [T, D, E]``, ``gb [T, E]`` -> bytes (``[T, D*GE + GE]`` words)."""
    g, gb = _as_f64(gates, "gates", 3), _as_f64(gate_biases, "gate_biases", 2)
    t, d, e = g.shape
    if gb.shape != (t, e):
        raise ValueError(f"gate_biases must have shape {(t, e)}, got {gb.shape}")
    ge = gate_columns(e)
    gp = np.zeros((t, d, ge))
    gp[:, :, :e] = g
    bp = np.zeros((t, ge))
    bp[:, :e] = gb
    gw, s1 = _words(gp.reshape(t, -1), "weight", build)
    bw, s2 = _words(bp, "bias", build)
    block = np.concatenate([gw, bw], axis=1)
    return np.ascontiguousarray(block).view(np.uint8).reshape(-1), s1 + s2


def pack_activations(x, build: str = "fixed") -> np.ndarray:
    """Tokens ``x [N, D]`` -> the 32-bit words of the activations port (uint8 view)."""
    x = _as_f64(x, "x", 2)
    if x.shape[1] % IO_BEAT_WORDS:
        raise ValueError(f"D={x.shape[1]} must be a multiple of {IO_BEAT_WORDS}")
    words, sat = _words(x, "io", build)
    if sat:
        raise ValueError(f"{sat} activations exceed the io format ap_fixed{FORMATS['io']} range "
                         f"(|x| < {2.0 ** (FORMATS['io'][1] - 1)})")
    return np.ascontiguousarray(words).view(np.uint8).reshape(-1)


def unpack_activations(raw, n_tokens: int, dim: int, build: str = "fixed") -> np.ndarray:
    """The design's output words (bytes or a 32-bit word array) -> float64 ``[N, D]``."""
    _check_build(build)
    buf = np.ascontiguousarray(np.asarray(raw)).view(np.uint8).reshape(-1)
    if buf.size != n_tokens * dim * 4:
        raise ValueError(f"expected {n_tokens * dim * 4} bytes for [{n_tokens}, {dim}], got {buf.size}")
    if build == "float":
        return buf.view(np.float32).astype(np.float64).reshape(n_tokens, dim)
    return from_fixed(buf.view(np.int32), FORMATS["io"]).reshape(n_tokens, dim)


def layer_params(layer) -> Dict[str, Any]:
    """float64 numpy parameters of a ``fastpaper.moe.MoE`` layer with the gate folded per task.

    multi-gate: ``G[t] = gate_weight[t]``, ``gb[t] = gate_bias[t]``. task-embedding (gate input
    ``concat(x, task_embed[t])``): ``G[t] = gate_weight[:D]``,
    ``gb[t] = task_embed[t] @ gate_weight[D:] + gate_bias`` — the same logits, so a task switch
    on the FPGA only changes which gate block is read.
    Returns ``w1 [E,D,H], b1 [E,H], w2 [E,H,D], b2 [E,D], gates [T,D,E], gate_biases [T,E], k``.
    """
    def f64(name):
        v = getattr(layer, name, None)
        if v is None:
            raise TypeError(f"layer has no attribute {name!r}: expected a fastpaper.moe.MoE")
        return _as_f64(v, name, v.dim() if hasattr(v, "dim") else np.ndim(v))

    w1, b1, w2, b2 = f64("w1"), f64("b1"), f64("w2"), f64("b2")
    d = w1.shape[1]
    gw, gbias = f64("gate_weight"), f64("gate_bias")
    if getattr(layer, "task_embed", None) is not None:
        emb = f64("task_embed")
        gates = np.broadcast_to(gw[:d], (emb.shape[0],) + gw[:d].shape).copy()
        gate_biases = emb @ gw[d:] + gbias[None, :]
    else:
        if gw.ndim != 3:
            raise TypeError(f"multi-gate gate_weight must be [tasks, D, E], got {gw.shape}")
        gates, gate_biases = gw, gbias
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "gates": gates, "gate_biases": gate_biases,
            "k": int(getattr(layer, "k"))}


# ---- the board ---------------------------------------------------------------------------------
def _import_pynq():
    try:
        import pynq  # noqa: F401
    except ImportError as e:  # pragma: no cover - message checked by the tests via a missing module
        raise ImportError("fastpaper.moe.fpga.MoEAccelerator needs PYNQ, which runs on the board "
                          "(a ZCU104 with a PYNQ image: pip install pynq). Packing functions "
                          "(pack_experts, pack_gates, pack_activations) work without it.") from e
    return pynq


class MoEAccelerator:
    """The ``m3vit_moe`` IP on a ZCU104, driven with PYNQ.

    Parameters
    ----------
    bitfile : path of the overlay (``.bit`` with its ``.hwh`` beside it), built from the bundle.
    manifest : the bundle's ``manifest.json`` (sizes, formats) or its parsed dict.
    ip_name : the IP instance in the block design (``m3vit_moe_0`` in ``vivado_bd.tcl``).
    build : ``"fixed"`` (the synthesized design) or ``"float"``.

    Usage: ``acc = MoEAccelerator("m3vit_moe.bit", "bundle/manifest.json")``;
    ``acc.load_layer(model.moe_layers[0])``; ``y = acc.run(x, task)`` with ``x [N, D]``.
    """

    def __init__(self, bitfile: str, manifest, ip_name: str = "m3vit_moe_0",
                 build: str = "fixed", overlay=None):
        _check_build(build)
        pynq = _import_pynq()
        if not isinstance(manifest, dict):
            manifest = json.loads(Path(manifest).read_text())
        self.manifest, self.build, self._pynq = manifest, build, pynq
        hw = manifest["hardware"]
        self.dim, self.hidden, self.experts, self.k = hw["D"], hw["H"], hw["E"], hw["K"]
        self.max_tokens = hw["MAX_N"]
        self.overlay = overlay if overlay is not None else pynq.Overlay(str(bitfile))
        self.ip = getattr(self.overlay, ip_name)
        self._weights = self._gates = None
        self.tasks = 0

    def _buffer(self, raw: np.ndarray):
        buf = self._pynq.allocate(shape=(raw.size,), dtype=np.uint8)
        buf[:] = raw
        buf.flush()
        return buf

    def load_layer(self, layer=None, *, params: Optional[Dict[str, Any]] = None) -> None:
        """Write one MoE layer's experts and all tasks' gates to DRAM (once per layer)."""
        p = params if params is not None else layer_params(layer)
        w1 = p["w1"]
        if w1.shape[0] != self.experts or w1.shape[1] != self.dim or w1.shape[2] != self.hidden:
            raise ValueError(f"layer shape {w1.shape} does not match the design "
                             f"(E={self.experts}, D={self.dim}, H={self.hidden})")
        if p["k"] != self.k:
            raise ValueError(f"layer k={p['k']} but the design is built for k={self.k}")
        experts, _ = pack_experts(p["w1"], p["b1"], p["w2"], p["b2"], self.build)
        gates, _ = pack_gates(p["gates"], p["gate_biases"], self.build)
        self._weights, self._gates = self._buffer(experts), self._buffer(gates)
        self.tasks = p["gates"].shape[0]

    def _set_arg(self, name: str, value: int) -> None:
        regs = self.ip.register_map
        if hasattr(regs, name):
            setattr(regs, name, value)
        else:  # older PYNQ: 64-bit pointers are split into NAME_1 (low) and NAME_2 (high)
            setattr(regs, f"{name}_1", value & 0xFFFFFFFF)
            setattr(regs, f"{name}_2", value >> 32)

    def run(self, x, task: int, timeout_s: float = 5.0) -> np.ndarray:
        """Run the layer on ``x [N, D]`` for ``task``; returns ``y [N, D]`` (float64)."""
        if self._weights is None:
            raise RuntimeError("call load_layer() first")
        if not 0 <= int(task) < self.tasks:
            raise ValueError(f"task must be in [0, {self.tasks}), got {task}")
        raw = pack_activations(x, self.build)
        n = raw.size // (4 * self.dim)
        if not 1 <= n <= self.max_tokens:
            raise ValueError(f"x must have 1..{self.max_tokens} tokens, got {n}")
        xb = self._buffer(raw)
        yb = self._pynq.allocate(shape=(raw.size,), dtype=np.uint8)
        for name, buf in (("x", xb), ("y", yb), ("experts", self._weights), ("gate", self._gates)):
            self._set_arg(name, buf.device_address)
        self.ip.register_map.n_tokens = n
        self.ip.register_map.task = int(task)
        self.ip.write(0x00, 1)  # ap_start
        deadline = time.monotonic() + timeout_s
        while not self.ip.read(0x00) & 0x2:  # ap_done
            if time.monotonic() > deadline:
                raise TimeoutError(f"m3vit_moe did not finish within {timeout_s} s")
        yb.invalidate()
        y = unpack_activations(np.array(yb), n, self.dim, self.build)
        xb.freebuffer()
        yb.freebuffer()
        return y
