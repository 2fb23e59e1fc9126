"""Sweep status: MLflow run states joined with SLURM's queue, per shared stage and for runs.

A RUNNING run whose process died is ``interrupted``. A job with no MLflow run is
``queued`` or ``running`` while SLURM holds its task, ``skipped`` when the shared
stage it needs failed, and ``missing`` otherwise (a task cancelled while pending
leaves no record anywhere).
"""

from __future__ import annotations

from collections import Counter

from zoo.paths import ProjectPaths
from zoo.store import RunState, read_states
from zoo.sweep._plan import Plan
from zoo.sweep._slurm import queue_status

__all__ = ["STATES", "format_status", "sweep_status"]

STATES = ("finished", "running", "interrupted", "queued", "failed", "skipped", "missing")
_MLFLOW_STATES = {
    "FINISHED": "finished",
    "RUNNING": "running",
    "SCHEDULED": "running",
    "FAILED": "failed",
    "KILLED": "failed",
}


def _job_states(plan: Plan, uri: str, paths: ProjectPaths) -> dict[str, str]:
    from zoo._liveness import alive

    mlflow = _run_states(plan.spec.name, uri, paths)
    queue = queue_status(paths, plan.spec.name)  # the SLURM backend's status
    states: dict[str, str] = {}
    for job in plan.jobs:  # stage jobs come first, so a dependent sees its stage's state
        if job.key in mlflow:
            states[job.key] = _MLFLOW_STATES.get(mlflow[job.key].status, "failed")
            if states[job.key] == "running" and job.key not in queue:
                # a RUNNING run whose process died (see zoo._liveness) is interrupted
                states[job.key] = "running" if alive(mlflow[job.key].tags) else "interrupted"
        elif job.key in queue:
            states[job.key] = "running" if queue[job.key] == "RUNNING" else "queued"
        elif any(states.get(d) in ("failed", "skipped") for d in job.depends):
            states[job.key] = "skipped"
        else:
            states[job.key] = "missing"
    return states


def _run_states(experiment: str, uri: str, paths: ProjectPaths) -> dict[str, RunState]:
    """The runs' states in one query where the store allows (zoo._states), else through
    MLflow's client (RUNNING runs' tags fetched one by one)."""
    quick = read_states(uri, experiment)
    if quick is not None:
        return quick
    from zoo.store import Tracker

    tracker = Tracker(uri, paths, create=False)
    found = tracker.experiment_id(experiment)
    states = tracker.states(found) if found else {}
    return {
        key: RunState(
            run_id,
            status,
            tracker.get_run(run_id).data.tags if status == "RUNNING" else {},
        )
        for key, (run_id, status) in states.items()
    }


def sweep_status(plan: Plan, uri: str, paths: ProjectPaths) -> dict[str, dict[str, int]]:
    """Job group ("run" or a shared stage's name) -> state -> count, from the store at
    ``uri`` (which must exist) and the SLURM submissions in project ``paths``."""
    states = _job_states(plan, uri, paths)
    counts: dict[str, Counter[str]] = {}
    for job in plan.jobs:
        counts.setdefault(job.name, Counter())[states[job.key]] += 1
    return {group: {s: c[s] for s in STATES} for group, c in counts.items()}


def format_status(name: str, status: dict[str, dict[str, int]]) -> str:
    """``sweep_status`` as a table: a column per state, each at least one space wider
    than its header and its counts, so neighbours never run together."""
    first = max([len(g) for g in status] + [5])
    widths = {s: 1 + max([len(s)] + [len(str(c[s])) for c in status.values()]) for s in STATES}
    lines = [f"sweep {name}", f"  {'group':{first}}" + "".join(f"{s:>{widths[s]}}" for s in STATES)]
    for group, counts in status.items():
        lines.append(f"  {group:{first}}" + "".join(f"{counts[s]:>{widths[s]}}" for s in STATES))
    return "\n".join(lines)
