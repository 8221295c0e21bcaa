"""Multi-task M³ViT training on procedural scenes (:mod:`fastpaper.moe_data`).

Every step runs each task's own sparse pathway (its router picks k experts per token, only its
decoder runs) and sums the task losses plus the MoE load-balancing loss:

* semseg: cross entropy; depth: L1; normals: 1 - cos(pred, target); edges, saliency: BCE on logits.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .moe_data import TASK_CHANNELS, make_scenes
from .moe_model import M3ViT

__all__ = ["task_loss", "evaluate", "train", "tiny_model"]


def task_loss(task: str, pred: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Loss of one task's prediction against the scene targets in ``batch``."""
    pred = pred.float()
    if task == "semseg":
        return F.cross_entropy(pred, batch["semseg"])
    if task == "depth":
        return F.l1_loss(pred, batch["depth"])
    if task == "normals":
        return (1 - F.cosine_similarity(pred, batch["normals"], dim=1)).mean()
    if task in ("edges", "saliency"):
        return F.binary_cross_entropy_with_logits(pred, batch[task])
    raise ValueError(f"task must be one of {list(TASK_CHANNELS)}, got {task!r}")


def tiny_model(size=(32, 32), seed: int = 0, tasks: Sequence[str] = ("semseg", "depth"),
               **kwargs) -> M3ViT:
    """A small M3ViT for the procedural scenes (patch 8, width 64, 4 blocks, 8 experts, top-2)."""
    torch.manual_seed(seed)
    cfg = dict(img_size=size, patch_size=8, dim=64, depth=4, heads=4, mlp_ratio=2.0,
               num_experts=8, k=2, expert_hidden=64, tasks={t: TASK_CHANNELS[t] for t in tasks},
               decoder_channels=[32, 16, 16])
    cfg.update(kwargs)
    return M3ViT(**cfg)


@torch.no_grad()
def evaluate(model: M3ViT, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Per-task losses of ``model`` (eval mode, no noise) on one batch."""
    was = model.training
    model.eval()
    out = {t: float(task_loss(t, model(batch["images"], t), batch)) for t in model.tasks}
    model.train(was)
    return out


def train(model: M3ViT, steps: int = 100, batch_size: int = 8, lr: float = 2e-3,
          aux_weight: float = 0.01, seed: int = 0, data: Optional[Dict[str, torch.Tensor]] = None,
          num_scenes: int = 256, progress: bool = False) -> List[Dict[str, float]]:
    """Train ``model`` with AdamW on procedural scenes; returns one dict of losses per step
    ({"step", "total", "aux", <task>: loss}). ``data`` defaults to ``num_scenes`` scenes of the
    model's input size generated from ``seed``."""
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    if data is None:
        data = make_scenes(num_scenes, tuple(model.img_size), seed=seed)
    n = data["images"].shape[0]
    if n == 0:
        raise ValueError("data holds no scenes")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed + 1)
    history = []
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="moe train")
    model.train()
    for step in it:
        idx = torch.randint(0, n, (batch_size,), generator=g)
        batch = {key: v[idx] for key, v in data.items()}
        opt.zero_grad(set_to_none=True)
        record = {"step": step}
        total = 0.0
        aux = 0.0
        for t in model.tasks:
            loss = task_loss(t, model(batch["images"], t), batch)
            a = model.aux_loss()
            total = total + loss + aux_weight * a
            record[t] = float(loss.detach())
            aux += float(a.detach())
        total.backward()
        opt.step()
        record["total"] = float(total.detach())
        record["aux"] = aux
        history.append(record)
    model.eval()
    return history
