"""The store contract (zoo/tracking.py), one suite every backend passes: a SQLite file,
a PostgreSQL database and an MLflow tracking server on PostgreSQL, all real."""

from __future__ import annotations

import math
import time
import uuid

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from stores import SERVER_PORT, fresh_database, plain_mlflow_server, run_python

from zoo._indexes import ensure_indexes, present_indexes
from zoo._states import ById, read_states
from zoo.analysis import _load, load_tables
from zoo.errors import ConfigError
from zoo.paths import ProjectPaths
from zoo.tracking import (
    CONFIG_HASH_TAG,
    FinishedRun,
    StoreMissing,
    Tracker,
    network_filesystem,
    refuse_network_sqlite,
)

BACKENDS = ["sqlite", "postgresql", "server"]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path) -> str:
    """A fresh store's URI (on the shared server: a fresh set of experiment names)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    if request.param == "postgresql":
        return fresh_database(request.getfixturevalue("postgres"))
    return request.getfixturevalue("tracking_server").uri


def _name() -> str:
    return f"e-{uuid.uuid4().hex[:8]}"


def _log(tracker: Tracker, experiment: str, identity: str, epochs: int = 3) -> str:
    run_id = tracker.create(experiment, {CONFIG_HASH_TAG: identity, "zoo.kind": "run"})
    tracker.log_params(run_id, {"stages.0.lr": 1e-3, "model.encoder": "tu-test_resnet"})
    for step in range(1, epochs + 1):
        tracker.log_metrics(run_id, {"train_loss": 1 / step, "val_loss/a": 2 / step}, step)
    tracker.log_metrics(run_id, {"target_loss": 0.25}, 0)
    tracker.finish(run_id)
    return run_id


def test_runs_read_back_exactly_as_written(store, tmp_path):
    tracker = Tracker(store, ProjectPaths(tmp_path))
    name = _name()
    experiment = tracker.experiment(name, description="what this sweep asks")
    ids = {identity: _log(tracker, experiment, identity) for identity in ("a1", "b2")}
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


def test_states_are_read_in_one_query_as_mlflow_would_search_them(store, tmp_path):
    """What status, resubmission and gc judge runs by (identity, newest run, status,
    liveness tags) reads the same in one query as through MLflow's search, deleted
    runs and runs without an identity left out."""
    tracker = Tracker(store, ProjectPaths(tmp_path))
    name = _name()
    experiment = tracker.experiment(name)
    _log(tracker, experiment, "a1")
    older = tracker.create(experiment, {CONFIG_HASH_TAG: "b2"})
    tracker.finish(older, RuntimeError("first try failed"))
    time.sleep(0.01)  # MLflow orders runs by start time (ms)
    newer = _log(tracker, experiment, "b2")
    beat = {"zoo.heartbeat": "1700000000", "zoo.host": "node7", "zoo.pid": "42"}
    running = tracker.create(experiment, {CONFIG_HASH_TAG: "c3", **beat})
    gone = _log(tracker, experiment, "d4")
    tracker.client.delete_run(gone)
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


def test_states_of_a_sqlite_store_whose_path_needs_quoting(tmp_path):
    """A store under a folder named with a URI fragment mark (#) is read, not another
    file: its runs' states are there."""
    folder = tmp_path / "p#q"
    tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}", ProjectPaths(tmp_path))
    experiment = tracker.experiment("e")
    run_id = _log(tracker, experiment, "a1")
    assert read_states(tracker.uri, "e") == {"a1": (run_id, "FINISHED", {CONFIG_HASH_TAG: "a1"})}
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # nothing else made


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_zoo_indexes_are_added_once_to_a_store_mlflow_made(kind, request, tmp_path):
    """The runs-by-experiment index zoo's reads need is created where missing, and a
    second call (another ``zoo server start``) finds it and creates nothing (a server's
    own store: tests/test_server.py)."""
    store = (
        f"sqlite:///{tmp_path / 'mlflow.db'}"
        if kind == "sqlite"
        else fresh_database(request.getfixturevalue("postgres"))
    )
    Tracker(store, ProjectPaths(tmp_path))  # MLflow creates its schema
    assert present_indexes(store) == {"zoo_runs_experiment_start": False}
    assert ensure_indexes(store) == ["zoo_runs_experiment_start"]
    assert ensure_indexes(store) == []
    assert present_indexes(store) == {"zoo_runs_experiment_start": True}


# doubles that SQLite's quote() or printf('%.17g') do not read back exactly, and a NaN
AWKWARD = [5.2984899718600703e104, 3.8531618622561997e-73, 2.229383271060314e-147, 0.3]


