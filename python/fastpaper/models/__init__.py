"""Whole models built on fastpaper's ops: :class:`M3ViT` (task-conditioned MoE ViT, area ``moe``)."""

from ..moe_model import M3ViT

__all__ = ["M3ViT"]
