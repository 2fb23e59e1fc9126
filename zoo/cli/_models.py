"""``zoo models`` (list, show, export, register) and ``zoo predict``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from zoo.cli._analysis import target_experiment
from zoo.cli._specs import resolver, store
from zoo.cli._types import positive, registry_name, writable

__all__ = ["add_model_parsers"]


def add_model_parsers(commands: Any) -> list[argparse.ArgumentParser]:
    """The `models` and `predict` parsers; returns those reading the tracking store."""
    models = commands.add_parser("models", help="list, show, export and register trained models")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    listing = model_commands.add_parser("list", help="one row per trained model, best first")
    listing.add_argument("target", nargs="?", help="sweep spec YAML or experiment (default: all)")
    listing.add_argument("--where", action="append", default=[], metavar="AXIS=VALUE")
    listing.add_argument("--sort", metavar="METRIC", help="default: the task's headline")
    listing.add_argument("--limit", type=positive(int), metavar="N")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_models_list)
    show = model_commands.add_parser("show", help="config, metrics, lineage and datasets")
    show.set_defaults(func=_models_show)
    export = model_commands.add_parser("export", help="safetensors, config.yaml and a model card")
    export.add_argument("--out", type=writable("folder"), required=True, metavar="DIR")
    export.add_argument("--force", action="store_true", help="write into a non-empty --out")
    export.set_defaults(func=_models_export)
    register = model_commands.add_parser("register", help="add to MLflow's Model Registry")
    register.add_argument("--name", type=registry_name("name"), required=True)
    register.add_argument("--alias", type=registry_name("alias"))
    register.set_defaults(func=_models_register)
    ref_help = "run id, NAME@ALIAS, NAME/VERSION or EXPERIMENT[:AXIS=VALUE,...] (best match)"
    for sub in (show, export, register):
        sub.add_argument("ref", metavar="REF", help=ref_help)

    return [listing, show, export, register, _predict_parser(commands, ref_help)]


def _predict_parser(commands: Any, ref_help: str) -> argparse.ArgumentParser:
    """The `predict` parser."""
    predict = commands.add_parser("predict", help="apply a trained model to images")
    predict.add_argument("ref", metavar="REF", help=ref_help)
    predict.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="PNG, TIFF, MRC, DM, NPY, NPZ or HDF5 files, or folders of them",
    )
    predict.add_argument("--out", type=writable("folder"), required=True, metavar="DIR")
    predict.add_argument(
        "--pixel-size",
        type=positive(float),
        metavar="A",
        help="Å per pixel of the inputs (default: read from the file)",
    )
    predict.add_argument(
        "--rescale", action="store_true", help="resample inputs to the model's pixel size"
    )
    predict.add_argument(
        "--force", action="store_true", help="ignore a pixel-size mismatch and a non-empty --out"
    )
    predict.add_argument(
        "--batch-size", type=positive(int), default=16, metavar="N", help="tiles per pass"
    )
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument(
        "--tile", type=positive(int), metavar="PX", help="tile side (default: training size)"
    )
    predict.add_argument(
        "--overlap", type=int, metavar="PX", help="pixels tiles share (default: half a tile)"
    )
    predict.add_argument("--tta", action="store_true", help="average the 8 flips and rotations")
    predict.add_argument(
        "--max-pixels",
        type=positive(int),
        default=2**30,
        metavar="N",
        help="refuse larger images, height x width (default: 2^30, 32768 x 32768)",
    )
    predict.set_defaults(func=_predict)
    return predict


def _models_list(args: argparse.Namespace) -> None:
    from zoo import modelzoo
    from zoo.errors import ConfigError
    from zoo.paths import ProjectPaths
    from zoo.store import existing_store

    experiments = [target_experiment(args.target, resolver(args))[0]] if args.target else None
    # a listing never creates (nor opens) a store
    uri = existing_store(args.tracking_uri, ProjectPaths.default())
    # text sorted by a target_ metric shows no other metric: read those alone
    shown = not (args.json or args.where) and (args.sort or "target_").startswith("target_")
    table = modelzoo.model_table(uri, experiments, every_metric=not shown)
    if table.empty:
        print(f"no trained models in {uri}")
        return
    table = modelzoo.filter_models(table, args.where)
    try:
        table = modelzoo.sort_models(table, args.sort)
    except ConfigError:
        if not shown:
            raise
        # no such metric among those read: the error names every metric there is
        table = modelzoo.sort_models(modelzoo.model_table(uri, experiments), args.sort)
    table = table.head(args.limit)
    if args.json:
        print(table.to_json(orient="records", indent=1, force_ascii=False))
    else:
        print(modelzoo.format_models(table, args.sort, _terminal_width()))


def _terminal_width() -> int | None:
    """The terminal's width in characters; None when output goes to a file or pipe."""
    import shutil

    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def _models_show(args: argparse.Namespace) -> None:
    import yaml

    from zoo.paths import ProjectPaths
    from zoo.store import existing_store

    # a missing store fails before torch is imported
    existing_store(args.tracking_uri, ProjectPaths.default())
    from zoo import modelzoo

    tracker = store(args, create=False)
    info = modelzoo.describe(modelzoo.load(args.ref, tracker), tracker)
    info["metrics"] = {k: float(f"{v:.4g}") for k, v in info["metrics"].items()}  # as printed
    print(yaml.safe_dump(info, sort_keys=False, allow_unicode=True), end="")


def _models_export(args: argparse.Namespace) -> None:
    from zoo.paths import ProjectPaths, check_out_folder
    from zoo.store import existing_store

    check_out_folder(args.out, args.force)
    # a missing store fails before torch is imported
    existing_store(args.tracking_uri, ProjectPaths.default())
    from zoo import modelzoo

    tracker = store(args, create=False)
    print(modelzoo.export_model(modelzoo.load(args.ref, tracker), tracker, args.out, args.ref))


def _models_register(args: argparse.Namespace) -> None:
    from zoo.paths import ProjectPaths
    from zoo.store import existing_store

    # a missing store fails before torch is imported
    existing_store(args.tracking_uri, ProjectPaths.default())
    from zoo import modelzoo

    run_id, version = modelzoo.register_model(
        args.ref, args.name, store(args, create=False), args.alias
    )
    alias = f", alias {args.name}@{args.alias}" if args.alias else ""
    print(f"registered run {run_id} as {args.name}/{version}{alias}")


def _predict(args: argparse.Namespace) -> None:
    from zoo._inputs import check_exist
    from zoo.paths import ProjectPaths
    from zoo.store import existing_store

    check_exist(args.inputs)  # missing inputs and stores fail before torch is imported
    existing_store(args.tracking_uri, ProjectPaths.default())
    from zoo.predict import PredictOptions, predict

    options = PredictOptions(
        pixel_size_a=args.pixel_size,
        rescale=args.rescale,
        force=args.force,
        batch_size=args.batch_size,
        device=args.device,
        tile=args.tile,
        overlap=args.overlap,
        tta=args.tta,
        max_pixels=args.max_pixels,
    )
    for line in predict(args.ref, args.inputs, args.out, store(args, create=False), options):
        print(line)
