"""Plain-PyTorch BFP codec, bit-identical to ``fastpaper.bfp`` for round-to-nearest: the benchmark baseline.

Same format, same byte layout and same :class:`fastpaper.bfp.PackedBFP` container as
:mod:`fastpaper.bfp` (see its module docstring), written as a handful of vectorized torch ops over
the whole tensor viewed as ``[..., n_blocks, B]``. Any device torch supports works (CPU, CUDA).
Differences from the native codec: torch tensors only, ``rounding="nearest"`` only, and NaN
payloads are whatever torch produces (the native decoder writes the canonical quiet NaN).

Why it is exact: every scaling is by a power of two, so the only roundings are the element rounding
(``torch.round``, half to even) and the final cast to 16-bit floats (round to nearest-even in torch
and in fastpaper). Powers of two are built from their bit patterns rather than ``torch.exp2``,
whose float32 result for integer arguments the docs do not promise to be exact.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..bfp import BFP12, BFP16, MXINT8, Format, PackedBFP

__all__ = ["Format", "PackedBFP", "BFP12", "BFP16", "MXINT8", "pack", "unpack", "quantize"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SCALES = ("no_clip", "floor")
_MIN_E, _MAX_E = -127, 127
_NONFINITE_BYTE = 255


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """``2.0 ** k`` as float32 for integer ``k`` in [-149, 127], exact (subnormals included).

    Builds the float64 bit pattern ``(k + 1023) << 52`` and narrows it, which is exact whenever
    the result is representable in float32.
    """
    return ((k.to(torch.int64) + 1023) << 52).view(torch.float64).to(torch.float32)


def _check(x, fmt, scale: str, rounding: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension, got a 0-d tensor")
    if not isinstance(fmt, Format):
        raise TypeError(f"fmt must be a fastpaper.bfp.Format (e.g. BFP12), got {type(fmt).__name__}")
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {list(_SCALES)}, got {scale!r}")
    if rounding != "nearest":
        raise ValueError(f"the plain-PyTorch baseline supports rounding='nearest' only, got {rounding!r}")


def _encode(x: torch.Tensor, fmt: Format, scale: str):
    """Shared front half of pack and quantize.

    With ``a = max|x|`` over a block of B elements (zero padding included), ``a = m * 2**(e+1)``
    from ``torch.frexp`` (``m`` in [0.5, 1), so ``e = floor(log2 a)``):

    * ``"floor"``: ``E = e``.
    * ``"no_clip"``: ``E = e + 1`` when ``a * 2**(M-2-e) = m * 2**(M-1)`` would round past
      ``qmax = 2**(M-1) - 1``, i.e. when ``m >= 1 - 2**-M`` (and ``e < 127``); else ``E = e``.
    * ``E`` is clamped to [-127, 127]; an all-zero block gets ``E = -127`` (exponent byte 0).

    Elements: ``q = min(round_half_even(|x| * 2**(M-2-E)), qmax)`` with the sign kept apart.
    ``2**(M-2-E)`` can reach 2**133, past float32, so the product is taken as
    ``(|x| * 2**-E) * 2**(M-2)``; the first product is inexact only where it is subnormal, and then
    the exact product is far below 1/2 and rounds to 0 either way.

    Returns ``q`` (float32, [..., nb, B], >= 0), ``sign`` (bool, same shape), ``E`` (int32,
    [..., nb, 1]) and ``finite`` (bool, [..., nb, 1]; False where the block holds NaN or +-Inf,
    whose elements are zeroed).
    """
    block, mbits = fmt.block, fmt.mantissa_bits
    qmax = float(2 ** (mbits - 1) - 1)
    cols = x.shape[-1]
    nb = -(-cols // block)
    v = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    pad = nb * block - cols
    if pad:
        v = torch.nn.functional.pad(v, (0, pad))
    v = v.view(*x.shape[:-1], nb, block)

    # max |x| without materializing |x|; NaN propagates through both reductions.
    lo, hi = torch.aminmax(v, dim=-1, keepdim=True)
    amax = torch.maximum(hi, -lo)
    finite = torch.isfinite(amax)
    v.masked_fill_(~finite, 0.0)
    amax = amax.masked_fill(~finite, 0.0)

    m, e_plus1 = torch.frexp(amax)
    e = e_plus1 - 1
    if scale == "no_clip":
        clips = (m >= 1.0 - 2.0 ** -mbits) & (e < _MAX_E)
        e = e + clips.to(e.dtype)
    e = e.clamp(_MIN_E, _MAX_E).masked_fill(amax == 0, _MIN_E)

    sign = torch.signbit(v)
    q = v.abs_().mul_(_pow2(-e)).mul_(2.0 ** (mbits - 2)).round_().clamp_max_(qmax)
    return q, sign, e, finite


def pack(x: torch.Tensor, fmt: Format = BFP12, *, scale: str = "no_clip",
         rounding: str = "nearest") -> PackedBFP:
    """Encode ``x`` in block floating point along its last dimension with plain torch ops.

    Per block of B elements with shared exponent ``E`` (see ``_encode``)::

        q_i = min(round_half_even(|x_i| * 2**(M-2-E)), 2**(M-1) - 1)
        exponent byte = E + 127            (255 if the block holds NaN/Inf, 0 if it is all zero)

    Fields: sign-magnitude ``(signbit << (W-1)) | q`` in W = 4 bits (M <= 4, two per byte, even
    index in the low nibble) or W = 8 bits; two's complement (MXINT8) ``(-q if signbit else q)``
    as int8. Fields of a NaN/Inf block are zero.

    Parameters
    ----------
    x : torch.Tensor, float32/float16/bfloat16, shape [..., cols], any device.
    fmt : fastpaper.bfp.Format.
    scale : ``"no_clip"`` or ``"floor"``.
    rounding : ``"nearest"`` only.

    Returns
    -------
    PackedBFP with mantissas uint8 [..., fmt.mantissa_bytes(cols)] and exponents uint8
    [..., ceil(cols / B)], byte for byte what ``fastpaper.bfp.pack`` writes.
    """
    _check(x, fmt, scale, rounding)
    q, sign, e, finite = _encode(x, fmt, scale)
    lead, nb = x.shape[:-1], e.shape[-2]
    if fmt.element == "twos_complement":
        # q <= 127 fits int8; viewing int8 as uint8 is the two's-complement byte
        fields = torch.where(sign, -q, q).to(torch.int8).view(torch.uint8)
    else:
        fields = q.to(torch.uint8).bitwise_or_(sign.to(torch.uint8) << (fmt.field_bits - 1))
    if fmt.field_bits == 4:
        pairs = fields.view(*lead, nb * fmt.block // 2, 2)
        fields = pairs[..., 0] | (pairs[..., 1] << 4)
    mantissas = fields.reshape(*lead, fmt.mantissa_bytes(x.shape[-1]))
    exponents = torch.where(finite, e + 127, _NONFINITE_BYTE).to(torch.uint8).view(*lead, nb)
    return PackedBFP(mantissas, exponents, tuple(x.shape), x.dtype, fmt)


def _block_scale(ebyte: torch.Tensor, fmt: Format) -> torch.Tensor:
    """float32 ``2**(ebyte - 127 - (M-2))`` per block, NaN where ``ebyte == 255``.

    The exponent lies in [-133, 127], where float32 holds every power of two exactly (subnormal
    below -126), and ``q * 2**k`` with ``|q| <= 128`` is then exact too (or overflows to Inf, as
    the native decoder does).
    """
    k = ebyte.to(torch.int32) - (127 + fmt.mantissa_bits - 2)
    return _pow2(k).masked_fill_(ebyte == _NONFINITE_BYTE, float("nan"))


def unpack(packed: PackedBFP, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Decode a :class:`PackedBFP` holding torch tensors with plain torch ops.

    ``x_i = q_i * 2**(e - 127 - (M-2))`` in float32 (exact), NaN for every element of a block
    whose exponent byte ``e`` is 255, then cast to ``dtype`` (default: the packed tensor's
    original dtype) with round-to-nearest-even. ``q`` is read as sign-magnitude (sign in bit W-1,
    magnitude in the W-1 bits below it; -0.0 kept) or as int8 for MXINT8 (-128 accepted).

    Returns a tensor of ``packed.shape`` on the packed tensors' device.
    """
    if not isinstance(packed, PackedBFP):
        raise TypeError(f"packed must be a PackedBFP, got {type(packed).__name__}")
    m, ebyte, fmt = packed.mantissas, packed.exponents, packed.format
    if not (isinstance(m, torch.Tensor) and isinstance(ebyte, torch.Tensor)):
        raise TypeError("the plain-PyTorch baseline decodes torch tensors only")
    out_dtype = packed.dtype if dtype is None else dtype
    if out_dtype not in _DTYPES:
        raise TypeError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {out_dtype}")
    shape = tuple(packed.shape)
    lead, cols = shape[:-1], shape[-1]
    nb = fmt.exponent_bytes(cols)
    if fmt.field_bits == 4:
        m = torch.stack((m & 0xF, m >> 4), dim=-1)
    fields = m.reshape(*lead, nb, fmt.block)
    if fmt.element == "twos_complement":
        q = fields.view(torch.int8).to(torch.float32)
    else:
        top = fmt.field_bits - 1
        mag = (fields & ((1 << top) - 1)).to(torch.float32)
        q = torch.where(fields >= (1 << top), -mag, mag)
    x = q.mul_(_block_scale(ebyte, fmt).unsqueeze(-1)).view(*lead, nb * fmt.block)
    if nb * fmt.block != cols:
        x = x[..., :cols].contiguous()
    return x.to(out_dtype)


