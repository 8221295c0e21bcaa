"""Decode attention over a BFP-packed KV cache: ``torch.ops.fastpaper.bfp_decode_attention``.

For each batch b and query head g (KV head ``g // (q_heads // kv_heads)``)::

    out[b, g] = softmax_t(scale * <q[b, g], K[t, b, h]> + bias[b, g, t]) @ V[t, b, h]

(``bias`` optional, float32.)

with K (and V when packed) decoded from BFP in registers: the C++ CPU kernel walks the tokens once
per (batch, KV head) with an online softmax; the CUDA kernel splits the sequence into chunks (one
warp per batch x head x chunk) and merges them. Accumulation is float32; the output has q's dtype.
Not differentiable (an inference op).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from . import _native
from ._torch import LIB, device_guard, stream_of
from .bfp import PackedBFP

__all__ = ["decode_attention"]

_C = _native.load("bfp_attention")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

LIB.define("bfp_decode_attention(Tensor q, Tensor k_mantissas, Tensor k_exponents, int k_block, "
           "int k_mantissa_bits, int k_element, Tensor? v_mantissas, Tensor? v_exponents, Tensor? v, "
           "int v_block, int v_mantissa_bits, int v_element, int v_dim, float scale, "
           "Tensor? bias=None) -> Tensor")


def _kernel(q, k_mantissas, k_exponents, k_block, k_mantissa_bits, k_element, v_mantissas,
            v_exponents, v, v_block, v_mantissa_bits, v_element, v_dim, scale, bias=None):
    batch, q_heads, head_dim = q.shape
    seq, _, kv_heads = k_mantissas.shape[:3]
    out = q.new_empty((batch, q_heads, v_dim))
    if out.numel() == 0:
        return out
    cuda = q.device.type == "cuda"
    ws_bytes = _C.workspace_bytes(batch, q_heads, seq, v_dim, cuda)
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=q.device) if ws_bytes else None

    def c(t):
        return None if t is None else t.detach().contiguous()

    with device_guard(q):
        _C.decode_attention(c(q), batch, q_heads, kv_heads, seq, head_dim, v_dim, scale,
                            c(k_mantissas), c(k_exponents), k_block, k_mantissa_bits, k_element,
                            c(v_mantissas), c(v_exponents), c(v), v_block, v_mantissa_bits,
                            v_element, out, ws, c(bias), stream_of(q))
    return out


for _device in ("CPU", "CUDA"):
    LIB.impl("bfp_decode_attention", _kernel, _device)


@torch.library.register_fake("fastpaper::bfp_decode_attention", lib=LIB)
def _fake(q, k_mantissas, k_exponents, k_block, k_mantissa_bits, k_element, v_mantissas,
          v_exponents, v, v_block, v_mantissa_bits, v_element, v_dim, scale, bias=None):
    return q.new_empty((q.shape[0], q.shape[1], v_dim))


def _check_packed(p, name: str, seq_batch_heads: Optional[tuple], device) -> tuple:
    if not isinstance(p, PackedBFP):
        raise TypeError(f"{name} must be a fastpaper.bfp.PackedBFP, got {type(p).__name__}")
    if not (isinstance(p.mantissas, torch.Tensor) and isinstance(p.exponents, torch.Tensor)):
        raise TypeError(f"{name} must hold torch tensors (packed from torch), not numpy arrays")
    if len(p.shape) != 4:
        raise ValueError(f"{name}.shape must be [seq, batch, kv_heads, dim] (token-major, as "
                         f"BFPCache stores it), got {tuple(p.shape)}")
    lead, dim, f = tuple(p.shape[:3]), p.shape[3], p.format
    for part, a, want in (("mantissas", p.mantissas, f.mantissa_bytes(dim)),
                          ("exponents", p.exponents, f.exponent_bytes(dim))):
        if a.dtype != torch.uint8 or tuple(a.shape) != lead + (want,):
            raise ValueError(f"{name}.{part} must be uint8 of shape {lead + (want,)}, got "
                             f"{a.dtype} {tuple(a.shape)}")
        if a.device != device:
            raise ValueError(f"{name}.{part} is on {a.device}, expected {device} (q's device)")
    if seq_batch_heads is not None and lead != seq_batch_heads:
        raise ValueError(f"{name} has [seq, batch, kv_heads] = {lead}, expected {seq_batch_heads}")
    return lead, dim


def decode_attention(q: torch.Tensor, keys: PackedBFP, values: Union[PackedBFP, torch.Tensor],
                     scale: Optional[float] = None,
                     bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Single-query attention over packed keys (and packed or dense values).

    Parameters
    ----------
    q : [batch, q_heads, head_dim] or [batch, q_heads, 1, head_dim], float32/float16/bfloat16.
    keys : PackedBFP of shape [seq, batch, kv_heads, head_dim] (token-major, e.g.
        ``BFPLayer.packed_keys()``); q_heads must be a multiple of kv_heads (GQA).
    values : PackedBFP [seq, batch, kv_heads, v_dim] or a dense tensor of that shape and q's dtype.
    scale : softmax scale, default ``head_dim ** -0.5``.
    bias : optional additive logit term [batch, q_heads, seq] (float32, q's device), added after
        the scale.

    Returns
    -------
    [batch, q_heads, v_dim] (or [batch, q_heads, 1, v_dim] for a 4-d q) in q's dtype.
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    four_d = q.dim() == 4
    if four_d:
        if q.shape[2] != 1:
            raise ValueError(f"q must hold a single query per head (shape [batch, heads, 1, dim]), got {tuple(q.shape)}")
        q = q[:, :, 0]
    if q.dim() != 3:
        raise ValueError(f"q must be [batch, q_heads, head_dim], got shape {tuple(q.shape)}")
    if q.dtype not in _DTYPES:
        raise TypeError(f"q must be float32, float16 or bfloat16, got {q.dtype}")
    if q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"q must be on the CPU or a CUDA device, got {q.device}")
    (seq, batch, kv_heads), head_dim = _check_packed(keys, "keys", None, q.device)
    if head_dim != q.shape[-1] or batch != q.shape[0]:
        raise ValueError(f"keys [seq, batch, kv_heads, head_dim] = {tuple(keys.shape)} does not match "
                         f"q [batch, q_heads, head_dim] = {tuple(q.shape)}")
    if seq < 1:
        raise ValueError("keys must hold at least one token")
    if q.shape[1] % kv_heads:
        raise ValueError(f"q_heads ({q.shape[1]}) must be a multiple of kv_heads ({kv_heads})")
    if not 1 <= head_dim <= 256:
        raise ValueError(f"head_dim must be in [1, 256], got {head_dim}")
    if scale is None:
        scale = head_dim ** -0.5
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    kf = keys.format
    if isinstance(values, PackedBFP):
        _, v_dim = _check_packed(values, "values", (seq, batch, kv_heads), q.device)
        vf = values.format
        vm, ve, vd = values.mantissas, values.exponents, None
        vargs = vf._args()
    elif isinstance(values, torch.Tensor):
        if values.dim() != 4 or tuple(values.shape[:3]) != (seq, batch, kv_heads):
            raise ValueError(f"values must be [seq, batch, kv_heads, v_dim] = [{seq}, {batch}, "
                             f"{kv_heads}, v_dim], got {tuple(values.shape)}")
        if values.dtype != q.dtype:
            raise TypeError(f"dense values must have q's dtype {q.dtype}, got {values.dtype}")
        if values.device != q.device:
            raise ValueError(f"values is on {values.device}, expected {q.device}")
        v_dim = values.shape[-1]
        vm, ve, vd = None, None, values
        vargs = kf._args()
    else:
        raise TypeError(f"values must be a PackedBFP or a torch.Tensor, got {type(values).__name__}")
    if not 1 <= v_dim <= 256:
        raise ValueError(f"v_dim must be in [1, 256], got {v_dim}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor, got {type(bias).__name__}")
        if tuple(bias.shape) != (batch, q.shape[1], seq):
            raise ValueError(f"bias must be [batch, q_heads, seq] = [{batch}, {q.shape[1]}, {seq}], "
                             f"got {tuple(bias.shape)}")
        if bias.dtype != torch.float32:
            raise TypeError(f"bias must be float32, got {bias.dtype}")
        if bias.device != q.device:
            raise ValueError(f"bias is on {bias.device}, expected {q.device}")
    out = torch.ops.fastpaper.bfp_decode_attention(
        q, keys.mantissas, keys.exponents, *kf._args(), vm, ve, vd, *vargs, v_dim, float(scale),
        bias)
    return out.unsqueeze(2) if four_d else out
