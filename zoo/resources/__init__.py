"""Files zoo ships as package data: the sbatch template and the default report definition."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["resource"]


def resource(name: str) -> Path:
    """The installed file ``name`` of this package (works in non-editable installs)."""
    return Path(str(files(__name__) / name))
