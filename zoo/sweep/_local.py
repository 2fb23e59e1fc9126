"""The local executor: a sweep's jobs on N worker processes, shared stages first.

A job starts once the stage job it depends on has finished; a failed stage job
leaves its dependents skipped, and the sweep goes on. Jobs whose MLflow run is
already FINISHED are not started, so running a finished sweep again trains
nothing and creates no runs. Ctrl-C stops the workers; their runs end KILLED
and resume from their checkpoints next time.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.naming import run_name
from zoo.paths import ProjectPaths
from zoo.sweep._plan import Job, Plan
from zoo.tracking import Tracker

__all__ = ["SweepReport", "execute", "job_tags", "payload", "pin_device", "run_sweep"]

_WORKER: dict[str, Any] = {}


@dataclass
class SweepReport:
    """What a sweep invocation did, by job key."""

    finished: list[str] = field(default_factory=list)  # trained now
    already: list[str] = field(default_factory=list)  # finished before this invocation
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason
    skipped: list[str] = field(default_factory=list)  # a stage they need failed
    interrupted: bool = False


def job_tags(plan: Plan, job: Job) -> dict[str, str]:
    """Tags that let the MLflow UI filter and group a sweep's runs by axis value."""
    tags = {"zoo.sweep": plan.spec.name, "zoo.kind": job.kind}
    tags.update({f"zoo.axis.{k}": str(v) for k, v in job.names.items()})
    if job.kind == "stage":
        tags["zoo.stage"] = job.name
    stage = job.name if job.kind == "stage" else None
    tags["mlflow.runName"] = run_name(job.names, plan.stage_names, plan.spec.run_name, stage)
    return tags


def _init_worker(counter: Any) -> None:
    """One intra-op thread per worker: CPU numerics then do not depend on how many runs
    share the machine (use as many workers as cores)."""
    import torch

    torch.set_num_threads(1)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    pin_device(index)


def pin_device(worker: int) -> None:
    """Runs of worker number ``worker`` in this process use GPU ``worker`` modulo the
    GPU count (with ``device: auto``); nothing changes without CUDA."""
    import torch

    if torch.cuda.is_available():
        _WORKER["device"] = f"cuda:{worker % torch.cuda.device_count()}"


def execute(payload: dict[str, Any], log: Path | None = None) -> tuple[str, str, str]:
    """Run one job described by ``payload``; returns (status, run id, failure reason).

    A failure is already recorded in MLflow (FAILED with its reason) when this returns.
    """
    from dataclasses import replace

    from zoo.config import resolve
    from zoo.run import run
    from zoo.train import Preempted

    paths = ProjectPaths(Path(payload["root"]))
    key = (payload["uri"], payload["root"])
    if _WORKER.get("tracker_key") != key:
        _WORKER["tracker"], _WORKER["tracker_key"] = Tracker(payload["uri"], paths), key
    config = resolve(payload["config"])
    if config.device == "auto" and "device" in _WORKER:
        config = replace(config, device=_WORKER["device"])
    log = log or paths.job_log(payload["experiment"], payload["identity"])
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:

        def echo(line: str) -> None:
            handle.write(line + "\n")
            handle.flush()

        try:
            run_id = run(
                config,
                _WORKER["tracker"],
                paths,
                echo,
                identity=payload["identity"],
                tags=payload["tags"],
            )
        except Preempted:
            raise
        except Exception as error:  # the run is already FAILED in MLflow; report and go on
            echo(f"FAILED: {type(error).__name__}: {error}")
            return "failed", "", f"{type(error).__name__}: {error}"
    return "finished", run_id, ""


def payload(
    plan: Plan, job: Job, uri: str, paths: ProjectPaths, parent_run: str | None
) -> dict[str, Any]:
    tags = job_tags(plan, job)
    if parent_run:
        tags.update({"mlflow.parentRunId": parent_run, "zoo.stage_run": parent_run})
    return {
        "config": job.config.to_dict(),
        "identity": job.key,
        "tags": tags,
        "uri": uri,
        "root": str(paths.root),
        "experiment": plan.spec.name,
    }


