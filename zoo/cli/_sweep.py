"""``zoo sweep``: plan, run, status, cancel, logs and the SLURM worker; submit is in
zoo.cli._submit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from zoo.cli._errors import config_error, stop_status, stopped_by
from zoo.cli._specs import executed_spec, given_a_search, resolver, store
from zoo.cli._submit import add_submit_parser
from zoo.cli._types import positive

__all__ = ["add_sweep_parser"]


def add_sweep_parser(commands) -> list[argparse.ArgumentParser]:
    """The `sweep` parsers; returns those reading the tracking store."""
    sweep = commands.add_parser("sweep", help="plan, run and follow sweeps")
    sweep_commands = sweep.add_subparsers(dest="sweep_command", required=True)
    plan = sweep_commands.add_parser("plan", help="counts, shared stages and cost; runs nothing")
    plan.add_argument("--json", action="store_true")
    plan.add_argument(
        "--images-per-s", type=positive(float), help="price at this training throughput"
    )
    plan.add_argument("--show", type=int, metavar="N", help="print run N's resolved config (YAML)")
    plan.add_argument("--profile", help="price on a throughput profile (zoo calibrate NAME)")
    plan.add_argument(
        "--workers", type=positive(int), default=1, help="workers the prediction assumes"
    )
    plan.set_defaults(func=_sweep_plan)
    run_sweep = sweep_commands.add_parser("run", help="train what is missing or failed, locally")
    run_sweep.add_argument("--workers", type=positive(int), default=1, help="worker processes")
    run_sweep.add_argument(
        "--runs-per-gpu",
        type=positive(int),
        default=1,
        metavar="N",
        help="with GPUs: N worker processes per GPU (overrides --workers)",
    )
    run_sweep.add_argument(
        "--gpu-power", type=positive(int), metavar="W", help="GPU power cap in watts (identity)"
    )
    run_sweep.add_argument(
        "--profile", help="ETA priced on a throughput profile (zoo calibrate NAME) from the start"
    )
    run_sweep.add_argument(
        "--executor",
        default="local",
        metavar="NAME",
        help="the backend that runs the jobs: local (default); slurm (queued with zoo sweep "
        "submit's defaults, then waited for); or another registered one",
    )
    run_sweep.add_argument("--json", action="store_true", help="a search's status as JSON")
    run_sweep.set_defaults(func=_sweep_run)
    status = sweep_commands.add_parser("status", help="counts by state from the tracking store")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_sweep_status)
    for sub in (plan, status):  # the keys of a sweep submitted with these options
        sub.add_argument("--gpus-per-task", type=positive(int), metavar="N")
        sub.add_argument("--gpu-power", type=positive(int), metavar="W")
    submit = add_submit_parser(sweep_commands)
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
    logs.add_argument("--tail", type=positive(int), metavar="N", help="only the last N lines")
    logs.set_defaults(func=_sweep_logs)
    work = sweep_commands.add_parser("worker", help="(run by SLURM) train one array task")
    work.add_argument("submission", type=Path)
    work.add_argument("array")
    work.add_argument("task", type=int)
    work.set_defaults(func=_sweep_worker)
    return logs


def _sweep_plan(args: argparse.Namespace) -> None:
    import json

    from zoo import sweep

    if given_a_search(args):
        from zoo.sweep import _search, _search_report

        spec, block = _search.load_search(args.spec, args.overrides, resolver(args))
        summary = _search_report.search_plan(spec, block, args.images_per_s)
        text = _search_report.format_search_plan(summary)
        print(json.dumps(summary, indent=1) if args.json else text)
        return
    plan = sweep.make_plan(executed_spec(args))
    if args.show is not None:
        print(sweep.show_run(plan, args.show), end="")
        return
    from zoo.paths import ProjectPaths
    from zoo.sweep._cost import format_priced, priced_report

    summary = priced_report(
        plan, args.profile, args.images_per_s, args.workers, ProjectPaths.default()
    )
    print(json.dumps(summary, indent=1) if args.json else format_priced(summary))


def _search_run(args: argparse.Namespace) -> int:
    import json

    from zoo import sweep
    from zoo.sweep import _search

    spec, block = _search.load_search(args.spec, args.overrides, resolver(args))
    sweep.start_worker_server()
    status = _search.run_search(spec, block, store(args), args.workers)
    print(_search.format_search_status(spec.name, status))
    for key, reason in status["failed_workers"].items():
        print(f"  worker {key} failed: {reason}")
    if args.json:
        print(json.dumps(status, default=str))
    return stop_status() if status["interrupted"] else 1 if status["failed_workers"] else 0


def _sweep_run(args: argparse.Namespace) -> int:
    from zoo import sweep

    if args.executor != "local":  # an unknown name is refused before anything runs
        if given_a_search(args):
            raise config_error(
                f"--executor: {args.executor!r} is not allowed for a search; expected local "
                "(zoo sweep submit queues a search's workers on SLURM)"
            )
        executor = sweep.make_executor(args.executor, args.workers)
        plan = sweep.make_plan(executed_spec(args))
        sweep.check_plan(plan)
        result = sweep.run_plan(plan, store(args), executor)
        return _counted(result)
    if given_a_search(args):
        return _search_run(args)
    spec = executed_spec(args)
    sweep.start_worker_server()  # its imports overlap the plan and the store's opening
    plan = sweep.make_plan(spec)
    sweep.check_plan(plan)
    sweep.check_placement(plan, args.workers, args.runs_per_gpu)
    priced = _priced(plan, args.profile)  # an unknown profile is refused before the store
    result = sweep.run_sweep(
        plan,
        store(args),
        args.workers,
        runs_per_gpu=args.runs_per_gpu,
        priced=priced,
    )
    return _counted(result)


def _counted(result: Any) -> int:
    """Print a sweep report's counts and failures; the exit status they give."""
    counts = (
        f"finished {len(result.finished)}, already finished {len(result.already)}, "
        f"failed {len(result.failed)}, skipped {len(result.skipped)}"
    )
    if result.requeued:  # preempted (USR1), checkpointed and run again: one count each
        counts += f", requeued {len(result.requeued)} after preemption"
    if result.interrupted:  # one line: the same command resumes the killed runs
        counts = f"{stopped_by()}: {counts}, killed {len(result.killed)} (resumable)"
    print(counts)
    for key, reason in result.failed.items():
        print(f"  failed {key}: {reason}")
    if result.interrupted:
        return stop_status()
    return 1 if result.failed or result.skipped else 0


def _priced(plan, profile: str | None) -> dict[str, float] | None:
    """Job key -> seconds on throughput profile ``profile`` (None without one)."""
    if profile is None:
        return None
    from zoo.calibrate import load_profile
    from zoo.paths import ProjectPaths
    from zoo.sweep._cost import job_seconds

    return job_seconds(plan, load_profile(profile, ProjectPaths.default()))


def _sweep_status(args: argparse.Namespace) -> None:
    import json

    from zoo import sweep
    from zoo.paths import ProjectPaths
    from zoo.store import existing_store

    if given_a_search(args):
        from zoo.sweep import _search

        spec, block = _search.load_search(args.spec, args.overrides, resolver(args))
        result = _search.search_status(spec, block, ProjectPaths.default())
        text = _search.format_search_status(spec.name, result)
        print(json.dumps(result, indent=1, default=str) if args.json else text)
        return
    plan = sweep.make_plan(executed_spec(args))
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


def _sweep_worker(args: argparse.Namespace) -> int:
    from zoo.sweep._slurm_task import worker

    return worker(args.submission, args.array, args.task)
