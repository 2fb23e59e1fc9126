"""The ``zoo`` command line: parses arguments and calls into zoo; no logic of its own.

Heavy libraries (torch, mlflow, seaborn) are imported inside the commands, so
``zoo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _definition() -> Path:
    from zoo.resources import resource

    return resource("transfer.yaml")


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


def _sweep_plan(args: argparse.Namespace) -> None:
    import json

    from zoo import sweep

    plan = sweep.make_plan(sweep.load_spec(args.spec))
    if args.profile:
        from zoo.sweep._cost import format_cost, profile_report

        summary = profile_report(plan, args.profile, args.workers, args.show)
        print(json.dumps(summary, indent=1) if args.json else format_cost(summary))
        return
    rate = args.images_per_s or sweep.measure_images_per_s(plan.runs[0].config)
    summary = sweep.report(plan, rate, args.show)
    print(json.dumps(summary, indent=1) if args.json else sweep.format_report(summary))


def _sweep_run(args: argparse.Namespace) -> int:
    from zoo import sweep
    from zoo.tracking import Tracker

    plan = sweep.make_plan(sweep.load_spec(args.spec))
    result = sweep.run_sweep(
        plan, Tracker(args.tracking_uri), args.workers, runs_per_gpu=args.runs_per_gpu
    )
    print(
        f"finished {len(result.finished)}, already finished {len(result.already)}, "
        f"failed {len(result.failed)}, skipped {len(result.skipped)}"
    )
    for key, reason in result.failed.items():
        print(f"  failed {key}: {reason}")
    if result.interrupted:
        return 130
    return 1 if result.failed or result.skipped else 0


def _sweep_submit(args: argparse.Namespace) -> None:
    import dataclasses

    from zoo import sweep
    from zoo.sweep._slurm import SubmitOptions, submit
    from zoo.tracking import Tracker

    plan = sweep.make_plan(sweep.load_spec(args.spec))
    names = [f.name for f in dataclasses.fields(SubmitOptions)]
    options = SubmitOptions(**{**{n: getattr(args, n) for n in names}, "extra": tuple(args.extra)})
    submit(plan, Tracker(args.tracking_uri), options)


def _sweep_worker(args: argparse.Namespace) -> int:
    from zoo.sweep._slurm import worker

    return worker(args.submission, args.array, args.task)


def _gc(args: argparse.Namespace) -> None:
    from zoo import gc
    from zoo.paths import ProjectPaths
    from zoo.tracking import Tracker

    paths = ProjectPaths.default()
    found = gc.collect(paths, args.specs, lambda: Tracker(args.tracking_uri, paths))
    for item in found:
        print(f"{gc.format_bytes(item.bytes):>10}  {item.path}  ({item.why})")
    freed = sum(item.bytes for item in found) if args.dry_run else gc.remove(found, paths)
    verb = "would free" if args.dry_run else "freed"
    print(f"{verb} {gc.format_bytes(freed)} ({freed} bytes) in {len(found)} item(s)")


def _calibrate(args: argparse.Namespace) -> None:
    from zoo.calibrate import calibrate, save_profile
    from zoo.paths import ProjectPaths

    print(f"profile saved: {save_profile(calibrate(args.name, args.spec), ProjectPaths.default())}")


def _sweep_status(args: argparse.Namespace) -> None:
    import json

    from zoo import sweep
    from zoo.tracking import Tracker

    plan = sweep.make_plan(sweep.load_spec(args.spec))
    status = sweep.sweep_status(plan, Tracker(args.tracking_uri))
    print(
        json.dumps(status, indent=1) if args.json else sweep.format_status(plan.spec.name, status)
    )


def _analyze(args: argparse.Namespace) -> None:
    from zoo import analysis
    from zoo.paths import ProjectPaths
    from zoo.tracking import tracking_uri

    uri = tracking_uri(args.tracking_uri, ProjectPaths.default())
    experiment, expected = _experiment(args.target)
    baseline = analysis.load(uri, _experiment(args.baseline)[0]) if args.baseline else None
    result = analysis.analyze(
        analysis.load(uri, experiment),
        args.out,
        analysis.load_definition(args.definition or _definition()),
        offset=args.offset,
        baseline=baseline,
        expected=expected,
    )
    print(", ".join(f"{k} {v}" for k, v in result.status.items()))
    for name, reason in result.skipped.items():
        print(f"  figure {name} not drawn: {reason}")
    print(f"report: {result.report}")


def _experiment(target: str) -> tuple[str, set[str] | None]:
    """(experiment name, config hashes of the runs a spec expects) for a spec path or a name."""
    if not target.endswith((".yaml", ".yml")):
        return target, None
    from zoo import sweep

    plan = sweep.make_plan(sweep.load_spec(target))
    return plan.spec.name, {j.key for j in plan.jobs if j.kind == "run"}


def _import(args: argparse.Namespace) -> None:
    from zoo import analysis
    from zoo.paths import ProjectPaths
    from zoo.tracking import tracking_uri

    mapping = analysis.load_mapping(
        args.mapping, args.axis, args.metric, {"losses": args.losses, "offset": args.offset}
    )
    uri = tracking_uri(args.tracking_uri, ProjectPaths.default())
    count = analysis.import_table(args.table, args.experiment, mapping, uri)
    print(f"imported {count} runs into experiment {args.experiment!r} ({uri})")


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

    sweep = commands.add_parser("sweep", help="plan, run and follow sweeps")
    sweep_commands = sweep.add_subparsers(dest="sweep_command", required=True)
    plan = sweep_commands.add_parser("plan", help="counts, shared stages and cost; runs nothing")
    plan.add_argument("--json", action="store_true")
    plan.add_argument("--images-per-s", type=float, help="throughput (default: measured here)")
    plan.add_argument("--show", type=int, default=3, help="expanded configs to print")
    plan.add_argument("--profile", help="price on a throughput profile (zoo calibrate NAME)")
    plan.add_argument("--workers", type=int, default=1, help="workers the prediction assumes")
    plan.set_defaults(func=_sweep_plan)
    run_sweep = sweep_commands.add_parser("run", help="train what is missing or failed, locally")
    run_sweep.add_argument("--workers", type=int, default=1, help="worker processes")
    run_sweep.add_argument(
        "--runs-per-gpu",
        type=int,
        default=1,
        metavar="N",
        help="with GPUs: N worker processes per GPU (overrides --workers)",
    )
    run_sweep.set_defaults(func=_sweep_run)
    status = sweep_commands.add_parser("status", help="counts by state from the tracking store")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_sweep_status)
    submit = sweep_commands.add_parser("submit", help="submit to SLURM as job arrays")
    for option in ("partition", "account", "qos", "time", "constraint"):
        submit.add_argument(f"--{option}")
    submit.add_argument("--gpus-per-task", type=int)
    submit.add_argument("--cpus-per-task", type=int)
    submit.add_argument("--mem-per-task", help="e.g. 16G")
    submit.add_argument("--max-parallel", type=int, help="array throttle %%N")
    submit.add_argument("--runs-per-task", type=int, default=1, help="runs one array task trains")
    submit.add_argument(
        "--runs-per-gpu",
        type=int,
        default=1,
        metavar="N",
        help="of a task's runs, N train at once as processes sharing its GPU",
    )
    submit.add_argument("--gpu-power", type=int, metavar="W", help="GPU power cap in watts")
    submit.add_argument(
        "--site-gpu-power", action="store_true", help="the site understands #SBATCH --gpu-power=W"
    )
    submit.add_argument(
        "--grace",
        dest="grace_s",
        type=int,
        default=120,
        metavar="S",
        help="USR1 this many seconds before the time limit",
    )
    submit.add_argument(
        "--max-requeues",
        type=int,
        default=3,
        metavar="N",
        help="requeue a preempted task at most N times; then its run ends FAILED",
    )
    submit.add_argument(
        "--sbatch",
        dest="extra",
        action="append",
        default=[],
        metavar="--OPTION=VALUE",
        help="extra #SBATCH line (repeatable)",
    )
    submit.add_argument(
        "--resubmit-failed",
        action="store_true",
        help="add only failed and missing jobs while others are queued",
    )
    submit.add_argument("--dry-run", action="store_true", help="print scripts; submit nothing")
    submit.add_argument("--data-partition", help="partition of the dataset array (CPU)")
    submit.add_argument("--data-cpus", type=int, help="CPUs per dataset array task")
    submit.add_argument("--data-time", help="time limit of a dataset array task")
    submit.set_defaults(func=_sweep_submit)
    work = sweep_commands.add_parser("worker", help="(run by SLURM) train one array task")
    work.add_argument("submission", type=Path)
    work.add_argument("array")
    work.add_argument("task", type=int)
    work.set_defaults(func=_sweep_worker)
    for sub in (plan, run_sweep, status, submit):
        sub.add_argument("spec", type=Path, help="sweep spec YAML")

    analyze = commands.add_parser("analyze", help="tables, figures and report.html of a sweep")
    analyze.add_argument("target", help="sweep spec YAML, or an experiment name")
    analyze.add_argument("--out", type=Path, required=True, metavar="DIR")
    analyze.add_argument(
        "--definition",
        type=Path,
        help="report definition (default: the packaged transfer.yaml)",
    )
    analyze.add_argument(
        "--offset",
        type=float,
        help="loss floor to subtract (default: each "
        "run's own, e.g. 0.3133 for a 2-class softmax head)",
    )
    analyze.add_argument("--baseline", help="single-stage baseline sweep spec or experiment")
    analyze.set_defaults(func=_analyze)

    imports = commands.add_parser("import", help="log a results table (CSV) as finished runs")
    imports.add_argument("table", type=Path)
    imports.add_argument("--experiment", required=True)
    imports.add_argument("--mapping", type=Path, help="YAML: axes, metrics, losses, offset")
    imports.add_argument("--axis", action="append", default=[], metavar="COLUMN[=NAME]")
    imports.add_argument("--metric", action="append", default=[], metavar="COLUMN=NAME")
    imports.add_argument("--losses", choices=["raw", "adjusted"])
    imports.add_argument("--offset", type=float)
    imports.set_defaults(func=_import)
    measure = commands.add_parser("calibrate", help="measure a throughput profile on this machine")
    measure.add_argument("name", help="profile name, e.g. h100 or cpu-2core")
    measure.add_argument("spec", type=Path, nargs="?", help="sweep spec (default: demo model)")
    measure.set_defaults(func=_calibrate)
    collect = commands.add_parser("gc", help="remove what no sweep needs; print bytes freed")
    collect.add_argument("specs", type=Path, nargs="*", metavar="SPEC", help="sweeps to keep")
    collect.add_argument("--dry-run", action="store_true", help="list only; remove nothing")
    collect.set_defaults(func=_gc)
    for sub in (train, ui, run_sweep, status, submit, analyze, imports, collect):
        sub.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or ./mlflow.db")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (user errors: one line on stderr, 2)."""
    args = _parser().parse_args(argv)
    from zoo.errors import ConfigError, DataError

    try:
        return args.func(args) or 0
    except (ConfigError, DataError) as error:
        print(f"zoo: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
