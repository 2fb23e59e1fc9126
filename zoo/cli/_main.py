"""``main``: runs one command and maps what it raises to one line and an exit status."""

from __future__ import annotations

import argparse
import os
import sys

from zoo.cli._errors import one_line, stop_status, stopped_by
from zoo.cli._run import _train
from zoo.cli._submit import _sweep_submit
from zoo.cli._sweep import _sweep_run, _sweep_worker
from zoo.cli._tree import build_parser

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status.

    Bad input: one line on stderr naming the field or file, status 2. A full disk: one
    line naming the path (zoo._disk), status 1. Anything unexpected: one line with the
    path of a log under .zoo/logs holding the traceback, status 1.
    """
    args = build_parser().parse_args(argv)
    from zoo.errors import ConfigError, DataError

    try:
        with _stoppable(args):
            return args.func(args) or 0
    except (ConfigError, DataError) as error:
        print(f"zoo: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # a run under way ended KILLED: running it again resumes
        if not hasattr(error, "signum"):  # Ctrl-C in a command zoo._signals does not stop
            print("zoo: interrupted", file=sys.stderr)
            return 130
        print(f"zoo: {stopped_by(error)}; the same command resumes", file=sys.stderr)
        return stop_status(error)
    except Exception as error:
        full = _out_of_space(error, args)
        if full is not None:  # nothing to debug: one line, and the same command resumes
            print(f"zoo: error: {full}", file=sys.stderr)
            return 1
        store = _store_problem(error, args)
        if store is not None:
            print(f"zoo: error: {store}", file=sys.stderr)
            return 2
        log = _log_internal_error()
        print(
            f"zoo: internal error: {type(error).__name__}: {one_line(error)} ({log})",
            file=sys.stderr,
        )
        return 1


def _stoppable(args: argparse.Namespace):
    """Commands that train or submit stop alike on SIGTERM, SIGINT and SIGHUP (zoo._signals)."""
    import contextlib

    from zoo._signals import stop_on_signals

    stoppable = (_train, _sweep_run, _sweep_submit, _sweep_worker)
    return stop_on_signals() if args.func in stoppable else contextlib.nullcontext()


def _out_of_space(error: Exception, args: argparse.Namespace) -> str | None:
    """One line naming the path a write found full, and the bytes (zoo._disk); None when
    ``error`` is something else."""
    from zoo._disk import out_of_space
    from zoo.paths import ProjectPaths
    from zoo.store import tracking_uri

    paths = ProjectPaths.default()
    full = out_of_space(error, tracking_uri(getattr(args, "tracking_uri", None), paths), paths.root)
    return None if full is None else one_line(full)


def _store_problem(error: Exception, args: argparse.Namespace) -> str | None:
    """One line naming the tracking store, when ``error`` came from it (unreadable,
    corrupt, not writable, unknown scheme); None for anything else."""
    module = type(error).__module__.split(".")[0]
    if module not in ("mlflow", "sqlalchemy", "sqlite3") or not hasattr(args, "tracking_uri"):
        return None
    from zoo.paths import ProjectPaths
    from zoo.store import tracking_uri

    uri = tracking_uri(args.tracking_uri, ProjectPaths.default())
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"tracking store {uri}: cannot be used ({type(error).__name__}: {first[:300]})"


def _log_internal_error() -> str:
    """Write the current traceback to a new log under the project's .zoo/logs; says where
    ("traceback in PATH"), or why it could not be written there (a partial log removed)."""
    import time
    import traceback

    from zoo.paths import ProjectPaths

    path = ProjectPaths.default().error_log(time.strftime("%Y%m%d-%H%M%S"), os.getpid())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(traceback.format_exc())
    except OSError as error:
        path.unlink(missing_ok=True)
        return f"traceback not saved: {path}: {error.strerror or error}"
    return f"traceback in {path}"
