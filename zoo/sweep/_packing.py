"""How many runs one SLURM array task trains: ``--runs-per-task auto``.

A task pays its start-up (interpreter, torch, MLflow: seconds) once for all its runs,
so short runs are packed until a task trains for at least MIN_TASK_S on the profile's
machine; a sweep also has to fit the cluster's limits on jobs (every array task counts
as one job).
"""

from __future__ import annotations

import math
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from zoo.sweep._plan import Plan

__all__ = [
    "MIN_TASK_S",
    "ClusterLimits",
    "auto_runs_per_task",
    "cluster_limits",
    "read_limits",
    "with_auto_runs_per_task",
]

MIN_TASK_S = 300.0  # a task trains at least this long on the profile (5 minutes)


@dataclass(frozen=True)
class ClusterLimits:
    max_array_size: int = 1001  # SLURM's default MaxArraySize
    max_jobs: int | None = None  # the most jobs the sweep may have queued at once


def cluster_limits(config_text: str) -> ClusterLimits:
    """The limits in ``scontrol show config``'s output: MaxArraySize, and the smaller of
    MaxJobCount and MaxSubmitJobs where the site shows it there (it is usually an
    association limit, which ``sacctmgr`` shows and this does not read)."""

    def value(name: str) -> int | None:
        match = re.search(rf"^{name}\s*=\s*(\d+)", config_text, re.M)
        return int(match.group(1)) if match else None

    jobs = [n for n in (value("MaxSubmitJobs"), value("MaxJobCount")) if n]
    return ClusterLimits(value("MaxArraySize") or 1001, min(jobs, default=None))


def read_limits(dry_run: bool) -> ClusterLimits:
    """This cluster's limits (``scontrol show config``); on a dry run SLURM's defaults
    where scontrol does not answer. A failing scontrol otherwise is a ConfigError."""
    from zoo.errors import ConfigError

    try:
        shown = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        shown = subprocess.CompletedProcess([], 1, "", str(error))
    if shown.returncode == 0:
        return cluster_limits(shown.stdout)
    if dry_run:
        return ClusterLimits()
    raise ConfigError(f"scontrol show config: {(shown.stderr or 'failed').strip()}")


def auto_runs_per_task(
    plan: Plan, profile: Any, limits: ClusterLimits, runs_per_gpu: int = 1
) -> tuple[int, str]:
    """(runs per task, why): the fewest runs per task for which a task of the plan's
    shortest runs trains MIN_TASK_S on ``profile`` (zoo.calibrate.Profile; with
    ``runs_per_gpu`` N, N of them at a time), raised until the sweep's tasks (stage jobs,
    the plan's dataset jobs, and run tasks, packed per shared stage as the SLURM executor
    packs them) fit ``limits.max_jobs``; at least ``runs_per_gpu``."""
    from zoo.sweep._cost import job_seconds

    seconds = job_seconds(plan, profile)
    runs = [seconds[j.key] for j in plan.jobs if j.kind == "run"]
    if not runs:
        return max(1, runs_per_gpu), "no runs to pack"
    shortest = min(runs)
    per_task = math.ceil(MIN_TASK_S * runs_per_gpu / max(shortest, 1e-9))
    per_task = max(runs_per_gpu, min(per_task, len(runs)))
    why = f"shortest run {shortest:.1f} s on profile {profile.name}: tasks of >= {MIN_TASK_S:.0f} s"
    if limits.max_jobs is not None:
        others = sum(j.kind == "stage" for j in plan.jobs) + len(plan.datasets)
        groups = Counter(j.depends[-1:] for j in plan.jobs if j.kind == "run").values()
        room = limits.max_jobs - others
        if room < len(groups):
            raise _too_many(limits.max_jobs, others, len(groups))
        fitting = per_task
        while sum(math.ceil(n / fitting) for n in groups) > room:
            fitting += 1
        if fitting > per_task:
            per_task, why = fitting, f"{len(runs)} runs within {room} of {limits.max_jobs} jobs"
    return per_task, why


def with_auto_runs_per_task(plan: Plan, options: Any, profile: Any, echo=print) -> Any:
    """SLURM submit ``options`` with the runs per task ``auto_runs_per_task`` picks for
    ``plan`` on ``profile`` within this cluster's limits, said in one line."""
    limits = read_limits(options.dry_run)
    per_task, why = auto_runs_per_task(plan, profile, limits, options.runs_per_gpu)
    echo(f"--runs-per-task auto: {per_task} ({why})")
    return replace(options, runs_per_task=per_task)


def _too_many(max_jobs: int, others: int, groups: int) -> Exception:
    from zoo.errors import ConfigError

    return ConfigError(
        f"--runs-per-task: auto cannot fit this sweep into the cluster's {max_jobs} jobs: "
        f"it has {others} stage and dataset tasks and {groups} groups of runs (one task "
        "each at least); expected a larger job limit"
    )
