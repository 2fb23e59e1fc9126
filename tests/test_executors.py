"""One suite every executor backend passes: the promises of ``zoo.sweep.Executor``,
run against every backend registered by name (zoo.sweep._backends): the local executor,
the real local SLURM cluster, and a minimal in-process backend this file registers, to
show that a new backend is one class plus its registration."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import deque

import pytest
import torch
from conftest import squeue_empty

from zoo._signals import STOP, Preempted, preempt_on_usr1
from zoo.store import Tracker
from zoo.sweep import _backends, load_spec, make_plan, run_job
from zoo.sweep._backends import make_executor, register_executor, submit_plan
from zoo.sweep._executor import ENDED, Ended, Executor, SweepReport, already, unfinished
from zoo.sweep._job import requeued


class InProcessExecutor(Executor):
    """The smallest backend: the jobs in this process, one after another, in the order
    given (a dataset or stage job before the jobs that need it; run_job skips a job whose
    stage left no checkpoint); a job preempted by SIGUSR1 is requeued first in line."""

    def __init__(self, workers, echo):
        self.echo = echo

    def submit(self, name, jobs, tracker):
        report = SweepReport()
        todo, finished = unfinished(jobs, tracker, name)
        already(report, jobs, finished)
        queue = deque(todo)
        before = signal.getsignal(signal.SIGUSR1)
        preempt_on_usr1()
        try:
            while queue:
                job = queue.popleft()
                STOP.clear()
                try:
                    result = run_job(job, unfinished=True)
                except Preempted:  # checkpointed: requeued, counting it
                    queue.appendleft(requeued(job))
                    report.requeued.append(job.key)
                    continue
                if job.kind != "dataset":  # a dataset makes no run: no handle, not counted
                    _count(report, job, result)
        finally:
            signal.signal(signal.SIGUSR1, before)
            STOP.clear()  # a preemption that came too late preempts nothing later
        return report

    def status(self, name, tracker):
        return {}


def _count(report, job, result):
    report.handles[job.key] = Ended(job.key, result)
    if result.status == "finished":
        report.finished.append(job.key)
    elif result.status == "skipped":
        report.skipped.append(job.key)
    else:
        report.failed[job.key] = result.reason


@pytest.fixture(params=["local", "inprocess", pytest.param("slurm", marks=pytest.mark.slurm)])
def execute(request, project, monkeypatch):
    """A function handing a spec's jobs to one backend, made by name from the registry,
    and waiting until they ended; returns the plan and the backend's report."""
    monkeypatch.setattr(_backends, "EXECUTORS", dict(_backends.EXECUTORS))
    register_executor("inprocess", InProcessExecutor)
    if request.param == "slurm":
        request.getfixturevalue("cluster")
    executor = make_executor(request.param, 2, echo=lambda _: None)

    def run(spec):
        plan = make_plan(load_spec(spec))
        report = submit_plan(plan, Tracker(paths=project), executor)
        if request.param == "slurm":
            squeue_empty()
        return plan, report

    run.executor = executor
    return run


def test_every_job_finishes_once_and_a_second_submit_runs_nothing(
    execute, tiny_spec, tiny_runs, project
):
    plan, report = execute(tiny_spec(sources=("a",)))
    runs = tiny_runs()
    assert len(runs) == len(plan.jobs) == 1 + 2
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["zoo.config_hash"] for r in runs} == {j.key for j in plan.jobs}
    # a handle per job, ended, whose result names the job's run
    run_ids = {r.data.tags["zoo.config_hash"]: r.info.run_id for r in runs}
    assert {k: h.state() for k, h in report.handles.items()} == dict.fromkeys(run_ids, "finished")
    assert {k: h.result().run_id for k, h in report.handles.items()} == run_ids
    assert execute.executor.status("tiny", Tracker(paths=project)) == {}  # it holds none now
    _, again = execute(tiny_spec(sources=("a",)))
    assert sorted(again.already) == sorted(j.key for j in plan.jobs)
    assert not again.finished and not again.submitted and len(tiny_runs()) == 3
    assert {k: h.result().run_id for k, h in again.handles.items()} == run_ids
    assert not any(h.cancel() for h in again.handles.values())  # ended: nothing to stop