class _Progress:
    """One status line: done / running / failed / skipped / remaining, ETA."""

    def __init__(self, total: int, echo: Callable[[str], None]):
        self.total, self.echo = total, echo
        self.started = time.monotonic()
        self.tty = echo is print and sys.stdout.isatty()

    def show(self, report: SweepReport, running: int, event: str) -> None:
        done = len(report.finished)
        settled = done + len(report.failed) + len(report.skipped)
        remaining = self.total - settled
        elapsed = time.monotonic() - self.started
        eta = ""
        if done:
            seconds = elapsed / settled * remaining
            eta = f" ETA {int(seconds // 60)}m{int(seconds % 60):02d}s"
        line = (
            f"[{settled}/{self.total}] done {done} running {running} failed "
            f"{len(report.failed)} skipped {len(report.skipped)} remaining {remaining}{eta}"
            f"  {event}"
        )
        if self.tty:
            print("\r\033[K" + line, end="", flush=True)
        else:
            self.echo(line)


def run_sweep(
    plan: Plan,
    tracker: Tracker,
    workers: int = 1,
    echo: Callable[[str], None] = print,
    runs_per_gpu: int = 1,
) -> SweepReport:
    """Train every job of ``plan`` not yet finished in ``tracker``'s store.

    With GPUs and ``runs_per_gpu`` N > 1, N worker processes share each GPU
    (``workers`` is then the GPU count × N); a run's results do not depend on
    what shares its GPU, since each process trains its own model on its own data.
    """
    if runs_per_gpu > 1:
        import torch

        if torch.cuda.is_available():
            workers = torch.cuda.device_count() * runs_per_gpu
    report = SweepReport()
    experiment = tracker.experiment(plan.spec.name, plan.spec.description)
    states = tracker.states(experiment)
    run_ids = {k: run_id for k, (run_id, status) in states.items() if status == "FINISHED"}
    pending = [j for j in plan.jobs if j.key not in run_ids]
    report.already = [j.key for j in plan.jobs if j.key in run_ids]
    if not pending:
        echo(f"sweep {plan.spec.name}: all {len(plan.jobs)} jobs finished; nothing to do")
        return report
    progress = _Progress(len(pending), echo)
    echo(
        f"sweep {plan.spec.name}: {len(pending)} jobs to run "
        f"({len(report.already)} already finished), {workers} worker(s)"
    )
    context = multiprocessing.get_context("spawn")
    counter = context.Value("i", 0)
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(counter,)
    )
    running: dict[Future, Job] = {}
    failed_stages: set[str] = set()
    try:
        while pending or running:
            for job in list(pending):
                if len(running) >= workers:
                    break
                if any(d in failed_stages for d in job.depends):
                    pending.remove(job)
                    report.skipped.append(job.key)
                    if job.kind == "stage":
                        failed_stages.add(job.key)
                    progress.show(report, len(running), f"skipped {_describe(job)}")
                elif all(d in run_ids for d in job.depends):
                    pending.remove(job)
                    parent = run_ids.get(job.depends[-1]) if job.depends else None
                    running[
                        pool.submit(execute, payload(plan, job, tracker.uri, tracker.paths, parent))
                    ] = job
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                status, run_id, reason = future.result()
                if status == "finished":
                    run_ids[job.key] = run_id
                    report.finished.append(job.key)
                else:
                    report.failed[job.key] = reason
                    if job.kind == "stage":
                        failed_stages.add(job.key)
                progress.show(report, len(running), f"{status} {_describe(job)}")
    except KeyboardInterrupt:
        report.interrupted = True
        echo("\ninterrupted: stopping workers; their runs resume from checkpoints next time")
        pool.shutdown(wait=True, cancel_futures=True)
        return report
    pool.shutdown(wait=True)
    if progress.tty:
        print()
    return report


def _describe(job: Job) -> str:
    values = ", ".join(f"{k}={v}" for k, v in job.names.items())
    return f"{job.name} {job.key[:8]} ({values})"
