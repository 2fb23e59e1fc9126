"""``zoo sweep submit``: a sweep or search to SLURM as job arrays."""

from __future__ import annotations

import argparse
from typing import Any

from zoo.cli._errors import config_error
from zoo.cli._specs import given_a_search, rehearsed, resolver, store
from zoo.cli._types import positive, runs_per_task

__all__ = ["add_submit_parser"]


def add_submit_parser(sweep_commands: Any) -> argparse.ArgumentParser:
    """The `sweep submit` parser, without the spec arguments every sweep command shares."""
    submit = sweep_commands.add_parser("submit", help="submit to SLURM as job arrays")
    _submit_options(submit)
    submit.set_defaults(func=_sweep_submit)
    return submit


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
    submit.add_argument("--data-cpus", type=positive(int), help="CPUs per dataset array task")
    submit.add_argument("--data-time", help="time limit of a dataset array task")


def _packing_options(submit: argparse.ArgumentParser) -> None:
    submit.add_argument(
        "--runs-per-task",
        type=runs_per_task,
        default=1,
        help="runs one array task trains; auto: tasks of >= 5 min on --profile",
    )
    submit.add_argument("--profile", help="throughput profile --runs-per-task auto prices on")


def _sweep_submit(args: argparse.Namespace) -> None:
    import dataclasses

    from zoo import sweep
    from zoo.calibrate import load_profile
    from zoo.paths import ProjectPaths
    from zoo.store import refuse_network_sqlite, tracking_uri
    from zoo.sweep import _search
    from zoo.sweep._packing import with_auto_runs_per_task
    from zoo.sweep._rehearsal import check_resubmit
    from zoo.sweep._slurm_submit import SubmitOptions, submit, submit_search, with_options

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
    search = given_a_search(args, ("gpu_power", "rehearse"))  # its tasks may get GPUs
    if search:
        if auto:
            raise config_error("--runs-per-task: auto is not allowed for a search spec")
        spec, block = _search.load_search(args.spec, args.overrides, resolver(args))
    elif args.workers is not None:
        raise config_error("--workers: only for a search spec; a grid sweep has one task per job")
    else:
        spec = sweep.load_spec(args.spec, args.overrides, resolver(args))
        plan = sweep.make_plan(rehearsed(spec, args))
        check_resubmit(plan.spec, options.resubmit_failed, ProjectPaths.default())
        sweep.check_plan(plan)  # on this machine's devices: before the task's options
        plan = with_options(plan, options)
        if auto:
            profile = load_profile(args.profile, ProjectPaths.default())
            options = with_auto_runs_per_task(plan, options, profile)
    # the spec is good: only now is the store opened (and, unless a dry run, created)
    tracker = _read_only(args.tracking_uri) if options.dry_run else store(args)
    if search:
        submit_search(spec, block, tracker, options, args.workers or 1)
    else:
        submit(plan, tracker, options)


def _check_auto(auto: bool, profile: str | None) -> None:
    """``--runs-per-task auto`` needs a profile to price runs, and only it uses one."""
    if auto and profile is None:
        raise config_error(
            "--runs-per-task: auto needs --profile NAME, the throughput profile it prices "
            "runs on (measure one with `zoo calibrate NAME` on a compute node)"
        )
    if profile is not None and not auto:
        raise config_error(f"--profile: {profile!r} is only used with --runs-per-task auto")


def _read_only(uri: str | None):
    """A Tracker that creates nothing; over a SQLite store not created yet, an empty one."""
    from zoo.paths import ProjectPaths
    from zoo.store import EmptyStore, StoreMissing, Tracker

    try:
        return Tracker(uri, ProjectPaths.default(), create=False)
    except StoreMissing:
        return EmptyStore(uri, ProjectPaths.default())