def quantize(x: torch.Tensor, fmt: Format = BFP12, *, scale: str = "no_clip",
             rounding: str = "nearest") -> torch.Tensor:
    """``unpack(pack(x))`` without building the packed bytes: ``sign_i * q_i * 2**(E-(M-2))``.

    Same ``E`` and ``q`` as :func:`pack`; the result has x's shape and dtype. For MXINT8 a
    negative element that rounds to 0 decodes to +0.0 (its int8 field has no sign), for
    sign-magnitude formats to -0.0. No autograd rule: ``torch.round`` has a zero gradient, unlike
    the straight-through estimator of ``fastpaper.bfp.quantize``.
    """
    _check(x, fmt, scale, rounding)
    q, sign, e, finite = _encode(x, fmt, scale)
    q = torch.where(sign, -q, q)
    if fmt.element == "twos_complement":
        q = q.add_(0.0)  # -0.0 + 0.0 == +0.0 under round-to-nearest: int8 has no negative zero
    k = (e - (fmt.mantissa_bits - 2)).masked_fill(~finite, 0)
    block_scale = _pow2(k).masked_fill_(~finite, float("nan"))
    cols = x.shape[-1]
    out = q.mul_(block_scale).view(*x.shape[:-1], q.shape[-2] * fmt.block)
    if out.shape[-1] != cols:
        out = out[..., :cols].contiguous()
    return out.to(x.dtype)
