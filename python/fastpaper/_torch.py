"""Shared torch glue: the ``fastpaper`` torch.library namespace and CUDA stream lookup."""

from __future__ import annotations

import contextlib

import torch

# One library object owns the namespace; every area defines its ops on it.
LIB = torch.library.Library("fastpaper", "DEF")


def stream_of(t: torch.Tensor) -> int:
    """Raw cudaStream_t (as an int) of torch's current stream on t's device; 0 for CPU tensors."""
    if t.device.type != "cuda":
        return 0
    return torch.cuda.current_stream(t.device).cuda_stream


_NO_GUARD = contextlib.nullcontext()  # reusable; CPU work needs no device switch


def device_guard(t: torch.Tensor):
    """Context that makes t's device current, so kernels launch on (and DLPack exports from) the
    device that owns t; a shared no-op context for CPU tensors."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return _NO_GUARD
