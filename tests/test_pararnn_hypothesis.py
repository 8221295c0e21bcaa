"""Property tests of the ParaRNN scan: arbitrary shapes (including empty ones), block sizes 1..8,
both directions, plain and adjoint, with and without h0, float64/float32/float16/bfloat16, and non-finite values, against the
sequential float64 recurrence; malformed shapes raise ValueError/TypeError, never crash."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpaper import pararnn
from test_pararnn import reference_adjoint, reference_scan


@st.composite
def problems(draw):
    k = draw(st.integers(1, 8))
    b = draw(st.integers(0, 3))
    t = draw(st.integers(0, 300))
    n = k * draw(st.integers(0, 20 if k == 1 else 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    jshape = (b, t, n) if k == 1 else (b, t, n // k, k, k)
    J = (torch.rand(jshape, generator=g, dtype=torch.float64) * 2 - 1) / k
    r = torch.randn(b, t, n, generator=g, dtype=torch.float64)
    h0 = torch.randn(b, n, generator=g, dtype=torch.float64) if draw(st.booleans()) else None
    if draw(st.booleans()) and r.numel():  # a non-finite value must propagate, not crash
        r.view(-1)[draw(st.integers(0, r.numel() - 1))] = draw(
            st.sampled_from([math.inf, -math.inf, math.nan]))
    cast = lambda v: None if v is None else v.to(dtype)  # noqa: E731
    adjoint = draw(st.booleans())
    if adjoint:
        h0 = None
    return k, cast(J), cast(r), cast(h0), draw(st.booleans()), adjoint


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems())
def test_scan_matches_reference(p):
    k, J, r, h0, reverse, adjoint = p
    structure = "diag" if k == 1 else "block"
    h = pararnn.linear_scan(J, r, h0, structure, reverse, adjoint)
    assert h.shape == r.shape and h.dtype == r.dtype
    if r.dtype in (torch.float16, torch.bfloat16):
        # 16-bit storage, float32 arithmetic: identical to the float32 scan rounded once
        up = [None if a is None else a.float() for a in (J, r, h0)]
        expect = pararnn.linear_scan(*up, structure, reverse, adjoint).to(r.dtype)
        torch.testing.assert_close(h, expect, rtol=0, atol=0, equal_nan=True)
        return
    ref = reference_adjoint(J, r, k, reverse) if adjoint else reference_scan(J, r, h0, k, reverse)
    tol = 1e-12 if r.dtype == torch.float64 else 1e-4
    torch.testing.assert_close(h.double(), ref, rtol=tol, atol=tol, equal_nan=True)


@settings(max_examples=100, deadline=None)
@given(jshape=st.lists(st.integers(0, 5), min_size=0, max_size=6),
       rshape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
       structure=st.sampled_from(["diag", "block"]))
def test_malformed_shapes_raise(jshape, rshape, structure):
    J, r = torch.zeros(jshape), torch.zeros(rshape)
    try:
        h = pararnn.linear_scan(J, r, structure=structure)
    except (ValueError, TypeError):
        return
    assert h.shape == r.shape  # accepted only when the shapes are consistent
