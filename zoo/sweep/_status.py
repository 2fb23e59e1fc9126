"""Sweep status from the tracking store: counts by state for each stage and for the runs."""

from __future__ import annotations

from collections import Counter

from zoo.sweep._plan import Plan
from zoo.tracking import Tracker

__all__ = ["STATES", "sweep_status"]

STATES = ("finished", "running", "failed", "missing")
_MLFLOW_STATES = {
    "FINISHED": "finished",
    "RUNNING": "running",
    "SCHEDULED": "running",
    "FAILED": "failed",
    "KILLED": "failed",
}


def sweep_status(plan: Plan, tracker: Tracker) -> dict[str, dict[str, int]]:
    """Job group ("run" or a shared stage's name) -> state -> count."""
    found = tracker.client.get_experiment_by_name(plan.spec.name)
    states = tracker.states(found.experiment_id) if found else {}
    counts: dict[str, Counter[str]] = {}
    for job in plan.jobs:
        state = _MLFLOW_STATES.get(states[job.key][1], "failed") if job.key in states else "missing"
        counts.setdefault(job.name, Counter())[state] += 1
    return {group: {s: c[s] for s in STATES} for group, c in counts.items()}


def format_status(name: str, status: dict[str, dict[str, int]]) -> str:
    """``sweep_status`` as a table."""
    lines = [f"sweep {name}", f"  {'':12}" + "".join(f"{s:>10}" for s in STATES)]
    for group, counts in status.items():
        lines.append(f"  {group:12}" + "".join(f"{counts[s]:>10}" for s in STATES))
    return "\n".join(lines)
