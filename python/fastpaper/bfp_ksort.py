"""K-sort: outlier-aware reordering (and smoothing) of key channels, folded into the attention weights.

Keys of LLMs have a few fixed outlier channels. A BFP block shares one exponent across ``block``
consecutive channels of a key, so one outlier forces a coarse step on all its neighbours.
Trukhanov & Soloveychik (2024) reorder the channels so that channels of similar magnitude share a
block; since ``q . k = (P q) . (P k)`` for any permutation P, the reordering is folded into the rows
of W_q and W_k at load time and costs nothing at inference.

For one attention layer with KV heads h = 0..H_kv-1 of dimension d (even), this module computes

* a permutation ``perm[h]`` of the head_dim channels, in decreasing order of magnitude, channel
  by channel. The two members of a RoPE pair (channel j and j + d/2 in Llama's rotate-half
  convention) may land anywhere: the folded layers rotate with the permuted pairing and gathered
  cos/sin tables (``_rope``: each channel keeps its old frequency and partner), so the folded model
  computes exactly the original function. Sorting single channels rather than pairs matters: a key
  outlier usually sits in one member of a low-frequency pair, which RoPE barely rotates, so after
  RoPE the outlier is still one channel and its partner is small (measured on SmolLM2-135M:
  forcing pairs into one block made 4-bit keys clearly worse than leaving them apart).
* optionally per-pair smoothing scales ``s[h]`` (powers of two, equal within a pair): ``k' = k / s``,
  ``q' = q * s``, so ``q' . k' = q . k``. Scaling both members of a pair by the same factor commutes
  with their rotation, and powers of two make folding and unfolding exact in floating point.

Methods: ``"norm"`` (the paper; calibration-free) sorts channels by the L2 norm of their rows of
W_k; ``"calibrated"`` sorts by the root-mean-square of each channel of the post-RoPE keys (what the
KV cache stores) measured on ``calib_inputs``. Smoothing
(calibrated) uses SmoothQuant-style migration ``s = m_k^alpha / m_q^(1 - alpha)`` between the
key pair RMS ``m_k`` and the query pair RMS ``m_q`` (averaged over the query heads sharing the KV
head), rounded to a power of two and normalised to geometric mean 1 per head; with ``alpha = 1``
every key pair gets the same magnitude. GQA: one permutation and one scale vector per KV head, shared
by its query heads.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any, Optional

import torch

__all__ = ["KSortLayer", "ksort", "unfold", "attention_layers"]


@dataclass
class KSortLayer:
    """The reordering of one attention layer.

    ``perm``: int64 [H_kv, d] — new channel j of KV head h is old channel ``perm[h, j]``
    ``scale``: float32 [H_kv, d] in the new order (equal for the two members of a RoPE pair), or
    None: new key channel j is ``k[perm[h, j]] / scale[h, j]``, new query channel ``q * scale``.
    """

    perm: torch.Tensor
    scale: Optional[torch.Tensor]


_STATE_ATTR = "_fastpaper_ksort"


def attention_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The attention modules of a Llama-family model: modules with ``q_proj``/``k_proj`` Linear
    children and a ``head_dim``, in model order."""
    layers = []
    for m in model.modules():
        if (isinstance(getattr(m, "q_proj", None), torch.nn.Linear)
                and isinstance(getattr(m, "k_proj", None), torch.nn.Linear)
                and isinstance(getattr(m, "head_dim", None), int)):
            layers.append(m)
    return layers


def _geometry(attn: torch.nn.Module) -> tuple[int, int, int]:
    d = attn.head_dim
    n_q, n_kv = attn.q_proj.out_features // d, attn.k_proj.out_features // d
    if d % 2 or n_q * d != attn.q_proj.out_features or n_kv * d != attn.k_proj.out_features:
        raise ValueError(f"model: attention layer with head_dim {d} does not split q_proj "
                         f"({attn.q_proj.out_features}) / k_proj ({attn.k_proj.out_features}) into "
                         "heads of an even dimension")
    if n_q % n_kv:
        raise ValueError(f"model: {n_q} query heads are not a multiple of {n_kv} KV heads")
    return d, n_q, n_kv


