"""Property tests of the BFP codec: arbitrary shapes, dtypes and values (signed zeros,
subnormals, huge, tiny, NaN/Inf mixes) round-trip exactly as the float64 reference says."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bfp_reference as ref
from fastpaper import bfp

FORMATS = st.sampled_from([bfp.Format(b, m) for b in (16, 32, 64, 128) for m in range(2, 9)]
                          + [bfp.MXINT8])
DTYPES = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])
SPECIAL = [0.0, -0.0, 1e-45, -1e-40, 1e-38, 3.4e38, -3.4e38, 65504.0, 6e-8, float("nan"),
           float("inf"), float("-inf")]


@st.composite
def tensors(draw):
    dtype = draw(DTYPES)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=70))
    elems = st.one_of(st.floats(width=32, allow_nan=True, allow_infinity=True),
                      st.sampled_from(SPECIAL),
                      st.floats(-4.0, 4.0, width=32))
    arr = draw(hnp.arrays(np.float32, shape, elements=elems))
    return torch.from_numpy(arr).to(dtype)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=tensors(), fmt=FORMATS, scale=st.sampled_from(["no_clip", "floor"]),
       rounding=st.sampled_from(["nearest", "stochastic"]), seed=st.integers(0, 2 ** 64 - 1))
def test_roundtrip_matches_reference(x, fmt, scale, rounding, seed):
    p = bfp.pack(x, fmt, scale=scale, rounding=rounding, seed=seed)
    y = bfp.unpack(p)
    assert y.shape == x.shape and y.dtype == x.dtype
    q = bfp.quantize(x, fmt, scale=scale, rounding=rounding, seed=seed)
    torch.testing.assert_close(q, y, rtol=0, atol=0, equal_nan=True)
    if x.numel() == 0:
        return
    x2 = x.double().reshape(-1, x.shape[-1]).numpy()
    twos = fmt.element == "twos_complement"
    codes, eb = ref.encode(x2, fmt.block, fmt.mantissa_bits, twos, scale, rounding, seed)
    np.testing.assert_array_equal(p.exponents.reshape(eb.shape).numpy(), eb)
    want = ref.decode(codes, eb, x.shape[-1], fmt.block, fmt.mantissa_bits, twos)
    torch.testing.assert_close(y, torch.from_numpy(want).reshape(x.shape).to(x.dtype),
                               rtol=0, atol=0, equal_nan=True)
    # documented special values: a block with NaN/Inf decodes to NaN, others stay finite
    bad_rows = ~np.isfinite(x2)
    nb = eb.shape[1]
    bad_block = np.zeros_like(eb, dtype=bool)
    for b in range(nb):
        bad_block[:, b] = bad_rows[:, b * fmt.block:(b + 1) * fmt.block].any(axis=1)
    assert ((eb == 255) == bad_block).all()


@settings(max_examples=100, deadline=None)
@given(x=tensors(), fmt=FORMATS)
def test_error_bound_round_to_nearest(x, fmt):
    if x.numel() == 0:
        return
    p = bfp.pack(x, fmt)
    x2 = x.double().reshape(-1, x.shape[-1]).numpy()
    y = bfp.unpack(p, torch.float32).double().reshape(x2.shape).numpy()
    eb = p.exponents.reshape(-1, p.exponents.shape[-1]).numpy()
    stepv = ref.step(eb, fmt.block, fmt.mantissa_bits, x.shape[-1])
    ok = np.isfinite(x2) & np.repeat(eb != 255, fmt.block, axis=1)[:, : x.shape[-1]]
    # blocks whose exponent hit the top clamp (127) may saturate; everything else is within step/2
    unclamped = np.repeat(eb < 254, fmt.block, axis=1)[:, : x.shape[-1]]
    sel = ok & unclamped
    assert (np.abs(y - x2)[sel] <= stepv[sel] / 2).all()


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_hostile_packed_bytes_never_crash(data):
    # Arbitrary mantissa/exponent bytes of the right shape decode without crashing; values are
    # what the format says (NaN for byte 255).
    fmt = data.draw(FORMATS)
    rows = data.draw(st.integers(1, 4))
    cols = data.draw(st.integers(1, 200))
    m = data.draw(hnp.arrays(np.uint8, (rows, fmt.mantissa_bytes(cols))))
    e = data.draw(hnp.arrays(np.uint8, (rows, fmt.exponent_bytes(cols))))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        y = bfp.unpack(bfp.PackedBFP(torch.from_numpy(m), torch.from_numpy(e), (rows, cols),
                                     torch.float32, fmt), dtype)
        nan_blocks = np.repeat(e == 255, fmt.block, axis=1)[:, :cols]
        assert torch.isnan(y).numpy()[nan_blocks].all()
