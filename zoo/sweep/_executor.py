"""The executor interface (submitit's ``Executor`` is the model): jobs in, outcomes out.

Backends: :class:`zoo.sweep._local.LocalExecutor` (worker processes on this
machine) and :class:`zoo.sweep._slurm.SlurmExecutor` (job arrays). Grid sweeps
and searches both go through them: a sweep's jobs are its stages and runs, a
search's jobs are its Optuna workers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zoo.sweep._job import JobSpec
from zoo.tracking import Tracker

__all__ = ["Executor", "SweepReport", "pending"]


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


class Executor(ABC):
    """Runs jobs given in dependency order (a stage job before the jobs that need it).

    Every backend promises:

    - a job whose MLflow run (found by its key) is FINISHED is not run again, and
      is reported ``already``;
    - a job starts only after every job in its ``depends`` ended; when one of
      them failed it trains nothing and is reported skipped (the SLURM backend
      learns this in the task, from the stage's missing checkpoint);
    - every job is run by ``zoo.sweep._job.run_job``, so a run's metrics do not
      depend on the backend;
    - a failed job's run ends FAILED with its reason and the other jobs go on;
    - a preempted job resumes from its checkpoint, at most ``max_requeues`` times.

    tests/test_executors.py is the suite every backend passes.
    """

    @abstractmethod
    def submit(self, name: str, jobs: Sequence[JobSpec], tracker: Tracker) -> SweepReport:
        """Run (local) or queue (SLURM) the ``jobs`` of sweep or search ``name``."""


def pending(jobs: Sequence[JobSpec], tracker: Tracker, name: str) -> tuple[list[JobSpec], dict]:
    """The jobs not yet FINISHED, and key -> run id of the finished ones."""
    states = tracker.states(tracker.experiment(name))
    finished = {k: run_id for k, (run_id, status) in states.items() if status == "FINISHED"}
    return [j for j in jobs if j.key not in finished], finished
