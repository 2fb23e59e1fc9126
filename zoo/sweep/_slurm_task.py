"""The task side of the SLURM executor: what runs inside an allocation.

Each array task runs ``python -m zoo.cli sweep worker SUBMISSION ARRAY TASK``
(the script rendered by :mod:`zoo.sweep._slurm_submit`), which calls
:func:`worker`: it reads its jobs from the submission's ``runs.json`` and trains
them, or makes its datasets in a dataset array.

A run task waits inside its allocation for its own shared stage's checkpoint only
(the stage's task writes an ``ended`` marker however it ends; a failed stage leaves
its runs skipped), so one slow stage holds only its own runs. A stage task requeued
after preemption makes its waiting run tasks requeue too (so they cannot hold the
slots it needs); that counts as one of their restarts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo.paths import SubmissionPaths
from zoo.sweep._datasets import made
from zoo.sweep._job import Job, become_worker, requeues_made, run_job
from zoo.sweep._slurm import task_keys, task_state

__all__ = ["PREEMPTED", "worker"]

PREEMPTED = 3  # exit code of a lane that checkpointed on USR1


def worker(folder: Path, array_name: str, task: int) -> int:
    """Run the jobs of one array task (a dataset array task makes its datasets); on
    USR1, checkpoint and requeue this task only (at most each job's ``max_requeues``
    times: then its run ends FAILED).

    A run whose shared stage is a task of this array first waits for that stage
    (see ``_wait_for_stage``). With ``runs_per_gpu`` N > 1 the task's runs are dealt
    to N processes that train side by side (round-robin over the task's GPUs); USR1
    is passed on to them. Like local workers each trains with one intra-op thread, so
    a run's numbers are the same whichever executor ran it and whatever shared its GPU.
    """
    submission = SubmissionPaths(folder)
    record = json.loads(submission.record.read_text())
    array = next(a for a in record["arrays"] if a["name"] == array_name)
    per_gpu = array.get("runs_per_gpu", 1)
    tasks = task_keys(array)
    keys = tasks[task]
    started = time.time()
    if array.get("kind") == "datasets":
        code = _make_datasets([record["datasets"][k] for k in keys])
    else:
        jobs = [record["jobs"][k] for k in keys]
        stages = _stage_tasks(tasks, record["jobs"])
        lanes = [jobs[i::per_gpu] for i in range(per_gpu)]
        if len(lanes) == 1:
            code = _lane(jobs, submission, task, 0, stages)
        else:
            code = _lanes(lanes, submission, task, stages)
    if code == PREEMPTED:
        target = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        print(f"preempted: requeueing {target}", flush=True)
        subprocess.run(["scontrol", "requeue", target], check=True)
        return 0
    print(json.dumps({"task": task, "start": started, "end": time.time()}), flush=True)
    return code


def _make_datasets(jobs: list[str]) -> int:
    """Run dataset jobs ``jobs`` (JSON descriptions) through run_job, as the local
    executor does; 1 when one failed, else 0."""
    failures = 0
    for text in jobs:
        job = Job.from_json(text)
        result = run_job(job)
        print(made(job, result), flush=True)
        failures += result.status != "finished"
    return 1 if failures else 0


def _stage_tasks(tasks: list[list[str]], jobs: dict[str, str]) -> dict[str, int]:
    """Stage key -> the task of this array that trains it."""
    return {
        keys[0]: index
        for index, keys in enumerate(tasks)
        if len(keys) == 1 and json.loads(jobs[keys[0]])["kind"] == "stage"
    }


_POLL_S = 1.0  # how often a waiting run looks for its stage's checkpoint
_QUEUE_S = 60.0  # how often it asks SLURM whether the stage's task is still there
_WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED"}


def _wait_for_stage(
    job: Job, submission: SubmissionPaths, stages: dict[str, int], echo: Callable
) -> bool:
    """Wait until the shared stage ``job`` starts from (when it is a task of this array)
    has its checkpoint or ended; False when this task should give its slot back instead.

    A stage task has a lower index than every run task, so it started before any run
    task waiting for it. Its task writes ``ended`` however the stage job ended; a stage
    task killed outright is noticed from ``squeue`` within ``_QUEUE_S``. When the stage's
    task is pending again (requeued after preemption) the run task returns False, to be
    requeued itself, so waiting runs can never hold every slot the stage needs.
    """
    stage = job.depends[-1] if job.depends else None
    if stage not in stages:
        return True
    result, ended = job.paths.stage_files(stage).result, submission.ended(stage)
    target = f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{stages[stage]}"
    began = asked = time.monotonic()
    while not (result.exists() or ended.exists()):
        if time.monotonic() - asked >= _QUEUE_S:
            asked = time.monotonic()
            state = task_state(target)
            if state in _WAITING:
                echo(f"shared stage {stage} (task {target}) is {state}: giving this slot back")
                return False
            if not state and not (result.exists() or ended.exists()):
                break  # the stage's task is gone: run_job reports the run skipped
        time.sleep(_POLL_S)
    if time.monotonic() - began >= _POLL_S:
        echo(f"waited {time.monotonic() - began:.0f} s for shared stage {stage}")
    return True


def _lanes(
    lanes: list[list[str]], submission: SubmissionPaths, task: int, stages: dict[str, int]
) -> int:
    """Run each list of jobs in its own process at the same time; the worst exit code."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_lane_exit, args=(jobs, submission, task, lane, stages))
        for lane, jobs in enumerate(lanes)
        if jobs
    ]
    for process in processes:
        process.start()
    signal.signal(
        signal.SIGUSR1,
        lambda *_: [os.kill(p.pid, signal.SIGUSR1) for p in processes if p.is_alive()],
    )
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:  # SIGTERM, SIGINT or SIGHUP (zoo._signals): stop the lanes too
        from zoo._signals import grace_s, stop_all

        stop_all([p.pid for p in processes], time.monotonic() + grace_s())  # runs end KILLED
        for process in processes:
            process.join()
        raise
    codes = {p.exitcode for p in processes}
    return PREEMPTED if PREEMPTED in codes else 1 if codes != {0} else 0


