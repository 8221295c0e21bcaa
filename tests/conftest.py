"""pytest configuration: CUDA tests run only where a GPU and a CUDA build of fastpaper exist."""

from __future__ import annotations

import pytest


def cuda_usable() -> bool:
    try:
        import torch

        import fastpaper
    except ImportError:
        return False
    return bool(torch.cuda.is_available() and fastpaper.info()["cuda_built"])


def pytest_collection_modifyitems(config, items):
    if cuda_usable():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and fastpaper built with CUDA kernels")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