def test_every_double_and_nan_read_back_exactly(store, tmp_path):
    tracker = Tracker(store, ProjectPaths(tmp_path))
    name = _name()
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


def test_a_batch_of_many_steps_splits_between_steps_only(tmp_path, monkeypatch):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", ProjectPaths(tmp_path))
    run_id = tracker.create(tracker.experiment("e"), {CONFIG_HASH_TAG: "a"})
    calls = []
    monkeypatch.setattr(tracker, "_batch", lambda run, **items: calls.append(items))
    rows = [(step, {f"m{i}": float(i) for i in range(400)}) for step in range(1, 6)]
    tracker.log_batch(run_id, {f"p{i}": i for i in range(150)}, rows)
    sent = [sorted({m.step for m in call["metrics"]}) for call in calls]
    assert sent == [[1, 2], [3, 4], [5]]  # whole steps beside 100, then 50 params
    assert all(len(c["params"]) + len(c["metrics"]) <= 1000 for c in calls)
    assert sum(len(c["params"]) for c in calls) == 150


def test_a_batch_sent_again_under_its_timestamp_adds_no_row_twice(store, tmp_path):
    """An interrupted send that did land, sent again: each step and param stays once."""
    tracker = Tracker(store, ProjectPaths(tmp_path))
    run_id = tracker.create(tracker.experiment(_name()), {CONFIG_HASH_TAG: "a"})
    rows = [(step, {"train_loss": 1 / step, "val_loss/a": float("nan")}) for step in (1, 2)]
    for _ in range(2):
        tracker.log_batch(run_id, {"lr": 0.1}, rows, timestamp=1_700_000_000_000)
    for key in ("train_loss", "val_loss/a"):
        steps = [m.step for m in tracker.client.get_metric_history(run_id, key)]
        assert sorted(steps) == [1, 2]
    assert tracker.client.get_run(run_id).data.params == {"lr": "0.1"}


