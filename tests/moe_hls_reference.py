"""A plain-torch MoE layer with exactly the public interface of fastpaper.moe.MoE (used by the HLS
tests so that they do not depend on the moe op): parameters w1 [E,D,H], b1 [E,H], w2 [E,H,D],
b2 [E,D]; router "multi-gate" (gate_weight [T,D,E], gate_bias [T,E]) or "task-embedding"
(task_embed [T,De], gate_weight [D+De,E], gate_bias [E]); softmax over E, top-k (ties: lower
index first), not renormalized; y[t] = sum_j score[t,j] * expert_{idx[t,j]}(x[t]), exact GELU."""

from __future__ import annotations

import torch
from torch import nn


class ReferenceMoE(nn.Module):
    def __init__(self, dim, hidden, num_experts, k, num_tasks, router="multi-gate", task_dim=8,
                 seed=0, scale=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        r = lambda *s, fan: nn.Parameter(torch.randn(*s, generator=g) * scale / fan ** 0.5)  # noqa
        self.k, self.router = k, router
        self.w1, self.b1 = r(num_experts, dim, hidden, fan=dim), r(num_experts, hidden, fan=4)
        self.w2, self.b2 = r(num_experts, hidden, dim, fan=hidden), r(num_experts, dim, fan=4)
        if router == "multi-gate":
            self.gate_weight = r(num_tasks, dim, num_experts, fan=dim / 4)
            self.gate_bias = r(num_tasks, num_experts, fan=1)
            self.task_embed = None
        elif router == "task-embedding":
            self.task_embed = r(num_tasks, task_dim, fan=1)
            self.gate_weight = r(dim + task_dim, num_experts, fan=dim / 4)
            self.gate_bias = r(num_experts, fan=1)
        else:
            raise ValueError(router)

    def logits(self, x, task):
        if self.task_embed is None:
            return x @ self.gate_weight[task] + self.gate_bias[task]
        emb = self.task_embed[task].expand(x.shape[0], -1)
        return torch.cat([x, emb], dim=-1) @ self.gate_weight + self.gate_bias

    def route(self, x, task):
        p = torch.softmax(self.logits(x, task), dim=-1)
        idx = torch.sort(p, dim=-1, descending=True, stable=True).indices[:, : self.k]
        return torch.gather(p, 1, idx), idx

    def forward(self, x, task):
        b, n, d = x.shape
        flat = x.reshape(-1, d)
        scores, idx = self.route(flat, task)
        y = torch.zeros_like(flat)
        for t in range(flat.shape[0]):  # per-token loop: the plainest statement of the math
            for j in range(self.k):
                e = int(idx[t, j])
                h = torch.nn.functional.gelu(flat[t] @ self.w1[e] + self.b1[e])
                y[t] += scores[t, j] * (h @ self.w2[e] + self.b2[e])
        return y.reshape(b, n, d)


_TESTBENCHES = {}


def compiled_testbench(build, params_header, tmp_path_factory):
    """The C-simulation testbench for one build and size, compiled once per test session (shared
    by test_moe_hls and test_moe_fpga)."""
    from fastpaper import moe_hls

    key = (build, params_header)
    if key not in _TESTBENCHES:
        d = tmp_path_factory.mktemp(f"hls_build_{build}")
        (d / "m3vit_moe_params.h").write_text(params_header)
        _TESTBENCHES[key] = moe_hls.compile_testbench(d / f"tb_{build}", build=build,
                                                      include_dirs=[d], opt="-O1")
    return _TESTBENCHES[key]
