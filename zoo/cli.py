"""The ``zoo`` command line: parses arguments and calls into zoo; no logic of its own.

Heavy libraries (torch, mlflow, seaborn) are imported inside the commands, so
``zoo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _definition() -> Path:
    from zoo.resources import resource

    return resource("transfer.yaml")


def _data_make(args: argparse.Namespace) -> None:
    from zoo import data
    from zoo.paths import ProjectPaths

    paths = ProjectPaths.default()
    sources = data.declared(args.file)
    for name in args.names:
        if name not in sources:
            raise _config_error(f"{args.file}: no dataset {name!r}; declared: {', '.join(sources)}")
    for name in args.names or sources:
        if isinstance(sources[name], data.MixSpec):
            print(f"{name}: a mixture of {', '.join(sources[name].mix)} (made when a run uses it)")
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
            raise _config_error(f"{args.spec}: no dataset {args.name!r}")
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


def _train(args: argparse.Namespace) -> None:
    from zoo._malloc import keep_freed_memory
    from zoo.config import load_config
    from zoo.paths import ProjectPaths
    from zoo.run import preflight, run
    from zoo.tracking import Tracker

    config = load_config(args.config, args.overrides)
    paths = ProjectPaths.default()
    prepared = preflight(config, paths)  # bad input refused before the store is opened
    keep_freed_memory()
    run(config, Tracker(args.tracking_uri, paths), paths, prepared=prepared)


def _ui(args: argparse.Namespace) -> int:
    from zoo._ui_process import serve
    from zoo.paths import ProjectPaths
    from zoo.tracking import tracking_uri

    paths = ProjectPaths.default()
    return serve(tracking_uri(args.tracking_uri, paths), args.port, paths.ui_log)


def _sweep_plan(args: argparse.Namespace) -> None:
    import json

    from zoo import sweep

    if _given_a_search(args):
        from zoo.sweep import _search, _search_report

        spec, block = _search.load_search(args.spec, args.overrides)
        summary = _search_report.search_plan(spec, block, args.images_per_s)
        text = _search_report.format_search_plan(summary)
        print(json.dumps(summary, indent=1) if args.json else text)
        return
    plan = sweep.make_plan(_executed_spec(args))
    if args.show is not None:
        print(sweep.show_run(plan, args.show), end="")
        return
    from zoo.sweep._cost import format_priced, priced_report

    summary = priced_report(plan, args.profile, args.images_per_s, args.workers)
    print(json.dumps(summary, indent=1) if args.json else format_priced(summary))


def _given_a_search(
    args: argparse.Namespace,
    refused: tuple[str, ...] = ("gpu_power", "gpus_per_task", "rehearse", "profile", "show"),
) -> bool:
    """Whether ``args.spec`` is a search spec; one given any of the ``refused`` options
    is refused (``--gpu-power``, ``--gpus-per-task``: a search's runs take them from its
    base config; ``--rehearse``, ``--profile``, ``--show``: grid sweeps only)."""
    from zoo import sweep

    if not sweep.is_search(args.spec):
        return False
    expected = {
        "gpu_power": "power_cap_w in its base config",
        "gpus_per_task": "devices in its base config",
        "rehearse": "a grid sweep spec",
        "profile": "--images-per-s (a search is priced by its training image passes)",
        "show": "a grid sweep spec (a search's runs are sampled as it goes)",
    }
    for option in refused:
        value = getattr(args, option, None)
        if value is not None and value is not False:  # given (--show 0 is given)
            instead = expected[option]
            raise _config_error(
                f"--{option.replace('_', '-')}: not allowed for a search spec; expected {instead}"
            )
    return True


def _executed_spec(args: argparse.Namespace):
    """The spec of ``args`` with its ``KEY=VALUE`` overrides (its rehearsal with
    ``--rehearse``) and the options that change what its runs compute
    (``--gpus-per-task``, ``--gpu-power``: zoo.sweep.with_execution), so plan, run,
    submit and status given the same options compute the same keys."""
    from zoo import sweep

    spec = _rehearsed(sweep.load_spec(args.spec, args.overrides), args)
    return sweep.with_execution(spec, getattr(args, "gpus_per_task", None), args.gpu_power)


def _rehearsed(spec, args: argparse.Namespace):
    """``spec``, or with ``--rehearse`` its rehearsal (zoo.sweep.rehearsal)."""
    from zoo import sweep

    return sweep.rehearsal(spec) if args.rehearse else spec


def _search_run(args: argparse.Namespace) -> int:
    import json

    from zoo import sweep
    from zoo.sweep import _search
    from zoo.tracking import Tracker

    spec, block = _search.load_search(args.spec, args.overrides)
    sweep.start_worker_server()
    status = _search.run_search(spec, block, Tracker(args.tracking_uri), args.workers)
    print(_search.format_search_status(spec.name, status))
    for key, reason in status["failed_workers"].items():
        print(f"  worker {key} failed: {reason}")
    if args.json:
        print(json.dumps(status, default=str))
    return _stop_status() if status["interrupted"] else 1 if status["failed_workers"] else 0


def _sweep_run(args: argparse.Namespace) -> int:
    from zoo import sweep
    from zoo.tracking import Tracker

    if _given_a_search(args):
        return _search_run(args)
    spec = _executed_spec(args)
    sweep.start_worker_server()  # its imports overlap the plan and the store's opening
    plan = sweep.make_plan(spec)
    sweep.check_plan(plan)
    sweep.check_placement(plan, args.workers, args.runs_per_gpu)
    priced = _priced(plan, args.profile)  # an unknown profile is refused before the store
    result = sweep.run_sweep(
        plan,
        Tracker(args.tracking_uri),
        args.workers,
        runs_per_gpu=args.runs_per_gpu,
        priced=priced,
    )
    counts = (
        f"finished {len(result.finished)}, already finished {len(result.already)}, "
        f"failed {len(result.failed)}, skipped {len(result.skipped)}"
    )
    if result.interrupted:  # one line: the same command resumes the killed runs
        counts = f"{_stopped_by()}: {counts}, killed {len(result.killed)} (resumable)"
    print(counts)
    for key, reason in result.failed.items():
        print(f"  failed {key}: {reason}")
    if result.interrupted:
        return _stop_status()
    return 1 if result.failed or result.skipped else 0


def _priced(plan, profile: str | None) -> dict[str, float] | None:
    """Job key -> seconds on throughput profile ``profile`` (None without one)."""
    if profile is None:
        return None
    from zoo.calibrate import load_profile
    from zoo.paths import ProjectPaths
    from zoo.sweep._cost import job_seconds

    return job_seconds(plan, load_profile(profile, ProjectPaths.default()))


def _stop_signal(error: BaseException | None = None):
    """The signal that stopped this command (else the worker ``error`` came from);
    Ctrl-C's SIGINT when none is known."""
    import signal

    from zoo._signals import received

    return signal.Signals(received() or getattr(error, "signum", None) or signal.SIGINT)


