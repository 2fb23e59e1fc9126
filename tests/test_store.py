"""The store contract (zoo.store) run on each backend, all real: a SQLite file, a
PostgreSQL database and zoo's MLflow tracking server on PostgreSQL (one test class each,
subclassing tests/store_contract.py); then what one backend or the writer alone promises."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from store_contract import SqlStoreContract, StoreContract, fresh_name, log_run
from stores import SERVER_PORT, fresh_database, plain_mlflow_server, run_python

from zoo.analysis import Tables, load_tables
from zoo.errors import ConfigError
from zoo.paths import ProjectPaths
from zoo.store import (
    CONFIG_HASH_TAG,
    StoreMissing,
    Tracker,
    _rest,
    _sql,
    network_filesystem,
    read_states,
    refuse_network_sqlite,
)


class TestSQLite(SqlStoreContract):
    @pytest.fixture
    def store(self, tmp_path) -> str:
        return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


class TestPostgreSQL(SqlStoreContract):
    @pytest.fixture
    def store(self, postgres) -> str:
        return fresh_database(postgres)


class TestServer(StoreContract):
    @pytest.fixture
    def store(self, tracking_server) -> str:
        """zoo's server, shared by the session: each test uses fresh experiment names."""
        return tracking_server.uri


def test_states_of_a_sqlite_store_whose_path_needs_quoting(tmp_path):
    """A store under a folder named with a URI fragment mark (#) is read, not another
    file: its runs' states are there."""
    folder = tmp_path / "p#q"
    tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}", ProjectPaths(tmp_path))
    experiment = tracker.experiment("e")
    run_id = log_run(tracker, experiment, "a1")
    assert read_states(tracker.uri, "e") == {"a1": (run_id, "FINISHED", {CONFIG_HASH_TAG: "a1"})}
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # nothing else made


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
    steps = [m.step for m in tracker.get_metric_history(run_id, "train_loss")]
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
    steps = [m.step for m in tracker.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == list(range(1, 13))


def test_a_sigterm_inside_a_store_write_interrupts_once_the_write_returns(tmp_path, monkeypatch):
    """A sweep worker's SIGTERM that lands inside a write (mid-transaction) is raised when
    the write returns: the write lands whole and no write lock is left held."""
    import os
    import signal

    from zoo._signals import job_under_way, stop_as_worker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", ProjectPaths(tmp_path))
    run_id = tracker.create(tracker.experiment("e"), {CONFIG_HASH_TAG: "a"})
    write = tracker._client.log_batch

    def signalled_midway(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode
        return write(*args, **kwargs)

    monkeypatch.setattr(tracker._client, "log_batch", signalled_midway)
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
    assert [m.step for m in tracker.get_metric_history(run_id, "train_loss")] == [1]
    assert tracker.get_run(run_id).info.status == "KILLED"


def test_a_plain_mlflow_server_reads_back_the_same_as_zoos(tracking_server, tmp_path, monkeypatch):
    """zoo's server answers ``load_tables`` from its route; a plain ``mlflow server`` on
    the same store has none, and the public REST API reads back the same tables."""
    tracker = Tracker(tracking_server.uri, ProjectPaths(tmp_path))
    name = fresh_name()
    experiment = tracker.experiment(name)
    for identity in ("a", "b", "c"):
        log_run(tracker, experiment, identity, epochs=4)
    public = _rest._public_rest_tables
    asked = []
    monkeypatch.setattr(_rest, "_public_rest_tables", lambda *a: asked.append(a[0]) or public(*a))
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


def test_read_only_open_never_creates_a_sqlite_store(tmp_path):
    missing = tmp_path / "elsewhere" / "mlflow.db"
    with pytest.raises(StoreMissing, match=str(missing)):
        Tracker(f"sqlite:///{missing}", ProjectPaths(tmp_path), create=False)
    assert not missing.exists() and not missing.parent.exists()
    reader = Tracker(f"sqlite:///{tmp_path / 'm.db'}", ProjectPaths(tmp_path))
    reader = Tracker(reader.uri, ProjectPaths(tmp_path), create=False)
    assert reader.experiment("never-made") is None and reader.states(None) == {}
    assert [e.name for e in reader.search_experiments()] == ["Default"]


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


def _dbapi_tables(uri: str, experiment: str, **options) -> Tables | None:
    """``load_tables`` through the SQLAlchemy/DB-API reader (PostgreSQL's) on a SQLite store."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_sql, "_sqlite_tables", _sql._sql_tables)
        return load_tables(uri, experiment, **options)


def test_sqlite_reader_gives_the_same_tables_as_the_dbapi_reader(tmp_path, monkeypatch):
    import sqlite3
    from contextlib import closing

    monkeypatch.chdir(tmp_path)
    tracker = Tracker("sqlite:///made.db", ProjectPaths(tmp_path))
    experiment = tracker.experiment("e")
    tracker.experiment("empty")
    for identity in ("a1", "b2", "c3"):
        log_run(tracker, experiment, identity)
    running = tracker.create(experiment, {CONFIG_HASH_TAG: "d4", "zoo.axis.size": "8"})
    tracker.log_metrics(running, {"train_loss": float("nan"), "lr": 3}, 1)
    (tmp_path / "store").mkdir()
    store = tmp_path / "store" / "mlflow.db"
    with closing(sqlite3.connect(tmp_path / "made.db")) as made:  # a copy no connection holds
        made.execute(f"VACUUM INTO '{store}'")
    before = store.read_bytes()
    reads = []
    monkeypatch.setattr(_sql, "_adbc", lambda *a, f=_sql._adbc: reads.append(a) or f(*a))
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
    log_run(
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


def test_store_calls_are_retried_while_they_fail_transiently(tmp_path, monkeypatch):
    """A read that meets a locked store (what a caller of MLflow's client would see raised)
    is asked again through the store interface and answers."""
    import sqlite3

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", ProjectPaths(tmp_path))
    run_id = log_run(tracker, tracker.experiment("e"), "a1")
    asked, get_run = [], tracker._client.get_run

    def locked_once(run: str):
        asked.append(run)
        if len(asked) == 1:
            raise sqlite3.OperationalError("database is locked")
        return get_run(run)

    monkeypatch.setattr(tracker._client, "get_run", locked_once)
    assert tracker.get_run(run_id).info.status == "FINISHED" and asked == [run_id, run_id]


def test_datasets_artifacts_and_model_versions_go_through_the_store(tmp_path):
    """What the model zoo and streamed training record (dataset inputs, artifact folders,
    registered versions with an alias) is written and read back through the interface."""
    from zoo.store import DatasetInput, StoreError

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", ProjectPaths(tmp_path))
    run_id = log_run(tracker, tracker.experiment("e"), "a1")
    tracker.log_inputs(run_id, [DatasetInput("a", "d1g", "zoo-stream", '{"g": 1}', "[]")])
    [read] = tracker.get_run(run_id).inputs.dataset_inputs
    assert (read.dataset.name, read.dataset.digest, read.tags[0].value) == ("a", "d1g", "training")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.yaml").write_text("a: 1\n")
    assert tracker.list_artifacts(run_id, "model") == []
    tracker.log_artifacts(run_id, folder, "model")
    assert [f.path for f in tracker.list_artifacts(run_id, "model")] == ["model/config.yaml"]
    source = f"{tracker.artifact_uri(run_id)}/model"
    assert tracker.register_version("m", source, run_id, {"k": "v"}, alias="best") == "1"
    assert tracker.register_version("m", source, run_id, {}, alias="best") == "2"
    assert str(tracker.get_model_version("m", alias="best").version) == "2"
    assert tracker.get_model_version("m", "1").tags == {"k": "v"}
    with pytest.raises(StoreError):  # what a caller tells "no such run" by
        tracker.get_run("0" * 32)


def _schema(path) -> list[list[str]]:
    """Each table's and index's definition as its sorted lines (MLflow's own migrations
    write a table's constraints in a different order from one run to the next)."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(path)) as connection:
        rows = connection.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")
        return sorted(sorted(line.strip(" ,") for line in sql.splitlines()) for (sql,) in rows)


def test_a_new_sqlite_store_is_mlflows_own_schema_copied_once_per_version(tmp_path, monkeypatch):
    """New stores start as a copy of a template migrated once into the user's cache; each
    equals a store MLflow migrated itself, with its own Default experiment."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    plain = tmp_path / "plain.db"
    (made,) = MlflowClient(f"sqlite:///{plain}").search_experiments()
    for name in ("a", "b"):
        paths = ProjectPaths(tmp_path / name)
        Tracker(None, paths)
        assert _schema(paths.root / "mlflow.db") == _schema(plain)
        (default,) = MlflowClient(paths.tracking_uri).search_experiments()
        assert (default.experiment_id, default.name) == (made.experiment_id, made.name)
        assert default.artifact_location == made.artifact_location
        # from the second store on, no migration runs: the template is copied
        monkeypatch.setattr("mlflow.store.db.utils._upgrade_db", _no_migration)
    assert len(list((tmp_path / "cache" / "zoo").glob("mlflow-*.db"))) == 1
    assert not list((tmp_path / "b").glob("*partial"))


def _no_migration(engine):
    raise AssertionError("a schema migration ran")


def test_a_new_sqlite_store_is_migrated_in_place_when_the_cache_cannot_be_written(
    tmp_path, monkeypatch
):
    import sqlalchemy
    from mlflow.tracking import MlflowClient

    from zoo.store import _template

    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    plain = tmp_path / "plain.db"
    MlflowClient(f"sqlite:///{plain}").search_experiments()
    paths = ProjectPaths(tmp_path / "project")
    Tracker(None, paths)
    assert _schema(paths.root / "mlflow.db") == _schema(plain)
    # a cache whose template cannot be made (a full quota, say): migrated in place too
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def full(template):
        raise sqlalchemy.exc.OperationalError("CREATE TABLE", {}, Exception("disk is full"))

    monkeypatch.setattr(_template, "_make", full)
    other = ProjectPaths(tmp_path / "other")
    Tracker(None, other)
    assert _schema(other.root / "mlflow.db") == _schema(plain)


def test_zoos_table_route_refuses_keys_sql_could_read_as_syntax(tracking_server):
    import json
    import urllib.error
    import urllib.request

    from zoo.store._rest import TABLES_ROUTE

    for field in ("param_keys", "metric_prefixes"):
        body = {"experiment_id": 0, field: ["x' OR 1=1 --"]}
        request = urllib.request.Request(
            tracking_server.uri + TABLES_ROUTE,
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 400 and field in refused.value.read().decode()


def test_zoos_server_is_read_by_name_without_mlflows_client(tracking_server, tmp_path):
    """`zoo models list` and `zoo analyze` ask zoo's server by the experiment's name in one
    plain request: MLflow's client (a second of imports) is never loaded, and a name the
    server does not know reads as no experiment."""
    tracker = Tracker(tracking_server.uri, ProjectPaths(tmp_path))
    name = fresh_name()
    log_run(tracker, tracker.experiment(name), "a1")
    code = (
        "import sys; from zoo.analysis import load_tables; "
        "found = load_tables(sys.argv[1], sys.argv[2]); "
        "print(len(found.runs), len(found.histories), "
        "load_tables(sys.argv[1], 'never-made') is None, 'mlflow' in sys.modules)"
    )
    reader = run_python(code, tmp_path / "reader", tracking_server.uri, name)
    assert reader.communicate(timeout=120)[0].split() == ["1", "6", "True", "False"]
