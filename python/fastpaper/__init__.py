"""fastpaper: fast C++/CUDA kernels for five recent papers, callable from PyTorch, numpy and C++.

Areas: ``fastpaper.bfp`` (block floating point codec for the LLM KV cache), ``fastpaper.rnn``
(FlashRNN-style fused multi-head LSTM/GRU/sLSTM/Elman), ``fastpaper.pararnn`` (nonlinear RNNs
solved in parallel over time), ``fastpaper.krylov`` (GCRO-DR with subspace recycling for sequences
of linear systems), ``fastpaper.moe`` (M³ViT task-conditioned mixture-of-experts MLP, with
``fastpaper.models.M3ViT`` and a Vitis HLS design).
"""

from __future__ import annotations

from ._info import cmake_dir, include_dir, info
from ._native import load as _load

__version__ = _load("core").version()

__all__ = ["__version__", "bfp", "krylov", "moe", "models", "pararnn", "rnn", "cmake_dir",
           "include_dir", "info"]


def __getattr__(name: str):
    # Areas are imported on first use so that `import fastpaper` stays cheap and torch-free.
    if name in ("bfp", "krylov", "pararnn", "rnn", "moe", "models"):
        import importlib

        return importlib.import_module(f"fastpaper.{name}")
    raise AttributeError(f"module 'fastpaper' has no attribute {name!r}")