def _stopped_by(error: BaseException | None = None) -> str:
    return f"stopped by {_stop_signal(error).name}"


def _stop_status(error: BaseException | None = None) -> int:
    """128 + the signal number, as a shell reports a process a signal ended."""
    return 128 + _stop_signal(error)


def _sweep_submit(args: argparse.Namespace) -> None:
    import dataclasses

    from zoo import sweep
    from zoo.calibrate import load_profile
    from zoo.paths import ProjectPaths
    from zoo.sweep import _search
    from zoo.sweep._packing import with_auto_runs_per_task
    from zoo.sweep._rehearsal import check_resubmit
    from zoo.sweep._slurm import SubmitOptions, submit, with_options
    from zoo.tracking import Tracker, refuse_network_sqlite, tracking_uri

    names = [f.name for f in dataclasses.fields(SubmitOptions)]
    auto = args.runs_per_task == "auto"
    given = {n: getattr(args, n) for n in names}
    if auto:  # decided once the plan is made; the least it can be meanwhile
        given["runs_per_task"] = max(args.runs_per_gpu, 1)
    options = SubmitOptions(**{**given, "extra": tuple(args.extra)})
    options.validate()
    _check_auto(auto, args.profile)
    if not options.dry_run and not args.allow_network_sqlite:
        refuse_network_sqlite(tracking_uri(args.tracking_uri, ProjectPaths.default()))
    search = _given_a_search(args, ("gpu_power", "rehearse"))  # its tasks may get GPUs
    if search:
        if auto:
            raise _config_error("--runs-per-task: auto is not allowed for a search spec")
        spec, block = _search.load_search(args.spec, args.overrides)
    elif args.workers is not None:
        raise _config_error("--workers: only for a search spec; a grid sweep has one task per job")
    else:
        plan = sweep.make_plan(_rehearsed(sweep.load_spec(args.spec, args.overrides), args))
        check_resubmit(plan.spec, options.resubmit_failed, ProjectPaths.default())
        sweep.check_plan(plan)  # on this machine's devices: before the task's options
        plan = with_options(plan, options)
        if auto:
            profile = load_profile(args.profile, ProjectPaths.default())
            options = with_auto_runs_per_task(plan, options, profile)
    # the spec is good: only now is the store opened (and, unless a dry run, created)
    tracker = _read_only(args.tracking_uri) if options.dry_run else Tracker(args.tracking_uri)
    if search:
        _search.submit_search(spec, block, tracker, options, args.workers or 1)
    else:
        submit(plan, tracker, options)


