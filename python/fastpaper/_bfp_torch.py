"""torch.library ops of the BFP codec: ``torch.ops.fastpaper.bfp_pack / bfp_unpack / bfp_quantize``.

Registered with ``Library.define``/``impl`` (about 4 us of dispatch instead of ~16 us for a Python
``custom_op``), with fake kernels for torch.compile and a straight-through autograd for quantize.
The kernels run on torch's current CUDA stream; outputs are allocated by torch.
"""

from __future__ import annotations

import torch

from . import _native
from ._torch import LIB, device_guard, stream_of
from .bfp import Format, PackedBFP

_C = _native.load("bfp")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_CODE_DTYPES = {v: k for k, v in _DTYPE_CODES.items()}

LIB.define("bfp_pack(Tensor x, int block, int mantissa_bits, int element, int scale, int rounding, "
           "int seed) -> (Tensor, Tensor)")
LIB.define("bfp_unpack(Tensor mantissas, Tensor exponents, int cols, int block, int mantissa_bits, "
           "int element, int dtype) -> Tensor")
LIB.define("bfp_quantize(Tensor x, int block, int mantissa_bits, int element, int scale, "
           "int rounding, int seed) -> Tensor")
# In-place variants that write into caller-owned buffers (a preallocated KV cache, a reused
# activation buffer): no allocation, and no first-touch page faults for large CPU outputs.
LIB.define("bfp_pack_out(Tensor x, int block, int mantissa_bits, int element, int scale, "
           "int rounding, int seed, Tensor(a!) mantissas, Tensor(b!) exponents) -> ()")
LIB.define("bfp_unpack_out(Tensor mantissas, Tensor exponents, int cols, int block, "
           "int mantissa_bits, int element, Tensor(a!) out) -> ()")
LIB.define("bfp_quantize_out(Tensor x, int block, int mantissa_bits, int element, int scale, "
           "int rounding, int seed, Tensor(a!) out) -> ()")


