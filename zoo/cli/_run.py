"""``zoo train`` and ``zoo ui``."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli._types import tcp_port

__all__ = ["add_run_parsers"]


def add_run_parsers(commands) -> list[argparse.ArgumentParser]:
    """The `train` and `ui` parsers; returns both (each reads the tracking store)."""
    train = commands.add_parser("train", help="train one run config (resumes if interrupted)")
    train.add_argument("config", type=Path, help="run config YAML")
    train.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. stages.1.lr=1e-5"
    )
    train.set_defaults(func=_train)

    ui = commands.add_parser(
        "ui", help="MLflow UI on the tracking store; prints each sweep's runs/charts/compare links"
    )
    ui.add_argument("--port", type=tcp_port, default=5000, help="on 127.0.0.1; must be free")
    ui.set_defaults(func=_ui)
    return [train, ui]


def _train(args: argparse.Namespace) -> None:
    from zoo._malloc import keep_freed_memory
    from zoo.config import load_config
    from zoo.modelzoo import store_resolver
    from zoo.paths import ProjectPaths
    from zoo.run import preflight, run
    from zoo.store import Tracker

    paths = ProjectPaths.default()
    config = load_config(args.config, args.overrides, store_resolver(paths, args.tracking_uri))
    prepared = preflight(config, paths)  # bad input refused before the store is opened
    keep_freed_memory()
    run(config, Tracker(args.tracking_uri, paths), paths, prepared=prepared)


def _ui(args: argparse.Namespace) -> int:
    from zoo._ui_process import serve
    from zoo.paths import ProjectPaths
    from zoo.store import tracking_uri

    paths = ProjectPaths.default()
    return serve(tracking_uri(args.tracking_uri, paths), args.port, paths.ui_log)
