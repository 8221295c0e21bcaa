"""rnn: property test over random shapes, cells, initial states and lengths: the fused op equals
the float64 reference loop (values and gradients), and a sequence's result ignores the inputs
after its end."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpaper import rnn
from rnn_reference import flashrnn_reference, random_inputs


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cell=st.sampled_from(["lstm", "gru", "elman", "slstm"]), B=st.integers(1, 4),
       T=st.integers(0, 6), NH=st.integers(1, 3), DH=st.integers(1, 9), states=st.booleans(),
       seed=st.integers(0, 2 ** 16), data=st.data())
def test_matches_reference(cell, B, T, NH, DH, states, seed, data):
    Wx, R, b, s0 = random_inputs(cell, B, T, NH, DH, states=states, seed=seed)
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    ins = [t.clone().requires_grad_() for t in (Wx, R, b, s0) if t is not None]
    ins_ref = [t.clone().requires_grad_() for t in (Wx, R, b, s0) if t is not None]
    h, last = rnn.flashrnn(*ins, cell=cell, lengths=lengths)
    h_ref, last_ref = flashrnn_reference(*ins_ref, cell=cell, lengths=lengths)
    torch.testing.assert_close(h, h_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(last, last_ref, atol=1e-12, rtol=1e-12)
    if T == 0:  # nothing ran: the reference's outputs are not connected to its inputs
        return
    g = torch.Generator().manual_seed(seed)
    wh, wl = torch.randn(h.shape, generator=g, dtype=h.dtype), torch.randn(last.shape, generator=g, dtype=h.dtype)
    got = torch.autograd.grad((h * wh).sum() + (last * wl).sum(), ins, allow_unused=True)
    want = torch.autograd.grad((h_ref * wh).sum() + (last_ref * wl).sum(), ins_ref, allow_unused=True)
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, atol=1e-10, rtol=1e-10)
