"""Sweep status: MLflow run states joined with SLURM's queue, per shared stage and for runs.

A RUNNING run whose process died is ``interrupted``. A job with no MLflow run is
``queued`` or ``running`` while SLURM holds its task, ``skipped`` when the shared
stage it needs failed, and ``missing`` otherwise (a task cancelled while pending
leaves no record anywhere).
"""

from __future__ import annotations

from collections import Counter

from zoo.sweep._plan import Plan
from zoo.tracking import Tracker

__all__ = ["STATES", "format_status", "sweep_status"]

STATES = ("finished", "running", "interrupted", "queued", "failed", "skipped", "missing")
_MLFLOW_STATES = {
    "FINISHED": "finished",
    "RUNNING": "running",
    "SCHEDULED": "running",
    "FAILED": "failed",
    "KILLED": "failed",
}


def _job_states(plan: Plan, tracker: Tracker) -> dict[str, str]:
    from zoo.sweep._slurm import queued_keys

    found = tracker.client.get_experiment_by_name(plan.spec.name)
    mlflow = tracker.states(found.experiment_id) if found else {}
    queue = queued_keys(tracker.paths, plan.spec.name)
    states: dict[str, str] = {}
    for job in plan.jobs:  # stage jobs come first, so a dependent sees its stage's state
        if job.key in mlflow:
            states[job.key] = _MLFLOW_STATES.get(mlflow[job.key][1], "failed")
            if states[job.key] == "running" and job.key not in queue:
                states[job.key] = _running_or_interrupted(tracker, mlflow[job.key][0])
        elif job.key in queue:
            states[job.key] = "running" if queue[job.key] == "RUNNING" else "queued"
        elif any(states.get(d) in ("failed", "skipped") for d in job.depends):
            states[job.key] = "skipped"
        else:
            states[job.key] = "missing"
    return states


def _running_or_interrupted(tracker: Tracker, run_id: str) -> str:
    """A RUNNING run whose process died (see zoo._liveness) is ``interrupted``."""
    from zoo._liveness import alive

    return "running" if alive(tracker.client.get_run(run_id).data.tags) else "interrupted"


def sweep_status(plan: Plan, tracker: Tracker) -> dict[str, dict[str, int]]:
    """Job group ("run" or a shared stage's name) -> state -> count."""
    states = _job_states(plan, tracker)
    counts: dict[str, Counter[str]] = {}
    for job in plan.jobs:
        counts.setdefault(job.name, Counter())[states[job.key]] += 1
    return {group: {s: c[s] for s in STATES} for group, c in counts.items()}


def format_status(name: str, status: dict[str, dict[str, int]]) -> str:
    """``sweep_status`` as a table."""
    lines = [f"sweep {name}", f"  {'':12}" + "".join(f"{s:>10}" for s in STATES)]
    for group, counts in status.items():
        lines.append(f"  {group:12}" + "".join(f"{counts[s]:>10}" for s in STATES))
    return "\n".join(lines)
