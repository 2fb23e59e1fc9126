"""YAML reading with ``yaml.safe_load`` semantics, plus floats written as ``1e-3``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from zoo.errors import ConfigError

__all__ = ["load_yaml", "parse_scalar"]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` and ``5e4`` as floats (YAML 1.2 style)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(path: str | Path) -> Any:
    """The document in ``path``; a missing or malformed file is a ConfigError."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None


def parse_scalar(text: str) -> Any:
    """A command-line override value read as YAML (``1e-5`` -> float, ``none`` -> str)."""
    return yaml.load(text, Loader=_Loader)