def _check_auto(auto: bool, profile: str | None) -> None:
    """``--runs-per-task auto`` needs a profile to price runs, and only it uses one."""
    if auto and profile is None:
        raise _config_error(
            "--runs-per-task: auto needs --profile NAME, the throughput profile it prices "
            "runs on (measure one with `zoo calibrate NAME` on a compute node)"
        )
    if profile is not None and not auto:
        raise _config_error(f"--profile: {profile!r} is only used with --runs-per-task auto")


def _completion(args: argparse.Namespace) -> None:
    from zoo._completion import script

    print(script(_parser(), args.shell), end="")


def _sweep_worker(args: argparse.Namespace) -> int:
    from zoo.sweep._slurm import worker

    return worker(args.submission, args.array, args.task)


def _gc(args: argparse.Namespace) -> None:
    from zoo import gc
    from zoo.paths import ProjectPaths
    from zoo.tracking import Tracker

    paths = ProjectPaths.default()
    found = gc.collect(paths, args.specs, lambda: Tracker(args.tracking_uri, paths))
    garbage = [item for item in found if not item.holder]  # the rest: running work holds it
    for item in garbage:
        print(f"{gc.format_bytes(item.bytes):>10}  {item.path}  ({item.why})")
    freed = sum(item.bytes for item in garbage) if args.dry_run else gc.remove(found, paths)
    verb = "would free" if args.dry_run else "freed"
    if len(garbage) < len(found):
        print(gc.kept(found))
    print(f"{verb} {gc.format_bytes(freed)} ({freed} bytes) in {len(garbage)} item(s)")


def _calibrate(args: argparse.Namespace) -> None:
    from zoo.calibrate import calibrate, save_profile
    from zoo.paths import ProjectPaths

    print(f"profile saved: {save_profile(calibrate(args.name, args.spec), ProjectPaths.default())}")


def _sweep_status(args: argparse.Namespace) -> None:
    import json

    from zoo import sweep
    from zoo.paths import ProjectPaths
    from zoo.tracking import existing_store

    if _given_a_search(args):
        from zoo.sweep import _search

        spec, block = _search.load_search(args.spec, args.overrides)
        result = _search.search_status(spec, block, ProjectPaths.default())
        text = _search.format_search_status(spec.name, result)
        print(json.dumps(result, indent=1, default=str) if args.json else text)
        return
    plan = sweep.make_plan(_executed_spec(args))
    paths = ProjectPaths.default()
    status = sweep.sweep_status(plan, existing_store(args.tracking_uri, paths), paths)
    print(
        json.dumps(status, indent=1) if args.json else sweep.format_status(plan.spec.name, status)
    )


def _sweep_cancel(args: argparse.Namespace) -> int:
    from zoo.paths import ProjectPaths
    from zoo.sweep._cancel import cancel
    from zoo.sweep._rehearsal import SUFFIX
    from zoo.sweep._spec import load_spec

    name = load_spec(args.spec).name + (SUFFIX if args.rehearse else "")
    cancel(name, ProjectPaths.default())
    return 0


def _sweep_logs(args: argparse.Namespace) -> None:
    from zoo.paths import ProjectPaths
    from zoo.sweep._logs import find_log, tail

    log = find_log(args.run, ProjectPaths.default(), args.tracking_uri)
    print(f"==> {log} <==", file=sys.stderr)
    print(tail(log, args.tail), end="")


def _read_only(uri: str | None):
    """A Tracker that creates nothing; over a SQLite store not created yet, an empty one."""
    from zoo.tracking import EmptyStore, StoreMissing, Tracker

    try:
        return Tracker(uri, create=False)
    except StoreMissing:
        return EmptyStore(uri)


