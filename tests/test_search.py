"""Searches: Optuna trials as MLflow runs, an exact budget across workers, pruning, and a
study that survives ``kill -9`` of its workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from zoo.cli import main


def study(project, name="tiny"):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    journal = project.study(name).journal
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=name, storage=storage)


def trial_runs(project, name="tiny"):
    client = MlflowClient(project.tracking_uri)
    experiment = client.get_experiment_by_name(name).experiment_id
    return [r for r in client.search_runs([experiment]) if "zoo.trial" in r.data.tags]


@pytest.mark.slow
def test_search_spends_its_budget_exactly_and_mlflow_holds_the_objective(
    search_spec, project, capsys
):
    spec = search_spec(epochs=1)
    assert main(["sweep", "run", str(spec), "--workers", "2"]) == 0
    assert "12 of 12 trials" in capsys.readouterr().out
    trials = study(project).trials
    assert len(trials) == 12 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    runs = {r.info.run_id: r for r in trial_runs(project)}
    assert sorted(int(r.data.tags["zoo.trial"]) for r in runs.values()) == list(range(12))
    for trial in trials:
        (run_id,) = trial.user_attrs.get("mlflow_run_ids", [None])
        if trial.state.name == "COMPLETE":
            assert runs[run_id].data.metrics["target_loss_adj"] == trial.value
            assert runs[run_id].data.tags["zoo.axis.freeze"] == trial.params["freeze"]
    best = study(project).best_trial
    tagged = [r for r in runs.values() if r.data.tags.get("zoo.best_trial") == "true"]
    assert [r.info.run_id for r in tagged] == best.user_attrs["mlflow_run_ids"]
    # every trial starts from the one pretraining: trained once, 12 transfers beside it
    assert len(list(project.stages.iterdir())) == 1 + 12

    assert main(["sweep", "run", str(spec), "--workers", "2"]) == 0  # budget spent: no-op
    assert len(study(project).trials) == 12 and len(trial_runs(project)) == 12
    capsys.readouterr()
    assert main(["sweep", "status", str(spec), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["trials"] == 12 and status["best"]["trial"] == best.number
    assert main(["analyze", str(spec), "--out", str(project.root / "report")]) == 0
    report = (project.root / "report" / "report.html").read_text()
    assert "<h2>Search</h2>" in report and "optimisation_history" in report
    assert f"<tr><td>{best.number}</td><td>{best.value:.4g}</td>" in report


def test_plan_of_a_search_bounds_its_image_passes(search_spec, capsys):
    spec = search_spec()
    assert main(["sweep", "plan", str(spec), "--json", "--images-per-s", "100"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["budget"] == 12 and plan["runs_per_trial"] == 1
    assert plan["stages"]["pretrain"].startswith("shared by every trial: 1 training")
    assert plan["stages"]["transfer"] == "trained per trial"
    # pretraining once (8 images × 8 transforms), 12 transfers of 4 images × 8 × 2 epochs
    assert plan["image_passes_max"] == 64 + 12 * 64
    assert plan["image_passes_max_unshared"] == 12 * (64 + 64)


def test_a_trial_behind_the_median_is_pruned_and_its_run_ends_killed(search_spec, project):
    """Median pruning from the second trial on, from the first epoch: of two learning
    rates, the one worse after an epoch is pruned (CPU training is deterministic)."""
    spec = search_spec(
        {
            "parameters": {"lr": {"type": "categorical", "choices": [0.01, 50.0]}},
            "budget": 2,
            "sampler": "grid",
            "startup_trials": 1,
            "warmup_epochs": 0,
        },
        epochs=3,
    )
    text = spec.read_text().replace("stages.1.freeze: $freeze", "stages.1.freeze: none")
    spec.write_text(text)
    assert main(["sweep", "run", str(spec)]) == 0
    trials = study(project).trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert len(trials) == 2 and pruned, [(t.params, t.state) for t in trials]
    (killed,) = [r for r in trial_runs(project) if r.info.status == "KILLED"]
    assert float(killed.data.tags["zoo.axis.lr"]) == pruned[0].params["lr"]
    assert killed.data.tags["zoo.trial"] == str(pruned[0].number)
    assert killed.data.tags["zoo.pruned_epoch"] == "1"
    history = MlflowClient(project.tracking_uri).get_metric_history(killed.info.run_id, "stage")
    assert len(history) == 1 + 1  # the pretraining epoch and one transfer epoch


def test_a_cma_es_search_spends_its_budget(search_spec, project):
    spec = search_spec(
        {
            "parameters": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
            "budget": 3,
            "sampler": "cmaes",
            "startup_trials": 1,
            "pruner": "none",
        },
        epochs=1,
    )
    text = spec.read_text().replace("stages.1.freeze: $freeze", "stages.1.freeze: none")
    spec.write_text(text)
    assert main(["sweep", "run", str(spec)]) == 0
    trials = study(project).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert len({t.params["lr"] for t in trials}) == 3


def test_a_search_on_the_postgresql_of_the_tracking_store(search_spec, project, postgres, capsys):
    """Optuna's RDB storage beside the MLflow store on one PostgreSQL server (its own
    database: both keep an alembic_version table): trial objectives in the study equal
    the metric logged to MLflow."""
    import optuna
    from stores import fresh_database

    from zoo.store import store_uri

    uri, study_uri = fresh_database(postgres), fresh_database(postgres)
    spec = search_spec({"budget": 2, "storage": uri, "pruner": "none"}, epochs=1)
    assert main(["sweep", "run", str(spec), "--tracking-uri", uri]) == 2  # MLflow's database
    assert "spec.search.storage" in capsys.readouterr().err
    spec = search_spec({"budget": 2, "storage": study_uri, "pruner": "none"}, epochs=1)
    assert main(["sweep", "run", str(spec), "--tracking-uri", uri]) == 0
    storage = optuna.storages.RDBStorage(store_uri(study_uri))
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    assert not project.study("tiny").journal.exists()
    client = MlflowClient(store_uri(uri))
    experiment = client.get_experiment_by_name("tiny").experiment_id
    for trial in trials:
        (run,) = client.search_runs([experiment], f"tags.`zoo.trial` = '{trial.number}'")
        assert run.data.metrics["target_loss_adj"] == trial.value


def test_bad_search_blocks_are_refused_in_one_line(search_spec, project, capsys):
    for block, message in (
        ({"budget": 0}, "spec.search.budget: 0 is not allowed"),
        ({"sampler": "nelder"}, "spec.search.sampler: 'nelder' is not allowed; expected one of"),
        (
            {"parameters": {"lr": {"type": "float", "low": 0, "high": 1, "log": True}}},
            "spec.search.parameters.lr.low: 0",
        ),
        ({"pruner": "median", "objective": {"direction": "up"}}, "objective.direction"),
    ):
        spec = search_spec(block)
        assert main(["sweep", "run", str(spec)]) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1
    assert not project.study("tiny").folder.exists()


@pytest.mark.slow
def test_kill_9_mid_study_then_the_same_command_finishes_it_exactly(search_spec, project):
    spec = search_spec({"budget": 5}, epochs=4)
    command = [sys.executable, "-m", "zoo.cli", "sweep", "run", str(spec), "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    first = subprocess.Popen(
        command, cwd=project.root, env=env, start_new_session=True, stdout=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    try:
        while time.time() < deadline and first.poll() is None:
            if project.study("tiny").journal.exists():
                states = [t.state.name for t in study(project).trials]
                epochs = list(project.stages.glob("*/last.safetensors"))
                if states.count("COMPLETE") >= 1 and "RUNNING" in states and epochs:
                    break
            time.sleep(0.3)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = study(project).trials
    interrupted = [t.number for t in before if t.state.name == "RUNNING"]
    assert interrupted, "nothing was running when the workers were killed"
    resumed = subprocess.run(command, cwd=project.root, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = study(project).trials
    assert len(trials) == 5 and "RUNNING" not in {t.state.name for t in trials}
    for number in interrupted:  # the same trial, ended now; what it had suggested kept
        assert before[number].params.items() <= trials[number].params.items()
    runs = trial_runs(project)
    described = [(t.number, t.state.name, t.params, t.user_attrs) for t in trials]
    assert sorted(int(r.data.tags["zoo.trial"]) for r in runs) == list(range(5)), described
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)
