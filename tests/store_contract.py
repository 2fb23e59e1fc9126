"""The store contract (zoo.store.Store's promises) as test classes, as optuna's storage
tests are: ``StoreContract`` holds the tests every backend passes, ``SqlStoreContract``
adds those of stores zoo reads with its own SQL. A backend's test class subclasses one
and gives the ``store`` fixture: a fresh store's URI (tests/test_store.py: SQLite,
PostgreSQL, zoo's tracking server)."""

from __future__ import annotations

import math
import time
import uuid

import pytest
from mlflow.tracking import MlflowClient
from stores import run_python

from zoo.analysis import load_tables
from zoo.paths import ProjectPaths
from zoo.store import (
    CONFIG_HASH_TAG,
    KNOWN_REVISIONS,
    ById,
    FinishedRun,
    Tracker,
    ensure_indexes,
    present_indexes,
    read_states,
    schema_revision,
)

# doubles that SQLite's quote() or printf('%.17g') do not read back exactly, and a NaN
AWKWARD = [5.2984899718600703e104, 3.8531618622561997e-73, 2.229383271060314e-147, 0.3]

WRITER = """
import sys
from zoo.store import Tracker, CONFIG_HASH_TAG
uri, name, count, who = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
tracker = Tracker(uri)
experiment = tracker.experiment(name)
for i in range(count):
    run_id = tracker.create(experiment, {CONFIG_HASH_TAG: f"{who}-{i}"})
    for step in range(1, 6):
        tracker.log_metrics(run_id, {f"m{k}": step + k for k in range(20)}, step)
    tracker.finish(run_id)
print("ok")
"""


def fresh_name() -> str:
    """An experiment name no other test uses (the server is shared by the session)."""
    return f"e-{uuid.uuid4().hex[:8]}"


def log_run(tracker: Tracker, experiment: str, identity: str, epochs: int = 3) -> str:
    """A finished run of ``identity``: two params, ``epochs`` steps of two metrics, a summary."""
    run_id = tracker.create(experiment, {CONFIG_HASH_TAG: identity, "zoo.kind": "run"})
    tracker.log_params(run_id, {"stages.0.lr": 1e-3, "model.encoder": "tu-test_resnet"})
    for step in range(1, epochs + 1):
        tracker.log_metrics(run_id, {"train_loss": 1 / step, "val_loss/a": 2 / step}, step)
    tracker.log_metrics(run_id, {"target_loss": 0.25}, 0)
    tracker.finish(run_id)
    return run_id


