"""``zoo analyze``, ``zoo import``, ``zoo calibrate`` and ``zoo gc``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from zoo.cli._specs import resolver
from zoo.cli._types import finite, profile_name, writable

__all__ = ["add_analysis_parsers", "target_experiment"]


def add_analysis_parsers(commands) -> list[argparse.ArgumentParser]:
    """The `analyze`, `import`, `calibrate` and `gc` parsers; returns those reading the
    tracking store."""
    analyze = commands.add_parser("analyze", help="tables, figures and report.html of a sweep")
    analyze.add_argument("target", help="sweep spec YAML, or an experiment name")
    analyze.add_argument("--out", type=writable("folder"), required=True, metavar="DIR")
    analyze.add_argument(
        "--definition",
        type=Path,
        help="report definition (default: the packaged transfer.yaml)",
    )
    analyze.add_argument(
        "--offset",
        type=finite,
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
    imports.add_argument("--offset", type=finite)
    imports.set_defaults(func=_import)
    measure = commands.add_parser("calibrate", help="measure a throughput profile on this machine")
    measure.add_argument("name", type=profile_name, help="profile name, e.g. h100 or cpu-2core")
    measure.add_argument("spec", type=Path, nargs="?", help="sweep spec (default: demo model)")
    measure.set_defaults(func=_calibrate)
    collect = commands.add_parser("gc", help="remove what no sweep needs; print bytes freed")
    collect.add_argument("specs", type=Path, nargs="*", metavar="SPEC", help="sweeps to keep")
    collect.add_argument("--dry-run", action="store_true", help="list only; remove nothing")
    collect.set_defaults(func=_gc)
    return [analyze, imports, collect]


def _analyze(args: argparse.Namespace) -> None:
    from zoo import analysis
    from zoo.paths import ProjectPaths
    from zoo.store import backend, existing_store

    # not opened: a SQLite store is read by ADBC
    uri = existing_store(args.tracking_uri, ProjectPaths.default())
    experiment, expected = target_experiment(args.target, resolver(args))
    analysis.prefetch()  # figures' and publishing's imports, while the store is read
    baseline = (
        analysis.load(uri, target_experiment(args.baseline, resolver(args))[0])
        if args.baseline
        else None
    )
    result = analysis.analyze(
        analysis.load(uri, experiment),
        args.out,
        analysis.load_definition(args.definition or _definition()),
        offset=args.offset,
        baseline=baseline,
        expected=expected,
        sweep=experiment,
        ui=uri.rstrip("/") if backend(uri) == "http" else "http://127.0.0.1:5000",  # `zoo ui`
    )
    if args.target.endswith((".yaml", ".yml")) and _is_search(args.target):
        from zoo.paths import ProjectPaths
        from zoo.sweep import _search, _search_report

        spec, block = _search.load_search(args.target, (), resolver(args))
        _search_report.add_to_report(spec, block, ProjectPaths.default(), result.report)
    print(", ".join(f"{k} {v}" for k, v in result.status.items()))
    for name, reason in result.skipped.items():
        print(f"  figure {name} not drawn: {reason}")
    print(f"report: {result.report}")
    run_id = analysis.publish(result.report, uri, experiment)
    if run_id:
        print(f"report in MLflow: run {run_id} (artifacts report/report.html)")


def target_experiment(target: str, resolver: Any = None) -> tuple[str, set[str] | None]:
    """(experiment name, config hashes of the runs a spec expects) for a spec path or a name,
    the spec's runs resolved against ``resolver`` (zoo.cli._specs.resolver)."""
    if not target.endswith((".yaml", ".yml")):
        return target, None
    from zoo import sweep

    if sweep.is_search(target):
        return sweep.load_spec(target).name, None
    plan = sweep.make_plan(sweep.load_spec(target, resolver=resolver))
    return plan.spec.name, {j.key for j in plan.jobs if j.kind == "run"}


def _is_search(target: str) -> bool:
    from zoo import sweep

    return sweep.is_search(target)


def _definition() -> Path:
    from zoo.resources import resource

    return resource("transfer.yaml")


def _import(args: argparse.Namespace) -> None:
    from zoo import analysis
    from zoo.paths import ProjectPaths
    from zoo.store import tracking_uri

    mapping = analysis.load_mapping(
        args.mapping, args.axis, args.metric, {"losses": args.losses, "offset": args.offset}
    )
    uri = tracking_uri(args.tracking_uri, ProjectPaths.default())
    rows, added = analysis.import_table(args.table, args.experiment, mapping, uri)
    print(
        f"imported {added} runs into experiment {args.experiment!r} ({uri}); "
        f"{rows - added} of {rows} rows were already there"
    )


def _calibrate(args: argparse.Namespace) -> None:
    from zoo.calibrate import calibrate, save_profile
    from zoo.config import Resolver
    from zoo.paths import ProjectPaths

    paths = ProjectPaths.default()
    profile = calibrate(args.name, args.spec, resolver=Resolver(paths))
    print(f"profile saved: {save_profile(profile, paths)}")


def _gc(args: argparse.Namespace) -> None:
    from zoo import gc
    from zoo.paths import ProjectPaths
    from zoo.store import Tracker

    paths = ProjectPaths.default()
    found = gc.collect(paths, args.specs, lambda: Tracker(args.tracking_uri, paths), resolver(args))
    garbage = [item for item in found if not item.holder]  # the rest: running work holds it
    for item in garbage:
        print(f"{gc.format_bytes(item.bytes):>10}  {item.path}  ({item.why})")
    freed = sum(item.bytes for item in garbage) if args.dry_run else gc.remove(found, paths)
    verb = "would free" if args.dry_run else "freed"
    if len(garbage) < len(found):
        print(gc.kept(found))
    print(f"{verb} {gc.format_bytes(freed)} ({freed} bytes) in {len(garbage)} item(s)")
