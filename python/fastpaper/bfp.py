"""Block floating point (BFP) codec for tensors such as an LLM's KV cache.

Format ``Format(block=B, mantissa_bits=M)``: the last dimension is cut into blocks of B
consecutive elements (padded with zeros to a multiple of B, so blocks never straddle rows). Each
block shares one exponent byte ``e`` (bias 127) and each element stores an integer ``q``::

    value = q * 2 ** (e - 127 - (M - 2))          |q| <= 2**(M-1) - 1

``q`` is sign-magnitude (the sign of zero is kept) in a 4-bit field when M <= 4 (two per byte, even
index in the low nibble) and an 8-bit field otherwise. ``MXINT8`` is the OCP Microscaling format:
block 32, E8M0 scale, two's-complement int8 elements with implied scale 2**-6 (decoding accepts
-128, encoding writes |q| <= 127).

Exponent choice (``scale=``):

* ``"no_clip"`` (default): the smallest exponent for which the block's largest magnitude, after
  rounding, still fits (no element saturates).
* ``"floor"``: ``floor(log2(max|x|))``, the convention of Trukhanov & Soloveychik's simulation and
  of the MX spec; elements that round past the largest code saturate.

Element rounding (``rounding=``): ``"nearest"`` (half to even) or ``"stochastic"``
(``floor(v) + [u < frac(v)]`` with ``u`` from a counter-based hash of ``seed`` and the element's
flat index: reproducible and identical on CPU and CUDA).

Special values: an all-zero block stores exponent byte 0; a block containing NaN or +-Inf stores
255 and decodes to NaN everywhere; exponents are clamped to [-127, 127], so values below about
``max|block| * 2**-(M-1)`` and below 2**-133 flush to zero, and blocks above float32's range
saturate. Decoding to float16 / bfloat16 rounds the exact value to nearest-even.

Works on torch tensors (float32, float16, bfloat16; CPU and CUDA, through the ``torch.ops.fastpaper``
ops, usable under ``torch.compile``) and numpy arrays (float32, float16; CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import _native

_C = _native.load("bfp")

__all__ = ["Format", "PackedBFP", "BFP12", "BFP16", "MXINT8", "pack", "unpack", "quantize"]

_BLOCKS = (16, 32, 64, 128)
_ELEMENTS = {"sign_magnitude": 0, "twos_complement": 1}
_SCALES = {"no_clip": 0, "floor": 1}
_ROUNDINGS = {"nearest": 0, "stochastic": 1}


@dataclass(frozen=True)
class Format:
    """A BFP format: ``block`` elements share an exponent; ``mantissa_bits`` bits per element."""

    block: int = 64
    mantissa_bits: int = 4
    element: str = "sign_magnitude"

    def __post_init__(self) -> None:
        if not isinstance(self.block, int) or self.block not in _BLOCKS:
            raise ValueError(f"block must be one of {_BLOCKS}, got {self.block!r}")
        if not isinstance(self.mantissa_bits, int) or not 2 <= self.mantissa_bits <= 8:
            raise ValueError(f"mantissa_bits must be an int in [2, 8], got {self.mantissa_bits!r}")
        if self.element not in _ELEMENTS:
            raise ValueError(f"element must be one of {sorted(_ELEMENTS)}, got {self.element!r}")
        if self.element == "twos_complement" and self.mantissa_bits != 8:
            raise ValueError("element='twos_complement' needs mantissa_bits=8")

    @property
    def field_bits(self) -> int:
        """Bits each element occupies in storage (4 or 8)."""
        return 4 if self.mantissa_bits <= 4 else 8

    @property
    def bits_per_element(self) -> float:
        """Storage bits per element including the shared exponent byte (padding excluded)."""
        return self.field_bits + 8.0 / self.block

    def mantissa_bytes(self, cols: int) -> int:
        return -(-cols // self.block) * self.block * self.field_bits // 8

    def exponent_bytes(self, cols: int) -> int:
        return -(-cols // self.block)

    def _args(self) -> tuple[int, int, int]:
        return self.block, self.mantissa_bits, _ELEMENTS[self.element]


BFP12 = Format(64, 4)
BFP16 = Format(64, 8)
MXINT8 = Format(32, 8, "twos_complement")


@dataclass(frozen=True)
class PackedBFP:
    """A packed tensor: ``mantissas`` uint8 [..., mantissa_bytes(cols)], ``exponents`` uint8
    [..., ceil(cols / block)], plus the original ``shape`` and ``dtype`` and the ``format``.

    ``mantissas`` / ``exponents`` are torch tensors when packed from torch, numpy arrays otherwise.
    """

    mantissas: Any
    exponents: Any
    shape: tuple
    dtype: Any
    format: Format

    @property
    def nbytes(self) -> int:
        """Bytes of packed storage (mantissas + exponents)."""
        m, e = self.mantissas, self.exponents
        if isinstance(m, np.ndarray):
            return int(m.nbytes + e.nbytes)
        return int(m.numel() + e.numel())

    @property
    def bits_per_element(self) -> float:
        n = int(np.prod(self.shape)) if self.shape else 1
        return 8.0 * self.nbytes / max(n, 1)


def _option(value: str, table: dict, name: str) -> int:
    if value not in table:
        raise ValueError(f"{name} must be one of {sorted(table)}, got {value!r}")
    return table[value]


def _check_format(fmt: Any, name: str = "fmt") -> Format:
    if not isinstance(fmt, Format):
        raise TypeError(f"{name} must be a fastpaper.bfp.Format (e.g. BFP12), got {type(fmt).__name__}")
    return fmt


def _check_seed(seed: Any) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return int(seed) & 0xFFFFFFFFFFFFFFFF


def _torch_backend(x: Any, name: str = "x"):
    """The torch half of this module, after checking that x is a torch tensor."""
    try:
        from . import _bfp_torch
    except ImportError:  # torch not installed
        _bfp_torch = None
    if _bfp_torch is None or not _bfp_torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(x).__name__}")
    return _bfp_torch


def _np_rows_cols(x: np.ndarray, name: str) -> tuple[int, int]:
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension, got a 0-d array")
    cols = x.shape[-1]
    rows = int(np.prod(x.shape[:-1])) if x.ndim > 1 else 1
    return rows, cols


_NP_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def _np_check_out(out: Any, name: str, shape: tuple, dtype) -> np.ndarray:
    """A caller-provided numpy output must match exactly: it is written, never resized."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(out.shape)}, expected {tuple(shape)}")
    if out.dtype != np.dtype(dtype):
        raise TypeError(f"{name} has dtype {out.dtype}, expected {np.dtype(dtype)}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable")
    return out