def test_a_grown_sweep_trains_only_the_jobs_it_lacks(execute, tiny_spec, tiny_runs):
    first, _ = execute(tiny_spec(sources=("a",), freezes=("none",)))
    plan, again = execute(tiny_spec(sources=("a", "b"), freezes=("none",)))
    old = {j.key for j in first.jobs}
    assert set(again.already) == old and len(old) == 1
    assert set(again.finished or again.submitted) == {j.key for j in plan.jobs} - old
    assert {h.state() for h in again.handles.values()} == {"finished"}
    assert len(tiny_runs()) == len(plan.jobs) == 2


def test_a_failed_stage_skips_its_runs_and_the_others_finish(
    execute, tiny_spec, tiny_runs, project
):
    from safetensors.torch import save_file

    # weights zoo loads safely (so the run exists) that do not fit the model: fails training
    save_file({"not.a.layer": torch.zeros(1)}, project.root / "broken.safetensors")
    spec = tiny_spec(
        extra={
            "derive": {
                "init": {"lookup": ["$source", {"a": "random", "b": "file:broken.safetensors"}]}
            },
            "set": {
                "stages.0.train": "$source",
                "stages.0.init": "$init",
                "stages.1.freeze": "$freeze",
            },
        }
    )
    plan, report = execute(spec)
    by_key = {r.data.tags["zoo.config_hash"]: r for r in tiny_runs()}
    broken = next(j for j in plan.jobs if j.kind == "stage" and j.names["source"] == "b")
    assert by_key[broken.key].info.status == "FAILED"
    assert "broken.safetensors" in by_key[broken.key].data.tags["zoo.error"]
    assert report.handles[broken.key].state() == "failed"
    assert "broken.safetensors" in report.handles[broken.key].result().reason
    for job in plan.jobs:
        if job.kind == "run" and job.names["source"] == "b":
            assert job.key not in by_key or by_key[job.key].info.status != "FINISHED"
            assert report.handles[job.key].state() == "skipped"
        elif job.key != broken.key:
            assert by_key[job.key].info.status == "FINISHED"
            assert report.handles[job.key].state() == "finished"
    assert {h.state() for h in report.handles.values()} <= ENDED
    # submitted again, the failed stage is tried again and what finished is not
    _, again = execute(spec)
    finished = {k for k, r in by_key.items() if r.info.status == "FINISHED"}
    assert set(again.already) == finished and broken.key not in again.already
    assert again.handles[broken.key].state() == "failed"


@contextlib.contextmanager
def _preempting_once(tiny_runs, timeout=300):
    """Meanwhile, in the background: once a run job's run is RUNNING, SIGUSR1 to the
    process its run names (``zoo.pid``), as a scheduler preempting it does; yields the
    pids signalled. The watching ends with the block."""
    sent, done = [], threading.Event()

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline and not done.is_set():
            for run in tiny_runs():
                tags = run.data.tags
                if tags.get("zoo.kind") == "run" and run.info.status == "RUNNING":
                    os.kill(int(tags["zoo.pid"]), signal.SIGUSR1)
                    sent.append(int(tags["zoo.pid"]))
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        done.set()
        thread.join(timeout=30)


