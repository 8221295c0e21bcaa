"""Loading of the compiled modules (one per area) with an explanation when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType


def _preload_openblas() -> None:
    # The core links libscipy_openblas.so from the scipy-openblas32 package and finds it through
    # its RPATH when both live in the same site-packages. Loading it here by path first also covers
    # installs where they do not (e.g. a venv that sees scipy-openblas32 in system site-packages):
    # the dynamic loader then reuses the already loaded SONAME.
    try:
        import ctypes
        import os

        import scipy_openblas32

        lib = os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so")
        if os.path.exists(lib):
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    except (ImportError, OSError):  # the RPATH may still find it; the import below reports failures
        pass


_preload_openblas()


def load(area: str) -> ModuleType:
    """Return the nanobind module ``fastpaper._<area>``."""
    try:
        return importlib.import_module(f"fastpaper._{area}")
    except ImportError as e:  # pragma: no cover - only on a broken install
        raise ImportError(
            f"fastpaper's native module _{area} could not be loaded ({e}). fastpaper must be "
            "installed with pip (`pip install .`), which compiles it; importing the source tree "
            "directly does not work."
        ) from e
