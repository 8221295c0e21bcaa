"""Plain-PyTorch reference loop of fastpaper.rnn.flashrnn (autograd gives its gradients).

Written straight from the equations of fastpaper.rnn's docstring, one time step at a time; the
two max() of the sLSTM take their first branch at ties, as the kernels do.
"""

from __future__ import annotations

import torch

DIMS = {"lstm": (4, 4, 2), "gru": (3, 4, 1), "elman": (1, 1, 1), "slstm": (4, 4, 4)}


def step(cell, wx, R, b, st):
    """One step: wx [B, G, NH, DH], R [G, NH, DH, DH], b [GB, NH, DH], st list of [B, NH, DH]."""
    h = st[0]
    rec = torch.einsum("gnjk,bnk->bgnj", R, h)
    sig = torch.sigmoid
    if cell == "lstm":
        i, f, g, o = (wx + rec + b).unbind(1)
        c = sig(f) * st[1] + sig(i) * torch.tanh(g)
        return [sig(o) * torch.tanh(c), c]
    if cell == "gru":
        r = sig(wx[:, 0] + rec[:, 0] + b[0])
        z = sig(wx[:, 1] + rec[:, 1] + b[1])
        n = torch.tanh(wx[:, 2] + b[2] + r * (rec[:, 2] + b[3]))
        return [(1 - z) * n + z * h]
    if cell == "elman":
        return [torch.tanh(wx[:, 0] + rec[:, 0] + b[0])]
    if cell == "slstm":
        it, ft, zt, ot = (wx + rec + b).unbind(1)
        c, n, m = st[1], st[2], st[3]
        a = torch.nn.functional.logsigmoid(ft) + m
        take_i = (n == 0) | (it >= a)
        m_new = torch.where(take_i, it, a)
        i = torch.exp(it - m_new)
        f = torch.exp(a - m_new)
        c_new = f * c + i * torch.tanh(zt)
        nn = f * n + i
        n_new = torch.where(nn >= 1, nn, torch.ones_like(nn))
        return [sig(ot) * c_new / n_new, c_new, n_new, m_new]
    raise ValueError(cell)


def flashrnn_reference(Wx, R, b, states=None, cell="lstm", lengths=None):
    """(h_all [B, T, NH, DH], last [S, B, NH, DH]) by a Python loop over time."""
    B, T, G, NH, DH = Wx.shape
    S = DIMS[cell][2]
    if states is None:
        states = Wx.new_zeros(S, B, NH, DH)
    st = list(states.unbind(0))
    outs = []
    for t in range(T):
        new = step(cell, Wx[:, t], R, b, st)
        if lengths is not None:
            active = (t < lengths.to(Wx.device)).view(B, 1, 1)
            new = [torch.where(active, x, old) for x, old in zip(new, st)]
            outs.append(torch.where(active, new[0], torch.zeros_like(new[0])))
        else:
            outs.append(new[0])
        st = new
    h_all = torch.stack(outs, 1) if outs else Wx.new_zeros(B, 0, NH, DH)
    return h_all, torch.stack(st)


def random_inputs(cell, B, T, NH, DH, dtype=torch.float64, device="cpu", states=True, seed=0,
                  scale=1.0):
    """Wx, R, b, states with magnitudes typical of a trained cell (R ~ 1/sqrt(DH)).

    sLSTM initial states have n >= 1 (a state after at least one step); n = 0 marks "no history".
    """
    G, GB, S = DIMS[cell]
    g = torch.Generator().manual_seed(seed)
    Wx = torch.randn(B, T, G, NH, DH, generator=g, dtype=torch.float64) * scale
    R = torch.randn(G, NH, DH, DH, generator=g, dtype=torch.float64) / DH ** 0.5
    b = torch.randn(GB, NH, DH, generator=g, dtype=torch.float64) * 0.5
    st = None
    if states:
        st = torch.randn(S, B, NH, DH, generator=g, dtype=torch.float64) * 0.5
        if cell == "slstm":
            st[2] = 1 + torch.rand(B, NH, DH, generator=g, dtype=torch.float64)
    conv = lambda t: None if t is None else t.to(device=device, dtype=dtype)
    return conv(Wx), conv(R), conv(b), conv(st)


def at_thread_counts(run, counts=(1, 2)):
    """``[run() at torch.set_num_threads(c) for c in counts]``, restoring the thread count."""
    threads = torch.get_num_threads()
    try:
        out = []
        for c in counts:
            torch.set_num_threads(c)
            out.append(run())
        return out
    finally:
        torch.set_num_threads(threads)
