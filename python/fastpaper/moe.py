"""M³ViT mixture-of-experts: task-conditioned routers and the expert-by-expert MoE MLP.

An MoE layer holds E experts, expert e being a two-layer MLP with an exact (erf) GELU::

    expert_e(x) = GELU(x @ W1[e] + b1[e]) @ W2[e] + b2[e]        W1 [E, D, H], W2 [E, H, D]

A task-conditioned router gives every token t, for the current task, a softmax over the E experts
and keeps the k largest probabilities (ties: lowest expert index first). As in M³ViT and V-MoE the
kept probabilities are *not* renormalized::

    p[t]             = softmax(logits[t])                       (float32)
    indices[t, :]    = top-k of p[t]            scores[t, j] = p[t, indices[t, j]]
    y[t]             = sum_j scores[t, j] * expert_{indices[t, j]}(x[t])

Routers (``router=``):

* ``"multi-gate"``: one gate per task, ``logits = x @ gate_weight[task] + gate_bias[task]``.
* ``"task-embedding"``: one shared gate and a learned per-task embedding concatenated to each
  token's gate input, ``logits = concat(x, task_embed[task]) @ gate_weight + gate_bias``.

:func:`moe_mlp` computes the sum above *expert by expert* (the computation reordering of M³ViT's
accelerator): the (token, slot) pairs are counting-sorted by expert, each expert's weights are
applied once to all of its tokens (a grouped GEMM), and the score-weighted rows are summed per
token in slot order (deterministic, no atomics).

Training extras: noisy gating (Gaussian noise of std ``noise_std / E`` on the logits, V-MoE /
M³ViT "noisy_vmoe") and the load-balancing loss ``cv²(importance) + cv²(load)``
(:attr:`MoE.aux_loss`).
"""

from __future__ import annotations

import importlib
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MoE", "moe_mlp", "moe_mlp_loop", "moe_mlp_dense", "load_balancing_loss", "ROUTERS"]

ROUTERS = ("multi-gate", "task-embedding")
IMPLS = ("op", "loop", "dense")


def __getattr__(name: str):
    # The FPGA side of the area lives in its own modules (owned by the HLS design).
    if name == "fpga":
        return importlib.import_module("fastpaper.moe_fpga")
    if name == "export_hls":
        from .moe_hls import export_hls

        return export_hls
    raise AttributeError(f"module 'fastpaper.moe' has no attribute {name!r}")


def _expert_mlp(x: torch.Tensor, w1, b1, w2, b2) -> torch.Tensor:
    return F.gelu(x @ w1 + b1) @ w2 + b2


