"""Plain-PyTorch reference implementations of fastpaper's ops, used as baselines in bench/ and the demo.

Each submodule is named after its area (``fastpaper.baselines.bfp``) and mirrors the public API of
``fastpaper.<area>`` with ordinary torch tensor ops only: no native code, no custom kernels. They
are what a user would write by hand, so benchmarks compare against a fair alternative, and the
tests check that they agree bit for bit with the native kernels.
"""

from __future__ import annotations

__all__ = ["bfp"]


def __getattr__(name: str):
    # Submodules import torch; importing them lazily keeps `import fastpaper.baselines` cheap.
    if name in __all__:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
