"""The executor interface (submitit's ``Executor`` is the model): jobs in, outcomes out.

Backends: :class:`zoo.sweep._local.LocalExecutor` (worker processes on this
machine) and :class:`zoo.sweep._slurm_submit.SlurmExecutor` (job arrays), chosen by
name from the registry in :mod:`zoo.sweep._backends`. Grid sweeps and searches both
go through them: a sweep's jobs are its stages and runs, a search's jobs are its
Optuna workers. ``submit`` hands back a :class:`JobHandle` per job it ran or queued.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zoo.store import Tracker
from zoo.sweep._job import Job, JobResult

__all__ = [
    "ENDED",
    "Ended",
    "Executor",
    "JobHandle",
    "JobState",
    "SweepReport",
    "already",
    "unfinished",
]

# pending: queued by its backend, not started; killed: stopped by a signal, resumable;
# skipped: a stage it needs failed, nothing trained
JobState = Literal["pending", "running", "finished", "failed", "killed", "skipped"]
ENDED: frozenset[str] = frozenset({"finished", "failed", "killed", "skipped"})


class JobHandle(ABC):
    """One job as its backend holds it (submitit's ``Job``); ``key`` is the job's key."""

    key: str

    @abstractmethod
    def state(self) -> JobState:
        """The job's state now; once in ENDED it never changes again."""

    @abstractmethod
    def result(self, timeout_s: float | None = None) -> JobResult:
        """The job's outcome, once it ended (waiting up to ``timeout_s``, TimeoutError
        past it); a killed job's is ``failed``, naming the signal."""

    @abstractmethod
    def cancel(self) -> bool:
        """Stop the job unless it ended; whether the backend was asked to stop it."""


@dataclass(frozen=True)
class Ended(JobHandle):
    """The handle of a job that had ended when its backend returned it."""

    key: str
    outcome: JobResult
    killed: bool = False

    def state(self) -> JobState:
        return "killed" if self.killed else self.outcome.status

    def result(self, timeout_s: float | None = None) -> JobResult:
        return self.outcome

    def cancel(self) -> bool:
        return False


@dataclass
class SweepReport:
    """What one ``Executor.submit`` did, by job key."""

    finished: list[str] = field(default_factory=list)  # ran to the end now
    already: list[str] = field(default_factory=list)  # finished before this call
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason
    skipped: list[str] = field(default_factory=list)  # a stage they need failed
    submitted: list[str] = field(default_factory=list)  # handed to a scheduler (SLURM)
    submission: Path | None = None  # the SLURM submission folder
    seconds: dict[str, float] = field(default_factory=dict)  # key -> job wall time (local)
    interrupted: bool = False  # stopped by a signal (local)
    killed: list[str] = field(default_factory=list)  # under way then: KILLED, resumable
    requeued: list[str] = field(default_factory=list)  # a key per preemption requeued (local)
    handles: dict[str, JobHandle] = field(default_factory=dict)  # key -> every job's handle


class Executor(ABC):
    """Runs jobs given in dependency order (a stage job before the jobs that need it).

    Every backend promises:

    - a job whose MLflow run (found by its key) is FINISHED is not run again, and
      is reported ``already``;
    - a job starts only after every job in its ``depends`` ended; when one of
      them failed it trains nothing and is reported skipped (the SLURM backend
      learns this in the task, from the stage's missing checkpoint);
    - a dataset job (kind ``dataset``) that a job to run loads and the cache lacks
      is run by ``run_job`` before every job naming it in ``datasets`` starts
      (SLURM: in a dataset array the other arrays wait for); it makes no MLflow
      run and gets no handle, and the report counts no dataset job;
    - every job is run by ``zoo.sweep._job.run_job``, so a run's metrics do not
      depend on the backend;
    - a failed job's run ends FAILED with its reason and the other jobs go on;
    - a job preempted (SIGUSR1 to the process training it: SLURM sends it before the
      time limit or for a higher priority job) checkpoints and is requeued, and its run
      resumes from that checkpoint, at most ``max_requeues`` times (then its run ends
      FAILED); the run's ``zoo.preemptions`` tag counts them. A job stopped by another
      signal ends KILLED, and the same command resumes it;
    - ``submit``'s report holds a handle for every job it ran, queued or found
      finished (``already``: an ended handle); ``status`` names the jobs it holds now.

    tests/test_executors.py is the suite every backend passes; a new backend is
    registered by name in zoo.sweep._backends.
    """

    @abstractmethod
    def submit(self, name: str, jobs: Sequence[Job], tracker: Tracker) -> SweepReport:
        """Run (local) or queue (SLURM) the ``jobs`` of sweep or search ``name``."""

    @abstractmethod
    def status(self, name: str, tracker: Tracker) -> dict[str, JobState]:
        """Key -> state (pending or running) of each job of ``name`` this backend holds
        now; the store tells the state of the others."""


def unfinished(jobs: Sequence[Job], tracker: Tracker, name: str) -> tuple[list[Job], dict]:
    """The jobs whose run is not FINISHED in the store (never run, failed, killed or under
    way), and key -> run id of the finished ones."""
    states = tracker.states(tracker.experiment(name))
    finished = {k: run_id for k, (run_id, status) in states.items() if status == "FINISHED"}
    return [j for j in jobs if j.key not in finished], finished


def already(report: SweepReport, jobs: Sequence[Job], finished: dict[str, str]) -> None:
    """Record in ``report`` the ``jobs`` finished before (key -> run id), with their handles."""
    report.already = [j.key for j in jobs if j.key in finished]
    for key in report.already:
        report.handles[key] = Ended(key, JobResult("finished", finished[key]))