def _lane_exit(*args: Any) -> None:
    """A lane process: _lane's status, 128 + signum when a signal stopped it; it stops
    by itself once the task's process has ended."""
    from zoo._signals import Stopped, exit_with_parent

    exit_with_parent(os.getppid())
    try:
        sys.exit(_lane(*args))
    except Stopped as stopped:
        sys.exit(128 + stopped.signum)


def _lane(
    jobs: list[str], submission: SubmissionPaths, task: int, lane: int, stages: dict[str, int]
) -> int:
    """Run ``jobs`` (JSON descriptions) one after another on lane ``lane``'s device: 0
    unless one failed (1) or training stopped on USR1 after checkpointing, or a run
    gave its slot back to its requeued stage (PREEMPTED)."""
    from zoo._signals import job_under_way
    from zoo.artifacts import drain_figures

    become_worker(lane)
    with job_under_way():  # a signal stops the run under way (KILLED), then the lane
        try:
            return _lane_jobs(jobs, submission, task, lane, stages)
        finally:
            drain_figures()


def _lane_jobs(
    jobs: list[str], submission: SubmissionPaths, task: int, lane: int, stages: dict[str, int]
) -> int:
    from zoo._signals import STOP, Preempted, preempt_on_usr1

    preempt_on_usr1()
    failures = 0
    for text in jobs:
        job = Job.from_json(text)
        print(f"task {task} lane {lane} pid {os.getpid()}: {job.kind} {job.key}", flush=True)
        if not _wait_for_stage(job, submission, stages, lambda line: print(line, flush=True)):
            return PREEMPTED
        try:  # the submission found it unfinished; after a requeue it may have finished
            result = run_job(job, submission.job_log(job.key), unfinished=not requeues_made())
        except Preempted:
            return PREEMPTED  # a preempted stage has not ended: its runs keep waiting
        finally:  # ended however it ended (unless preempted), so its runs stop waiting
            if job.kind == "stage" and not STOP.is_set():
                submission.ended(job.key).touch()
        if result.status == "skipped":
            print(f"task {task}: skipped {job.key}: {result.reason}", flush=True)
            continue
        print(f"task {task}: {result.status} {result.run_id} {result.reason}", flush=True)
        failures += result.status != "finished"
    return 1 if failures else 0
