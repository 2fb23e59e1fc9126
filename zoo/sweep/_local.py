"""The local executor: jobs on N worker processes, shared stages first.

The plan's dataset jobs that the unfinished jobs need and the cache lacks run on the
workers like the other jobs: a job starts once the dataset jobs and the stage job it
depends on have finished; a failed stage or dataset job leaves its dependents skipped,
and the sweep goes on. A dataset job makes no MLflow run and is not counted in the
report or the progress line: it prints one line as it ends. Jobs whose MLflow run is
already FINISHED are not started, so running a finished sweep again trains
nothing and creates no runs. SIGUSR1 to a worker (or to the sweep's process
group) preempts its job: it checkpoints and is requeued on the next free worker,
resuming its run. SIGTERM, SIGINT (Ctrl-C) or SIGHUP stops the
workers: their runs end KILLED and resume from their checkpoints next time, and
every worker has ended within zoo._signals.grace_s (killed then); a worker also
stops by itself once the sweep's process has ended, killed outright too.

Workers are forked from one server process that imported what a worker needs
(torch, smp, MLflow) once: ``start_worker_server`` starts it in the
background, so a caller that starts it early overlaps those imports with its own
work, and N workers cost one import instead of N.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from zoo._leases import Lease
from zoo._signals import (
    STOP,
    Preempted,
    exit_with_parent,
    grace_s,
    job_under_way,
    preempt_on_usr1,
    received,
    stop_all,
    usr1_ignored,
)
from zoo.errors import ConfigError
from zoo.store import Tracker
from zoo.sweep._datasets import made, sweep_folders, to_make
from zoo.sweep._executor import Ended, Executor, JobState, SweepReport, already, unfinished
from zoo.sweep._job import (
    Job,
    JobResult,
    become_worker,
    requeued,
    run_job,
    with_parent,
)
from zoo.sweep._plan import Plan, jobs_from_plan, longest_first
from zoo.sweep._progress import SweepProgress, describe

__all__ = ["LocalExecutor", "check_placement", "run_sweep", "start_worker_server"]

# The third-party modules a worker imports by the end of its first job (torch._dynamo:
# an optimizer's step; the SQLite dialect: the embedded store; scipy.fft: zoo.data's
# simulator, imported with zoo.data). Never zoo's own: a worker imports zoo from its
# parent's sys.path, so it runs the parent's zoo, edited or checked out elsewhere, not
# the server's.
WORKER_MODULES = (
    "torch",
    "torch._dynamo",
    "segmentation_models_pytorch",
    "mlflow.tracking",
    "mlflow.store.tracking.sqlalchemy_store",
    "sqlalchemy.dialects.sqlite",
    "scipy.fft",
)


def start_worker_server() -> None:
    """Start, in the background and without waiting, the process that local workers are
    forked from; it imports WORKER_MODULES once, and forks each worker when asked.
    Idempotent; the server ends once this process has ended and its imports are done.
    Its interpreter runs with PYTHONSAFEPATH, so a module in the working directory (a
    ``torch.py``) never shadows one it imports. Settings those modules read as they are
    imported (TORCH_*, HF_*) are taken from this process's environment now."""
    from multiprocessing import forkserver

    forkserver.set_forkserver_preload(list(WORKER_MODULES))
    before = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        with usr1_ignored():  # the server and the workers it forks ignore it until ready
            forkserver.ensure_running()
    finally:
        if before is None:
            del os.environ["PYTHONSAFEPATH"]
        else:
            os.environ["PYTHONSAFEPATH"] = before


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes forked from start_worker_server's server (started
    here unless it runs) as jobs arrive; each has this process's environment as the pool
    is made, its working directory and sys.path as the worker starts (multiprocessing
    hands those over), and is a sweep worker numbered as it starts (become_worker)."""
    start_worker_server()
    context = multiprocessing.get_context("forkserver")
    return ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(context.Value("i", 0), dict(os.environ), os.getpid()),
    )


def _init_worker(counter: Any, environ: dict[str, str], parent: int) -> None:
    """The parent's environment as the pool was made; then a sweep worker numbered in
    the order the pool started it (become_worker: one intra-op thread, so use as many
    workers as cores; figures drained when the worker exits or is stopped by a signal),
    which stops by itself once ``parent`` (the sweep's process) has ended."""
    preempt_on_usr1()
    os.environ.clear()
    os.environ.update(environ)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    become_worker(index)
    exit_with_parent(parent)


def _run(text: str) -> JobResult:
    """run_job in a worker process; the job travels as its JSON description (and was
    found unfinished when the sweep started). A signal stops it (zoo._signals.Stopped);
    USR1 preempts it (zoo._signals.Preempted, raised while it may be requeued)."""
    STOP.clear()  # a USR1 between jobs preempted nothing
    with job_under_way():
        return run_job(Job.from_json(text), unfinished=True)


class LocalExecutor(Executor):
    """``workers`` processes on this machine (forked from start_worker_server's
    server, which this starts unless it runs); with GPUs and ``runs_per_gpu`` N > 1,
    N processes share each GPU (``workers`` is then the GPU count × N); a run's
    results do not depend on what shares its GPU."""

    def __init__(
        self,
        workers: int = 1,
        echo: Callable[[str], None] = print,
        runs_per_gpu: int = 1,
        priced: dict[str, float] | None = None,
    ):
        self.workers, self.echo, self.runs_per_gpu = workers, echo, runs_per_gpu
        self.priced = priced  # job key -> seconds on a profile: the ETA's first price

    def submit(self, name: str, jobs: Sequence[Job], tracker: Tracker) -> SweepReport:
        report = SweepReport()
        todo, finished = unfinished(jobs, tracker, name)
        already(report, jobs, finished)
        datasets, cached = to_make(todo)
        todo = [j for j in todo if j.kind != "dataset"]
        if not todo:
            count = sum(j.kind != "dataset" for j in jobs)
            self.echo(f"sweep {name}: all {count} jobs finished; nothing to do")
            return report
        workers = self._workers()
        self.echo(
            f"sweep {name}: {len(todo)} jobs to run "
            f"({len(report.already)} already finished), {workers} worker(s)"
        )
        if datasets:
            self.echo(f"making {len(datasets)} dataset(s): {', '.join(j.name for j in datasets)}")
        done = {**finished, **dict.fromkeys(cached, "")}
        with usr1_ignored():  # a preemption of the process group is the workers' alone
            return self._on_pool(workers, datasets, todo, done, report)

    def _on_pool(
        self, workers: int, datasets: list[Job], todo: list[Job], done: dict, report: SweepReport
    ) -> SweepReport:
        """Run ``datasets`` then ``todo`` on a new pool of ``workers`` processes (``done``:
        key -> run id of the jobs finished or cached already)."""
        pool = worker_pool(workers)
        progress = SweepProgress(todo, workers, self.echo, self.priced)
        running: dict[Future, Job] = {}
        try:
            _schedule(pool, workers, datasets + todo, done, report, progress, running)
        except KeyboardInterrupt as error:  # here, or a worker's run stopped by a signal
            report.interrupted = True
            signum = received() or getattr(error, "signum", signal.SIGINT)
            _stop(pool, running, report, signum, _newline if progress.tty else self.echo)
            return report
        pool.shutdown(wait=True)
        if progress.tty:
            print()
        return report

    def status(self, name: str, tracker: Tracker) -> dict[str, JobState]:
        """None: ``submit`` returns once every job it started has ended."""
        return {}

    def _workers(self) -> int:
        if self.runs_per_gpu > 1:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.device_count() * self.runs_per_gpu
        return self.workers


def _schedule(
    pool: ProcessPoolExecutor,
    workers: int,
    todo: list[Job],
    done: dict[str, str],
    report: SweepReport,
    progress: SweepProgress,
    running: dict[Future, Job],
) -> None:
    """Start each job once its dataset and stage jobs finished, ``workers`` at a time,
    until none is left. ``done``: key -> MLflow run id of the finished jobs (a run learns
    its stage's run from it, rather than by a search of its own; "" for a dataset).
    ``running``: the jobs under way."""
    failed: set[str] = set()  # failed or skipped stage and dataset jobs
    events: list[str] = []  # shown once the freed workers have their next jobs
    while todo or running:
        _start(pool, workers, todo, done, failed, report, progress, running, events)
        for event in events:
            progress.show(report, len(running), event)
        events.clear()
        if not running:
            return
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            job = running.pop(future)
            if isinstance(future.exception(), Preempted):  # checkpointed: next to start
                todo.insert(0, requeued(job))
                report.requeued.append(job.key)
                count = f"{job.requeues + 1} of {job.max_requeues}"
                events.append(f"preempted {describe(job)}: requeued ({count})")
                continue
            result = future.result()  # a worker stopped by a signal: Stopped, here too
            if result.status == "finished":
                done[job.key] = result.run_id
            elif job.kind in ("stage", "dataset"):
                failed.add(job.key)
            if job.kind == "dataset":  # no run: one line, not counted
                (_newline if progress.tty else progress.echo)(f"  {made(job, result)}")
                continue
            _record(job, result, report)
            progress.settle(job, result.seconds)
            events.append(f"{result.status} {describe(job)}")
    for event in events:  # the last jobs' ends
        progress.show(report, 0, event)


def _start(
    pool: ProcessPoolExecutor,
    workers: int,
    todo: list[Job],
    done: dict[str, str],
    failed: set[str],
    report: SweepReport,
    progress: SweepProgress,
    running: dict[Future, Job],
    events: list[str],
) -> None:
    """Start the ready jobs of ``todo`` while workers are free; skip those a failed
    stage or dataset job leaves without what they need."""
    for job in list(todo):
        if len(running) >= workers:
            break
        needs = (*job.depends, *job.datasets)
        if any(d in failed for d in needs):
            todo.remove(job)
            what = "stage" if any(d in failed for d in job.depends) else "dataset"
            report.skipped.append(job.key)
            skipped = JobResult("skipped", reason=f"a {what} it needs failed")
            report.handles[job.key] = Ended(job.key, skipped)
            if job.kind == "stage":
                failed.add(job.key)
            progress.settle(job)
            events.append(f"skipped {describe(job)}")
        elif all(d in done for d in needs):
            todo.remove(job)
            if job.depends and done[job.depends[-1]]:
                job = with_parent(job, done[job.depends[-1]])
            running[pool.submit(_run, job.to_json())] = job


def _record(job: Job, result: JobResult, report: SweepReport) -> None:
    report.seconds[job.key] = result.seconds
    report.handles[job.key] = Ended(job.key, result)
    if result.status == "finished":
        report.finished.append(job.key)
    else:
        report.failed[job.key] = result.reason


def _stop(
    pool: ProcessPoolExecutor,
    running: dict[Future, Job],
    report: SweepReport,
    signum: int,
    echo: Callable[[str], None],
) -> None:
    """Stop every worker of ``pool`` after signal ``signum`` (to this process, or to a
    worker, whose run it stopped): each is sent SIGTERM (its run ends KILLED;
    zoo._signals.stop_as_worker) and waited for up to grace_s, then killed. Jobs that
    ended meanwhile are counted as they ended; the rest of ``running`` are
    ``report.killed``. The worker server is ended too."""
    grace = grace_s()
    deadline = time.monotonic() + grace
    pids = list(pool._processes or {})  # the pool offers no other way to reach them
    echo(
        f"{signal.Signals(signum).name}: stopping {len(pids)} worker(s) within {grace:.0f} s "
        "(a second signal stops at once); their runs resume from their checkpoints next time"
    )
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    wait(running, timeout=max(0.0, deadline - time.monotonic()))
    for future, job in running.items():
        if job.kind == "dataset":  # no run to count: made again next time if it must be
            continue
        if future.done() and future.exception() is None:
            _record(job, future.result(), report)
        else:
            report.killed.append(job.key)
            stopped = JobResult("failed", reason=f"stopped by {signal.Signals(signum).name}")
            report.handles[job.key] = Ended(job.key, stopped, killed=True)
    pool.shutdown(wait=False, cancel_futures=True)
    stop_all(pids, deadline)
    _end_worker_server()


def _end_worker_server() -> None:
    """End start_worker_server's server now: left to end by itself once this process
    has, it would first spend seconds tearing its imports down (start_worker_server
    starts a new one when asked again)."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)  # no public handle
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


def _newline(line: str) -> None:
    print("\n" + line, flush=True)  # after the progress line a terminal shows


def check_placement(plan: Plan, workers: int, runs_per_gpu: int = 1) -> None:
    """Refuse, before anything runs, several local workers for runs that each train on
    several devices (``devices`` N > 1: cuda:0..N-1, or N CPU processes): every worker's
    run would take the same devices. A ConfigError naming the options and the run."""
    wide = next((r for r in plan.runs if r.config.devices > 1), None)
    if wide is None or (workers == 1 and runs_per_gpu == 1):
        return
    option, value = (
        ("--workers", workers) if runs_per_gpu == 1 else ("--runs-per-gpu", runs_per_gpu)
    )
    raise ConfigError(
        f"{option}: {value} is not allowed with config.devices: "
        f"{wide.config.devices} (spec run {json.dumps(wide.names, default=str)}); expected "
        "--workers 1 --runs-per-gpu 1: each run trains on all the devices itself"
    )


def run_sweep(
    plan: Plan,
    tracker: Tracker,
    workers: int = 1,
    echo: Callable[[str], None] = print,
    runs_per_gpu: int = 1,
    priced: dict[str, float] | None = None,
) -> SweepReport:
    """Train every job of ``plan`` not yet finished in ``tracker``'s store, locally; ready
    jobs start longest first (zoo.sweep._plan.longest_first), after the dataset jobs;
    ``priced`` (job key -> seconds, zoo.sweep._cost.job_seconds) gives the progress line
    an ETA from the start."""
    check_placement(plan, workers, runs_per_gpu)
    tracker.experiment(plan.spec.name, plan.spec.description)
    executor = LocalExecutor(workers, echo, runs_per_gpu, priced)
    keys = [*(j.key for j in plan.datasets), *longest_first(plan)]  # datasets first
    order = {key: rank for rank, key in enumerate(keys)}
    jobs = sorted(jobs_from_plan(plan, tracker.uri, tracker.paths), key=lambda j: order[j.key])
    held = sweep_folders(plan, tracker.paths)  # kept from zoo gc while the sweep runs
    with Lease(tracker.paths, held, f"sweep {plan.spec.name} (zoo sweep run)"):
        return executor.submit(plan.spec.name, jobs, tracker)