def moe_mlp_loop(x: torch.Tensor, scores: torch.Tensor, indices: torch.Tensor, W1: torch.Tensor,
                 b1: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """The MoE MLP as a plain-PyTorch loop over experts (the usual PyTorch formulation and this
    area's baseline): for each expert, gather its (token, slot) pairs, run the MLP on them, and
    ``index_add_`` the score-weighted rows into the output. Same math and shapes as
    :func:`moe_mlp`; computed in the dtype of x (scores cast to it). Differentiable by autograd."""
    n, d = x.shape
    flat_e = indices.reshape(-1)
    flat_tok = torch.arange(n, device=x.device).repeat_interleave(indices.shape[1])
    flat_s = scores.reshape(-1).to(x.dtype)
    out = x.new_zeros(n, W2.shape[2])
    for e in range(W1.shape[0]):
        sel = (flat_e == e).nonzero(as_tuple=True)[0]
        if sel.numel() == 0:
            continue
        tok = flat_tok[sel]
        y = _expert_mlp(x[tok], W1[e], b1[e], W2[e], b2[e])
        out = out.index_add(0, tok, y * flat_s[sel, None])
    return out


def moe_mlp_dense(x: torch.Tensor, scores: torch.Tensor, indices: torch.Tensor, W1: torch.Tensor,
                  b1: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """The MoE MLP computed densely: every expert on every token, then the outputs weighted by a
    [N, E] gate matrix that is zero except ``gate[t, indices[t, j]] = scores[t, j]``. E/k times the
    FLOPs of the sparse computation; the "all experts active" baseline."""
    n = x.shape[0]
    gate = x.new_zeros(n, W1.shape[0]).scatter_add(1, indices, scores.to(x.dtype))
    h = F.gelu(torch.einsum("nd,edh->enh", x, W1) + b1[:, None, :])
    y = torch.einsum("enh,ehd->end", h, W2) + b2[:, None, :]
    return torch.einsum("end,ne->nd", y, gate)


_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _shape(t) -> tuple:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_moe_args(x, scores, indices, W1, b1, W2, b2) -> None:
    named = {"x": x, "scores": scores, "indices": indices, "W1": W1, "b1": b1, "W2": W2,
             "b2": b2}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise ValueError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {t.device}")
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name} must be on the CPU or a CUDA device, got {t.device}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    for name in ("W1", "b1", "W2", "b2"):
        if named[name].dtype != x.dtype:
            raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {named[name].dtype}")
    if not scores.dtype.is_floating_point:
        raise TypeError(f"scores must be a floating tensor, got {scores.dtype}")
    if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
    if x.dim() != 2:
        raise ValueError(f"x must have shape [N, D], got {_shape(x)}")
    n, d = x.shape
    if W1.dim() != 3 or W1.shape[1] != d:
        raise ValueError(f"W1 must have shape [E, D={d}, H], got {_shape(W1)}")
    e, _, h = W1.shape
    if e < 1 or h < 1 or d < 1:
        raise ValueError(f"W1 must have E, D, H >= 1, got {_shape(W1)}")
    for name, want in (("b1", (e, h)), ("W2", (e, h, d)), ("b2", (e, d))):
        if tuple(named[name].shape) != want:
            raise ValueError(f"{name} must have shape {list(want)}, got {_shape(named[name])}")
    if scores.dim() != 2 or scores.shape[0] != n:
        raise ValueError(f"scores must have shape [N={n}, k], got {_shape(scores)}")
    k = scores.shape[1]
    if not 1 <= k <= e:
        raise ValueError(f"scores: k = {k} must be in [1, E={e}]")
    if tuple(indices.shape) != (n, k):
        raise ValueError(f"indices must have the shape of scores [{n}, {k}], got "
                         f"{_shape(indices)}")


def moe_mlp(x: torch.Tensor, scores: torch.Tensor, indices: torch.Tensor, W1: torch.Tensor,
            b1: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor,
            check_indices: bool = True) -> torch.Tensor:
    """Expert-by-expert MoE MLP, one op (``torch.ops.fastpaper.moe_mlp``)::

        y[t] = sum_j scores[t, j] * (GELU(x[t] @ W1[e] + b1[e]) @ W2[e] + b2[e]),  e = indices[t, j]

    The (token, slot) pairs are counting-sorted by expert, every expert's weights are applied
    once to all of its tokens (grouped GEMM: OpenBLAS tiles on the CPU, one fused tensor-core
    kernel on CUDA) and each token's k score-weighted rows are summed in slot order
    (deterministic). Experts that get no token cost nothing.

    Parameters
    ----------
    x : Tensor [N, D], float32, float64, float16 or bfloat16 (CPU or CUDA)
    scores : Tensor [N, k], floating; cast to float32 (float64 when x is float64)
    indices : Tensor [N, k], integer, entries in [0, E)
    W1 : [E, D, H], b1 : [E, H], W2 : [E, H, D], b2 : [E, D]; the dtype and device of x
    check_indices : bool
        Check that indices lie in [0, E) (on CUDA this costs a host synchronization; the CPU
        kernel always checks). Out-of-range indices raise ValueError.

    Returns
    -------
    Tensor [N, D] in the dtype of x. 16-bit inputs are computed in float32 (the hidden
    activations are not rounded to 16 bits). Differentiable in x, scores, W1, b1, W2, b2 (the
    backward op recomputes the hidden activations); 0 <= N, 1 <= k <= E.
    """
    _check_moe_args(x, scores, indices, W1, b1, W2, b2)
    from . import _moe_torch  # noqa: F401  (registers the ops)

    e = W1.shape[0]
    if check_indices and x.device.type == "cuda" and indices.numel():
        if bool(((indices < 0) | (indices >= e)).any()):
            raise ValueError(f"indices must lie in [0, E={e})")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.ops.fastpaper.moe_mlp(x, scores.to(acc), indices.to(torch.int64), W1, b1, W2, b2)


def load_balancing_loss(probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``cv²(importance) + cv²(load)`` over the experts (M³ViT's auxiliary loss).

    probs [N, E] are the (noisy) softmax probabilities, indices [N, k] the chosen experts.
    importance_e = Σ_t probs[t, e]; load_e = Σ_t probs[t, e]·[e chosen for t] (the routed
    probability mass, a differentiable stand-in for the token count). cv² = var / mean²
    (population variance); 0 when the experts are used evenly. Returns a float32 scalar."""
    e = probs.shape[-1]
    if probs.shape[0] == 0 or e < 2:
        return probs.new_zeros(())
    chosen = torch.zeros_like(probs).scatter(1, indices, 1.0)
    importance = probs.sum(0)
    load = (probs * chosen).sum(0)

    def cv2(v):
        return v.var(unbiased=False) / (v.mean() ** 2 + 1e-10)

    return cv2(importance) + cv2(load)


class MoE(nn.Module):
    """A task-conditioned MoE MLP layer (M³ViT).

    Parameters
    ----------
    dim, hidden : int
        Token width D and expert hidden width H.
    num_experts, k : int
        E experts, each token routed to its top k (1 <= k <= E).
    num_tasks : int
        Number of tasks the router distinguishes.
    router : "multi-gate" | "task-embedding"
        Parameters: multi-gate ``gate_weight [T, D, E]``, ``gate_bias [T, E]``; task-embedding
        ``task_embed [T, task_embed_dim]``, ``gate_weight [D + task_embed_dim, E]``,
        ``gate_bias [E]``.
    noisy_gating : bool
        In training mode add N(0, (noise_std / E)²) noise to the logits (never in eval mode).
    noise_std : float
    impl : "op" | "loop" | "dense"
        How :meth:`forward` computes the experts: the reordered op :func:`moe_mlp`, the plain
        PyTorch expert loop, or all experts dense-masked (identical math; for tests/baselines).

    After each forward, :attr:`aux_loss` holds the load-balancing loss of that call.
    """

    def __init__(self, dim: int, hidden: int, num_experts: int = 16, k: int = 4,
                 num_tasks: int = 1, router: str = "multi-gate", task_embed_dim: int = 64,
                 noisy_gating: bool = False, noise_std: float = 1.0, impl: str = "op"):
        super().__init__()
        for name, v in (("dim", dim), ("hidden", hidden), ("num_experts", num_experts),
                        ("k", k), ("num_tasks", num_tasks)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if k > num_experts:
            raise ValueError(f"k must be <= num_experts ({num_experts}), got {k}")
        if router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {router!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.dim, self.hidden, self.num_experts, self.k = dim, hidden, num_experts, k
        self.num_tasks, self.router, self.task_embed_dim = num_tasks, router, task_embed_dim
        self.noisy_gating, self.noise_std, self.impl = bool(noisy_gating), float(noise_std), impl
        E, D, H = num_experts, dim, hidden
        self.w1 = nn.Parameter(torch.empty(E, D, H))
        self.b1 = nn.Parameter(torch.empty(E, H))
        self.w2 = nn.Parameter(torch.empty(E, H, D))
        self.b2 = nn.Parameter(torch.empty(E, D))
        if router == "multi-gate":
            self.gate_weight = nn.Parameter(torch.empty(num_tasks, D, E))
            self.gate_bias = nn.Parameter(torch.empty(num_tasks, E))
        else:
            if not isinstance(task_embed_dim, int) or task_embed_dim < 1:
                raise ValueError(f"task_embed_dim must be a positive int, got {task_embed_dim!r}")
            self.task_embed = nn.Parameter(torch.empty(num_tasks, task_embed_dim))
            self.gate_weight = nn.Parameter(torch.empty(D + task_embed_dim, E))
            self.gate_bias = nn.Parameter(torch.empty(E))
        self.aux_loss: Optional[torch.Tensor] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default init per expert; small gates so routing starts near uniform.
        for w, b, fan_in in ((self.w1, self.b1, self.dim), (self.w2, self.b2, self.hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
        nn.init.normal_(self.gate_weight, std=0.02)
        nn.init.zeros_(self.gate_bias)
        if self.router == "task-embedding":
            nn.init.normal_(self.task_embed, std=1.0)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.hidden}, num_experts={self.num_experts}, "
                f"k={self.k}, num_tasks={self.num_tasks}, router={self.router!r}, "
                f"noisy_gating={self.noisy_gating}, impl={self.impl!r}")

    def _task(self, task) -> int:
        if isinstance(task, torch.Tensor) and task.numel() == 1:
            task = int(task.item())
        if not isinstance(task, int) or isinstance(task, bool):
            raise TypeError(f"task must be an int task id, got {type(task).__name__}")
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"task must be in [0, {self.num_tasks}), got {task}")
        return task

    def logits(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """Router logits [N, E] in float32 for tokens x [N, D] and a task id."""
        task = self._task(task)
        x = x.float()
        if self.router == "multi-gate":
            return x @ self.gate_weight[task].float() + self.gate_bias[task].float()
        emb = self.task_embed[task].float().expand(x.shape[0], -1)
        return torch.cat([x, emb], dim=1) @ self.gate_weight.float() + self.gate_bias.float()

    def _probs(self, x: torch.Tensor, task: int) -> torch.Tensor:
        logits = self.logits(x, task)
        if self.noisy_gating and self.training:
            logits = logits + torch.randn_like(logits) * (self.noise_std / self.num_experts)
        return torch.softmax(logits, dim=-1)

    def _topk(self, probs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # a stable descending sort keeps equal probabilities in index order (ties: lowest first)
        order = torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :self.k]
        return probs.gather(1, order), order

    def route(self, x: torch.Tensor, task: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-k routing of tokens x [N, D] for a task: (scores [N, k] float32, indices [N, k]
        int64), scores being the softmax probabilities over all E experts (not renormalized),
        in descending order. Deterministic in eval mode (noise only in training)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be a tensor of shape [N, {self.dim}], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}")
        return self._topk(self._probs(x, task))

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """x [B, N, D] (any leading dims) -> [B, N, D]:
        ``y[t] = Σ_j scores[t, j] · expert_{indices[t, j]}(x[t])``."""
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be a tensor with last dim {self.dim}, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}")
        flat = x.reshape(-1, self.dim)
        probs = self._probs(flat, task)
        scores, indices = self._topk(probs)
        self.aux_loss = load_balancing_loss(probs, indices)
        if self.impl == "op":
            # router indices are in range by construction: no check (no CUDA host sync)
            y = moe_mlp(flat, scores, indices, self.w1, self.b1, self.w2, self.b2,
                        check_indices=False)
        else:
            fn = moe_mlp_loop if self.impl == "loop" else moe_mlp_dense
            y = fn(flat, scores, indices, self.w1, self.b1, self.w2, self.b2)
        return y.reshape(x.shape)

    def flops(self, tokens: int, dense: bool = False) -> int:
        """Matmul FLOPs (2 per multiply-add) of one forward over ``tokens`` tokens: the gate plus
        k experts per token (``dense=True``: all E experts per token)."""
        gate_in = self.dim + (self.task_embed_dim if self.router == "task-embedding" else 0)
        per_expert = 2 * (self.dim * self.hidden + self.hidden * self.dim)
        active = self.num_experts if dense else self.k
        return tokens * (2 * gate_in * self.num_experts + active * per_expert)