def _analyze(args: argparse.Namespace) -> None:
    from zoo import analysis
    from zoo.tracking import backend, existing_store

    uri = existing_store(args.tracking_uri)  # not opened: a SQLite store is read by ADBC
    experiment, expected = _experiment(args.target)
    baseline = analysis.load(uri, _experiment(args.baseline)[0]) if args.baseline else None
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

        spec, block = _search.load_search(args.target)
        _search_report.add_to_report(spec, block, ProjectPaths.default(), result.report)
    print(", ".join(f"{k} {v}" for k, v in result.status.items()))
    for name, reason in result.skipped.items():
        print(f"  figure {name} not drawn: {reason}")
    print(f"report: {result.report}")
    run_id = analysis.publish(result.report, uri, experiment)
    if run_id:
        print(f"report in MLflow: run {run_id} (artifacts report/report.html)")


def _experiment(target: str) -> tuple[str, set[str] | None]:
    """(experiment name, config hashes of the runs a spec expects) for a spec path or a name."""
    if not target.endswith((".yaml", ".yml")):
        return target, None
    from zoo import sweep

    if sweep.is_search(target):
        return sweep.load_spec(target).name, None
    plan = sweep.make_plan(sweep.load_spec(target))
    return plan.spec.name, {j.key for j in plan.jobs if j.kind == "run"}


def _is_search(target: str) -> bool:
    from zoo import sweep

    return sweep.is_search(target)


def _import(args: argparse.Namespace) -> None:
    from zoo import analysis
    from zoo.paths import ProjectPaths
    from zoo.tracking import tracking_uri

    mapping = analysis.load_mapping(
        args.mapping, args.axis, args.metric, {"losses": args.losses, "offset": args.offset}
    )
    uri = tracking_uri(args.tracking_uri, ProjectPaths.default())
    rows, added = analysis.import_table(args.table, args.experiment, mapping, uri)
    print(
        f"imported {added} runs into experiment {args.experiment!r} ({uri}); "
        f"{rows - added} of {rows} rows were already there"
    )


def _server(args: argparse.Namespace) -> int:
    from zoo import server
    from zoo.errors import ServerError
    from zoo.paths import ProjectPaths

    data = args.data or ProjectPaths.default().state / "server"
    try:
        if args.server_command == "status":
            found = server.status(data)
            print("\n".join(f"{k}: {v}" for k, v in found.items()))
            parts = (found.get("mlflow"), found.get("postgresql", "running"))
            return 0 if parts == ("running", "running") else 3
        if args.server_command == "stop":
            stopped = server.stop(data)
            print(f"stopped the server in {data}" if stopped else f"no server recorded in {data}")
            return 0
        if args.server_command == "start":
            settings = (args.backend, args.host, args.port, args.workers, args.insecure)
            started = server.start(data, *settings, echo=print)
        else:
            started = server.restart(data, echo=print)
    except ServerError as error:  # a part that will not start, a port not ours
        print(f"zoo: error: {_one_line(error)}", file=sys.stderr)
        return 1
    print(f"tracking server at {started.uri} (store {started.store}, data {data})")
    print(f"use: --tracking-uri {started.uri}  or  export MLFLOW_TRACKING_URI={started.uri}")
    return 0


def _runs_per_task(text: str) -> int | str:
    """An argparse type: ``auto`` or an integer (SubmitOptions checks its range)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not allowed; expected an integer >= 1 or auto"
        ) from None


def _positive(kind: type) -> object:
    """An argparse type: a number > 0 of ``kind`` (int or float)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected a number > 0")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _port(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65534 (PostgreSQL beside a server takes it + 1)."""
    if not text.isdigit() or not 1 <= int(text) <= 65534:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected a port 1-65534")
    return int(text)


def _finite(text: str) -> float:
    """An argparse type: a finite number (not nan, not inf)."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected a finite number")
    return value


def _registry_name(kind: str) -> object:
    """An argparse type: a Model Registry name (``kind`` "name": letters, digits, . _ -)
    or alias ("alias": letters, digits, _ -, not ``latest`` nor ``v<N>``, which MLflow keeps)."""
    import re

    pattern = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}" if kind == "name" else r"[A-Za-z0-9_-]{1,64}"
    expected = (
        "letters, digits, '.', '_' or '-'" if kind == "name" else "letters, digits, '_' or '-'"
    )

    def parse(text: str) -> str:
        reserved = kind == "alias" and re.fullmatch(r"latest|v\d+", text, re.IGNORECASE)
        if not re.fullmatch(pattern, text) or reserved:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not allowed; expected {expected}"
                + (" (not latest or v<N>)" if kind == "alias" else "")
            )
        return text

    parse.__name__ = f"registry {kind}"
    return parse


def _profile_name(text: str) -> str:
    """An argparse type: a profile name usable as a file name (letters, digits, . _ -)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not allowed; expected letters, digits, '.', '_' or '-' (e.g. h100)"
        )
    return text


