"""SLURM execution against a real single-node cluster started by slurm/local-cluster.sh.

The cluster has MaxArraySize 3 (so arrays split) and declares 4 CPUs (so the
array throttle, not the CPU count, bounds how many tasks run at once).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from conftest import squeue_empty as _squeue_empty
from mlflow.tracking import MlflowClient

from zoo.cli import main

pytestmark = pytest.mark.slurm


def _task_intervals(project) -> list[tuple[float, float]]:
    """Start and end of every worker task, from the worker logs' modification and content."""
    intervals = []
    for log in project.state.glob("sweeps/tiny/*/logs/*.out"):
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        intervals += [(x["start"], x["end"]) for x in lines if "start" in x]
    return intervals


def test_demo_sweep_on_slurm_every_run_once_and_throttled(
    tiny_spec, tiny_runs, cluster, project, capsys
):
    spec = tiny_spec(sources=("a", "b", "c"))
    options = ["--max-parallel", "2", "--runs-per-task", "2", "--runs-per-gpu", "2"]
    assert main(["sweep", "submit", str(spec), *options]) == 0
    output = capsys.readouterr().out
    assert "submitted jobs-0" in output and "after afterany:" in output
    _squeue_empty()
    runs = tiny_runs()
    assert len(runs) == 3 + 6 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["zoo.config_hash"] for r in runs}) == 9
    intervals = _task_intervals(project)
    assert len(intervals) == 3 + 3 + 3  # datasets a, b, c, 3 stage tasks, 6 runs in tasks of 2
    most = max(sum(s <= t < e for s, e in intervals) for t, _ in intervals)
    assert most <= 2
    logs = project.state.glob("sweeps/tiny/*/logs/jobs-*.out")
    logs = [log for log in logs if ": run " in log.read_text()]
    assert len(logs) == 3
    for log in logs:  # each task's 2 runs went to 2 processes
        lanes = re.findall(r"^task \d+ lane (\d+) pid (\d+): run ", log.read_text(), re.M)
        assert sorted(lane for lane, _ in lanes) == ["0", "1"] and len(set(lanes)) == 2
    assert main(["sweep", "status", str(spec), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["run"]["finished"] == 6 and status["pretrain"]["finished"] == 3


def test_usr1_requeues_the_task_and_it_resumes_to_the_same_metrics(
    tiny_spec, tiny_runs, cluster, project, tmp_path, capsys
):
    spec = tiny_spec(sources=("a",), freezes=("none",), epochs=40)
    assert main(["sweep", "submit", str(spec)]) == 0
    capsys.readouterr()
    deadline = time.time() + 300
    while time.time() < deadline:
        if list(project.stages.glob("*/last.safetensors")) and any(
            "transfer" in r.data.tags.get("zoo.stages", "") and r.data.tags["zoo.kind"] == "run"
            for r in tiny_runs()
        ):
            break
        time.sleep(0.5)
    job = subprocess.run(
        ["squeue", "-h", "-o", "%i", "-t", "R", "-n", "zoo-tiny-jobs-0"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert job, "the run task is not running"
    subprocess.run(["scancel", "--batch", "--signal=USR1", job[0]], check=True)
    _squeue_empty(timeout=400)
    runs = [r for r in tiny_runs() if r.data.tags["zoo.kind"] == "run"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    logs = "".join(p.read_text() for p in project.state.glob("sweeps/tiny/*/logs/jobs-0*.out"))
    assert "preempted: requeueing" in logs and re.search(r"requeueing \d+_0", logs)
    resumed = MlflowClient(project.tracking_uri).get_metric_history(
        runs[0].info.run_id, "val_loss/b"
    )
    # the same run without interruption, locally, in another project root
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "tiny.yaml").write_text(spec.read_text())
    env = {**os.environ, "ZOO_ROOT": str(reference)}
    subprocess.run(
        [sys.executable, "-m", "zoo.cli", "sweep", "run", "tiny.yaml"],
        cwd=reference,
        env=env,
        check=True,
        capture_output=True,
    )
    client = MlflowClient(f"sqlite:///{reference / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny").experiment_id
    (uninterrupted,) = [
        r for r in client.search_runs([experiment]) if r.data.tags["zoo.kind"] == "run"
    ]
    expected = client.get_metric_history(uninterrupted.info.run_id, "val_loss/b")
    assert sorted((m.step, m.value) for m in resumed) == sorted((m.step, m.value) for m in expected)


def test_failed_shared_stage_skips_dependents_and_resubmit_completes(
    tiny_spec, tiny_runs, cluster, project, capsys
):
    spec = tiny_spec(
        extra={
            "derive": {"init": {"lookup": ["$source", {"a": "random", "b": "file:fix-me.pt"}]}},
            "set": {
                "stages.0.train": "$source",
                "stages.0.init": "$init",
                "stages.1.freeze": "$freeze",
            },
        },
    )
    import torch

    # tensors zoo loads safely (so the stage's run exists) that do not fit the model: the
    # stage fails in training (a file zoo refuses to load leaves no run at all)
    torch.save({"not.a.layer": torch.zeros(1)}, project.root / "fix-me.pt")
    assert main(["sweep", "submit", str(spec)]) == 0
    _squeue_empty()
    capsys.readouterr()
    assert main(["sweep", "status", str(spec), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["pretrain"]["failed"] == 1 and status["run"]["skipped"] == 2
    assert status["run"]["finished"] == 2
    from zoo.models import create_model
    from zoo.sweep import load_spec, make_plan

    config = next(r.config for r in make_plan(load_spec(spec)).runs if r.names["source"] == "b")
    torch.save(create_model(config.model).state_dict(), project.root / "fix-me.pt")
    assert main(["sweep", "submit", str(spec), "--resubmit-failed"]) == 0
    _squeue_empty()
    runs = tiny_runs()
    finished = {r.data.tags["zoo.config_hash"] for r in runs if r.info.status == "FINISHED"}
    assert len(finished) == 2 + 4  # the fixed file is new content: a new stage b and its runs


def test_arrays_split_at_max_array_size_and_dry_run_submits_nothing(
    tiny_spec, cluster, project, capsys
):
    spec = tiny_spec(
        sources=("a",), freezes=("none", "encoder", "decoder"), extra={"seeds": [0, 1, 2]}
    )
    assert main(["sweep", "submit", str(spec), "--dry-run"]) == 0
    output = capsys.readouterr().out
    # datasets a, b, c in one array; 3 stages (one per seed) and 9 runs in four arrays
    # of 3 tasks (MaxArraySize 3)
    assert output.count("#SBATCH --array=0-2") == 5 and "nothing written or submitted" in output
    assert not project.state.joinpath("sweeps").exists()
    spec = tiny_spec(sources=("a",), freezes=("none",), extra={"seeds": [0, 1, 2, 3]})
    assert main(["sweep", "submit", str(spec), "--dry-run"]) == 0
    output = capsys.readouterr().out
    assert "#SBATCH --array=0-2\n" in output and "#SBATCH --array=0-0\n" in output
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout == ""


def test_shell_injection_values_never_execute(
    tiny_spec, tiny_runs, cluster, project, capsys, tmp_path
):
    owned = tmp_path / "owned"
    value = f'x"; touch {owned}; "'
    spec = tiny_spec(
        sources=("a",),
        freezes=("none",),
        extra={  # the value travels in every job's axes and run name
            "derive": {"label": {"value": value}},
            "set": {"stages.0.train": "$source"},
            "run_name": "r {label} {seed}",
        },
    )
    assert main(["sweep", "submit", str(spec), "--partition", value]) == 2
    assert "--partition" in capsys.readouterr().err
    assert main(["sweep", "submit", str(spec), "--sbatch", f"--comment={value}\n#SBATCH -p x"]) == 2
    assert main(["sweep", "submit", str(spec), "--runs-per-gpu", "2"]) == 2  # > runs per task
    assert "--runs-per-gpu: 2 is not allowed" in capsys.readouterr().err
    assert main(["sweep", "submit", str(spec), "--runs-per-task", "2"]) == 0
    _squeue_empty()
    assert not owned.exists()
    assert all(r.info.status == "FINISHED" for r in tiny_runs())
    scripts = "".join(p.read_text() for p in project.state.glob("sweeps/tiny/*/*.sbatch"))
    assert "touch" not in scripts


def test_sweep_through_a_tracking_server_on_postgresql(
    tiny_spec, cluster, project, tracking_server, capsys
):
    """The cluster path: array tasks log over HTTP to an MLflow server on PostgreSQL."""
    uri = tracking_server.uri
    spec = tiny_spec(sources=("a",), freezes=("none", "encoder"))
    assert main(["sweep", "submit", str(spec), "--tracking-uri", uri]) == 0
    _squeue_empty()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 + 2 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["zoo.config_hash"] for r in runs}) == 3
    assert not project.tracking_db.exists()  # nothing went to a SQLite file
    capsys.readouterr()
    assert main(["sweep", "status", str(spec), "--json", "--tracking-uri", uri]) == 0
    assert json.loads(capsys.readouterr().out)["run"]["finished"] == 2


def test_search_on_slurm_spends_its_budget_exactly(search_spec, cluster, project, capsys):
    """Each array task is an Optuna worker asking for trials until the budget is spent."""
    from test_search import study, trial_runs

    spec = search_spec({"budget": 5}, epochs=1)
    assert main(["sweep", "submit", str(spec), "--workers", "2"]) == 0
    assert "submitted search-0" in capsys.readouterr().out
    _squeue_empty()
    trials = study(project).trials
    assert len(trials) == 5 and "RUNNING" not in {t.state.name for t in trials}
    runs = trial_runs(project)
    assert sorted(int(r.data.tags["zoo.trial"]) for r in runs) == list(range(5))
    logs = list(project.state.glob("sweeps/tiny/*/logs/search-0_*.out"))
    assert len(logs) == 2
    assert main(["sweep", "status", str(spec), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trials"] == 5


def _array_intervals(project, array: str) -> list[tuple[float, float]]:
    intervals = []
    for log in project.state.glob(f"sweeps/tiny/*/logs/{array}_*.out"):
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        intervals += [(x["start"], x["end"]) for x in lines if "start" in x]
    return intervals


def test_dataset_array_runs_before_the_stage_array(tiny_spec, tiny_runs, cluster, project, capsys):
    spec = tiny_spec(sources=("a",))
    assert main(["sweep", "submit", str(spec), "--data-cpus", "1", "--data-time", "10:00"]) == 0
    output = capsys.readouterr().out
    assert output.index("submitted datasets-0") < output.index("submitted jobs-0")
    _squeue_empty()
    made, jobs = _array_intervals(project, "datasets-0"), _array_intervals(project, "jobs-0")
    assert len(made) == 3 and len(jobs) == 3  # one task per dataset: a, b, c; 1 stage, 2 runs
    assert max(end for _, end in made) <= min(start for start, _ in jobs)
    assert len(tiny_runs()) == 3 and all(r.info.status == "FINISHED" for r in tiny_runs())
    index = json.loads(project.dataset_index.read_text())
    assert sorted(index) == ["a", "b", "c"]


def test_a_run_waits_for_its_own_stage_only(tiny_spec, tiny_runs, cluster, project, capsys):
    """Stage a trains 1 epoch, stage b many: a run that starts from a finishes while b
    still trains (it waited for a only), and --max-parallel still bounds every task.
    Tasks (MaxArraySize 3): jobs-0 = stage a, stage b, run a/none; jobs-1 = the rest."""
    spec = tiny_spec(
        extra={
            "derive": {"epochs": {"lookup": ["$source", {"a": 1, "b": 100}]}},
            "set": {
                "stages.0.train": "$source",
                "stages.0.epochs": "$epochs",
                "stages.1.freeze": "$freeze",
            },
        },
    )
    assert main(["sweep", "submit", str(spec), "--max-parallel", "3"]) == 0
    capsys.readouterr()
    _squeue_empty()
    runs = tiny_runs()
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)

    def of(kind, source):
        (found,) = [
            r
            for r in runs
            if r.data.tags["zoo.kind"] == kind
            and r.data.tags["zoo.axis.source"] == source
            and r.data.tags.get("zoo.axis.freeze", "none") == "none"
        ]
        return found.info

    fast, slow, run = of("stage", "a"), of("stage", "b"), of("run", "a")
    print(
        f"run from stage a: started {(run.start_time - fast.end_time) / 1000:.1f} s after "
        f"stage a ended, ended {(slow.end_time - run.end_time) / 1000:.1f} s before the "
        f"slow stage b ended ({(slow.end_time - slow.start_time) / 1000:.1f} s long)"
    )
    assert run.end_time < slow.end_time
    intervals = _array_intervals(project, "jobs-0") + _array_intervals(project, "jobs-1")
    assert len(intervals) == 6
    assert max(sum(s <= t < e for s, e in intervals) for t, _ in intervals) <= 3


def test_sweep_cancel_on_slurm_ends_the_run_under_way_killed(
    tiny_spec, tiny_runs, cluster, project, capsys
):
    """`zoo sweep cancel SPEC` cancels the sweep's arrays: the task gets SIGTERM (SLURM's
    cancel), its run under way ends KILLED, not left RUNNING, and nothing of the sweep
    stays queued."""
    spec = tiny_spec(sources=("a",), freezes=("none",), epochs=400)
    assert main(["sweep", "submit", str(spec)]) == 0
    deadline = time.time() + 300
    while not any(r.data.tags.get("zoo.kind") == "run" for r in tiny_runs()):
        assert time.time() < deadline, "the run task never started"
        time.sleep(0.5)
    capsys.readouterr()
    assert main(["sweep", "cancel", str(spec)]) == 0
    assert "cancelled SLURM job(s)" in capsys.readouterr().out
    _squeue_empty(timeout=120)
    (run,) = [r for r in tiny_runs() if r.data.tags["zoo.kind"] == "run"]
    assert run.info.status == "KILLED"  # resumable: the local tests resume such runs
