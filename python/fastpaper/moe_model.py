"""M³ViT: a multi-task ViT whose every other MLP is a task-conditioned mixture of experts.

Backbone: ViT-S/16 by default (width 384, depth 12, 12 heads as in M³ViT, pre-norm blocks
``x += attn(LN x); x += mlp(LN x)``); blocks 1, 3, 5, ... replace the dense MLP (ratio 4) by a
:class:`fastpaper.moe.MoE` (16 experts, top-4, expert hidden 384), routed per task. One light
convolutional upsampling decoder per task turns the patch tokens into a dense prediction at the
input resolution. ``model(images, task=...)`` runs only that task's sparse pathway: k experts per
token in each MoE layer and one decoder.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .moe import MoE

__all__ = ["M3ViT", "DEFAULT_TASKS"]

# task -> output channels (PASCAL-Context multi-task setting; semseg classes configurable)
DEFAULT_TASKS: Dict[str, int] = {"semseg": 21, "depth": 1, "normals": 3, "edges": 1,
                                 "saliency": 1}


def _pair(v) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    h, w = v
    return (int(h), int(w))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: nn.Module):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = mlp

    def forward(self, x, task: int):
        x = x + self.attn(self.norm1(x))
        h = self.norm2(x)
        return x + (self.mlp(h, task) if isinstance(self.mlp, MoE) else self.mlp(h))


class Decoder(nn.Module):
    """Light PUP-style head: LN over the patch tokens, then per stage a 3x3 conv + ReLU and x2
    bilinear upsampling (log2(patch) stages), a final resize to the image size and a 1x1 conv."""

    def __init__(self, dim: int, channels: Sequence[int], out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        convs, c_in = [], dim
        for c in channels:
            convs.append(nn.Conv2d(c_in, c, 3, padding=1))
            c_in = c
        self.convs = nn.ModuleList(convs)
        self.head = nn.Conv2d(c_in, out_channels, 1)

    def forward(self, tokens, grid: Tuple[int, int], size: Tuple[int, int]):
        b, n, d = tokens.shape
        x = self.norm(tokens).transpose(1, 2).reshape(b, d, grid[0], grid[1])
        for conv in self.convs:
            x = F.interpolate(F.relu(conv(x)), scale_factor=2, mode="bilinear",
                              align_corners=False)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.head(x)

    def flops(self, grid: Tuple[int, int], size: Tuple[int, int]) -> int:
        h, w = grid
        total = 0
        for conv in self.convs:
            total += 2 * conv.in_channels * conv.out_channels * 9 * h * w
            h, w = 2 * h, 2 * w
        return total + 2 * self.head.in_channels * self.head.out_channels * size[0] * size[1]


class M3ViT(nn.Module):
    """Multi-task MoE vision transformer (M³ViT, NeurIPS 2022).

    Parameters
    ----------
    img_size : int or (H, W)
        Input resolution (multiple of ``patch_size``); default 480x640 (NYUD: 1200 patches + cls).
    patch_size, dim, depth, heads : int
        ViT-S/16 by default: 16, 384, 12, 12.
    mlp_ratio : float
        Dense MLP hidden = dim * mlp_ratio (blocks without MoE).
    num_experts, k, expert_hidden : int
        MoE layers: 16 experts, top-4, hidden 384.
    moe_every : int
        Block i is an MoE block when ``i % moe_every == moe_every - 1`` (2: blocks 1, 3, ..., 11).
    tasks : dict name -> output channels, or a sequence of names from :data:`DEFAULT_TASKS`.
    router, task_embed_dim, noisy_gating : see :class:`fastpaper.moe.MoE`.
    decoder_channels : channels of the decoder stages (default: 128, 64, 32, ... one per x2).
    moe_impl : "op" | "loop" | "dense", how the MoE layers compute (same math).

    ``model(images [B, 3, H, W], task)`` -> ``[B, C_task, H, W]``.
    """

    def __init__(self, img_size=(480, 640), patch_size: int = 16, dim: int = 384,
                 depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0,
                 num_experts: int = 16, k: int = 4, expert_hidden: int = 384,
                 moe_every: int = 2, tasks=None, router: str = "multi-gate",
                 task_embed_dim: int = 64, noisy_gating: bool = False,
                 decoder_channels: Optional[Sequence[int]] = None, moe_impl: str = "op"):
        super().__init__()
        if tasks is None:
            tasks = dict(DEFAULT_TASKS)
        elif not isinstance(tasks, dict):
            unknown = [t for t in tasks if t not in DEFAULT_TASKS]
            if unknown:
                raise ValueError(f"tasks: unknown task names {unknown}; give a dict name -> "
                                 f"output channels for custom tasks")
            tasks = {t: DEFAULT_TASKS[t] for t in tasks}
        if not tasks:
            raise ValueError("tasks must name at least one task")
        self.img_size = _pair(img_size)
        if patch_size < 1 or self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size "
                             f"{patch_size}")
        if moe_every < 1:
            raise ValueError(f"moe_every must be >= 1, got {moe_every}")
        stages = max(int(round(math.log2(patch_size))), 0)
        if decoder_channels is None:
            decoder_channels = [max(128 >> i, 16) for i in range(stages)]
        self._config = dict(img_size=list(self.img_size), patch_size=patch_size, dim=dim,
                            depth=depth, heads=heads, mlp_ratio=mlp_ratio,
                            num_experts=num_experts, k=k, expert_hidden=expert_hidden,
                            moe_every=moe_every, tasks=dict(tasks), router=router,
                            task_embed_dim=task_embed_dim, noisy_gating=noisy_gating,
                            decoder_channels=list(decoder_channels), moe_impl=moe_impl)
        self.tasks = list(tasks)
        self.task_channels = dict(tasks)
        self.patch_size, self.dim = patch_size, dim
        self.grid = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        blocks, moes = [], []
        for i in range(depth):
            if i % moe_every == moe_every - 1:
                mlp = MoE(dim, expert_hidden, num_experts, k, num_tasks=len(self.tasks),
                          router=router, task_embed_dim=task_embed_dim,
                          noisy_gating=noisy_gating, impl=moe_impl)
                moes.append(mlp)
            else:
                mlp = Mlp(dim, int(dim * mlp_ratio))
            blocks.append(Block(dim, heads, mlp))
        self.blocks = nn.ModuleList(blocks)
        self.moe_layers = nn.ModuleList(moes)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoders = nn.ModuleDict({t: Decoder(dim, decoder_channels, c)
                                       for t, c in tasks.items()})

    # ---------------------------------------------------------------- tasks and configuration
    @property
    def config(self) -> dict:
        """The constructor kwargs (what :meth:`save_checkpoint` stores)."""
        return dict(self._config)

    def task_id(self, task: Union[str, int]) -> int:
        """Task index for a name or an index."""
        if isinstance(task, str):
            if task not in self.task_channels:
                raise ValueError(f"task must be one of {self.tasks}, got {task!r}")
            return self.tasks.index(task)
        if isinstance(task, bool) or not isinstance(task, int):
            raise TypeError(f"task must be a task name or int, got {type(task).__name__}")
        if not 0 <= task < len(self.tasks):
            raise ValueError(f"task must be in [0, {len(self.tasks)}), got {task}")
        return task

    def set_moe_impl(self, impl: str) -> "M3ViT":
        """Switch every MoE layer's computation ("op", "loop" or "dense"); same math."""
        for m in self.moe_layers:
            if impl not in ("op", "loop", "dense"):
                raise ValueError(f"impl must be 'op', 'loop' or 'dense', got {impl!r}")
            m.impl = impl
        self._config["moe_impl"] = impl
        return self

    # ---------------------------------------------------------------------------- forward
    def features(self, images: torch.Tensor, task: Union[str, int]) -> torch.Tensor:
        """Backbone tokens [B, 1 + patches, dim] after the final LayerNorm, routed for ``task``."""
        tid = self.task_id(task)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [B, 3, H, W], got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else images}")
        if tuple(images.shape[-2:]) != self.img_size:
            raise ValueError(f"images must be {self.img_size[0]}x{self.img_size[1]} (img_size), "
                             f"got {tuple(images.shape[-2:])}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embed.to(x.dtype)
        for blk in self.blocks:
            x = blk(x, tid)
        return self.norm(x)

    def forward(self, images: torch.Tensor, task: Union[str, int]) -> torch.Tensor:
        """That task's prediction ``[B, C_task, H, W]`` through its sparse pathway."""
        name = self.tasks[self.task_id(task)]
        tokens = self.features(images, task)[:, 1:]
        return self.decoders[name](tokens, self.grid, self.img_size)

    def forward_all(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Every task's prediction, {name: [B, C, H, W]} (one routed backbone pass per task)."""
        return {t: self(images, t) for t in self.tasks}

    def aux_loss(self) -> torch.Tensor:
        """Sum of the load-balancing losses of the MoE layers from the last forward."""
        losses = [m.aux_loss for m in self.moe_layers if m.aux_loss is not None]
        if not losses:
            return self.cls_token.new_zeros(())
        return torch.stack([l.float() for l in losses]).sum()

    # ------------------------------------------------------------------------------ FLOPs
    def flops(self, task: Union[str, int]) -> dict:
        """Matmul/conv FLOPs (2 per multiply-add; norms, softmax, GELU, resizes not counted) of
        one image through ``task``'s sparse pathway, and of the dense all-tasks baseline: every
        task's backbone pass with all E experts active per token plus every decoder (the model
        run as a dense multi-task network).

        Returns ``{"task", "sparse", "dense_all_tasks", "reduction", "sparse_breakdown",
        "dense_breakdown"}`` with ``reduction = 1 - sparse / dense_all_tasks``."""
        name = self.tasks[self.task_id(task)]
        n = 1 + self.grid[0] * self.grid[1]
        d = self.dim
        patch = 2 * 3 * self.patch_size ** 2 * d * (n - 1)
        attn = 0
        dense_mlp = 0
        moe_sparse = 0
        moe_dense = 0
        for blk in self.blocks:
            attn += 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * n * d
            if isinstance(blk.mlp, MoE):
                moe_sparse += blk.mlp.flops(n)
                moe_dense += blk.mlp.flops(n, dense=True)
            else:
                dense_mlp += 2 * 2 * n * d * blk.mlp.fc1.out_features
        decoders = {t: dec.flops(self.grid, self.img_size) for t, dec in self.decoders.items()}
        backbone_sparse = patch + attn + dense_mlp + moe_sparse
        backbone_dense = patch + attn + dense_mlp + moe_dense
        sparse = backbone_sparse + decoders[name]
        dense = len(self.tasks) * backbone_dense + sum(decoders.values())
        return {"task": name, "sparse": sparse, "dense_all_tasks": dense,
                "reduction": 1.0 - sparse / dense,
                "sparse_breakdown": {"patch_embed": patch, "attention": attn,
                                     "dense_mlp": dense_mlp, "moe": moe_sparse,
                                     "decoder": decoders[name]},
                "dense_breakdown": {"tasks": len(self.tasks), "backbone_per_task": backbone_dense,
                                    "moe_per_task": moe_dense, "decoders": decoders}}

    # ------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path) -> None:
        """``torch.save({"config": constructor kwargs, "state_dict": ...}, path)``."""
        torch.save({"config": self.config, "state_dict": self.state_dict()}, path)

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu") -> "M3ViT":
        """Rebuild a model saved by :meth:`save_checkpoint`."""
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
            raise ValueError(f"{path} is not an M3ViT checkpoint (needs 'config' and "
                             f"'state_dict')")
        model = cls(**ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
        return model