def _np_check_dtype(x: np.ndarray, name: str) -> None:
    if x.dtype not in _NP_DTYPES:
        raise TypeError(f"{name} must be float32 or float16, got {x.dtype}")


def pack(x, fmt: Format = BFP12, *, scale: str = "no_clip", rounding: str = "nearest",
         seed: int = 0, out: Optional[PackedBFP] = None) -> PackedBFP:
    """Encode ``x`` in block floating point along its last dimension.

    Parameters
    ----------
    x : torch.Tensor (float32/float16/bfloat16, CPU or CUDA) or numpy.ndarray (float32/float16),
        shape [..., cols], at least one dimension. Non-contiguous input is copied first.
    fmt : Format, e.g. ``BFP12`` (block 64, 4-bit mantissas), ``BFP16``, ``MXINT8``.
    scale : ``"no_clip"`` or ``"floor"`` (see the module docstring).
    rounding : ``"nearest"`` (half to even) or ``"stochastic"`` (seeded by ``seed``).
    out : optional PackedBFP whose ``mantissas``/``exponents`` (contiguous, exact shapes, same
        device and format) are overwritten instead of allocating new storage, e.g. a slice of a
        preallocated KV cache. Not differentiable.

    Returns
    -------
    PackedBFP with mantissas [..., fmt.mantissa_bytes(cols)] and exponents [..., ceil(cols/B)].
    """
    fmt = _check_format(fmt)
    sc = _option(scale, _SCALES, "scale")
    rd = _option(rounding, _ROUNDINGS, "rounding")
    sd = _check_seed(seed)
    if isinstance(x, np.ndarray):
        _np_check_dtype(x, "x")
        rows, cols = _np_rows_cols(x, "x")
        x = np.ascontiguousarray(x)
        lead = x.shape[:-1]
        mshape, eshape = lead + (fmt.mantissa_bytes(cols),), lead + (fmt.exponent_bytes(cols),)
        if out is None:
            m, e = np.empty(mshape, np.uint8), np.empty(eshape, np.uint8)
        else:
            if not isinstance(out, PackedBFP):
                raise TypeError(f"out must be a PackedBFP, got {type(out).__name__}")
            if out.format != fmt:
                raise ValueError(f"out.format is {out.format}, but fmt is {fmt}")
            m = _np_check_out(out.mantissas, "out.mantissas", mshape, np.uint8)
            e = _np_check_out(out.exponents, "out.exponents", eshape, np.uint8)
        _C.pack(x, rows, cols, *fmt._args(), sc, rd, sd, m, e, 0)
        return PackedBFP(m, e, tuple(x.shape), x.dtype, fmt)
    return _torch_backend(x).pack(x, fmt, sc, rd, sd, out)


