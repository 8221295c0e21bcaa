"""nn.Modules built on fastpaper's ops."""

from .pararnn import ParaGRU, ParaLSTM

__all__ = ["ParaGRU", "ParaLSTM"]
