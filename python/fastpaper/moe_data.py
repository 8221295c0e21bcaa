"""Procedural multi-task scenes for M³ViT training: random shapes with dense targets, no downloads.

Each image shows a tilted ground plane (background, class 0) and 1-3 shapes drawn far to near:
disks rendered as spheres (class 1), rectangles (class 2) and triangles (class 3). Every pixel
gets all five M³ViT task targets:

* ``semseg`` [H, W] int64 class, ``saliency`` [1, H, W] foreground mask (float 0/1),
* ``depth`` [1, H, W] in (0, 1] (plane: grows toward the bottom; sphere: bulges toward the
  camera; flat shapes: constant),
* ``normals`` [3, H, W] unit vectors from the depth gradient, ``n ∝ (-∂z/∂x·s, -∂z/∂y·s, 1)``,
* ``edges`` [1, H, W] 1 where the class differs from a 4-neighbour.

Colours depend on the class (plus per-shape jitter and pixel noise), shading on depth, so the
tasks are learnable from the image. Deterministic for a seed.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

__all__ = ["TASK_CHANNELS", "NUM_CLASSES", "make_scenes"]

NUM_CLASSES = 4
TASK_CHANNELS: Dict[str, int] = {"semseg": NUM_CLASSES, "depth": 1, "normals": 3, "edges": 1,
                                 "saliency": 1}
_BASE_COLOURS = torch.tensor([[0.35, 0.35, 0.40], [0.85, 0.25, 0.20], [0.20, 0.65, 0.30],
                              [0.25, 0.35, 0.90]])


def _normals(depth: torch.Tensor, strength: float) -> torch.Tensor:
    dz_dx = torch.zeros_like(depth)
    dz_dy = torch.zeros_like(depth)
    dz_dx[..., 1:-1] = (depth[..., 2:] - depth[..., :-2]) / 2
    dz_dy[..., 1:-1, :] = (depth[..., 2:, :] - depth[..., :-2, :]) / 2
    n = torch.stack([-dz_dx * strength, -dz_dy * strength, torch.ones_like(depth)], dim=-3)
    return n / n.norm(dim=-3, keepdim=True)


def make_scenes(n: int, size: Tuple[int, int] = (64, 64), seed: int = 0) -> Dict[str, torch.Tensor]:
    """``n`` scenes of ``size`` = (H, W): {"images" [n, 3, H, W] float32 in [0, 1], "semseg",
    "depth", "normals", "edges", "saliency"} (shapes in the module docstring)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    h, w = int(size[0]), int(size[1])
    if h < 4 or w < 4:
        raise ValueError(f"size must be at least 4x4, got {size}")
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, h)[:, None].expand(h, w)
    xs = torch.linspace(0, 1, w)[None, :].expand(h, w)
    images = torch.empty(n, 3, h, w)
    semseg = torch.zeros(n, h, w, dtype=torch.int64)
    depth = torch.empty(n, h, w)

    def rnd(lo, hi):
        return lo + (hi - lo) * torch.rand((), generator=g).item()

    for i in range(n):
        # ground plane: far (small depth value = far away is avoided; we use distance in (0, 1])
        tilt = rnd(0.2, 0.6)
        z = 0.9 - tilt * (1 - ys) + rnd(-0.05, 0.05) * xs
        cls = torch.zeros(h, w, dtype=torch.int64)
        colour = _BASE_COLOURS[0][:, None, None] * (0.6 + 0.4 * ys)
        shapes = []
        for _ in range(1 + int(torch.randint(0, 3, (1,), generator=g))):
            shapes.append((int(torch.randint(1, NUM_CLASSES, (1,), generator=g)), rnd(0.2, 0.8)))
        shapes.sort(key=lambda s: -s[1])  # far to near (larger distance first)
        for c, dist in shapes:
            cy, cx, r = rnd(0.2, 0.8), rnd(0.2, 0.8), rnd(0.12, 0.3)
            if c == 1:
                d2 = ((ys - cy) ** 2 + (xs - cx) ** 2) / r ** 2
                mask = d2 < 1
                zs = dist - 0.1 * torch.sqrt((1 - d2).clamp_min(0))
            elif c == 2:
                mask = ((ys - cy).abs() < r * rnd(0.5, 1.0)) & ((xs - cx).abs() < r)
                zs = torch.full_like(ys, dist)
            else:
                top = cy - r
                mask = (ys > top) & (ys < cy + r) & ((xs - cx).abs() < (ys - top) / 2)
                zs = torch.full_like(ys, dist)
            mask = mask & (zs < z)  # occlusion by nearer surfaces already drawn
            jitter = _BASE_COLOURS[c] + 0.08 * (torch.rand(3, generator=g) - 0.5)
            shade = (1.2 - zs).clamp(0.3, 1.0)
            colour = torch.where(mask, jitter[:, None, None] * shade, colour)
            z = torch.where(mask, zs, z)
            cls = torch.where(mask, torch.full_like(cls, c), cls)
        images[i] = (colour + 0.03 * torch.randn(3, h, w, generator=g)).clamp(0, 1)
        semseg[i] = cls
        depth[i] = z
    edges = torch.zeros(n, h, w)
    diff_x = semseg[:, :, 1:] != semseg[:, :, :-1]
    diff_y = semseg[:, 1:, :] != semseg[:, :-1, :]
    edges[:, :, 1:] += diff_x
    edges[:, :, :-1] += diff_x
    edges[:, 1:, :] += diff_y
    edges[:, :-1, :] += diff_y
    return {"images": images, "semseg": semseg, "depth": depth[:, None],
            "normals": _normals(depth, strength=float(max(h, w))),
            "edges": (edges > 0).float()[:, None], "saliency": (semseg > 0).float()[:, None]}
