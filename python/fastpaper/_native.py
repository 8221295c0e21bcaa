"""Loading of the compiled modules (one per area) with an explanation when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType


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
