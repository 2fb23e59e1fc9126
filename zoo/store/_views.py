"""The store side of the UI's views (zoo.modelzoo._ui): read what a sweep's views need,
write their tags.

SQLite and PostgreSQL stores are read and written with SQL on MLflow's tables (as
zoo.store._states reads run states, the schema revision checked first): no MLflow
import, so ``zoo ui`` prints its links in well under a second. Other stores (a tracking
server) go through Tracker.
Views are built from a sample of each experiment's models (the newest ``SAMPLE``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import Any, NamedTuple

__all__ = ["SAMPLE", "RunSample", "SweepSample", "read_sweeps", "write_tags"]

SAMPLE = 200
_VIEW_TAG_PREFIX = "mlflow.sharedViewState.zoo-"
_EXPERIMENTS = (
    "SELECT e.experiment_id, e.name FROM experiments e WHERE e.lifecycle_stage = 'active' "
    "AND EXISTS (SELECT 1 FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
    "WHERE r.experiment_id = e.experiment_id AND r.lifecycle_stage = 'active' "
    "AND t.key = 'zoo.kind' AND t.value = 'run') ORDER BY e.experiment_id"
)
_MODELS = (
    "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
    "WHERE r.experiment_id = {mark} AND r.lifecycle_stage = 'active' "
    "AND t.key = 'zoo.kind' AND t.value = 'run' ORDER BY r.start_time DESC LIMIT {limit}"
)
_OF_RUNS = {  # (run id, key, value) rows of the sampled runs
    "tags": "SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({runs}) "
    "AND (key = 'mlflow.runName' OR key LIKE 'zoo.axis.%%')",
    "params": "SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({runs})",
    "metrics": "SELECT run_uuid, key, NULL FROM latest_metrics WHERE run_uuid IN ({runs})",
}
_UPSERT = (
    "INSERT INTO experiment_tags (key, value, experiment_id) VALUES ({m}, {m}, {m}) "
    "ON CONFLICT (key, experiment_id) DO UPDATE SET value = excluded.value"
)


class RunSample(NamedTuple):
    """What the views are built from, for one model of a sweep."""

    name: str
    axes: dict[str, str]  # axis -> value (the zoo.axis.* tags)
    params: dict[str, str]
    metrics: Collection[str]  # the metric keys it logged


class SweepSample(NamedTuple):
    """An experiment with zoo models: its id, name, tags and some of its models."""

    experiment_id: str
    name: str
    tags: dict[str, str]
    runs: list[RunSample]


def _sql_sweeps(connection: Any, mark: str) -> list[SweepSample]:
    """The sweeps of a SQL store through a DB-API ``connection`` (``mark``: its placeholder)."""
    cursor = connection.cursor()
    try:
        cursor.execute(_EXPERIMENTS)
        experiments = cursor.fetchall()
        sweeps = []
        for experiment_id, name in experiments:
            cursor.execute(
                f"SELECT key, value FROM experiment_tags WHERE experiment_id = {mark} "
                f"AND key LIKE {mark}",
                (experiment_id, _VIEW_TAG_PREFIX + "%"),
            )
            tags = dict(cursor.fetchall())
            cursor.execute(_MODELS.format(mark=mark, limit=SAMPLE), (experiment_id,))
            run_ids = [row[0] for row in cursor.fetchall()]
            sweeps.append(
                SweepSample(str(experiment_id), name, tags, _sql_runs(cursor, run_ids, mark))
            )
        return sweeps
    finally:
        cursor.close()


def _sql_runs(cursor: Any, run_ids: list[str], mark: str) -> list[RunSample]:
    runs = {run_id: RunSample("", {}, {}, set()) for run_id in run_ids}
    names: dict[str, str] = {}
    for table, sql in _OF_RUNS.items():
        query = sql.format(runs=", ".join([mark] * len(run_ids)))
        if mark == "?":
            query = query.replace("%%", "%")
        cursor.execute(query, run_ids)
        for run_id, key, value in cursor.fetchall():
            run = runs[run_id]
            if table == "metrics":
                run.metrics.add(key)  # type: ignore[attr-defined]
            elif table == "params":
                run.params[key] = value
            elif key == "mlflow.runName":
                names[run_id] = value
            else:
                run.axes[key[len("zoo.axis.") :]] = value
    return [run._replace(name=names.get(run_id, "")) for run_id, run in runs.items()]


def _sqlite(uri: str) -> sqlite3.Connection | None:
    """A read-write connection to the store's file; None when there is none yet."""
    from zoo.store._uri import sqlite_path

    path = sqlite_path(uri).absolute()
    try:
        return sqlite3.connect(path.as_uri() + "?mode=rw", uri=True, timeout=60)
    except sqlite3.OperationalError:
        return None


def _postgresql(uri: str) -> Any:
    import psycopg

    return psycopg.connect("postgresql://" + uri.split("://", 1)[1])


def _connect(uri: str) -> tuple[Any, str] | None:
    """A DB-API connection and its placeholder for a SQL store; None for other stores."""
    from zoo.store._open import check_schema
    from zoo.store._uri import backend

    check_schema(uri)  # one line on stderr when zoo's SQL does not know the store's schema
    if backend(uri) == "sqlite":
        return _sqlite(uri), "?"
    if backend(uri) == "postgresql":
        return _postgresql(uri), "%s"
    return None


def read_sweeps(uri: str) -> list[SweepSample]:
    """Every active experiment of the store at ``uri`` with zoo models, with the values of
    its zoo view tags and a sample of its models ([] for a store not made yet)."""
    connected = _connect(uri)
    if connected is None:
        return _client_sweeps(uri)
    connection, mark = connected
    if connection is None:
        return []
    try:
        return _sql_sweeps(connection, mark)
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return []  # a store MLflow never initialised holds no runs
        raise
    finally:
        connection.close()


def write_tags(uri: str, tags: dict[str, dict[str, str]]) -> None:
    """Set experiment tags: experiment id -> {key: value}."""
    connected = _connect(uri)
    if connected is None:
        from zoo.store._tracker import Tracker

        store = Tracker(uri, create=False)
        for experiment_id, values in tags.items():
            for key, value in values.items():
                store.set_experiment_tag(experiment_id, key, value)
        return
    connection, mark = connected
    try:
        rows = [(k, v, int(e)) for e, values in tags.items() for k, v in values.items()]
        cursor = connection.cursor()
        cursor.executemany(_UPSERT.format(m=mark), rows)
        connection.commit()
    finally:
        connection.close()


def _client_sweeps(uri: str) -> list[SweepSample]:
    from zoo.store._tracker import Tracker

    store = Tracker(uri, create=False)
    sweeps = []
    for experiment in store.search_experiments(max_results=50000):
        found = store.search_runs(
            [experiment.experiment_id], "tags.`zoo.kind` = 'run'", max_results=SAMPLE
        )
        if not found:
            continue
        runs = [
            RunSample(
                run.info.run_name or "",
                {
                    k[len("zoo.axis.") :]: v
                    for k, v in run.data.tags.items()
                    if k.startswith("zoo.axis.")
                },
                dict(run.data.params),
                set(run.data.metrics),
            )
            for run in found
        ]
        tags = {k: v for k, v in experiment.tags.items() if k.startswith(_VIEW_TAG_PREFIX)}
        sweeps.append(SweepSample(experiment.experiment_id, experiment.name, tags, runs))
    return sweeps