def test_a_preempted_job_is_requeued_and_its_run_resumes_to_the_end(
    execute, tiny_spec, tiny_runs, project
):
    """SIGUSR1 to the process training a run (a scheduler's preemption) checkpoints it;
    the backend requeues the job and the same MLflow run resumes and finishes, counted
    once in ``zoo.preemptions``; nothing else trains twice."""
    spec = tiny_spec(sources=("a",), freezes=("none",), epochs=16)
    with _preempting_once(tiny_runs) as sent:
        plan, report = execute(spec)
    assert sent, "no run trained long enough to be preempted"
    runs = tiny_runs()
    assert len(runs) == len(plan.jobs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["zoo.preemptions"] == "1"
    assert report.handles[plan.jobs[0].key].result().run_id == runs[0].info.run_id
    if not report.submitted:  # a backend that ran it in this call counts the requeue
        assert report.requeued == [plan.jobs[0].key]


def test_progress_counts_busy_workers_and_prices_jobs_by_kind(monkeypatch):
    """With 2 workers, the line after the shared stage ends counts the 2 runs that took its
    place (it said "running 0"), names runs as people do, and once a run has ended the ETA
    prices runs by the runs' own time, not by the slower stage's (elapsed / settled made
    the first ETAs several times too long)."""
    from concurrent.futures import ThreadPoolExecutor

    from zoo.sweep import _local
    from zoo.sweep._executor import SweepReport
    from zoo.sweep._job import Job, JobResult
    from zoo.sweep._progress import SweepProgress

    def job(key, kind, depends=(), name="run"):
        tags = {"mlflow.runName": f"freeze {key} · seed 0"} if kind == "run" else {}
        return Job(key * 16, kind, name, depends=depends, experiment="t", tags=tags)

    stage = job("a", "stage", name="pretrain")
    runs = [job(k, "run", (stage.key,)) for k in "bcde"]
    took = {stage.key: 40.0, **{r.key: 10.0 for r in runs}}
    monkeypatch.setattr(
        _local,
        "_run",
        lambda text: JobResult("finished", "id", "", took[Job.from_json(text).key]),
    )
    monkeypatch.setattr(_local, "with_parent", lambda job, parent: job)
    lines: list[str] = []
    todo = [stage, *runs]
    with ThreadPoolExecutor(2) as pool:
        progress = SweepProgress(todo, 2, lines.append)
        _local._schedule(pool, 2, list(todo), {}, SweepReport(), progress, {})
    first = lines[0]
    assert "done 1 running 2" in first and "finished pretrain" in first
    assert "ETA 1m20s" in first  # no run has ended: 4 runs priced at the stage's 40 s
    etas = [int(line.split("ETA 0m")[1][:2]) for line in lines[1:]]
    assert max(etas) <= 15  # at most 3 runs left, at the runs' own 10 s, on 2 workers
    assert "freeze b · seed 0 [bbbbbbbb]" in "\n".join(lines)
    assert lines[-1].startswith("[5/5] done 5 running 0")


def test_progress_prices_the_eta_on_the_plans_profile_scaled_by_what_finished(monkeypatch):
    """`zoo sweep run --profile NAME`: the ETA prices the jobs left by the plan, scaled by
    how long the finished ones took against their price (here twice as long)."""
    from zoo.sweep._executor import SweepReport
    from zoo.sweep._job import Job
    from zoo.sweep._progress import SweepProgress

    def job(key, kind):
        return Job(key * 16, kind, kind, experiment="t")

    stage, runs = job("a", "stage"), [job(k, "run") for k in "bcde"]
    priced = {stage.key: 20.0, **{r.key: 5.0 for r in runs}}
    lines: list[str] = []
    progress = SweepProgress([stage, *runs], 2, lines.append, priced)
    assert progress.eta_s() == pytest.approx(20.0)  # (20 + 4 x 5) / 2, before anything ran
    progress.settle(stage, 40.0)
    report = SweepReport(finished=[stage.key])
    progress.show(report, 2, "finished stage")
    assert "ETA 0m20s" in lines[-1]  # 4 runs x 5 s x 2 (it took twice its price) / 2


def test_zoo_sweep_run_trains_on_the_backend_named_by_executor(
    project, tiny_spec, tiny_runs, monkeypatch, capsys
):
    """`zoo sweep run --executor NAME` runs on any registered backend and counts as a local
    run does; an unknown name is refused in one line naming the registered ones, with
    nothing run."""
    from zoo.cli import main

    monkeypatch.setattr(_backends, "EXECUTORS", dict(_backends.EXECUTORS))
    register_executor("inprocess", InProcessExecutor)
    spec = str(tiny_spec(sources=("a",), freezes=("none",)))
    assert main(["sweep", "run", spec, "--executor", "nope"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "'nope'" in error
    assert "inprocess, local, slurm" in error and tiny_runs() == []
    assert main(["sweep", "run", spec, "--executor", "inprocess"]) == 0
    assert "finished 1, already finished 0, failed 0" in capsys.readouterr().out
    assert [r.info.status for r in tiny_runs()] == ["FINISHED"]
