"""``zoo data``: make, show and export datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli._errors import config_error
from zoo.cli._types import positive, writable

__all__ = ["add_data_parser"]


def add_data_parser(commands) -> None:
    """The `data` parsers: make, show and export."""
    data = commands.add_parser("data", help="make, preview and export datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    make = data_commands.add_parser("make", help="generate the datasets a YAML file declares")
    make.add_argument("file", type=Path, help="YAML with a top-level 'datasets:' mapping")
    make.add_argument("names", nargs="*", help="only these datasets (default: all)")
    make.add_argument(
        "--preview", type=writable("folder"), metavar="DIR", help="also write DIR/NAME.png"
    )
    make.set_defaults(func=_data_make)
    for verb, func, suffix, help_text in (
        ("show", _data_show, ".png", "write a grid of images with mask outlines"),
        (
            "export",
            _data_export,
            ".npz|.mrc|.tif",
            "write images, masks, pixel_size_A and "
            "parameters (.npz), or the images with their pixel size (.mrc, .tif)",
        ),
    ):
        sub = data_commands.add_parser(verb, help=help_text)
        sub.add_argument("name", help="dataset name (as made by `zoo data make`)")
        sub.add_argument("--out", type=writable("file"), required=True, metavar=f"FILE{suffix}")
        sub.add_argument("--spec", type=Path, help="resolve NAME from this YAML instead")
        sub.set_defaults(func=func)
    data_commands.choices["show"].add_argument("--count", type=positive(int), default=8)


def _data_make(args: argparse.Namespace) -> None:
    from zoo import data
    from zoo.paths import ProjectPaths

    paths = ProjectPaths.default()
    sources = data.declared(args.file)
    for name in args.names:
        if name not in sources:
            raise config_error(f"{args.file}: no dataset {name!r}; declared: {', '.join(sources)}")
    for name in args.names or sources:
        if parts := sources[name].parts():
            print(f"{name}: a mixture of {', '.join(parts)} (made when a run uses it)")
            continue
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
            raise config_error(f"{args.spec}: no dataset {args.name!r}")
        return data.materialise(args.name, sources[args.name], paths)
    return data.lookup(args.name, paths)


def _data_show(args: argparse.Namespace) -> None:
    import numpy as np

    from zoo import data
    from zoo.paths import DatasetPaths

    files = DatasetPaths(_data_folder(args))
    images = np.load(files.images)
    # an unlabeled dataset stores no masks: its images are shown without outlines
    masks = np.load(files.masks) if files.masks.exists() else np.zeros(images.shape, np.uint8)
    print(data.preview(images[: args.count], masks[: args.count], args.out))


def _data_export(args: argparse.Namespace) -> None:
    from zoo import data
    from zoo.errors import ConfigError

    if args.out.suffix not in (".npz", ".mrc", ".tif", ".tiff"):
        raise ConfigError(
            f"--out: {str(args.out)!r} is not allowed; expected FILE.npz, .mrc or .tif"
        )
    data.export(_data_folder(args), args.out)
    print(args.out)
