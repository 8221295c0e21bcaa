"""Build and machine information: ``fastpaper.info()`` and ``fastpaper info``."""

from __future__ import annotations

import os
import platform
from typing import Any

from . import _native


def cmake_dir() -> str:
    """Folder of the installed CMake package config: ``find_package(fastpaper CONFIG)`` finds
    ``fastpaper::core`` with ``-Dfastpaper_DIR=<this>`` or ``CMAKE_PREFIX_PATH``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib", "cmake", "fastpaper")


def include_dir() -> str:
    """Folder of the public C++ headers (``#include <fastpaper/bfp.h>``)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")


def info() -> dict[str, Any]:
    """Version, whether CUDA kernels were built (and for which architectures), visible GPUs."""
    core = _native.load("core")
    devices = []
    for i in range(core.cuda_device_count()):
        name, major, minor = core.cuda_device_info(i)
        devices.append({"index": i, "name": name, "compute_capability": f"{major}.{minor}"})
    out: dict[str, Any] = {
        "version": core.version(),
        "cuda_built": core.cuda_built(),
        "cuda_architectures": [a for a in core.cuda_architectures().split(";") if a],
        "cuda_devices": devices,
        "python": platform.python_version(),
        "cmake_dir": cmake_dir(),
    }
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda_available"] = bool(torch.cuda.is_available())
    except ImportError:
        out["torch"] = None
    return out
