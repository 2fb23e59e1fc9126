"""The SLURM controller as zoo talks to it, shared by both sides of the SLURM executor.

The submitting side (:mod:`zoo.sweep._slurm_submit`) and the task side
(:mod:`zoo.sweep._slurm_task`) reach ``sbatch``, ``squeue``, ``scontrol`` and
``scancel`` only through this module, and read a submission's record
(``runs.json``) back with :func:`task_keys`. :func:`queue_status` is the backend's
status: which jobs of a sweep SLURM holds now; ``zoo sweep status`` joins it with
the store.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from zoo.errors import ConfigError
from zoo.paths import ProjectPaths

__all__ = [
    "active_tasks",
    "queue_status",
    "sbatch",
    "scancel",
    "show_config",
    "task_keys",
    "task_state",
]

_ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
}


def task_keys(array: dict[str, Any]) -> list[list[str]]:
    """The job keys of each task of a recorded array, in task order."""
    if array.get("tasks") is not None:
        return array["tasks"]
    keys, per_task = array["keys"], array["runs_per_task"]
    return [keys[i : i + per_task] for i in range(0, len(keys), per_task)]


def _slurm(*args: str) -> str:
    """The output of a SLURM command; one that is missing or refuses is a ConfigError."""
    try:
        result = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60)
    except FileNotFoundError:
        raise ConfigError(
            f"{args[0]}: not found; is SLURM installed (slurm/local-cluster.sh "
            "start for a local one)?"
        ) from None
    except subprocess.CalledProcessError as error:
        raise ConfigError(f"{' '.join(args[:2])}: {error.stderr.strip()}") from None
    return result.stdout


def sbatch(command: list[str]) -> str:
    """Run ``command`` (``sbatch --parsable ...``); the job id it queued."""
    return _slurm(*command).strip().split(";")[0]


def show_config() -> str:
    """``scontrol show config``: the cluster's settings as text (zoo.sweep._packing reads them)."""
    return _slurm("scontrol", "show", "config")


def scancel(*job_ids: str) -> None:
    """Cancel SLURM jobs (whole arrays by their job id): their tasks get SIGTERM first."""
    _slurm("scancel", *job_ids)


def active_tasks(sweep: str) -> dict[tuple[str, int], str]:
    """(array job id, task id) -> state of this sweep's pending and running tasks."""
    jobs = json.loads(_slurm("squeue", "--json")).get("jobs", [])
    found = {}
    for job in jobs:
        if not str(job.get("name", "")).startswith(f"zoo-{sweep}-"):
            continue
        state = job["job_state"] if isinstance(job["job_state"], str) else job["job_state"][0]
        if state in _ENDED:  # squeue --json also lists jobs that ended recently
            continue
        array_id = str(job.get("array_job_id") or job["job_id"])
        task = job.get("array_task_id")
        if isinstance(task, dict):  # newer squeue: {"set": bool, "number": n}
            task = task["number"] if task.get("set") else None
        if task is not None:
            found[(array_id, int(task))] = state
            continue
        spec = str(job.get("array_task_string") or "").split("%")[0]
        for part in filter(None, spec.split(",")):
            low, _, high = part.partition("-")
            for number in range(int(low), int(high or low) + 1):
                found[(array_id, number)] = state
    return found


def queue_status(paths: ProjectPaths, sweep: str) -> dict[str, str]:
    """The SLURM backend's status: job key -> SLURM state (PENDING, RUNNING...) of each
    job of ``sweep`` that a submission in ``paths`` put in a task SLURM holds now."""
    submissions = paths.submissions(sweep)
    if not submissions:
        return {}
    active = active_tasks(sweep)
    queued = {}
    for submission in submissions:
        for array in json.loads(submission.record.read_text())["arrays"]:
            for index, keys in enumerate(task_keys(array)):
                state = active.get((str(array["job_id"]), index))
                if state:
                    queued.update(dict.fromkeys(keys, state))
    return queued


def task_state(task: str) -> str:
    """The state of array task ``task`` in ``squeue``; "" when the controller no longer
    knows it (ended and purged), "UNKNOWN" while ``squeue`` itself fails (keep waiting)."""
    try:
        return _slurm("squeue", "-h", "-j", task, "-o", "%T").strip()
    except ConfigError as error:
        return "" if "Invalid job id" in str(error) else "UNKNOWN"
    except subprocess.TimeoutExpired:
        return "UNKNOWN"
