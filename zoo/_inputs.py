"""The input files ``zoo predict`` reads, checked without torch so bad input fails fast."""

from __future__ import annotations

from pathlib import Path

from zoo.data._formats import IMAGE_SUFFIXES
from zoo.errors import DataError

__all__ = ["SUFFIXES", "check_exist", "input_files"]

SUFFIXES = (*IMAGE_SUFFIXES, ".npz", ".h5", ".hdf5")


def check_exist(inputs: list[Path]) -> None:
    """Raise a DataError naming the first of ``inputs`` that does not exist."""
    for item in inputs:
        if not item.exists():
            raise DataError(f"{item}: no such file or folder")


def input_files(inputs: list[Path]) -> list[Path]:
    """Files named, plus the image files of folders named; a missing path, an empty
    folder or a file of another type is a DataError naming it."""
    check_exist(inputs)
    files = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in SUFFIXES)
            if not found:
                raise DataError(f"{item}: no {'/'.join(SUFFIXES)} files")
            files += found
        elif item.suffix.lower() not in SUFFIXES:
            raise DataError(f"{item}: unsupported type; allowed: {', '.join(SUFFIXES)}")
        else:
            files.append(item)
    return files
