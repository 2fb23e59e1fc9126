"""Argparse types: each refuses a bad value with one line naming it and what is allowed."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = [
    "finite",
    "positive",
    "profile_name",
    "registry_name",
    "runs_per_task",
    "tcp_port",
    "writable",
]


def positive(kind: type) -> object:
    """An argparse type: a number > 0 of ``kind`` (int or float)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected a number > 0")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def tcp_port(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65534 (PostgreSQL beside a server takes it + 1)."""
    if not text.isdigit() or not 1 <= int(text) <= 65534:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected a port 1-65534")
    return int(text)


def finite(text: str) -> float:
    """An argparse type: a finite number (not nan, not inf)."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected a finite number")
    return value


def registry_name(kind: str) -> object:
    """An argparse type: a Model Registry name (``kind`` "name": letters, digits, . _ -)
    or alias ("alias": letters, digits, _ -, not ``latest`` nor ``v<N>``, which MLflow keeps)."""
    import re

    pattern = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}" if kind == "name" else r"[A-Za-z0-9_-]{1,64}"
    expected = (
        "letters, digits, '.', '_' or '-'" if kind == "name" else "letters, digits, '_' or '-'"
    )

    def parse(text: str) -> str:
        reserved = kind == "alias" and re.fullmatch(r"latest|v\d+", text, re.IGNORECASE)
        if not re.fullmatch(pattern, text) or reserved:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not allowed; expected {expected}"
                + (" (not latest or v<N>)" if kind == "alias" else "")
            )
        return text

    parse.__name__ = f"registry {kind}"
    return parse


def profile_name(text: str) -> str:
    """An argparse type: a profile name usable as a file name (letters, digits, . _ -)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not allowed; expected letters, digits, '.', '_' or '-' (e.g. h100)"
        )
    return text


def writable(kind: str) -> object:
    """An argparse type: a path zoo may write a ``kind`` ("folder" or "file") at, checked
    without writing anything: not an existing thing of the other kind, and its nearest
    existing ancestor a folder this user may write in."""

    def parse(text: str) -> Path:
        path = Path(text)
        if path.exists() and path.is_dir() != (kind == "folder"):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; it is not a {kind}")
        ancestor = path.absolute().parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not allowed; {ancestor} is not a folder this user can write in"
            )
        return path

    parse.__name__ = f"writable {kind}"
    return parse


def runs_per_task(text: str) -> int | str:
    """An argparse type: ``auto`` or an integer (SubmitOptions checks its range)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not allowed; expected an integer >= 1 or auto"
        ) from None
