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
        for e in range(self.w1.shape[0]):  # plain expert loop over the tokens routed to e
            tok, j = torch.nonzero(idx == e, as_tuple=True)
            h = torch.nn.functional.gelu(flat[tok] @ self.w1[e] + self.b1[e])
            y.index_add_(0, tok, scores[tok, j, None] * (h @ self.w2[e] + self.b2[e]))
        return y.reshape(b, n, d)


# Sizes of the C-simulation tests: one compiled testbench per build serves test_moe_hls and
# test_moe_fpga (compiling is the slow part: ~15 s per build).
CSIM = {"D": 32, "H": 48, "E": 6, "K": 2, "TASKS": 3, "MAX_N": 48}
_TESTBENCHES = {}


def compiled_testbenches(tmp_path_factory):
    """{"fixed": path, "float": path}: the testbench at the CSIM sizes, compiled once per session
    (both builds at once: the compiler is single-threaded)."""
    from concurrent.futures import ThreadPoolExecutor

    from fastpaper import moe_hls

    if not _TESTBENCHES:
        d = tmp_path_factory.mktemp("hls_build")
        c = CSIM
        (d / "m3vit_moe_params.h").write_text(
            moe_hls.params_header(c["D"], c["H"], c["E"], c["K"], c["MAX_N"], c["TASKS"]))
        with ThreadPoolExecutor(2) as pool:
            jobs = {b: pool.submit(moe_hls.compile_testbench, d / f"tb_{b}", build=b,
                                   include_dirs=[d], opt="-Og") for b in ("fixed", "float")}
            _TESTBENCHES.update({b: j.result() for b, j in jobs.items()})
    return dict(_TESTBENCHES)