class StoreContract:
    """The promises every backend keeps. Subclasses give ``store``: a fresh store's URI."""

    @pytest.fixture
    def store(self) -> str:
        raise NotImplementedError  # each backend's test class gives its own

    def test_runs_read_back_exactly_as_written(self, store, tmp_path):
        tracker = Tracker(store, ProjectPaths(tmp_path))
        name = fresh_name()
        experiment = tracker.experiment(name, description="what this sweep asks")
        ids = {identity: log_run(tracker, experiment, identity) for identity in ("a1", "b2")}
        assert tracker.find(experiment, "b2").info.run_id == ids["b2"]
        assert tracker.find(experiment, "zz") is None
        assert tracker.states(experiment) == {k: (v, "FINISHED") for k, v in ids.items()}
        tags = MlflowClient(tracker.uri).get_experiment(experiment).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        assert tags["mlflow.note.content"] == "what this sweep asks"

        tables = load_tables(store, name)
        runs = tables.runs.set_index("config_hash")
        assert set(runs.index) == {"a1", "b2"} and set(runs["status"]) == {"FINISHED"}
        assert runs["param.stages.0.lr"].tolist() == [0.001, 0.001]
        assert set(runs["param.model.encoder"]) == {"tu-test_resnet"}
        assert runs["target_loss"].tolist() == [0.25, 0.25]
        history = tables.histories.sort_values(["run_id", "key", "step"])
        assert len(history) == 2 * 2 * 3
        for run_id in ids.values():
            points = history[(history.run_id == run_id) & (history.key == "val_loss/a")]
            assert points["step"].tolist() == [1, 2, 3]
            assert points["value"].tolist() == [2.0, 1.0, 2 / 3]

    def test_states_are_read_in_one_query_as_mlflow_would_search_them(self, store, tmp_path):
        """What status, resubmission and gc judge runs by (identity, newest run, status,
        liveness tags) reads the same in one query as through MLflow's search, deleted
        runs and runs without an identity left out."""
        tracker = Tracker(store, ProjectPaths(tmp_path))
        name = fresh_name()
        experiment = tracker.experiment(name)
        log_run(tracker, experiment, "a1")
        older = tracker.create(experiment, {CONFIG_HASH_TAG: "b2"})
        tracker.finish(older, RuntimeError("first try failed"))
        time.sleep(0.01)  # MLflow orders runs by start time (ms)
        newer = log_run(tracker, experiment, "b2")
        beat = {"zoo.heartbeat": "1700000000", "zoo.host": "node7", "zoo.pid": "42"}
        running = tracker.create(experiment, {CONFIG_HASH_TAG: "c3", **beat})
        gone = log_run(tracker, experiment, "d4")
        tracker.delete_run(gone)
        tracker.create(experiment, {"zoo.kind": "report"})

        states = read_states(tracker.uri, name)
        assert states == read_states(tracker.uri, ById(experiment))
        assert {k: (s.run_id, s.status) for k, s in states.items()} == {
            "a1": (tracker.find(experiment, "a1").info.run_id, "FINISHED"),
            "b2": (newer, "FINISHED"),
            "c3": (running, "RUNNING"),
        }
        assert {k: v for k, v in states["c3"].tags.items() if k != CONFIG_HASH_TAG} == beat
        assert tracker.states(experiment) == {k: (s.run_id, s.status) for k, s in states.items()}
        assert read_states(tracker.uri, "never-made") == {}

    def test_every_double_and_nan_read_back_exactly(self, store, tmp_path):
        tracker = Tracker(store, ProjectPaths(tmp_path))
        name = fresh_name()
        run_id = tracker.create(tracker.experiment(name), {CONFIG_HASH_TAG: "a"})
        for step, value in enumerate([*AWKWARD, float("nan")], start=1):
            tracker.log_metrics(run_id, {"train_loss": value}, step)
        tracker.log_metrics(run_id, {"target_loss": float("nan"), "target_loss_adj": AWKWARD[1]}, 0)
        tracker.finish(run_id)
        tables = load_tables(store, name)
        points = tables.histories.sort_values("step")["value"].tolist()
        assert points[:-1] == AWKWARD and math.isnan(points[-1])
        (summary,) = tables.runs.to_dict("records")  # a diverged run's NaN is not a 0 loss
        assert math.isnan(summary["target_loss"]) and summary["target_loss_adj"] == AWKWARD[1]

    def test_values_zoo_cannot_pack_read_back_exactly(self, store, tmp_path):
        """Params holding the separator zoo's packed reads join values with (ASCII 31), or
        nothing, read back as written; so does a summary metric that is all NaN (not 0)."""
        tracker = Tracker(store, ProjectPaths(tmp_path))
        name = fresh_name()
        run_id = tracker.create(tracker.experiment(name), {CONFIG_HASH_TAG: "a"})
        tracker.log_params(run_id, {"odd": "x\x1fy", "empty": "", "plain": "p"})
        tracker.log_metrics(run_id, {"target_loss": float("nan")}, 0)
        tracker.finish(run_id)
        (summary,) = load_tables(store, name).runs.to_dict("records")
        assert (summary["param.odd"], summary["param.empty"]) == ("x\x1fy", "")
        loss = summary["target_loss"]
        assert summary["param.plain"] == "p" and (loss is None or math.isnan(loss))

    def test_a_batch_sent_again_under_its_timestamp_adds_no_row_twice(self, store, tmp_path):
        """An interrupted send that did land, sent again: each step and param stays once."""
        tracker = Tracker(store, ProjectPaths(tmp_path))
        run_id = tracker.create(tracker.experiment(fresh_name()), {CONFIG_HASH_TAG: "a"})
        rows = [(step, {"train_loss": 1 / step, "val_loss/a": float("nan")}) for step in (1, 2)]
        for _ in range(2):
            tracker.log_batch(run_id, {"lr": 0.1}, rows, timestamp=1_700_000_000_000)
        for key in ("train_loss", "val_loss/a"):
            steps = [m.step for m in tracker.get_metric_history(run_id, key)]
            assert sorted(steps) == [1, 2]
        assert tracker.get_run(run_id).data.params == {"lr": "0.1"}

    def test_a_run_record_larger_than_one_batch_lands_whole(self, store, tmp_path):
        """A run's first send (a config of 313 params, as a defocus run's, and 1200 values:
        several of MLflow's batches) reads back whole, each value once; sent again under
        its timestamp, nothing is added."""
        tracker = Tracker(store, ProjectPaths(tmp_path))
        run_id = tracker.create(tracker.experiment(fresh_name()), {CONFIG_HASH_TAG: "big"})
        params = {f"datasets.d{i // 22}.field{i % 22}": i for i in range(313)}
        rows = [
            (step, {f"val_loss/d{k}": step + k / 100 for k in range(100)}) for step in range(12)
        ]
        for _ in range(2):
            tracker.log_batch(run_id, params, rows, timestamp=1_700_000_000_000)
        assert tracker.get_run(run_id).data.params == {k: str(v) for k, v in params.items()}
        for key in ("val_loss/d0", "val_loss/d99"):
            assert sorted(m.step for m in tracker.get_metric_history(run_id, key)) == list(
                range(12)
            )

    def test_a_finished_retry_clears_the_earlier_error(self, store, tmp_path):
        tracker = Tracker(store, ProjectPaths(tmp_path))
        experiment = tracker.experiment(fresh_name())
        run_id = tracker.create(experiment, {CONFIG_HASH_TAG: "x"})
        tracker.finish(run_id, RuntimeError("out of memory"))
        assert tracker.get_run(run_id).data.tags["zoo.error"] == "RuntimeError: out of memory"
        tracker.reopen(run_id)
        tracker.finish(run_id)
        run = tracker.get_run(run_id)
        assert run.info.status == "FINISHED" and "zoo.error" not in run.data.tags

    def test_import_is_idempotent(self, store, tmp_path):
        tracker = Tracker(store, ProjectPaths(tmp_path))
        name = fresh_name()
        experiment = tracker.experiment(name)
        runs = [
            FinishedRun(
                tags={CONFIG_HASH_TAG: f"row{i}", "zoo.kind": "run", "zoo.axis.size": str(8 * i)},
                params={"size": str(8 * i)},
                metrics={"target_loss_adj": 0.1 * i},
                histories={"val_loss/a": [0.5, 0.4, 0.3 + i]},
            )
            for i in range(5)
        ]
        assert tracker.import_runs(experiment, runs[:3]) == 3
        assert tracker.import_runs(experiment, runs) == 2
        assert tracker.import_runs(experiment, runs) == 0
        tables = load_tables(store, name)
        assert sorted(tables.runs["size"]) == [0, 8, 16, 24, 32]
        assert len(tables.histories) == 5 * 3
        assert sorted(tables.histories.query("step == 3")["value"]) == [0.3, 1.3, 2.3, 3.3, 4.3]

    def test_concurrent_creators_and_writers_with_different_roots(self, store, tmp_path):
        """Four processes, each with its own project root, create the same fresh store and
        experiment at once and log runs into it: all succeed and nothing is lost."""
        name = fresh_name()
        workers = [
            run_python(WRITER, tmp_path / f"root{w}", store, name, "3", f"w{w}") for w in range(4)
        ]
        outputs = [w.communicate(timeout=300)[0] for w in workers]
        assert all(w.returncode == 0 for w in workers), outputs
        client = MlflowClient(Tracker(store, ProjectPaths(tmp_path), create=False).uri)
        [experiment] = [e for e in client.search_experiments() if e.name == name]
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        assert len(runs) == 12 and {r.info.status for r in runs} == {"FINISHED"}
        tables = load_tables(store, name)
        assert len(tables.runs) == 12
        for run in runs[:3]:
            assert [m.value for m in client.get_metric_history(run.info.run_id, "m7")] == [
                8.0,
                9.0,
                10.0,
                11.0,
                12.0,
            ]


