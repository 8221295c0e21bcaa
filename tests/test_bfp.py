"""BFP codec: bit-exact agreement with the float64 numpy reference, error bounds, special values,
stochastic rounding, torch integration (opcheck, autograd, torch.compile) and hostile input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import bfp_reference as ref
from fastpaper import bfp

SIGN_MAG = [bfp.Format(b, m) for b, m in itertools.product((16, 32, 64, 128), range(2, 9))]
ALL_FORMATS = SIGN_MAG + [bfp.MXINT8]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def fmt_id(f: bfp.Format) -> str:
    return f"B{f.block}M{f.mantissa_bits}{'twos' if f.element == 'twos_complement' else ''}"


def sample(rows: int, cols: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Values spanning many binades per row, outlier columns, exact zeros and exact ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    x *= torch.exp2(torch.randint(-12, 12, (rows, 1), generator=g).double())
    x[:, ::7] *= 30.0                                    # outlier channels
    x[:, 3::11] = 0.0
    x[:, 5::13] = torch.round(x[:, 5::13] * 2) / 2       # many halves: rounding ties
    if dtype == torch.float16:
        x = x.clamp(-6e4, 6e4)
    return x.to(dtype)


def reference(x: torch.Tensor, f: bfp.Format, scale="no_clip", rounding="nearest", seed=0):
    x2 = x.double().reshape(-1, x.shape[-1]).numpy()
    codes, eb = ref.encode(x2, f.block, f.mantissa_bits, f.element == "twos_complement", scale,
                           rounding, seed)
    return codes, eb


def check_against_reference(x, f, scale, rounding, seed=0):
    codes, eb = reference(x, f, scale, rounding, seed)
    p = bfp.pack(x, f, scale=scale, rounding=rounding, seed=seed)
    lead = x.shape[:-1]
    np.testing.assert_array_equal(p.exponents.reshape(-1, p.exponents.shape[-1]).numpy(), eb)
    np.testing.assert_array_equal(p.mantissas.reshape(-1, p.mantissas.shape[-1]).numpy(),
                                  ref.pack_bytes(codes, f.mantissa_bits))
    want = ref.decode(codes, eb, x.shape[-1], f.block, f.mantissa_bits, f.element == "twos_complement")
    want = torch.from_numpy(want).reshape(x.shape)
    for out_dtype in DTYPES:
        got = bfp.unpack(p, dtype=out_dtype)
        assert got.dtype == out_dtype and got.shape == x.shape
        torch.testing.assert_close(got, want.to(out_dtype), rtol=0, atol=0, equal_nan=True)
    q = bfp.quantize(x, f, scale=scale, rounding=rounding, seed=seed)
    torch.testing.assert_close(q, want.to(x.dtype), rtol=0, atol=0, equal_nan=True)
    assert p.mantissas.shape == lead + (f.mantissa_bytes(x.shape[-1]),)


@pytest.mark.parametrize("f", ALL_FORMATS, ids=fmt_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", ["no_clip", "floor"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_bit_exact_vs_reference(f, dtype, scale, rounding):
    x = sample(5, 3 * f.block + 5, dtype, seed=f.block + f.mantissa_bits)  # last block padded
    check_against_reference(x, f, scale, rounding, seed=1234)


@pytest.mark.parametrize("f", [bfp.BFP12, bfp.BFP16, bfp.MXINT8], ids=fmt_id)
def test_batched_shapes_and_numpy(f):
    x = sample(12, 200, torch.float32).reshape(2, 3, 2, 200)
    check_against_reference(x, f, "no_clip", "nearest")
    xn = x.numpy()
    p = bfp.pack(xn, f)
    pt = bfp.pack(x, f)
    assert isinstance(p.mantissas, np.ndarray) and p.dtype == np.float32
    np.testing.assert_array_equal(p.mantissas, pt.mantissas.numpy())
    np.testing.assert_array_equal(p.exponents, pt.exponents.numpy())
    np.testing.assert_array_equal(bfp.unpack(p), bfp.unpack(pt).numpy())
    np.testing.assert_array_equal(bfp.quantize(xn, f), bfp.quantize(x, f).numpy())
    np.testing.assert_array_equal(bfp.unpack(bfp.pack(xn.astype(np.float16), f)),
                                  bfp.unpack(bfp.pack(x.half(), f)).numpy())


@pytest.mark.parametrize("f", SIGN_MAG, ids=fmt_id)
def test_round_to_nearest_error_bound(f):
    x = sample(8, 4 * f.block, torch.float32, seed=7)
    p = bfp.pack(x, f)
    err = (bfp.unpack(p).double() - x.double()).abs().numpy()
    stepv = ref.step(p.exponents.numpy(), f.block, f.mantissa_bits, x.shape[-1])
    assert (err <= stepv / 2).all()
    # no_clip means no element saturated, so the bound is the whole story; the largest code is used
    assert err.max() > 0


def test_floor_scale_saturates_and_no_clip_does_not():
    f = bfp.Format(16, 4)  # qmax = 7, step = 2^(E-2)
    x = torch.tensor([[7.9] + [0.0] * 15])
    # floor: E = 2, step 1: 7.9 rounds to 8 > 7 -> saturates to 7
    assert bfp.quantize(x, f, scale="floor")[0, 0].item() == 7.0
    # no_clip: E = 3, step 2: 7.9 -> 8 exactly
    assert bfp.quantize(x, f)[0, 0].item() == 8.0


def test_ties_round_half_to_even():
    f = bfp.Format(16, 4)
    x = torch.tensor([[7.0, 0.5, 1.5, 2.5, -3.5, 4.5] + [0.0] * 10])  # step 1 (E = 2)
    got = bfp.quantize(x, f)[0, :6].tolist()
    assert got == [7.0, 0.0, 2.0, 2.0, -4.0, 4.0]


def test_special_values():
    f = bfp.Format(16, 4)
    x = torch.zeros(4, 32)
    x[0, 16] = -0.0
    x[1, 3] = float("nan")
    x[2, 20] = float("inf")
    x[3, :16] = 1e-45                                    # float32 subnormals
    x[3, 16] = 3.4e38                                    # near FLT_MAX
    p = bfp.pack(x, f)
    e = p.exponents
    assert e[0].tolist() == [0, 0]                       # all-zero blocks: byte 0
    assert e[1, 0].item() == 255 and e[1, 1].item() == 0
    assert e[2, 1].item() == 255
    y = bfp.unpack(p)
    assert torch.isnan(y[1, :16]).all() and (y[1, 16:] == 0).all()
    assert torch.isnan(y[2, 16:]).all() and (y[2, :16] == 0).all()
    assert torch.signbit(y[0, 16]) and y[0, 16] == 0     # -0.0 keeps its sign
    assert (y[3, :16] == 0).all()                        # tiny values flush to zero
    assert torch.isfinite(y[3, 16]) and abs(y[3, 16].item() - 3.4e38) / 3.4e38 < 0.25


def test_mxint8_decodes_spec_values():
    # OCP MX: value = X * (int8 * 2^-6), X = 2^(e - 127); -128 is a valid element code
    m = torch.tensor([[0x80, 0x7F, 0x01, 0xFF] + [0] * 28], dtype=torch.uint8)
    e = torch.tensor([[127 + 3]], dtype=torch.uint8)
    p = bfp.PackedBFP(m, e, (1, 32), torch.float32, bfp.MXINT8)
    got = bfp.unpack(p)[0, :4].tolist()
    assert got == [-128 * 2.0 ** -3, 127 * 2.0 ** -3, 2.0 ** -3, -(2.0 ** -3)]


def test_stochastic_rounding_reproducible_and_unbiased():
    f = bfp.Format(32, 4)
    x = torch.full((2000, 32), 0.3)
    x[:, 0] = 7.0                                       # block max 7 -> E = 2, step 1 (qmax 7)
    a = bfp.quantize(x, f, rounding="stochastic", seed=3)
    b = bfp.quantize(x, f, rounding="stochastic", seed=3)
    c = bfp.quantize(x, f, rounding="stochastic", seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    vals = a[:, 1:]
    assert set(vals.unique().tolist()) == {0.0, 1.0}
    # 62000 Bernoulli(0.3) draws: the standard error of the mean is 0.0018
    assert abs(vals.mean().item() - 0.3) < 0.01


def test_quantize_straight_through_gradient():
    x = sample(4, 64, torch.float32).requires_grad_()
    y = bfp.quantize(x, bfp.BFP12)
    (y * torch.arange(64.0)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(64.0).expand(4, 64))


def test_non_contiguous_input_equals_contiguous():
    x = sample(64, 96, torch.bfloat16).t()
    assert not x.is_contiguous()
    torch.testing.assert_close(bfp.quantize(x, bfp.Format(32, 4)),
                               bfp.quantize(x.contiguous(), bfp.Format(32, 4)), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(0, 64), (3, 0), (0,), (2, 0, 5)])
def test_empty(shape):
    x = torch.zeros(shape)
    p = bfp.pack(x)
    assert bfp.unpack(p).shape == x.shape
    assert bfp.quantize(x).shape == x.shape


def test_opcheck():
    x = sample(3, 70, torch.float32)
    args = (64, 4, 0, 0, 0)  # block, mantissa_bits, element, scale, rounding
    torch.library.opcheck(torch.ops.fastpaper.bfp_pack.default, (x, *args, 5))
    m, e = torch.ops.fastpaper.bfp_pack(x, *args, 5)
    torch.library.opcheck(torch.ops.fastpaper.bfp_unpack.default, (m, e, 70, 64, 4, 0, 2))
    torch.library.opcheck(torch.ops.fastpaper.bfp_quantize.default,
                          (x.requires_grad_(), 32, 8, 1, 1, 1, 9))


def test_torch_compile_fullgraph():
    def f(x):
        p = bfp.pack(x, bfp.BFP16)
        return bfp.unpack(p) + bfp.quantize(x, bfp.MXINT8)

    x = sample(4, 128, torch.float32)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), f(x), rtol=0, atol=0)


@pytest.mark.parametrize("f", [bfp.BFP12, bfp.BFP16, bfp.MXINT8], ids=fmt_id)
def test_out_buffers(f):
    # a preallocated packed cache written row-range by row-range, decoded into a reused buffer
    x = sample(10, 200, torch.bfloat16)
    cache = bfp.PackedBFP(torch.zeros(10, f.mantissa_bytes(200), dtype=torch.uint8),
                          torch.zeros(10, f.exponent_bytes(200), dtype=torch.uint8),
                          (10, 200), torch.bfloat16, f)
    for lo, hi in ((0, 3), (3, 4), (4, 10)):
        view = bfp.PackedBFP(cache.mantissas[lo:hi], cache.exponents[lo:hi], (hi - lo, 200),
                             torch.bfloat16, f)
        got = bfp.pack(x[lo:hi], f, out=view)
        assert got.mantissas.data_ptr() == cache.mantissas[lo:hi].data_ptr()
    ref_p = bfp.pack(x, f)
    assert torch.equal(cache.mantissas, ref_p.mantissas) and torch.equal(cache.exponents, ref_p.exponents)
    buf = torch.empty(10, 200, dtype=torch.float32)
    assert bfp.unpack(cache, out=buf) is buf
    torch.testing.assert_close(buf, bfp.unpack(ref_p, torch.float32), rtol=0, atol=0)
    q = torch.empty(10, 200, dtype=torch.float16)
    bfp.quantize(x, f, out=q)
    torch.testing.assert_close(q, bfp.quantize(x, f).half(), rtol=0, atol=0)
    y = x.clone()
    bfp.quantize(y, f, out=y)                              # in place
    torch.testing.assert_close(y, bfp.quantize(x, f), rtol=0, atol=0)
    # numpy
    xn = x.float().numpy()
    pn = bfp.pack(xn, f)
    outn = bfp.PackedBFP(np.zeros_like(pn.mantissas), np.zeros_like(pn.exponents), pn.shape, pn.dtype, f)
    bfp.pack(xn, f, out=outn)
    np.testing.assert_array_equal(outn.mantissas, pn.mantissas)
    dn = np.empty((10, 200), np.float16)
    bfp.unpack(pn, out=dn)
    np.testing.assert_array_equal(dn, bfp.unpack(pn, np.float16))
    qn = np.empty_like(xn)
    np.testing.assert_array_equal(bfp.quantize(xn, f, out=qn), bfp.quantize(xn, f))


def test_out_buffers_are_checked():
    x = sample(4, 64, torch.float32)
    p = bfp.pack(x)
    with pytest.raises(ValueError, match="out has shape"):
        bfp.unpack(p, out=torch.empty(4, 65))
    with pytest.raises(TypeError, match="out has dtype"):
        bfp.unpack(p, torch.float16, out=torch.empty(4, 64))
    with pytest.raises(ValueError, match="contiguous"):
        bfp.quantize(x, out=torch.empty(64, 4).t())
    with pytest.raises(TypeError, match="out"):
        bfp.quantize(x, out=np.empty((4, 64), np.float32))
    with pytest.raises(ValueError, match="autograd"):
        bfp.quantize(x.clone().requires_grad_(), out=torch.empty(4, 64))
    with pytest.raises(ValueError, match="out.format"):
        bfp.pack(x, bfp.BFP16, out=p)
    with pytest.raises(ValueError, match="out.mantissas"):
        bfp.pack(x[:2], out=p)
    with pytest.raises(ValueError, match="out has shape"):
        bfp.unpack(bfp.pack(x.numpy()), out=np.empty((4, 60), np.float32))


def test_opcheck_out_variants():
    x = sample(3, 70, torch.float32)
    m = torch.empty(3, 128, dtype=torch.uint8)  # 70 cols -> 2 blocks of 64, one byte each
    e = torch.empty(3, 2, dtype=torch.uint8)
    torch.library.opcheck(torch.ops.fastpaper.bfp_pack_out.default, (x, 64, 8, 0, 0, 0, 1, m, e))
    torch.library.opcheck(torch.ops.fastpaper.bfp_unpack_out.default,
                          (m, e, 70, 64, 8, 0, torch.empty(3, 70, dtype=torch.bfloat16)))
    torch.library.opcheck(torch.ops.fastpaper.bfp_quantize_out.default,
                          (x, 16, 3, 0, 1, 1, 2, torch.empty(3, 70)))


# --- hostile input ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [torch.zeros(4, 64, dtype=torch.float64),
                                 torch.zeros(4, 64, dtype=torch.int32),
                                 np.zeros((4, 64), np.float64),
                                 np.zeros((4, 64), np.int8),
                                 [[1.0, 2.0]], 3.0, "x"])
def test_wrong_input_type_raises_type_error(bad):
    for fn in (bfp.pack, bfp.quantize):
        with pytest.raises(TypeError, match="x"):
            fn(bad)


@pytest.mark.parametrize("x", [torch.tensor(1.0), np.array(1.0, np.float32)])
def test_zero_dim_raises(x):
    with pytest.raises(ValueError, match="at least one dimension"):
        bfp.pack(x)


@pytest.mark.parametrize("kwargs,match", [
    (dict(block=48), "block"), (dict(block=256), "block"), (dict(mantissa_bits=1), "mantissa_bits"),
    (dict(mantissa_bits=9), "mantissa_bits"), (dict(element="ones"), "element"),
    (dict(mantissa_bits=4, element="twos_complement"), "twos_complement")])
def test_bad_format(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bfp.Format(**kwargs)


def test_bad_options():
    x = torch.zeros(2, 64)
    with pytest.raises(ValueError, match="scale"):
        bfp.pack(x, scale="ceil")
    with pytest.raises(ValueError, match="rounding"):
        bfp.quantize(x, rounding="up")
    with pytest.raises(TypeError, match="fmt"):
        bfp.pack(x, (64, 4))
    with pytest.raises(TypeError, match="seed"):
        bfp.pack(x, seed=1.5)


def test_wrong_packed_metadata():
    x = sample(3, 100, torch.float32)
    p = bfp.pack(x, bfp.BFP12)
    cases = [
        (dict(shape=(3, 200)), ValueError, "mantissas"),
        (dict(shape=(4, 100)), ValueError, "mantissas"),
        (dict(format=bfp.BFP16), ValueError, "mantissas"),
        (dict(mantissas=p.mantissas.to(torch.int8)), TypeError, "uint8"),
        (dict(exponents=p.exponents[:, :1]), ValueError, "exponents"),
        (dict(exponents=p.exponents.to("meta")), ValueError, "device"),
        (dict(mantissas=p.mantissas.numpy()), TypeError, "numpy"),
        (dict(format=(64, 4)), TypeError, "packed.format"),
        (dict(shape=()), ValueError, "dimension"),
    ]
    for change, exc, match in cases:
        bad = bfp.PackedBFP(**{**p.__dict__, **change})
        with pytest.raises(exc, match=match):
            bfp.unpack(bad)
    with pytest.raises(TypeError, match="dtype"):
        bfp.unpack(p, dtype=torch.int32)
    with pytest.raises(TypeError, match="PackedBFP"):
        bfp.unpack((p.mantissas, p.exponents))


def test_native_module_rejects_bad_sizes_without_crashing():
    # The nanobind layer re-checks what the Python layer promised; a caller bypassing the Python
    # layer gets an exception, not a crash.
    from fastpaper import _bfp

    x = torch.zeros(4, 64)
    m = torch.zeros(4, 16, dtype=torch.uint8)
    e = torch.zeros(4, 1, dtype=torch.uint8)
    with pytest.raises(ValueError, match="mantissas"):
        _bfp.pack(x, 4, 64, 64, 4, 0, 0, 0, 0, m, e, 0)
    with pytest.raises(ValueError, match="x"):
        _bfp.pack(x, 5, 64, 64, 4, 0, 0, 0, 0, m, e, 0)
    with pytest.raises(ValueError, match="block"):
        _bfp.pack(x, 4, 64, 48, 4, 0, 0, 0, 0, m, e, 0)
    with pytest.raises(ValueError):
        _bfp.pack(x, 4, 64, 64, 4, 0, 7, 0, 0, torch.zeros(4, 32, dtype=torch.uint8), e, 0)
    with pytest.raises(TypeError):
        _bfp.pack(x.t(), 4, 64, 64, 4, 0, 0, 0, 0, m, e, 0)   # non-contiguous refused


# --- CUDA -------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("f", ALL_FORMATS, ids=fmt_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale,rounding", [("no_clip", "nearest"), ("floor", "nearest"),
                                            ("no_clip", "stochastic")])
def test_cuda_bit_exact_with_cpu(f, dtype, scale, rounding):
    for cols in (3 * f.block + 5, 4 * f.block, 8, 1001):
        x = sample(7, cols, dtype, seed=cols)
        pc = bfp.pack(x, f, scale=scale, rounding=rounding, seed=11)
        pg = bfp.pack(x.cuda(), f, scale=scale, rounding=rounding, seed=11)
        assert torch.equal(pg.mantissas.cpu(), pc.mantissas)
        assert torch.equal(pg.exponents.cpu(), pc.exponents)
        for out_dtype in DTYPES:
            torch.testing.assert_close(bfp.unpack(pg, out_dtype).cpu(), bfp.unpack(pc, out_dtype),
                                       rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(bfp.quantize(x.cuda(), f, scale=scale, rounding=rounding, seed=11).cpu(),
                                   bfp.quantize(x, f, scale=scale, rounding=rounding, seed=11),
                                   rtol=0, atol=0, equal_nan=True)


@pytest.mark.cuda
def test_cuda_special_values_and_unaligned_views():
    x = sample(6, 256, torch.bfloat16)
    x[1, 5] = float("nan")
    x[2, 70] = float("-inf")
    x[3, :64] = 0
    for view in (x, x[:, 1:], x[1:, 3:200]):   # odd offsets exercise the scalar/unaligned paths
        v = view.contiguous()
        pc = bfp.pack(v, bfp.BFP12)
        pg = bfp.pack(v.cuda(), bfp.BFP12)
        assert torch.equal(pg.mantissas.cpu(), pc.mantissas)
        assert torch.equal(pg.exponents.cpu(), pc.exponents)
        # unpack from an unaligned packed view
        m = torch.zeros(pg.mantissas.numel() + 1, dtype=torch.uint8, device="cuda")[1:]
        m.copy_(pg.mantissas.flatten())
        odd = bfp.PackedBFP(m.view(pg.mantissas.shape), pg.exponents, pg.shape, pg.dtype, pg.format)
        torch.testing.assert_close(bfp.unpack(odd).cpu(), bfp.unpack(pc), rtol=0, atol=0, equal_nan=True)


@pytest.mark.cuda
def test_cuda_current_stream_and_opcheck():
    x = sample(64, 512, torch.float16).cuda()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y = bfp.quantize(x, bfp.BFP12)
    s.synchronize()
    torch.testing.assert_close(y.cpu(), bfp.quantize(x.cpu(), bfp.BFP12), rtol=0, atol=0)
    torch.library.opcheck(torch.ops.fastpaper.bfp_pack.default, (x, 64, 4, 0, 0, 0, 0))
    torch.library.opcheck(torch.ops.fastpaper.bfp_quantize.default, (x.float(), 32, 8, 1, 1, 0, 0))


@pytest.mark.cuda
def test_cuda_mixed_devices_rejected():
    p = bfp.pack(torch.zeros(2, 64, device="cuda"))
    bad = bfp.PackedBFP(p.mantissas, p.exponents.cpu(), p.shape, p.dtype, p.format)
    with pytest.raises(ValueError, match="device"):
        bfp.unpack(bad)
