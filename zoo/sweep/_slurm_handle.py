"""The handle of a job the SLURM executor queued: SLURM's state of its array task while
the controller holds it, then the state of the job's MLflow run."""

from __future__ import annotations

import time
from dataclasses import dataclass

from zoo.store import Tracker
from zoo.sweep._executor import ENDED, JobHandle, JobState
from zoo.sweep._job import JobResult
from zoo.sweep._slurm import scancel, task_state

__all__ = ["SlurmHandle"]

_RUN_STATES: dict[str, JobState] = {
    "FINISHED": "finished",
    "FAILED": "failed",
    "KILLED": "killed",
}


@dataclass
class SlurmHandle(JobHandle):
    """A queued job: its array ``task`` (``<array job id>_<index>``) while SLURM holds
    it, then its MLflow run's state. Cancelling a job cancels its task, and so the
    other jobs of that task (``--runs-per-task``) too."""

    key: str
    task: str
    experiment: str
    tracker: Tracker
    poll_s: float = 5.0

    def state(self) -> JobState:
        queued = task_state(self.task)
        if queued in ("PENDING", "CONFIGURING", "REQUEUED"):
            return "pending"
        if queued in ("RUNNING", "COMPLETING", "SUSPENDED", "UNKNOWN"):  # UNKNOWN: squeue failed
            return "running"
        run = self._run()
        if run is None:  # the task ended without a run: skipped or cancelled while pending
            return "skipped"
        return _RUN_STATES.get(run[1], "killed")  # RUNNING after its task ended: it died

    def result(self, timeout_s: float | None = None) -> JobResult:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (state := self.state()) not in ENDED:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.key} ({self.task}) still {state}")
            time.sleep(self.poll_s)
        run_id = (self._run() or ("", ""))[0]
        if state == "finished":
            return JobResult("finished", run_id)
        if state == "skipped":
            return JobResult("skipped", reason=f"task {self.task} ended without a run")
        reason = self.tracker.get_run(run_id).data.tags.get("zoo.error", state)
        return JobResult("failed", run_id, reason)

    def cancel(self) -> bool:
        if self.state() in ENDED:
            return False
        scancel(self.task)
        return True

    def _run(self) -> tuple[str, str] | None:
        """(run id, MLflow status) of the job's run, None when it has none."""
        return self.tracker.states(self.tracker.experiment_id(self.experiment)).get(self.key)
