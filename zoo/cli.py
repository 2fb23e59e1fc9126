"""The ``zoo`` command line: parses arguments and calls into zoo; no logic of its own.

Heavy libraries (torch, mlflow, seaborn) are imported inside the commands, so
``zoo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _data_make(args: argparse.Namespace) -> None:
    from zoo import data
    from zoo.paths import ProjectPaths

    paths = ProjectPaths.default()
    sources = data.declared(args.file)
    for name in args.names or sources:
        if name not in sources:
            raise _config_error(f"{args.file}: no dataset {name!r}; declared: {', '.join(sources)}")
        folder = data.materialise(name, sources[name], paths)
        line = f"{name}: {folder}"
        if args.preview:
            dataset = data.load(name, folder)
            out = data.preview(dataset.images[:8], dataset.masks[:8], args.preview / f"{name}.png")
            line += f"  preview: {out}"
        print(line)


def _data_folder(args: argparse.Namespace) -> Path:
    from zoo import data
    from zoo.paths import ProjectPaths

    paths = ProjectPaths.default()
    if args.spec:
        sources = data.declared(args.spec)
        if args.name not in sources:
            raise _config_error(f"{args.spec}: no dataset {args.name!r}")
        return data.materialise(args.name, sources[args.name], paths)
    return data.lookup(args.name, paths)


def _data_show(args: argparse.Namespace) -> None:
    import numpy as np

    from zoo import data

    folder = _data_folder(args)
    images, masks = np.load(folder / "images.npy"), np.load(folder / "masks.npy")
    print(data.preview(images[: args.count], masks[: args.count], args.out))


def _data_export(args: argparse.Namespace) -> None:
    from zoo import data

    data.export(_data_folder(args), args.out)
    print(args.out)


def _train(args: argparse.Namespace) -> None:
    from zoo.config import load_config
    from zoo.paths import ProjectPaths
    from zoo.run import run
    from zoo.tracking import Tracker

    config = load_config(args.config, args.overrides)
    paths = ProjectPaths.default()
    run(config, Tracker(args.tracking_uri, paths), paths)


def _ui(args: argparse.Namespace) -> None:
    import os

    from zoo.paths import ProjectPaths
    from zoo.tracking import tracking_uri

    uri = tracking_uri(args.tracking_uri, ProjectPaths.default())
    print(f"MLflow UI for {uri} at http://127.0.0.1:{args.port}", flush=True)
    os.execvp(
        sys.executable,
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
        ],
    )


def _config_error(message: str) -> Exception:
    from zoo.errors import ConfigError

    return ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="make, preview and export datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    make = data_commands.add_parser("make", help="generate the datasets a YAML file declares")
    make.add_argument("file", type=Path, help="YAML with a top-level 'datasets:' mapping")
    make.add_argument("names", nargs="*", help="only these datasets (default: all)")
    make.add_argument("--preview", type=Path, metavar="DIR", help="also write DIR/NAME.png")
    make.set_defaults(func=_data_make)
    for verb, func, suffix, help_text in (
        ("show", _data_show, ".png", "write a grid of images with mask outlines"),
        ("export", _data_export, ".npz", "write images, masks, pixel_size_A and parameters"),
    ):
        sub = data_commands.add_parser(verb, help=help_text)
        sub.add_argument("name", help="dataset name (as made by `zoo data make`)")
        sub.add_argument("--out", type=Path, required=True, metavar=f"FILE{suffix}")
        sub.add_argument("--spec", type=Path, help="resolve NAME from this YAML instead")
        sub.set_defaults(func=func)
    data_commands.choices["show"].add_argument("--count", type=int, default=8)

    train = commands.add_parser("train", help="train one run config (resumes if interrupted)")
    train.add_argument("config", type=Path, help="run config YAML")
    train.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. stages.1.lr=1e-5"
    )
    train.set_defaults(func=_train)

    ui = commands.add_parser("ui", help="start the MLflow UI on the tracking store")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=_ui)
    for sub in (train, ui):
        sub.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or ./mlflow.db")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one line and return 2."""
    args = _parser().parse_args(argv)
    from zoo.errors import ConfigError, DataError

    try:
        args.func(args)
    except (ConfigError, DataError) as error:
        print(f"zoo: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