def _output(kind: str) -> object:
    """An argparse type: a path zoo may write a ``kind`` ("folder" or "file") at, checked
    without writing anything: not an existing thing of the other kind, and its nearest
    existing ancestor a folder this user may write in."""

    def parse(text: str) -> Path:
        path = Path(text)
        if path.exists() and path.is_dir() != (kind == "folder"):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; it is not a {kind}")
        ancestor = path.absolute().parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not allowed; {ancestor} is not a folder this user can write in"
            )
        return path

    parse.__name__ = f"writable {kind}"
    return parse


def _models_list(args: argparse.Namespace) -> None:
    from zoo import modelzoo
    from zoo.tracking import existing_store

    experiments = [_experiment(args.target)[0]] if args.target else None
    uri = existing_store(args.tracking_uri)  # a listing never creates (nor opens) a store
    table = modelzoo.model_table(uri, experiments)
    if table.empty:
        print(f"no trained models in {uri}")
        return
    table = modelzoo.filter_models(table, args.where)
    table = modelzoo.sort_models(table, args.sort).head(args.limit)
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

    from zoo.tracking import Tracker, existing_store

    existing_store(args.tracking_uri)  # a missing store fails before torch is imported
    from zoo import modelzoo

    tracker = Tracker(args.tracking_uri, create=False)
    info = modelzoo.describe(modelzoo.load(args.ref, tracker), tracker)
    info["metrics"] = {k: float(f"{v:.4g}") for k, v in info["metrics"].items()}  # as printed
    print(yaml.safe_dump(info, sort_keys=False, allow_unicode=True), end="")


def _models_export(args: argparse.Namespace) -> None:
    from zoo.paths import check_out_folder
    from zoo.tracking import Tracker, existing_store

    check_out_folder(args.out, args.force)
    existing_store(args.tracking_uri)  # a missing store fails before torch is imported
    from zoo import modelzoo

    tracker = Tracker(args.tracking_uri, create=False)
    print(modelzoo.export_model(modelzoo.load(args.ref, tracker), tracker, args.out, args.ref))


def _models_register(args: argparse.Namespace) -> None:
    from zoo.tracking import Tracker, existing_store

    existing_store(args.tracking_uri)  # a missing store fails before torch is imported
    from zoo import modelzoo

    run_id, version = modelzoo.register_model(
        args.ref, args.name, Tracker(args.tracking_uri, create=False), args.alias
    )
    alias = f", alias {args.name}@{args.alias}" if args.alias else ""
    print(f"registered run {run_id} as {args.name}/{version}{alias}")


def _predict(args: argparse.Namespace) -> None:
    from zoo.errors import DataError
    from zoo.tracking import Tracker, existing_store

    for item in args.inputs:  # missing inputs and stores fail before torch is imported
        if not item.exists():
            raise DataError(f"{item}: no such file or folder")
    existing_store(args.tracking_uri)
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
    for line in predict(
        args.ref, args.inputs, args.out, Tracker(args.tracking_uri, create=False), options
    ):
        print(line)


def _config_error(message: str) -> Exception:
    from zoo.errors import ConfigError

    return ConfigError(message)


class _Parser(argparse.ArgumentParser):
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