class SqlStoreContract(StoreContract):
    """A store zoo reads with its own SQL on MLflow's schema (SQLite, PostgreSQL)."""

    def test_zoo_indexes_are_added_once_to_a_store_mlflow_made(self, store, tmp_path):
        """The runs-by-experiment index zoo's reads need is created where missing, and a
        second call (another ``zoo server start``) finds it and creates nothing (a server's
        own store: tests/test_server.py)."""
        Tracker(store, ProjectPaths(tmp_path))  # MLflow creates its schema
        assert present_indexes(store) == {"zoo_runs_experiment_start": False}
        assert ensure_indexes(store) == ["zoo_runs_experiment_start"]
        assert ensure_indexes(store) == []
        assert present_indexes(store) == {"zoo_runs_experiment_start": True}

    def test_a_schema_revision_zoo_does_not_know_is_named_in_one_line(
        self, store, tmp_path, capsys, monkeypatch
    ):
        """Opening a store at the schema revision zoo's SQL was checked against says
        nothing; at any other revision, opening it (to write or to read) names that
        revision in one line, once per process, and the read still answers."""
        from zoo.store import _open

        monkeypatch.setattr(_open, "_checked", {})
        tracker = Tracker(store, ProjectPaths(tmp_path))
        name = fresh_name()
        log_run(tracker, tracker.experiment(name), "a1")
        assert schema_revision(tracker.uri) in KNOWN_REVISIONS
        assert "schema revision" not in capsys.readouterr().err
        _set_revision(tracker.uri, "0123456789ab")
        monkeypatch.setattr(_open, "_checked", {})
        assert len(load_tables(store, name).runs) == 1
        assert len(load_tables(store, name).runs) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "schema revision 0123456789ab" in err
        assert tracker.uri in err


def _set_revision(uri: str, revision: str) -> None:
    """Mark the SQL store at ``uri`` as being at schema ``revision`` (alembic_version)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as connection:
            connection.execute(
                sqlalchemy.text("UPDATE alembic_version SET version_num = :r"), {"r": revision}
            )
    finally:
        engine.dispose()
