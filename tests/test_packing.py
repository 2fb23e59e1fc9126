"""``--runs-per-task auto``: tasks that train long enough on the profile's machine, within
the cluster's limits."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from zoo.calibrate import load_profile
from zoo.cli import main
from zoo.errors import ConfigError
from zoo.paths import ProjectPaths
from zoo.sweep import jobs_from_plan, load_spec, make_plan, rehearsal
from zoo.sweep._cost import job_seconds
from zoo.sweep._packing import MIN_TASK_S, ClusterLimits, auto_runs_per_task, cluster_limits

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
CONFIG = "MaxArraySize            = 3\nMaxJobCount             = 10000\nMinJobAge = 300\n"


def _plan_and_profile():
    plan = make_plan(rehearsal(load_spec(SWEEPS / "noise.yaml")))
    return plan, load_profile("cpu-2core-epyc", ProjectPaths(Path("/nonexistent")))


def _runs(plan) -> set[str]:
    return {j.key for j in plan.jobs if j.kind == "run"}


def test_the_cluster_limits_are_read_from_scontrol():
    assert cluster_limits(CONFIG) == ClusterLimits(3, 10000)
    assert cluster_limits(CONFIG + "MaxSubmitJobs = 500\n").max_jobs == 500
    assert cluster_limits("") == ClusterLimits(1001, None)


def test_auto_packs_short_runs_into_tasks_of_five_minutes():
    plan, profile = _plan_and_profile()
    assert auto_runs_per_task(plan, profile, ClusterLimits())[0] == 180  # all: < 5 min
    profile = replace(profile, job_overhead_s=10.0)  # a slower machine: 10 s a run
    per_task, why = auto_runs_per_task(plan, profile, ClusterLimits())
    seconds = job_seconds(plan, profile)
    shortest = min(seconds[j.key] for j in plan.jobs if j.kind == "run")
    assert per_task < 180 and per_task * shortest >= MIN_TASK_S > (per_task - 1) * shortest
    assert "shortest run" in why and "cpu-2core-epyc" in why
    slow = replace(profile, train_images_per_s=1e-3)  # hours per run: one run a task
    assert auto_runs_per_task(plan, slow, ClusterLimits())[0] == 1
    assert auto_runs_per_task(plan, slow, ClusterLimits(), runs_per_gpu=4)[0] == 4
    fast = replace(profile, job_overhead_s=10.0)  # 4 runs side by side: 4× the runs
    shortest = min(s for k, s in job_seconds(plan, fast).items() if k in _runs(plan))
    per_task = auto_runs_per_task(plan, fast, ClusterLimits(), runs_per_gpu=4)[0]
    assert per_task == math.ceil(4 * MIN_TASK_S / shortest)  # 4 train side by side


@pytest.mark.parametrize("room", [15, 33, 45, 60, 100])
def test_auto_fits_the_sweep_into_the_clusters_jobs(room):
    """The tasks the SLURM executor really makes (runs packed per shared stage) fit."""
    from zoo.sweep._slurm_submit import _group

    plan, profile = _plan_and_profile()
    slow = replace(profile, train_images_per_s=1e-3)
    assert sum(j.kind == "stage" for j in plan.jobs) == 15  # with 5 datasets: 20 tasks
    per_task, why = auto_runs_per_task(plan, slow, ClusterLimits(max_jobs=20 + room))
    jobs = jobs_from_plan(plan, "", ProjectPaths(Path("/nonexistent")))
    tasks = sum(a.task_count for a in _group(jobs, 1001, per_task, 1))
    assert tasks <= 15 + room and (per_task == 1 or "within" in why)
    if per_task > 1:  # one fewer run per task would not fit
        assert sum(a.task_count for a in _group(jobs, 1001, per_task - 1, 1)) > 15 + room


def test_auto_refuses_a_limit_no_packing_meets():
    plan, profile = _plan_and_profile()
    with pytest.raises(ConfigError, match="it has 20 stage and dataset tasks and 15 groups"):
        auto_runs_per_task(plan, profile, ClusterLimits(max_jobs=34))
    assert auto_runs_per_task(plan, profile, ClusterLimits(), runs_per_gpu=400)[0] == 400


def test_auto_on_a_dry_run_says_what_it_picked(project, capsys):
    argv = ["sweep", "submit", str(SWEEPS / "noise.yaml"), "--rehearse", "--dry-run"]
    assert main([*argv, "--runs-per-task", "auto", "--profile", "cpu-2core-epyc"]) == 0
    out = capsys.readouterr().out
    assert "--runs-per-task auto: " in out and "nothing written or submitted" in out
    assert not (project.root / "mlflow.db").exists()