def is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def _geometry(cols: int, block: int, mantissa_bits: int) -> tuple[int, int]:
    nb = -(-cols // block)
    return nb * block * (4 if mantissa_bits <= 4 else 8) // 8, nb


def _rows(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0


def _launch(t: torch.Tensor):
    """(device code, stream, device context) for a kernel on t's device."""
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"tensors must be on the CPU or a CUDA device, got {t.device}")
    return (1 if t.device.type == "cuda" else 0), stream_of(t), device_guard(t)


def _code(t: torch.Tensor, name: str) -> int:
    code = _DTYPE_CODES.get(t.dtype)
    if code is None:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    return code


def _expect(t: torch.Tensor, name: str, shape: tuple, dtype, device) -> None:
    """Buffers handed to the raw-pointer kernels must be exactly what the format implies."""
    if (tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device
            or not t.is_contiguous()):
        raise ValueError(f"{name}: expected a contiguous {dtype} tensor of shape {tuple(shape)} on "
                         f"{device}, got {t.dtype} {tuple(t.shape)} on {t.device}"
                         f"{'' if t.is_contiguous() else ' (non-contiguous)'}")


# The kernels below are what the ops run. They take raw data pointers (a DLPack export costs ~7 us
# per tensor, data_ptr() ~0.4 us), so every buffer is checked here first: the ops can also be
# called directly through torch.ops.fastpaper.

def _pack_into(x, block, mantissa_bits, element, scale, rounding, seed, mantissas, exponents):
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    dt = _code(x, "x")
    x = x.contiguous()
    mb, nb = _geometry(x.shape[-1], block, mantissa_bits)
    _expect(mantissas, "mantissas", x.shape[:-1] + (mb,), torch.uint8, x.device)
    _expect(exponents, "exponents", x.shape[:-1] + (nb,), torch.uint8, x.device)
    if x.numel():
        dev, stream, ctx = _launch(x)
        with ctx:
            _C.pack_ptr(x.data_ptr(), dt, _rows(x), x.shape[-1], block, mantissa_bits, element,
                        scale, rounding, seed & 0xFFFFFFFFFFFFFFFF, mantissas.data_ptr(),
                        exponents.data_ptr(), dev, stream)


def _unpack_into(mantissas, exponents, cols, block, mantissa_bits, element, out):
    if out.dim() == 0 or out.shape[-1] != cols:
        raise ValueError(f"out: expected last dimension {cols}, got shape {tuple(out.shape)}")
    code = _code(out, "out")
    mb, nb = _geometry(cols, block, mantissa_bits)
    lead = tuple(out.shape[:-1])
    _expect(mantissas, "mantissas", lead + (mb,), torch.uint8, out.device)
    _expect(exponents, "exponents", lead + (nb,), torch.uint8, out.device)
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    if out.numel():
        dev, stream, ctx = _launch(out)
        with ctx:
            _C.unpack_ptr(mantissas.data_ptr(), exponents.data_ptr(), _rows(out), cols, block,
                          mantissa_bits, element, out.data_ptr(), code, dev, stream)


def _quantize_into(x, block, mantissa_bits, element, scale, rounding, seed, out):
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    dt = _code(x, "x")
    x = x.contiguous()
    code = _code(out, "out")
    _expect(out, "out", tuple(x.shape), out.dtype, x.device)
    if x.numel():
        dev, stream, ctx = _launch(x)
        with ctx:
            _C.quantize_ptr(x.data_ptr(), dt, _rows(x), x.shape[-1], block, mantissa_bits, element,
                            scale, rounding, seed & 0xFFFFFFFFFFFFFFFF, out.data_ptr(), code, dev,
                            stream)


def _pack_kernel(x, block, mantissa_bits, element, scale, rounding, seed):
    mb, nb = _geometry(x.shape[-1], block, mantissa_bits) if x.dim() else (0, 0)
    m = torch.empty(x.shape[:-1] + (mb,), dtype=torch.uint8, device=x.device)
    e = torch.empty(x.shape[:-1] + (nb,), dtype=torch.uint8, device=x.device)
    _pack_into(x, block, mantissa_bits, element, scale, rounding, seed, m, e)
    return m, e


def _unpack_kernel(mantissas, exponents, cols, block, mantissa_bits, element, dtype):
    if dtype not in _CODE_DTYPES:
        raise ValueError(f"dtype code must be one of {sorted(_CODE_DTYPES)}, got {dtype}")
    out = torch.empty(mantissas.shape[:-1] + (cols,), dtype=_CODE_DTYPES[dtype],
                      device=mantissas.device)
    _unpack_into(mantissas, exponents, cols, block, mantissa_bits, element, out)
    return out


def _quantize_kernel(x, block, mantissa_bits, element, scale, rounding, seed):
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _quantize_into(x, block, mantissa_bits, element, scale, rounding, seed, out)
    return out


for _device in ("CPU", "CUDA"):
    LIB.impl("bfp_pack", _pack_kernel, _device)
    LIB.impl("bfp_unpack", _unpack_kernel, _device)
    LIB.impl("bfp_quantize", _quantize_kernel, _device)
    LIB.impl("bfp_pack_out", _pack_into, _device)
    LIB.impl("bfp_unpack_out", _unpack_into, _device)
    LIB.impl("bfp_quantize_out", _quantize_into, _device)


@torch.library.register_fake("fastpaper::bfp_pack_out", lib=LIB)
def _pack_out_fake(x, block, mantissa_bits, element, scale, rounding, seed, mantissas, exponents):
    return None


@torch.library.register_fake("fastpaper::bfp_unpack_out", lib=LIB)
def _unpack_out_fake(mantissas, exponents, cols, block, mantissa_bits, element, out):
    return None


@torch.library.register_fake("fastpaper::bfp_quantize_out", lib=LIB)
def _quantize_out_fake(x, block, mantissa_bits, element, scale, rounding, seed, out):
    return None


@torch.library.register_fake("fastpaper::bfp_pack", lib=LIB)
def _pack_fake(x, block, mantissa_bits, element, scale, rounding, seed):
    mb, nb = _geometry(x.shape[-1], block, mantissa_bits)
    return (x.new_empty(x.shape[:-1] + (mb,), dtype=torch.uint8),
            x.new_empty(x.shape[:-1] + (nb,), dtype=torch.uint8))


@torch.library.register_fake("fastpaper::bfp_unpack", lib=LIB)
def _unpack_fake(mantissas, exponents, cols, block, mantissa_bits, element, dtype):
    return mantissas.new_empty(mantissas.shape[:-1] + (cols,), dtype=_CODE_DTYPES[dtype])


@torch.library.register_fake("fastpaper::bfp_quantize", lib=LIB)
def _quantize_fake(x, block, mantissa_bits, element, scale, rounding, seed):
    return torch.empty_like(x)


def _quantize_setup(ctx, inputs, output):
    pass


def _quantize_backward(ctx, grad):
    # straight-through estimator: d quantize(x) / dx = identity
    return grad, None, None, None, None, None, None


torch.library.register_autograd("fastpaper::bfp_quantize", _quantize_backward,
                                setup_context=_quantize_setup, lib=LIB)


def _check_x(x: torch.Tensor, name: str = "x") -> None:
    if x.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension, got a 0-d tensor")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on the CPU or a CUDA device, got {x.device}")
    if x.is_sparse or x.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {x.layout}")