def _model_commands(commands: Any) -> list[argparse.ArgumentParser]:
    """The `models` and `predict` parsers; returns those reading the tracking store."""
    models = commands.add_parser("models", help="list, show, export and register trained models")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    listing = model_commands.add_parser("list", help="one row per trained model, best first")
    listing.add_argument("target", nargs="?", help="sweep spec YAML or experiment (default: all)")
    listing.add_argument("--where", action="append", default=[], metavar="AXIS=VALUE")
    listing.add_argument("--sort", metavar="METRIC", help="default: the task's headline")
    listing.add_argument("--limit", type=_positive(int), metavar="N")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_models_list)
    show = model_commands.add_parser("show", help="config, metrics, lineage and datasets")
    show.set_defaults(func=_models_show)
    export = model_commands.add_parser("export", help="safetensors, config.yaml and a model card")
    export.add_argument("--out", type=_output("folder"), required=True, metavar="DIR")
    export.add_argument("--force", action="store_true", help="write into a non-empty --out")
    export.set_defaults(func=_models_export)
    register = model_commands.add_parser("register", help="add to MLflow's Model Registry")
    register.add_argument("--name", type=_registry_name("name"), required=True)
    register.add_argument("--alias", type=_registry_name("alias"))
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
    predict.add_argument("--out", type=_output("folder"), required=True, metavar="DIR")
    predict.add_argument(
        "--pixel-size",
        type=_positive(float),
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
        "--batch-size", type=_positive(int), default=16, metavar="N", help="tiles per pass"
    )
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument(
        "--tile", type=_positive(int), metavar="PX", help="tile side (default: training size)"
    )
    predict.add_argument(
        "--overlap", type=int, metavar="PX", help="pixels tiles share (default: half a tile)"
    )
    predict.add_argument("--tta", action="store_true", help="average the 8 flips and rotations")
    predict.add_argument(
        "--max-pixels",
        type=_positive(int),
        default=2**30,
        metavar="N",
        help="refuse larger images, height x width (default: 2^30, 32768 x 32768)",
    )
    predict.set_defaults(func=_predict)
    return predict


