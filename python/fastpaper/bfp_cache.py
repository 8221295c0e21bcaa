"""A transformers KV cache (5.x ``Cache`` API) that stores keys — and optionally values — in BFP.

Storage of one layer, token-major so that appending T tokens is one contiguous ``pack(out=...)``::

    key mantissas  uint8 [capacity, batch, kv_heads, fmt.mantissa_bytes(head_dim)]
    key exponents  uint8 [capacity, batch, kv_heads, fmt.exponent_bytes(head_dim)]
    values         packed the same way with ``value_format``, or dense [capacity, batch, kv_heads,
                   head_dim] in the model's dtype when ``value_format`` is None

Capacity grows in multiples of ``chunk`` tokens (at least x1.5 per growth, so appends are amortised
O(1)). Blocks run along head_dim of each token's key (one exponent per ``block`` channels), which is
where :func:`fastpaper.bfp.ksort` groups channels of similar magnitude.

Key transform (optional, beyond the paper): before packing, each key is centered and rotated,

    k'_t = (k_t - R_t mu) H^T,        stored: pack(k'_t);   read back: unpack(k'_t) H + R_t mu

with R_t the model's RoPE rotation at cache index t, mu the per-(sequence, head, channel) mean of
the pre-RoPE keys of the first update (the prompt: no calibration), and H the orthonormal
Sylvester-Hadamard matrix of size head_dim. Keys of LLMs carry large per-channel offsets and a
few outlier channels; centering removes the offsets and H spreads what remains evenly over all
channels, so every BFP block sees values of similar magnitude. Subtracting and adding R_t mu with
the same t makes the transform exact whatever positions the model uses; only the quantization
error changes (SmolLM2-135M, BFP12 block 16 = 4.5 bits/key: +15 % perplexity -> +3 %, see
bench/bench_bfp_accuracy.py). Decode steps with the fused kernel read the packed keys in either case: the query is rotated
instead (q.k = (q H^T).(k H^T)) and the centered part enters as an additive logit
``<q, R_t mu>`` computed against the shared cos/sin tables (:meth:`BFPLayer.logit_bias`).

Attention: :meth:`BFPLayer.update` returns the dequantized keys/values ([batch, kv_heads, seq,
head_dim]) so any attention implementation works. With the model's attention implementation set to
``"fastpaper_bfp"`` (:func:`use_bfp_attention`), single-token decode steps instead run
``torch.ops.fastpaper.bfp_decode_attention`` over the packed storage (keys/values dequantized in
registers, never materialized); prefill and masked calls fall back to dequantize-then-SDPA.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .bfp import BFP12, Format, PackedBFP, _check_format, pack, unpack

__all__ = ["BFPCache", "BFPLayer", "use_bfp_attention", "bfp_attention_forward", "ATTENTION_NAME"]

ATTENTION_NAME = "fastpaper_bfp"


class _Store:
    """A growable token-major tensor [capacity, ...]; ``view(n)`` is the contiguous first n tokens."""

    def __init__(self, row_shape: tuple, dtype: torch.dtype, device: torch.device):
        self.row_shape, self.dtype, self.device = row_shape, dtype, device
        self.data = torch.empty((0,) + row_shape, dtype=dtype, device=device)

    def reserve(self, n: int, length: int, chunk: int) -> None:
        cap = self.data.shape[0]
        if n <= cap:
            return
        new_cap = max(n, int(cap * 1.5))
        new_cap = -(-new_cap // chunk) * chunk
        data = torch.empty((new_cap,) + self.row_shape, dtype=self.dtype, device=self.device)
        data[:length].copy_(self.data[:length])
        self.data = data

    def nbytes_per_token(self) -> int:
        return math.prod(self.row_shape) * self.data.element_size()


class _Packed:
    """Packed BFP storage of one tensor stream (keys or values)."""

    def __init__(self, fmt: Format, lead: tuple, head_dim: int, dtype, device, scale: str):
        self.fmt, self.head_dim, self.dtype, self.scale = fmt, head_dim, dtype, scale
        self.m = _Store(lead + (fmt.mantissa_bytes(head_dim),), torch.uint8, device)
        self.e = _Store(lead + (fmt.exponent_bytes(head_dim),), torch.uint8, device)

    def reserve(self, n, length, chunk):
        self.m.reserve(n, length, chunk)
        self.e.reserve(n, length, chunk)

    def append(self, x_tok: torch.Tensor, start: int) -> None:
        """x_tok: [T, batch, heads, head_dim] written at tokens [start, start + T)."""
        t = x_tok.shape[0]
        out = PackedBFP(self.m.data[start:start + t], self.e.data[start:start + t],
                        tuple(x_tok.shape), x_tok.dtype, self.fmt)
        pack(x_tok, self.fmt, scale=self.scale, out=out)

    def packed(self, length: int) -> PackedBFP:
        return PackedBFP(self.m.data[:length], self.e.data[:length],
                         (length,) + self.m.row_shape[:-1] + (self.head_dim,), self.dtype, self.fmt)

    def dense(self, length: int) -> torch.Tensor:
        return unpack(self.packed(length))            # [length, batch, heads, head_dim]

    def nbytes_per_token(self) -> int:
        return self.m.nbytes_per_token() + self.e.nbytes_per_token()


class BFPLayer(CacheLayerMixin):
    """One layer of a :class:`BFPCache` (see the module docstring for the storage layout)."""

    is_sliding = False
    is_croppable = True
    is_compileable = False

    def __init__(self, key_format: Format = BFP12, value_format: Optional[Format] = None,
                 scale: str = "no_clip", chunk: int = 256, config: Any = None,
                 rotate_keys: bool = False, rotary_emb: Any = None):
        super().__init__()
        self.key_format, self.value_format = key_format, value_format
        self.scale, self.chunk, self.config = scale, chunk, config
        self.rotate_keys, self.rotary_emb = rotate_keys, rotary_emb   # rotary_emb: center keys
        self.length = 0
        self._k: Optional[_Packed] = None
        self._v: Any = None
        self._H: Optional[torch.Tensor] = None       # [head_dim, head_dim] when rotating
        self._mu: Optional[torch.Tensor] = None      # [batch, kv_heads, 1, head_dim] when centering
        self._cos = self._sin = None                 # RoPE tables [positions, head_dim], float32

    # -- CacheLayerMixin -------------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        if key_states.dim() != 4 or value_states.dim() != 4:
            raise ValueError("key_states/value_states must be [batch, kv_heads, seq, head_dim], got "
                             f"{tuple(key_states.shape)} and {tuple(value_states.shape)}")
        b, h, _, d = key_states.shape
        self.device, self.dtype = key_states.device, key_states.dtype
        self.batch_size, self.num_heads, self.head_dim = b, h, d
        self.value_dim = value_states.shape[-1]
        self._k = _Packed(self.key_format, (b, h), d, self.dtype, self.device, self.scale)
        if self.rotate_keys:
            self._H = hadamard(d, device=self.device)
        if self.value_format is None:
            self._v = _Store((b, h, self.value_dim), value_states.dtype, self.device)
        else:
            self._v = _Packed(self.value_format, (b, h), self.value_dim, value_states.dtype,
                              self.device, self.scale)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append [batch, kv_heads, T, head_dim] keys/values (packing them) and return the keys and
        values of the whole sequence for attention (see the module docstring)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if (key_states.shape[0], key_states.shape[1], key_states.shape[3]) != (
                self.batch_size, self.num_heads, self.head_dim):
            raise ValueError(f"key_states has shape {tuple(key_states.shape)}, expected "
                             f"[{self.batch_size}, {self.num_heads}, T, {self.head_dim}]")
        t = key_states.shape[-2]
        start, end = self.length, self.length + t
        self._k.reserve(end, start, self.chunk)
        self._v.reserve(end, start, self.chunk)
        self._k.append(self._transform(key_states, start).permute(2, 0, 1, 3), start)
        v_tok = value_states.permute(2, 0, 1, 3)
        if isinstance(self._v, _Packed):
            self._v.append(v_tok, start)
        else:
            self._v.data[start:end].copy_(v_tok)
        self.length = end
        if t == 1 and self._fused():
            # Marker views: the registered attention function reads the packed storage of this layer.
            k, v = key_states[..., :], value_states[..., :]
            k._fastpaper_bfp_layer = self
            return k, v
        return self.keys_dense(), self.values_dense()

    def _fused(self) -> bool:
        return self.config is not None and getattr(self.config, "_attn_implementation", None) == ATTENTION_NAME

    # -- key transform (module docstring) ---------------------------------------------------------
    def _rope_mu(self, start: int, end: int) -> torch.Tensor:
        """R_t mu for cache indices [start, end): [batch, kv_heads, end - start, head_dim]."""
        if self._cos is None or self._cos.shape[0] < end:
            n = max(end, 2 * (0 if self._cos is None else self._cos.shape[0]), 256)
            pos = torch.arange(n, device=self.device).unsqueeze(0)
            dummy = torch.zeros(1, n, self.head_dim, device=self.device, dtype=torch.float32)
            cos, sin = self.rotary_emb(dummy, pos)
            self._cos, self._sin = cos[0].float(), sin[0].float()
        cos, sin = self._cos[start:end], self._sin[start:end]
        return self._mu * cos + _rotate_half(self._mu) * sin

    def _transform(self, k: torch.Tensor, start: int) -> torch.Tensor:
        """k [batch, kv_heads, T, head_dim] -> what is packed: (k - R_t mu) H^T."""
        if self.rotary_emb is None and self._H is None:
            return k
        kf = k.float()
        if self.rotary_emb is not None:
            end = start + k.shape[2]
            if self._mu is None:
                # mean of the pre-RoPE keys of this first update: R_t^{-1} k_t, averaged over t
                self._mu = torch.zeros_like(kf[:, :, :1])
                self._rope_mu(start, end)  # builds the tables
                cos, sin = self._cos[start:end], self._sin[start:end]
                self._mu = (kf * cos - _rotate_half(kf) * sin).mean(2, keepdim=True)
            kf = kf - self._rope_mu(start, end)
        if self._H is not None:
            kf = kf @ self._H.T
        return kf.to(k.dtype)

    def _untransform(self, kq: torch.Tensor) -> torch.Tensor:
        """Inverse of _transform on dequantized keys [batch, kv_heads, length, head_dim]."""
        if self.rotary_emb is None and self._H is None:
            return kq
        kf = kq.float()
        if self._H is not None:
            kf = kf @ self._H
        if self.rotary_emb is not None:
            kf = kf + self._rope_mu(0, kf.shape[2])
        return kf.to(kq.dtype)

    def query_transform(self, q: torch.Tensor) -> torch.Tensor:
        """The query that meets the stored keys: q H^T when keys are rotated."""
        return q if self._H is None else (q.float() @ self._H.T).to(q.dtype)

    def logit_bias(self, q: torch.Tensor, scale: float) -> Optional[torch.Tensor]:
        """scale * <q, R_t mu> for t < length, float32 [batch, q_heads, length]: the part of q.k
        that centering took out of the stored keys (None without centering). With
        R_t mu = mu cos_t + rotate_half(mu) sin_t it is two [length, head_dim] x [head_dim]
        products per query, against the shared cos/sin tables."""
        if self.rotary_emb is None:
            return None
        self._rope_mu(0, self.length)  # tables up to length
        rep = q.shape[1] // self.num_heads
        mu = self._mu[:, :, 0].repeat_interleave(rep, dim=1)            # [batch, q_heads, d]
        qf = q.float()
        cos, sin = self._cos[: self.length], self._sin[: self.length]
        bias = torch.einsum("td,bgd->bgt", cos, qf * mu) + torch.einsum("td,bgd->bgt", sin, qf * _rotate_half(mu))
        return (bias * scale).contiguous()

    def keys_dense(self) -> torch.Tensor:
        """Dequantized keys [batch, kv_heads, length, head_dim] (a permuted view; with a key
        transform, a new tensor in the model's key space)."""
        return self._untransform(self._k.dense(self.length).permute(1, 2, 0, 3))

    def values_dense(self) -> torch.Tensor:
        if isinstance(self._v, _Packed):
            return self._v.dense(self.length).permute(1, 2, 0, 3)
        return self._v.data[: self.length].permute(1, 2, 0, 3)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.length = 0
        self._k = self._v = None
        self._mu = None
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop: pass a negative number of tokens to remove")
        self.length = max(0, self.length + tokens_to_remove)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if not self.is_initialized:
            return
        idx = beam_idx.to(self.device)
        for s in self._stores():
            s.data = s.data.index_select(1, idx)
        if self._mu is not None:
            self._mu = self._mu.index_select(0, idx)

    def _stores(self) -> list:
        return [self._k.m, self._k.e] + ([self._v.m, self._v.e] if isinstance(self._v, _Packed) else [self._v])

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            for s in self._stores():
                s.data = s.data.repeat_interleave(repeats, dim=1)
                s.row_shape = (s.row_shape[0] * repeats,) + s.row_shape[1:]
            self.batch_size *= repeats
            if self._mu is not None:
                self._mu = self._mu.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            for s in self._stores():
                s.data = s.data[:, indices.to(self.device)]
                s.row_shape = (s.data.shape[1],) + s.row_shape[1:]
            self.batch_size = self._k.m.data.shape[1]
            if self._mu is not None:
                self._mu = self._mu[indices.to(self.device)]

    def offload(self):  # packed storage stays where it is
        pass

    def prefetch(self):
        pass

    # -- accounting ------------------------------------------------------------------------------
    def key_bytes_per_token(self) -> int:
        """Packed key bytes per token of one sequence (all KV heads of this layer)."""
        return self._k.nbytes_per_token() // self.batch_size if self.is_initialized else 0

    def value_bytes_per_token(self) -> int:
        return self._v.nbytes_per_token() // self.batch_size if self.is_initialized else 0

    def packed_keys(self) -> PackedBFP:
        """The stored keys, token-major: shape [length, batch, kv_heads, head_dim]."""
        return self._k.packed(self.length)

    def packed_values(self):
        """The stored values: a PackedBFP like :meth:`packed_keys` or a dense [length, batch,
        kv_heads, head_dim] tensor."""
        if isinstance(self._v, _Packed):
            return self._v.packed(self.length)
        return self._v.data[: self.length]


class BFPCache(Cache):
    """KV cache with BFP-packed keys (``key_format``, e.g. ``fastpaper.bfp.BFP12``) and values
    (``value_format``; None keeps them dense). Pass ``config=model.config`` to let single-token
    decode run the packed-attention kernel when the model uses ``use_bfp_attention(model)``.

    Usage: ``model.generate(ids, past_key_values=BFPCache(BFP12), max_new_tokens=...)``.
    ``scale``: the codec's exponent choice (``"no_clip"`` or ``"floor"``). ``chunk``: growth unit
    in tokens. ``rotate_keys``: store keys rotated by the Hadamard matrix (head_dim a power of 2);
    ``center_keys``: subtract the prompt's mean pre-RoPE key first, which needs the model's rotary
    embedding module (``rotary_emb``: called as ``rotary_emb(x, position_ids) -> (cos, sin)``, as
    transformers' Llama-family ``model.model.rotary_emb``); see the module docstring.
    :meth:`for_model` fills ``config`` and ``rotary_emb`` from a model. The most accurate 4.5-bit
    setting measured: ``BFPCache.for_model(model, Format(16, 4), scale="floor", rotate_keys=True,
    center_keys=True)``.
    """

    def __init__(self, key_format: Format = BFP12, value_format: Optional[Format] = None, *,
                 config: Any = None, scale: str = "no_clip", chunk: int = 256,
                 rotate_keys: bool = False, center_keys: bool = False, rotary_emb: Any = None):
        _check_format(key_format, "key_format")
        if value_format is not None:
            _check_format(value_format, "value_format")
        if scale not in ("no_clip", "floor"):
            raise ValueError(f"scale must be 'no_clip' or 'floor', got {scale!r}")
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        if not isinstance(rotate_keys, bool) or not isinstance(center_keys, bool):
            raise TypeError("rotate_keys and center_keys must be bool")
        if center_keys and not callable(rotary_emb):
            raise ValueError("center_keys needs rotary_emb (the model's rotary embedding module, e.g. "
                             "model.model.rotary_emb); or use BFPCache.for_model(model, ...)")
        self.key_format, self.value_format = key_format, value_format
        super().__init__(layer_class_to_replicate=functools.partial(
            BFPLayer, key_format, value_format, scale, chunk, config, rotate_keys,
            rotary_emb if center_keys else None))

    @classmethod
    def for_model(cls, model, key_format: Format = BFP12, value_format: Optional[Format] = None,
                  **kwargs) -> "BFPCache":
        """A cache for ``model``: its config (fused decode after :func:`use_bfp_attention`) and,
        for ``center_keys=True``, its rotary embedding (the first submodule named ``rotary_emb``)."""
        if "config" not in kwargs:
            kwargs["config"] = getattr(model, "config", None)
        if kwargs.get("center_keys") and kwargs.get("rotary_emb") is None:
            rot = next((m for name, m in model.named_modules() if name.split(".")[-1] == "rotary_emb"),
                       None)
            if rot is None:
                raise ValueError("model: no submodule named rotary_emb; pass rotary_emb=")
            kwargs["rotary_emb"] = rot
        return cls(key_format, value_format, **kwargs)

    def bytes_per_token(self) -> int:
        """Bytes of KV storage per token of one sequence, summed over layers (keys + values)."""
        return sum(layer.key_bytes_per_token() + layer.value_bytes_per_token() for layer in self.layers)

    def key_bits_per_element(self) -> float:
        """Stored key bits per key element (exponent bytes and block padding included)."""
        layers = [la for la in self.layers if la.is_initialized]
        if not layers:
            return float("nan")
        bits = sum(8 * la.key_bytes_per_token() for la in layers)
        return bits / sum(la.num_heads * la.head_dim for la in layers)


def hadamard(n: int, device=None) -> torch.Tensor:
    """The orthonormal Sylvester-Hadamard matrix of size n (a power of 2), float32; symmetric, so
    it is its own inverse."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"rotate_keys: head_dim must be a power of 2, got {n}")
    H = torch.ones(1, 1, device=device)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H / math.sqrt(n)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    # the rotate-half RoPE convention of transformers' Llama family
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _mask_allows_all(mask: Optional[torch.Tensor]) -> bool:
    if mask is None:
        return True
    if mask.dtype == torch.bool:
        return bool(mask.all())
    return bool((mask == 0).all())


def bfp_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function ``"fastpaper_bfp"``: a single-token decode step over a
    :class:`BFPLayer` runs :func:`fastpaper.bfp.decode_attention` on the packed storage; anything
    else (prefill, masked steps, other caches) is transformers' SDPA on dense tensors."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layer = getattr(key, "_fastpaper_bfp_layer", None)
    if layer is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if query.shape[2] != 1 or not _mask_allows_all(attention_mask) or (dropout and module.training):
        return sdpa_attention_forward(module, query, layer.keys_dense(), layer.values_dense(),
                                      attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    from .bfp_attention import decode_attention

    q0 = query[:, :, 0]
    if scaling is None:
        scaling = q0.shape[-1] ** -0.5
    out = decode_attention(layer.query_transform(q0), layer.packed_keys(), layer.packed_values(),
                           scale=scaling, bias=layer.logit_bias(q0, scaling))
    return out.unsqueeze(1), None                    # [batch, 1, q_heads, v_dim], like SDPA


def use_bfp_attention(model) -> None:
    """Register the ``"fastpaper_bfp"`` attention function and switch ``model`` to it; then pass
    ``BFPCache(..., config=model.config)`` so decode steps read the packed cache directly."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, bfp_attention_forward)
    model.set_attn_implementation(ATTENTION_NAME)
