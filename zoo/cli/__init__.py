"""The ``zoo`` command line: parses arguments and calls into zoo; no logic of its own.

Heavy libraries (torch, mlflow, seaborn) are imported inside the commands, so
``zoo --help`` stays fast. One module per group of commands, each holding its
commands and their parsers; zoo.cli._tree assembles the tree, zoo.cli._main runs it.
"""

from __future__ import annotations

from zoo.cli._main import main
from zoo.cli._tree import build_parser as _parser  # noqa: F401 (the tree, for tests)

__all__ = ["main"]