def _parser() -> argparse.ArgumentParser:
    from zoo import __version__
    from zoo._completion import SHELLS

    parser = _Parser(prog="zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _data_parser(commands)
    stores = _run_parsers(commands) + _sweep_parser(commands) + _analysis_parsers(commands)
    _server_parser(commands)
    for sub in stores + _model_commands(commands):
        sub.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or ./mlflow.db")
    completion = commands.add_parser("completion", help="print a shell completion script")
    completion.add_argument(
        "shell", choices=list(SHELLS), help='e.g. eval "$(zoo completion bash)"'
    )
    completion.set_defaults(func=_completion)
    return parser


def _data_parser(commands) -> None:
    data = commands.add_parser("data", help="make, preview and export datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    make = data_commands.add_parser("make", help="generate the datasets a YAML file declares")
    make.add_argument("file", type=Path, help="YAML with a top-level 'datasets:' mapping")
    make.add_argument("names", nargs="*", help="only these datasets (default: all)")
    make.add_argument(
        "--preview", type=_output("folder"), metavar="DIR", help="also write DIR/NAME.png"
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
        sub.add_argument("--out", type=_output("file"), required=True, metavar=f"FILE{suffix}")
        sub.add_argument("--spec", type=Path, help="resolve NAME from this YAML instead")
        sub.set_defaults(func=func)
    data_commands.choices["show"].add_argument("--count", type=_positive(int), default=8)


def _run_parsers(commands) -> list[argparse.ArgumentParser]:
    train = commands.add_parser("train", help="train one run config (resumes if interrupted)")
    train.add_argument("config", type=Path, help="run config YAML")
    train.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. stages.1.lr=1e-5"
    )
    train.set_defaults(func=_train)

    ui = commands.add_parser(
        "ui", help="MLflow UI on the tracking store; prints each sweep's runs/charts/compare links"
    )
    ui.add_argument("--port", type=_port, default=5000, help="on 127.0.0.1; must be free")
    ui.set_defaults(func=_ui)
    return [train, ui]


def _sweep_parser(commands) -> list[argparse.ArgumentParser]:
    sweep = commands.add_parser("sweep", help="plan, run and follow sweeps")
    sweep_commands = sweep.add_subparsers(dest="sweep_command", required=True)
    plan = sweep_commands.add_parser("plan", help="counts, shared stages and cost; runs nothing")
    plan.add_argument("--json", action="store_true")
    plan.add_argument(
        "--images-per-s", type=_positive(float), help="price at this training throughput"
    )
    plan.add_argument("--show", type=int, metavar="N", help="print run N's resolved config (YAML)")
    plan.add_argument("--profile", help="price on a throughput profile (zoo calibrate NAME)")
    plan.add_argument(
        "--workers", type=_positive(int), default=1, help="workers the prediction assumes"
    )
    plan.set_defaults(func=_sweep_plan)
    run_sweep = sweep_commands.add_parser("run", help="train what is missing or failed, locally")
    run_sweep.add_argument("--workers", type=_positive(int), default=1, help="worker processes")
    run_sweep.add_argument(
        "--runs-per-gpu",
        type=_positive(int),
        default=1,
        metavar="N",
        help="with GPUs: N worker processes per GPU (overrides --workers)",
    )
    run_sweep.add_argument(
        "--gpu-power", type=_positive(int), metavar="W", help="GPU power cap in watts (identity)"
    )
    run_sweep.add_argument(
        "--profile", help="ETA priced on a throughput profile (zoo calibrate NAME) from the start"
    )
    run_sweep.add_argument("--json", action="store_true", help="a search's status as JSON")
    run_sweep.set_defaults(func=_sweep_run)
    status = sweep_commands.add_parser("status", help="counts by state from the tracking store")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_sweep_status)
    for sub in (plan, status):  # the keys of a sweep submitted with these options
        sub.add_argument("--gpus-per-task", type=_positive(int), metavar="N")
        sub.add_argument("--gpu-power", type=_positive(int), metavar="W")
    submit = sweep_commands.add_parser("submit", help="submit to SLURM as job arrays")
    _submit_options(submit)
    submit.set_defaults(func=_sweep_submit)
    logs = _sweep_tools(sweep_commands)
    for sub in (plan, run_sweep, status, submit):
        sub.add_argument("spec", type=Path, help="sweep spec YAML")
        sub.add_argument(
            "overrides", nargs="*", metavar="KEY=VALUE", help="set in spec.base: stages.0.epochs=3"
        )
        sub.add_argument(
            "--rehearse",
            action="store_true",
            help="every run and stage at toy size, into experiment NAME-rehearsal",
        )
    return [run_sweep, status, submit, logs]


def _sweep_tools(sweep_commands: Any) -> argparse.ArgumentParser:
    """The `sweep cancel`, `sweep logs` and `sweep worker` parsers; returns `logs` (it
    reads the tracking store)."""
    stop = sweep_commands.add_parser("cancel", help="stop a sweep's running jobs (resumable)")
    stop.add_argument("spec", type=Path, help="sweep spec YAML")
    stop.add_argument("--rehearse", action="store_true", help="its rehearsal")
    stop.set_defaults(func=_sweep_cancel)
    logs = sweep_commands.add_parser("logs", help="print a sweep job's log")
    logs.add_argument("run", metavar="RUN", help="run id or prefix, config-hash prefix, run name")
    logs.add_argument("--tail", type=_positive(int), metavar="N", help="only the last N lines")
    logs.set_defaults(func=_sweep_logs)
    work = sweep_commands.add_parser("worker", help="(run by SLURM) train one array task")
    work.add_argument("submission", type=Path)
    work.add_argument("array")
    work.add_argument("task", type=int)
    work.set_defaults(func=_sweep_worker)
    return logs


def _packing_options(submit: argparse.ArgumentParser) -> None:
    submit.add_argument(
        "--runs-per-task",
        type=_runs_per_task,
        default=1,
        help="runs one array task trains; auto: tasks of >= 5 min on --profile",
    )
    submit.add_argument("--profile", help="throughput profile --runs-per-task auto prices on")


def _submit_options(submit: argparse.ArgumentParser) -> None:
    for option in ("partition", "account", "qos", "time", "constraint"):
        submit.add_argument(f"--{option}")
    submit.add_argument("--gpus-per-task", type=int)
    submit.add_argument("--cpus-per-task", type=int)
    submit.add_argument("--mem-per-task", help="e.g. 16G")
    submit.add_argument("--max-parallel", type=int, help="array throttle %%N")
    _packing_options(submit)
    submit.add_argument(
        "--runs-per-gpu",
        type=int,
        default=1,
        metavar="N",
        help="of a task's runs, N train at once as processes sharing its GPU",
    )
    submit.add_argument("--gpu-power", type=int, metavar="W", help="GPU power cap in watts")
    submit.add_argument(
        "--workers", type=int, metavar="N", help="a search: N array tasks, each an Optuna worker"
    )
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
    submit.add_argument(
        "--allow-network-sqlite",
        action="store_true",
        help="submit even though the SQLite store is on a network filesystem (unsafe)",
    )
    submit.add_argument("--data-partition", help="partition of the dataset array (CPU)")
    submit.add_argument("--data-cpus", type=_positive(int), help="CPUs per dataset array task")
    submit.add_argument("--data-time", help="time limit of a dataset array task")


def _analysis_parsers(commands) -> list[argparse.ArgumentParser]:
    analyze = commands.add_parser("analyze", help="tables, figures and report.html of a sweep")
    analyze.add_argument("target", help="sweep spec YAML, or an experiment name")
    analyze.add_argument("--out", type=_output("folder"), required=True, metavar="DIR")
    analyze.add_argument(
        "--definition",
        type=Path,
        help="report definition (default: the packaged transfer.yaml)",
    )
    analyze.add_argument(
        "--offset",
        type=_finite,
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
    imports.add_argument("--offset", type=_finite)
    imports.set_defaults(func=_import)
    measure = commands.add_parser("calibrate", help="measure a throughput profile on this machine")
    measure.add_argument("name", type=_profile_name, help="profile name, e.g. h100 or cpu-2core")
    measure.add_argument("spec", type=Path, nargs="?", help="sweep spec (default: demo model)")
    measure.set_defaults(func=_calibrate)
    collect = commands.add_parser("gc", help="remove what no sweep needs; print bytes freed")
    collect.add_argument("specs", type=Path, nargs="*", metavar="SPEC", help="sweeps to keep")
    collect.add_argument("--dry-run", action="store_true", help="list only; remove nothing")
    collect.set_defaults(func=_gc)
    return [analyze, imports, collect]


def _server_parser(commands) -> None:
    server = commands.add_parser("server", help="a tracking server on PostgreSQL, for clusters")
    server_commands = server.add_subparsers(dest="server_command", required=True)
    start = server_commands.add_parser(
        "start", help="start PostgreSQL and mlflow server (whichever is down)"
    )
    start.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    start.add_argument("--port", type=_port, default=5001, help="mlflow server's (PostgreSQL: +1)")
    start.add_argument("--host", default="127.0.0.1", help="listen here (e.g. 0.0.0.0)")
    start.add_argument("--insecure", action="store_true", help="allow a non-loopback --host")
    start.add_argument("--workers", type=_positive(int), default=4, help="mlflow server processes")
    verbs = (("status", "is it running"), ("stop", "stop what start started"))
    verbs += (("restart", "stop, then start with the recorded settings"),)
    for verb, help_text in verbs:
        server_commands.add_parser(verb, help=help_text)
    for sub in server_commands.choices.values():
        sub.add_argument(
            "--data", type=_output("folder"), help="server data folder (default: .zoo/server)"
        )
    server.set_defaults(func=_server)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status.

    Bad input: one line on stderr naming the field or file, status 2. A full disk: one
    line naming the path (zoo._disk), status 1. Anything unexpected: one line with the
    path of a log under .zoo/logs holding the traceback, status 1.
    """
    args = _parser().parse_args(argv)
    from zoo.errors import ConfigError, DataError

    try:
        from zoo.config import use_store

        use_store(getattr(args, "tracking_uri", None))  # where init: run: references are looked up
        with _stoppable(args):
            return args.func(args) or 0
    except (ConfigError, DataError) as error:
        print(f"zoo: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # a run under way ended KILLED: running it again resumes
        if not hasattr(error, "signum"):  # Ctrl-C in a command zoo._signals does not stop
            print("zoo: interrupted", file=sys.stderr)
            return 130
        print(f"zoo: {_stopped_by(error)}; the same command resumes", file=sys.stderr)
        return _stop_status(error)
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
            f"zoo: internal error: {type(error).__name__}: {_one_line(error)} ({log})",
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
    from zoo.tracking import tracking_uri

    paths = ProjectPaths.default()
    full = out_of_space(error, tracking_uri(getattr(args, "tracking_uri", None), paths), paths.root)
    return None if full is None else _one_line(full)


def _store_problem(error: Exception, args: argparse.Namespace) -> str | None:
    """One line naming the tracking store, when ``error`` came from it (unreadable,
    corrupt, not writable, unknown scheme); None for anything else."""
    module = type(error).__module__.split(".")[0]
    if module not in ("mlflow", "sqlalchemy", "sqlite3") or not hasattr(args, "tracking_uri"):
        return None
    from zoo.paths import ProjectPaths
    from zoo.tracking import tracking_uri

    uri = tracking_uri(args.tracking_uri, ProjectPaths.default())
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"tracking store {uri}: cannot be used ({type(error).__name__}: {first[:300]})"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:2000]


def _log_internal_error() -> str:
    """Write the current traceback to a new log under the project's .zoo/logs; says where
    ("traceback in PATH"), or why it could not be written there (a partial log removed)."""
    import time
    import traceback

    from zoo.paths import ProjectPaths

    name = f"internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path = ProjectPaths.default().logs / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(traceback.format_exc())
    except OSError as error:
        path.unlink(missing_ok=True)
        return f"traceback not saved: {path}: {error.strerror or error}"
    return f"traceback in {path}"


if __name__ == "__main__":
    sys.exit(main())
