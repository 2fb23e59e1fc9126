"""YAML reading with ``yaml.safe_load`` semantics, plus floats written as ``1e-3``;
and writing, as ``yaml.safe_dump`` writes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from zoo.errors import ConfigError

__all__ = ["MAX_NODES", "dump_yaml", "expanded_size", "load_yaml", "parse_scalar"]


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


def dump_yaml(document: Any) -> str:
    """``yaml.safe_dump(document, sort_keys=False)``, written by libyaml where PyYAML has
    it (a run's config in 1 ms rather than 5): the same document, and the same text for
    every config of ``sweeps/`` (libyaml may break a long quoted string elsewhere)."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(document, Dumper=dumper, sort_keys=False)


MAX_NODES = 1_000_000  # a document expanding (aliases followed) past this is refused


def load_yaml(path: str | Path) -> Any:
    """The document in ``path``; a missing, non-UTF-8, malformed or (through aliases)
    oversized file is a ConfigError naming it (a malformed one with the parser's line,
    column and reason)."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    try:
        document = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(_parse_error(path, error)) from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    if expanded_size(document) > MAX_NODES:
        raise ConfigError(
            f"{path}: expands to more than {MAX_NODES:,} values (YAML aliases followed); "
            "the limit guards against alias bombs"
        )
    return document


def _parse_error(path: str | Path, error: yaml.YAMLError) -> str:
    """``PATH:LINE:COLUMN: REASON`` (1-based, as compilers write it) of a parse error."""
    mark = getattr(error, "problem_mark", None)
    reason = getattr(error, "problem", None) or "not valid YAML"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: {reason}" if mark else f"{path}: {reason}"


def expanded_size(document: Any) -> int:
    """Values in ``document`` counted as if every shared (aliased) part were copied;
    each distinct container is visited once, so this is fast even for alias bombs."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, dict | list):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:  # a recursive alias: infinite when expanded
            return MAX_NODES + 1
        active.add(key)
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_NODES:
                break
        active.discard(key)
        sizes[key] = total
        return total

    try:
        return size(document)
    except RecursionError:
        return MAX_NODES + 1


def parse_scalar(text: str) -> Any:
    """A command-line override value read as YAML (``1e-5`` -> float, ``none`` -> str)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        raise ConfigError(f"{text!r}: not a valid YAML value") from None