def test_a_send_interrupted_after_it_landed_is_settled_without_duplicates(tmp_path, monkeypatch):
    from zoo.run import _Log

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", ProjectPaths(tmp_path))
    run_id = tracker.create(tracker.experiment("e"), {CONFIG_HASH_TAG: "a"})
    log = _Log(tracker, run_id, set())
    log.params = {"lr": 0.1}
    for step in (1, 2):
        log.add(step, {"train_loss": 1 / step})
    send = tracker._batch

    def lands_then_interrupted(run: str, **items) -> None:
        send(run, **items)
        monkeypatch.setattr(tracker, "_batch", send)
        raise KeyboardInterrupt  # SIGTERM after the commit, before the reply is handled

    monkeypatch.setattr(tracker, "_batch", lands_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        log.flush()
    log.settle(print)
    steps = [m.step for m in tracker.client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == [1, 2]


def test_a_live_run_sends_its_epochs_once_the_interval_since_its_last_send_passed(
    tmp_path, monkeypatch
):
    """Epochs ending every second, a 5 s interval: sent at 5 s and 10 s, the rest at the
    end; each send carries every step held since the last."""
    import types

    import zoo.run
    from zoo.run import _Log

    clock = [0.0]
    fake = types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    monkeypatch.setattr(zoo.run, "time", fake)
    monkeypatch.setattr(zoo.run, "LIVE_INTERVAL_S", 5.0)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", ProjectPaths(tmp_path))
    run_id = tracker.create(tracker.experiment("e"), {CONFIG_HASH_TAG: "a"})
    sent, send = [], tracker.log_batch

    def recorded(run, params=None, metrics=(), timestamp=None):
        sent.append([step for step, _ in metrics])
        send(run, params, metrics, timestamp)

    monkeypatch.setattr(tracker, "log_batch", recorded)
    log = _Log(tracker, run_id, set())
    for step in range(1, 13):
        clock[0] = float(step)
        log.add(step, {"train_loss": 1 / step})
        log.flush_due()
    log.flush()
    assert sent == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12]]
    steps = [m.step for m in tracker.client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == list(range(1, 13))


def test_a_sigterm_inside_a_store_write_interrupts_once_the_write_returns(tmp_path, monkeypatch):
    """A sweep worker's SIGTERM that lands inside a write (mid-transaction) is raised when
    the write returns: the write lands whole and no write lock is left held."""
    import os
    import signal

    from zoo._signals import job_under_way, stop_as_worker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", ProjectPaths(tmp_path))
    run_id = tracker.create(tracker.experiment("e"), {CONFIG_HASH_TAG: "a"})
    write = tracker.client.log_batch

    def signalled_midway(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode
        return write(*args, **kwargs)

    monkeypatch.setattr(tracker.client, "log_batch", signalled_midway)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        stop_as_worker()
        with job_under_way(), pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            tracker.log_metrics(run_id, {"train_loss": 0.5}, step=1)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    monkeypatch.undo()
    tracker.finish(run_id, KeyboardInterrupt("SIGTERM"))  # the store is writable at once
    assert [m.step for m in tracker.client.get_metric_history(run_id, "train_loss")] == [1]
    assert tracker.client.get_run(run_id).info.status == "KILLED"


def test_a_finished_retry_clears_the_earlier_error(store, tmp_path):
    tracker = Tracker(store, ProjectPaths(tmp_path))
    experiment = tracker.experiment(_name())
    run_id = tracker.create(experiment, {CONFIG_HASH_TAG: "x"})
    tracker.finish(run_id, RuntimeError("out of memory"))
    assert tracker.client.get_run(run_id).data.tags["zoo.error"] == "RuntimeError: out of memory"
    tracker.reopen(run_id)
    tracker.finish(run_id)
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and "zoo.error" not in run.data.tags


def test_import_is_idempotent(store, tmp_path):
    tracker = Tracker(store, ProjectPaths(tmp_path))
    name = _name()
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


def test_a_plain_mlflow_server_reads_back_the_same_as_zoos(tracking_server, tmp_path, monkeypatch):
    """zoo's server answers ``load_tables`` from its route; a plain ``mlflow server`` on
    the same store has none, and the public REST API reads back the same tables."""
    tracker = Tracker(tracking_server.uri, ProjectPaths(tmp_path))
    name = _name()
    experiment = tracker.experiment(name)
    for identity in ("a", "b", "c"):
        _log(tracker, experiment, identity, epochs=4)
    public = _load._public_rest_tables
    asked = []
    monkeypatch.setattr(_load, "_public_rest_tables", lambda *a: asked.append(a[0]) or public(*a))
    ours = load_tables(tracking_server.uri, name)
    with plain_mlflow_server(tracking_server.store, SERVER_PORT + 1) as plain:
        theirs = load_tables(plain, name)
        assert read_states(plain, name) is None  # no route: callers search through MLflow
        assert Tracker(plain, ProjectPaths(tmp_path)).states(experiment) == tracker.states(
            experiment
        )
    assert asked == [plain]  # zoo's server answered from its route
    pd.testing.assert_frame_equal(
        ours.runs.sort_values("run_id", ignore_index=True),
        theirs.runs.sort_values("run_id", ignore_index=True)[ours.runs.columns],
    )
    order = ["run_id", "key", "step"]
    pd.testing.assert_frame_equal(
        ours.histories.sort_values(order, ignore_index=True),
        theirs.histories.sort_values(order, ignore_index=True),
    )
    assert len(ours.histories) == 3 * 2 * 4


WRITER = """
import sys
from zoo.tracking import Tracker, CONFIG_HASH_TAG
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


def test_concurrent_creators_and_writers_with_different_roots(store, tmp_path):
    """Four processes, each with its own project root, create the same fresh store and
    experiment at once and log runs into it: all succeed and nothing is lost."""
    name = _name()
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


def test_read_only_open_never_creates_a_sqlite_store(tmp_path):
    missing = tmp_path / "elsewhere" / "mlflow.db"
    with pytest.raises(StoreMissing, match=str(missing)):
        Tracker(f"sqlite:///{missing}", ProjectPaths(tmp_path), create=False)
    assert not missing.exists() and not missing.parent.exists()
    reader = Tracker(f"sqlite:///{tmp_path / 'm.db'}", ProjectPaths(tmp_path))
    reader = Tracker(reader.uri, ProjectPaths(tmp_path), create=False)
    assert reader.experiment("never-made") is None and reader.states(None) == {}
    assert [e.name for e in reader.client.search_experiments()] == ["Default"]


MOUNTS = """\
/dev/sda1 / ext4 rw 0 0
server:/export/home /home nfs4 rw 0 0
/dev/sdb1 /home/local ext4 rw 0 0
scratch@o2ib:/scratch /scratch lustre rw 0 0
"""


def test_sqlite_on_a_network_filesystem_is_refused_with_the_fix():
    assert network_filesystem("/home/me/project/mlflow.db", MOUNTS) == "nfs4"
    assert network_filesystem("/home/local/mlflow.db", MOUNTS) is None
    assert network_filesystem("/scratch/x/mlflow.db", MOUNTS) == "lustre"
    with pytest.raises(ConfigError, match="zoo server start") as refused:
        refuse_network_sqlite("sqlite:////home/me/project/mlflow.db", MOUNTS)
    assert "nfs4" in str(refused.value) and "\n" not in str(refused.value)
    refuse_network_sqlite("sqlite:////home/local/mlflow.db", MOUNTS)
    refuse_network_sqlite("http://login1:5001", MOUNTS)


def test_zoo_import_twice_adds_nothing_the_second_time(tmp_path, capsys):
    from zoo.cli import main

    table = tmp_path / "results.csv"
    table.write_text("size,loss\n8,0.02\n16,0.015\n32,0.011\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = ["import", str(table), "--experiment", "ext", "--axis", "size"]
    command += ["--metric", "loss=target_loss", "--tracking-uri", uri]
    assert main(command) == 0
    assert "imported 3 runs" in capsys.readouterr().out
    assert main(command) == 0
    assert "imported 0 runs" in capsys.readouterr().out
    runs = load_tables(uri, "ext").runs
    assert sorted(runs["size"]) == [8, 16, 32]
    assert sorted(runs["target_loss_adj"].round(6)) == [0.011, 0.015, 0.02]


def _dbapi_tables(uri: str, experiment: str, **options) -> _load.Tables | None:
    """``load_tables`` through the SQLAlchemy/DB-API reader (PostgreSQL's) on a SQLite store."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_load, "_sqlite_tables", _load._sql_tables)
        return load_tables(uri, experiment, **options)


def test_sqlite_reader_gives_the_same_tables_as_the_dbapi_reader(tmp_path, monkeypatch):
    import sqlite3
    from contextlib import closing

    monkeypatch.chdir(tmp_path)
    tracker = Tracker("sqlite:///made.db", ProjectPaths(tmp_path))
    experiment = tracker.experiment("e")
    tracker.experiment("empty")
    for identity in ("a1", "b2", "c3"):
        _log(tracker, experiment, identity)
    running = tracker.create(experiment, {CONFIG_HASH_TAG: "d4", "zoo.axis.size": "8"})
    tracker.log_metrics(running, {"train_loss": float("nan"), "lr": 3}, 1)
    (tmp_path / "store").mkdir()
    store = tmp_path / "store" / "mlflow.db"
    with closing(sqlite3.connect(tmp_path / "made.db")) as made:  # a copy no connection holds
        made.execute(f"VACUUM INTO '{store}'")
    before = store.read_bytes()
    reads = []
    monkeypatch.setattr(_load, "_adbc", lambda *a, f=_load._adbc: reads.append(a) or f(*a))
    cases = [
        (uri, name, options)
        for uri in ("sqlite:///store/mlflow.db", f"sqlite:///{store}")
        for name, options in [("e", {}), ("e", {"histories": False, "param_keys": ()})]
    ]
    new = [load_tables(uri, name, **options) for uri, name, options in cases]
    assert load_tables(cases[0][0], "empty").runs.empty and load_tables(cases[0][0], "x") is None
    assert reads  # read by ADBC: this process did not hold the store open
    for (uri, name, options), found in zip(cases, new, strict=True):
        old = _dbapi_tables(uri, name, **options)
        pd.testing.assert_frame_equal(found.runs, old.runs)
        pd.testing.assert_frame_equal(found.histories, old.histories)
        assert found.axes == old.axes
    assert store.read_bytes() == before  # read only
    reads.clear()  # a store this process holds open (its Tracker) is read by the DB-API reader
    assert len(load_tables("sqlite:///made.db", "e").runs) == 4 and not reads


def test_sqlite_reader_never_creates_a_store_and_waits_for_a_writer(tmp_path):
    import sqlite3
    import time
    from contextlib import closing

    missing = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(sqlite3.OperationalError, match=str(missing)):
        load_tables(f"sqlite:///{missing}", "e")
    assert not missing.parent.exists()
    made = f"sqlite:///{tmp_path / 'made.db'}"
    _log(
        Tracker(made, ProjectPaths(tmp_path)),
        Tracker(made, ProjectPaths(tmp_path)).experiment("e"),
        "a",
    )
    with closing(sqlite3.connect(tmp_path / "made.db")) as made:  # a copy no connection holds
        made.execute(f"VACUUM INTO '{tmp_path / 'mlflow.db'}'")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # another process holds the write lock of a rollback-journal store for 2 s
    writer = run_python(
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=DELETE'); c.execute('BEGIN EXCLUSIVE')\n"
        "c.execute(\"UPDATE tags SET value = value || '!' WHERE key = 'zoo.kind'\")\n"
        "print('locked', flush=True); time.sleep(2); c.execute('COMMIT')\n",
        tmp_path / "writer",
        str(tmp_path / "mlflow.db"),
    )
    assert writer.stdout.readline().strip() == "locked"
    started = time.monotonic()
    runs = load_tables(uri, "e").runs
    assert time.monotonic() - started > 1 and runs["kind"].tolist() == ["run!"]
    assert writer.wait(timeout=30) == 0