def unpack(packed: PackedBFP, dtype=None, *, out=None):
    """Decode a :class:`PackedBFP` to a dense tensor/array of its original shape.

    ``dtype`` defaults to ``out``'s dtype when given, else the packed tensor's original dtype; any
    of float32/float16/bfloat16 (torch) or float32/float16 (numpy) may be asked for. ``out``: an
    optional contiguous tensor/array of the original shape to decode into (no allocation).
    """
    if not isinstance(packed, PackedBFP):
        raise TypeError(f"packed must be a PackedBFP, got {type(packed).__name__}")
    fmt = _check_format(packed.format, "packed.format")
    shape = tuple(packed.shape)
    if len(shape) == 0:
        raise ValueError("packed.shape must have at least one dimension")
    cols = shape[-1]
    lead = shape[:-1]
    m, e = packed.mantissas, packed.exponents
    if isinstance(m, np.ndarray) or isinstance(e, np.ndarray):
        if not (isinstance(m, np.ndarray) and isinstance(e, np.ndarray)):
            raise TypeError("packed.mantissas and packed.exponents must both be numpy arrays or both torch tensors")
        for name, a, want in (("mantissas", m, fmt.mantissa_bytes(cols)),
                              ("exponents", e, fmt.exponent_bytes(cols))):
            if a.dtype != np.uint8:
                raise TypeError(f"packed.{name} must be uint8, got {a.dtype}")
            if tuple(a.shape) != lead + (want,):
                raise ValueError(f"packed.{name} has shape {tuple(a.shape)}, expected "
                                 f"{lead + (want,)} for shape {shape} in {fmt}")
        if dtype is None:
            dtype = out.dtype if isinstance(out, np.ndarray) else packed.dtype
        out_dtype = np.dtype(dtype)
        if out_dtype not in _NP_DTYPES:
            raise TypeError(f"dtype must be float32 or float16 for numpy, got {out_dtype}")
        rows = int(np.prod(lead)) if lead else 1
        out = np.empty(shape, out_dtype) if out is None else _np_check_out(out, "out", shape, out_dtype)
        _C.unpack(np.ascontiguousarray(m), np.ascontiguousarray(e), rows, cols, *fmt._args(), out, 0)
        return out
    return _torch_backend(m, "packed.mantissas").unpack(packed, dtype, out)


def quantize(x, fmt: Format = BFP12, *, scale: str = "no_clip", rounding: str = "nearest",
             seed: int = 0, out=None):
    """``unpack(pack(x))`` in one pass, returning x's dtype and shape (or writing into ``out``, a
    contiguous tensor/array of x's shape and any supported float dtype; ``out`` may be ``x``).

    For torch tensors the gradient is the straight-through estimator (d quantize(x)/dx = 1), so
    ``quantize`` can sit inside a model during quantization-aware training or calibration.
    """
    fmt = _check_format(fmt)
    sc = _option(scale, _SCALES, "scale")
    rd = _option(rounding, _ROUNDINGS, "rounding")
    sd = _check_seed(seed)
    if isinstance(x, np.ndarray):
        _np_check_dtype(x, "x")
        rows, cols = _np_rows_cols(x, "x")
        x = np.ascontiguousarray(x)
        if out is None:
            out = np.empty_like(x)
        else:
            if not isinstance(out, np.ndarray):
                raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
            out = _np_check_out(out, "out", x.shape, out.dtype)
            _np_check_dtype(out, "out")
        _C.quantize(x, rows, cols, *fmt._args(), sc, rd, sd, out, 0)
        return out
    return _torch_backend(x).quantize(x, fmt, sc, rd, sd, out)


# The transformers-facing parts need torch (and transformers for the cache); they are imported on
# first use so that ``import fastpaper.bfp`` stays numpy-only.
_LAZY = {
    "ksort": "bfp_ksort", "unfold": "bfp_ksort", "KSortLayer": "bfp_ksort",
    "BFPCache": "bfp_cache", "BFPLayer": "bfp_cache", "use_bfp_attention": "bfp_cache",
    "decode_attention": "bfp_attention",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"fastpaper.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fastpaper.bfp' has no attribute {name!r}")
