"""The plain-PyTorch BFP baseline (fastpaper.baselines.bfp) must match fastpaper.bfp bit for bit,
so that bench/bench_bfp.py and `fastpaper demo` compare two implementations of the same codec."""

from __future__ import annotations

import itertools
import zlib

import pytest

torch = pytest.importorskip("torch")

import fastpaper.bfp as fbfp  # noqa: E402
from fastpaper.baselines import bfp as base  # noqa: E402

FORMATS = [
    fbfp.BFP12,
    fbfp.BFP16,
    fbfp.MXINT8,
    fbfp.Format(16, 2),
    fbfp.Format(32, 3),
    fbfp.Format(128, 5),
    fbfp.Format(64, 7),
    fbfp.Format(16, 8),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SCALES = ["no_clip", "floor"]
_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(_INT_VIEW[t.dtype])


def _hostile(shape, dtype, seed):
    """Wide dynamic range per row, outlier channels, +-0 blocks, subnormals, exact rounding ties,
    values near the float32 limits, and a row length that is not a multiple of any block size."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-14, 8) if dtype == torch.float16 else (-30, 30)  # float16 must stay finite
    rows_scale = torch.exp2(torch.randint(lo, hi, shape[:-1] + (1,), generator=g).float())
    x = torch.randn(shape, generator=g) * rows_scale
    if shape[-1] > 17:
        x[..., 3] *= 20.0
        x[..., 17] *= -50.0
    flat = x.view(-1)
    n = flat.numel()
    if n >= 1024:
        flat[: n // 16] = 0.0
        flat[n // 16 : n // 8] = -0.0
        flat[n // 8 : n // 8 + 64] = 1e-40
        flat[n // 4 : n // 4 + 48] = torch.arange(48) * 0.25 - 6.0
        flat[n // 2 : n // 2 + 70] *= 1e-38
        if dtype == torch.float32:
            flat[-5:] = 3.0e38
            flat[-9:-5] = -3.4e38
    x = x.to(dtype)
    assert torch.isfinite(x).all()
    return x


@pytest.mark.parametrize("fmt,dtype,scale", list(itertools.product(FORMATS, DTYPES, SCALES)),
                         ids=lambda v: str(v).replace("torch.", ""))
def test_pack_unpack_quantize_bit_identical(fmt, dtype, scale):
    for shape in [(64, 200), (5, 3, 128), (300,), (2, 1)]:
        x = _hostile(shape, dtype, seed=zlib.crc32(repr((fmt, dtype, scale, shape)).encode()))
        ref = fbfp.pack(x, fmt, scale=scale)
        got = base.pack(x, fmt, scale=scale)
        assert got.shape == ref.shape and got.dtype == ref.dtype and got.format == fmt
        assert torch.equal(got.exponents, ref.exponents), (fmt, dtype, scale, shape)
        assert torch.equal(got.mantissas, ref.mantissas), (fmt, dtype, scale, shape)
        for out_dtype in DTYPES:
            assert torch.equal(_bits(base.unpack(ref, out_dtype)), _bits(fbfp.unpack(ref, out_dtype)))
        assert torch.equal(_bits(base.quantize(x, fmt, scale=scale)),
                           _bits(fbfp.quantize(x, fmt, scale=scale)))


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_unpack_arbitrary_bytes(fmt):
    # Every byte value, including exponent 255 (NaN blocks), 0 (subnormal scales), the int8 -128 of
    # MXINT8 and sign-magnitude fields with unused middle bits set.
    g = torch.Generator().manual_seed(fmt.block * 10 + fmt.mantissa_bits)
    cols = 3 * fmt.block - 5
    m = torch.randint(0, 256, (40, fmt.mantissa_bytes(cols)), generator=g, dtype=torch.uint8)
    e = torch.randint(0, 256, (40, fmt.exponent_bytes(cols)), generator=g, dtype=torch.uint8)
    e[0] = 255
    e[1] = 0
    e[2] = 254
    packed = fbfp.PackedBFP(m, e, (40, cols), torch.float32, fmt)
    for dtype in DTYPES:
        ref = fbfp.unpack(packed, dtype)
        got = base.unpack(packed, dtype)
        assert torch.equal(torch.isnan(got), torch.isnan(ref))
        finite = ~torch.isnan(ref)
        assert torch.equal(_bits(got[finite]), _bits(ref[finite]))


@pytest.mark.parametrize("fmt", [fbfp.BFP12, fbfp.BFP16, fbfp.MXINT8], ids=str)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_blocks(fmt, bad):
    x = torch.randn(4, 2 * fmt.block)
    x[1, 5] = bad
    ref, got = fbfp.pack(x, fmt), base.pack(x, fmt)
    assert torch.equal(got.exponents, ref.exponents)
    assert torch.equal(got.mantissas, ref.mantissas)
    assert got.exponents[1, 0] == 255
    q_ref, q_got = fbfp.quantize(x, fmt), base.quantize(x, fmt)
    assert torch.equal(torch.isnan(q_got), torch.isnan(q_ref))
    assert torch.isnan(q_got[1, : fmt.block]).all()
    assert torch.equal(q_got[~torch.isnan(q_ref)], q_ref[~torch.isnan(q_ref)])


def test_noncontiguous_and_empty():
    x = torch.randn(128, 96).t()  # [96, 128], not contiguous
    assert torch.equal(base.pack(x).mantissas, fbfp.pack(x).mantissas)
    assert torch.equal(base.quantize(x), fbfp.quantize(x))
    for shape in [(0, 64), (3, 0)]:
        x = torch.empty(shape)
        got, ref = base.pack(x), fbfp.pack(x)
        assert got.mantissas.shape == ref.mantissas.shape
        assert got.exponents.shape == ref.exponents.shape
        assert base.unpack(got).shape == shape
        assert base.quantize(x).shape == shape


def test_interchangeable_containers():
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    assert torch.equal(fbfp.unpack(base.pack(x)), base.unpack(fbfp.pack(x)))


def test_bad_input():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        base.pack([1.0, 2.0])
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        base.pack(torch.zeros(64, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least one dimension"):
        base.pack(torch.tensor(1.0))
    with pytest.raises(ValueError, match="scale"):
        base.pack(torch.zeros(64), scale="ceil")
    with pytest.raises(ValueError, match="rounding='nearest' only"):
        base.quantize(torch.zeros(64), rounding="stochastic")
    with pytest.raises(TypeError, match="fmt"):
        base.pack(torch.zeros(64), "BFP12")
