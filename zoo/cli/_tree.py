"""The whole argparse tree of ``zoo``, and ``zoo completion``, which walks it."""

from __future__ import annotations

import argparse
from typing import Any

from zoo.cli._analysis import add_analysis_parsers
from zoo.cli._data import add_data_parser
from zoo.cli._models import add_model_parsers
from zoo.cli._run import add_run_parsers
from zoo.cli._server import add_server_parser
from zoo.cli._sweep import add_sweep_parser

__all__ = ["DESCRIPTION", "Parser", "build_parser"]

DESCRIPTION = "The ``zoo`` command line: parses arguments and calls into zoo; no logic of its own."


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``zoo sub: error: ...``), status 2,
    and whose invalid choices (commands too) name the closest valid ones."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            from zoo.errors import did_you_mean

            choices = ", ".join(repr(c) for c in action.choices)
            raise argparse.ArgumentError(
                action,
                f"invalid choice: {value!r} (choose from {choices})"
                + did_you_mean(value, action.choices),
            )

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``zoo`` command; each sets ``func``, the function that runs it."""
    from zoo import __version__
    from zoo._completion import SHELLS

    parser = Parser(prog="zoo", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    add_data_parser(commands)
    stores = add_run_parsers(commands) + add_sweep_parser(commands) + add_analysis_parsers(commands)
    add_server_parser(commands)
    for sub in stores + add_model_parsers(commands):
        sub.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or ./mlflow.db")
    completion = commands.add_parser("completion", help="print a shell completion script")
    completion.add_argument(
        "shell", choices=list(SHELLS), help='e.g. eval "$(zoo completion bash)"'
    )
    completion.set_defaults(func=_completion)
    return parser


def _completion(args: argparse.Namespace) -> None:
    from zoo._completion import script

    print(script(build_parser(), args.shell), end="")