def _check_out(out, name: str, shape: tuple, dtype, device: torch.device) -> None:
    """A caller-provided output buffer must match exactly: it is written, never resized."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(out.shape)}, expected {tuple(shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {dtype}")
    if out.device != device:
        raise ValueError(f"{name} is on {out.device}, expected {device}")
    if not out.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    if out.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name}: out= variants do not support autograd (got requires_grad=True)")


def pack(x: torch.Tensor, fmt: Format, scale: int, rounding: int, seed: int,
         out: "PackedBFP | None" = None) -> PackedBFP:
    _check_x(x)
    if out is None:
        m, e = torch.ops.fastpaper.bfp_pack(x, *fmt._args(), scale, rounding, _signed64(seed))
        return PackedBFP(m, e, tuple(x.shape), x.dtype, fmt)
    if not isinstance(out, PackedBFP):
        raise TypeError(f"out must be a PackedBFP, got {type(out).__name__}")
    if out.format != fmt:
        raise ValueError(f"out.format is {out.format}, but fmt is {fmt}")
    lead, cols = tuple(x.shape[:-1]), x.shape[-1]
    _check_out(out.mantissas, "out.mantissas", lead + (fmt.mantissa_bytes(cols),), torch.uint8, x.device)
    _check_out(out.exponents, "out.exponents", lead + (fmt.exponent_bytes(cols),), torch.uint8, x.device)
    torch.ops.fastpaper.bfp_pack_out(x, *fmt._args(), scale, rounding, _signed64(seed),
                                     out.mantissas, out.exponents)
    return PackedBFP(out.mantissas, out.exponents, tuple(x.shape), x.dtype, fmt)


def unpack(packed: PackedBFP, dtype, out: "torch.Tensor | None" = None) -> torch.Tensor:
    fmt = packed.format
    m, e = packed.mantissas, packed.exponents
    if not (isinstance(m, torch.Tensor) and isinstance(e, torch.Tensor)):
        raise TypeError("packed.mantissas and packed.exponents must both be torch tensors or both numpy arrays")
    shape = tuple(packed.shape)
    cols, lead = shape[-1], shape[:-1]
    for name, a, want in (("mantissas", m, fmt.mantissa_bytes(cols)),
                          ("exponents", e, fmt.exponent_bytes(cols))):
        if a.dtype != torch.uint8:
            raise TypeError(f"packed.{name} must be uint8, got {a.dtype}")
        if tuple(a.shape) != lead + (want,):
            raise ValueError(f"packed.{name} has shape {tuple(a.shape)}, expected {lead + (want,)} "
                             f"for shape {shape} in {fmt}")
    if m.device != e.device:
        raise ValueError("packed.mantissas and packed.exponents must be on the same device, got "
                         f"{m.device} and {e.device}")
    if m.device.type not in ("cpu", "cuda"):
        raise ValueError(f"packed tensors must be on the CPU or a CUDA device, got {m.device}")
    if out is not None and dtype is None:
        dtype = out.dtype if isinstance(out, torch.Tensor) else None
    out_dtype = packed.dtype if dtype is None else dtype
    if out_dtype not in _DTYPES:
        raise TypeError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {out_dtype}")
    if out is None:
        return torch.ops.fastpaper.bfp_unpack(m, e, cols, *fmt._args(), _DTYPE_CODES[out_dtype])
    _check_out(out, "out", shape, out_dtype, m.device)
    torch.ops.fastpaper.bfp_unpack_out(m, e, cols, *fmt._args(), out)
    return out


def quantize(x: torch.Tensor, fmt: Format, scale: int, rounding: int, seed: int,
             out: "torch.Tensor | None" = None) -> torch.Tensor:
    _check_x(x)
    if out is None:
        if x.requires_grad and torch.is_grad_enabled():
            return torch.ops.fastpaper.bfp_quantize(x, *fmt._args(), scale, rounding, _signed64(seed))
        # no gradient needed: skip the autograd kernel (tens of microseconds per call)
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        torch.ops.fastpaper.bfp_quantize_out(x, *fmt._args(), scale, rounding, _signed64(seed), out)
        return out
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.dtype not in _DTYPES:
        raise TypeError(f"out must be float32, float16 or bfloat16, got {out.dtype}")
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError("x: out= variants do not support autograd (x requires grad)")
    _check_out(out, "out", tuple(x.shape), out.dtype, x.device)
    torch.ops.fastpaper.bfp_quantize_out(x, *fmt._args(), scale, rounding, _signed64(seed), out)
    return out


def _signed64(seed: int) -> int:
    # the schema's `int` is int64; the kernels reinterpret it as uint64
    return seed - (1 << 64) if seed >= (1 << 63) else seed