def _pair_rms(x: torch.Tensor) -> torch.Tensor:
    """[..., H, d] mean squares -> [H, d/2] pair RMS sqrt(ms_j + ms_{j+d/2})."""
    d = x.shape[-1]
    return (x[..., : d // 2] + x[..., d // 2:]).sqrt()


@torch.no_grad()
def _calibrate(model, layers, calib_inputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (mean k^2 [H_kv, d] and mean q^2 [H_q, d] before RoPE, mean k^2 [H_kv, d] after
    RoPE) over all calibration tokens."""
    from transformers import DynamicCache

    sums = [[None, None, 0, None] for _ in layers]
    handles = []

    def hook(i, which):
        def f(mod, inp, out):
            d = layers[i].head_dim
            x = out.detach().float().reshape(-1, out.shape[-1] // d, d)
            s = x.square().sum(0)
            sums[i][which] = s if sums[i][which] is None else sums[i][which] + s
            if which == 0:
                sums[i][2] += x.shape[0]
        return f

    for i, attn in enumerate(layers):
        handles.append(attn.k_proj.register_forward_hook(hook(i, 0)))
        handles.append(attn.q_proj.register_forward_hook(hook(i, 1)))
    try:
        batches = [calib_inputs] if isinstance(calib_inputs, torch.Tensor) else list(calib_inputs)
        if not batches:
            raise ValueError("calib_inputs must hold at least one batch of input ids")
        for ids in batches:
            if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int32, torch.int64):
                raise TypeError("calib_inputs must be an integer tensor of input ids [batch, seq] or "
                                f"an iterable of them, got {type(ids).__name__}")
            cache = DynamicCache(config=model.config)
            model(input_ids=ids.reshape(-1, ids.shape[-1]).to(layers[0].q_proj.weight.device),
                  past_key_values=cache, use_cache=True)
            for i, attn in enumerate(layers):   # post-RoPE keys [B, H_kv, T, d], what the cache stores
                k = cache.layers[getattr(attn, "layer_idx", i)].keys.float()
                s = k.square().sum((0, 2))
                sums[i][3] = s if sums[i][3] is None else sums[i][3] + s
    finally:
        for h in handles:
            h.remove()
    return [(k / n, q / n, kr / n) for k, q, n, kr in sums]


def _plan(attn, method, stats, smoothing, alpha, p) -> KSortLayer:
    d, n_q, n_kv = _geometry(attn)
    if method == "norm":
        w = attn.k_proj.weight.detach().float().reshape(n_kv, d, -1)
        mag = w.norm(p=p, dim=-1)                           # row norms [H_kv, d]
    else:
        mag = stats[2].sqrt()                               # post-RoPE key RMS [H_kv, d]
    scale = None
    if smoothing:
        mk = _pair_rms(stats[0]).clamp_min(1e-30)           # [H_kv, d/2], rotation-invariant
        mq = _pair_rms(stats[1].reshape(n_kv, n_q // n_kv, d).mean(1)).clamp_min(1e-30)
        log_s = alpha * mk.log2() - (1.0 - alpha) * mq.log2()
        log_s = torch.round(log_s - log_s.mean(-1, keepdim=True))   # powers of two, geo-mean ~ 1
        s_pair = torch.exp2(log_s)
        s_chan = torch.cat([s_pair, s_pair], dim=-1)        # equal within each pair (j, j + d/2)
        mag = mag / s_chan
    perm = torch.argsort(mag, dim=-1, descending=True, stable=True)          # [H_kv, d]
    if smoothing:
        scale = torch.gather(s_chan, -1, perm).float()
    return KSortLayer(perm.long().cpu(), scale.cpu() if scale is not None else None)


def _rows(perm: torch.Tensor, n_heads: int, n_kv: int) -> torch.Tensor:
    """Flat output-row index of the projection for every head (query heads share their KV head)."""
    d = perm.shape[-1]
    per_head = perm.repeat_interleave(n_heads // n_kv, dim=0)              # [n_heads, d]
    return (per_head + torch.arange(n_heads).unsqueeze(1) * d).reshape(-1)


def _row_factor(scale: Optional[torch.Tensor], n_heads: int, n_kv: int) -> Optional[torch.Tensor]:
    if scale is None:
        return None
    return scale.repeat_interleave(n_heads // n_kv, dim=0).reshape(-1)


@torch.no_grad()
def _apply(attn, layer: KSortLayer, inverse: bool) -> None:
    d, n_q, n_kv = _geometry(attn)
    for lin, n_heads, power in ((attn.k_proj, n_kv, -1.0), (attn.q_proj, n_q, 1.0)):
        rows = _rows(layer.perm, n_heads, n_kv).to(lin.weight.device)
        f = _row_factor(layer.scale, n_heads, n_kv)
        for param in (lin.weight, lin.bias):
            if param is None:
                continue
            if not inverse:
                new = param.data.index_select(0, rows)
                if f is not None:
                    fac = (f ** power).to(new.device, new.dtype)
                    new = new * (fac.unsqueeze(1) if new.dim() == 2 else fac)
            else:
                cur = param.data
                if f is not None:
                    fac = (f ** -power).to(cur.device, cur.dtype)
                    cur = cur * (fac.unsqueeze(1) if cur.dim() == 2 else fac)
                new = torch.empty_like(cur)
                new.index_copy_(0, rows, cur)
            param.data.copy_(new)


# ---- RoPE: gather cos/sin per head for folded layers ----------------------------------------------

_active = threading.local()   # (perm_q [H_q, d], perm_k [H_kv, d]) while a folded layer runs


def _rope(q, k, cos, sin, spec_q, spec_k):
    """RoPE of the permuted layout (cos/sin [B, T, d] of the original layout): new channel j is old
    channel perm[j], so it takes old channel's table entry, and rotate_half becomes a signed gather
    from the new position of its pair partner, ``rh[j] = sign[j] * x[src[j]]``."""

    def rot(x, spec):
        perm, src, sign = (t.to(x.device) for t in spec)
        c = cos[:, :, perm].permute(0, 2, 1, 3)              # [B, H, T, d]
        s = sin[:, :, perm].permute(0, 2, 1, 3)
        idx = src[None, :, None, :].expand(x.shape)
        rh = torch.gather(x, -1, idx) * sign[None, :, None, :].to(x.dtype)
        return x * c + rh * s

    return rot(q, spec_q), rot(k, spec_k)


def _rope_spec(perm: torch.Tensor) -> tuple:
    """(perm, src, sign) per head for _rope: old rotate_half is rh[i] = -x[i + d/2] (i < d/2),
    x[i - d/2] (i >= d/2); in the new layout the partner of old channel perm[j] sits at
    inv[(perm[j] + d/2) mod d]."""
    d = perm.shape[-1]
    inv = torch.argsort(perm, dim=-1)
    src = torch.gather(inv, -1, (perm + d // 2) % d)
    sign = torch.where(perm < d // 2, -1.0, 1.0)
    return perm, src, sign


def _install_rope(attn) -> None:
    """Wraps the modeling module's apply_rotary_pos_emb once: unchanged unless a folded layer is
    running (its pre-hook sets the permutations), so other models are unaffected."""
    mod = sys.modules.get(type(attn).__module__)
    fn = getattr(mod, "apply_rotary_pos_emb", None)
    if fn is None:
        raise ValueError(f"model: attention class {type(attn).__name__} has no module-level "
                         "apply_rotary_pos_emb (rotate-half RoPE); ksort supports Llama-family models")
    if getattr(fn, "_fastpaper_original", None) is not None:
        return

    def wrapped(q, k, cos, sin, *args, **kwargs):
        spec = getattr(_active, "spec", None)
        if spec is None:
            return fn(q, k, cos, sin, *args, **kwargs)
        unsqueeze_dim = args[0] if args else kwargs.get("unsqueeze_dim", 1)
        if unsqueeze_dim != 1 or cos.dim() != 3:
            raise ValueError("ksort: unsupported RoPE call (expected cos/sin [batch, seq, head_dim] "
                             "and unsqueeze_dim=1)")
        return _rope(q, k, cos, sin, *spec)

    wrapped._fastpaper_original = fn
    setattr(mod, "apply_rotary_pos_emb", wrapped)


def _hooks(attn, layer: KSortLayer):
    _, n_q, n_kv = _geometry(attn)
    spec = (_rope_spec(layer.perm.repeat_interleave(n_q // n_kv, dim=0)), _rope_spec(layer.perm))

    def pre(mod, args, kwargs):
        _active.spec = spec

    def post(mod, args, kwargs, out):
        _active.spec = None

    return (attn.register_forward_pre_hook(pre, with_kwargs=True),
            attn.register_forward_hook(post, with_kwargs=True, always_call=True))


# ---- public API -----------------------------------------------------------------------------------

def ksort(model: torch.nn.Module, method: str = "norm", calib_inputs: Any = None,
          smoothing: bool = False, alpha: float = 0.5, p: float = 2.0) -> list[KSortLayer]:
    """Reorder (and optionally smooth) the key channels of every attention layer of ``model`` and
    fold the change into W_q / W_k in place; the model computes the same function afterwards.

    Parameters
    ----------
    model : a Hugging Face transformers Llama-family model (rotate-half RoPE, GQA allowed).
    method : ``"norm"`` (sort RoPE pairs by W_k row norms, no data) or ``"calibrated"`` (by key
        activation RMS on ``calib_inputs``).
    calib_inputs : int tensor of input ids [batch, seq] or an iterable of them; needed for
        ``method="calibrated"`` and for ``smoothing``. Use text disjoint from any evaluation text.
    smoothing : also fold power-of-two per-pair scales ``s = m_k^alpha / m_q^(1-alpha)``.
    alpha : migration strength in [0, 1] (1: all key pairs equal in magnitude).
    p : norm order for ``method="norm"``.

    Returns the per-layer :class:`KSortLayer` list (also kept on the model for :func:`unfold`).
    Calling ``ksort`` on an already folded model raises; :func:`unfold` first.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if method not in ("norm", "calibrated"):
        raise ValueError(f"method must be 'norm' or 'calibrated', got {method!r}")
    if not isinstance(smoothing, bool):
        raise TypeError(f"smoothing must be a bool, got {type(smoothing).__name__}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if not (isinstance(p, (int, float)) and p > 0):
        raise ValueError(f"p must be a positive number, got {p!r}")
    if (method == "calibrated" or smoothing) and calib_inputs is None:
        raise ValueError("calib_inputs is required for method='calibrated' and for smoothing=True")
    if getattr(model, _STATE_ATTR, None) is not None:
        raise ValueError("model is already folded by ksort; call fastpaper.bfp.unfold(model) first")
    layers = attention_layers(model)
    if not layers:
        raise ValueError("model: no attention layers with q_proj / k_proj / head_dim found "
                         "(ksort supports Llama-family transformers models)")
    for attn in layers:
        _geometry(attn)
        _install_rope(attn)
    stats = _calibrate(model, layers, calib_inputs) if calib_inputs is not None else [None] * len(layers)
    plans = [_plan(a, method, s, smoothing, float(alpha), float(p)) for a, s in zip(layers, stats)]
    handles = []
    for attn, plan in zip(layers, plans):
        _apply(attn, plan, inverse=False)
        handles.extend(_hooks(attn, plan))
    setattr(model, _STATE_ATTR, (layers, plans, handles))
    return plans


def unfold(model: torch.nn.Module) -> None:
    """Undo :func:`ksort`: restores W_q / W_k (bit-exact: permutations and power-of-two scales) and
    removes the RoPE gather."""
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise ValueError("model is not folded by fastpaper.bfp.ksort")
    layers, plans, handles = state
    for h in handles:
        h.remove()
    for attn, plan in zip(layers, plans):
        _apply(attn, plan, inverse=True)
    setattr(model, _STATE_ATTR, None)

