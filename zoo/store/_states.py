"""Run states of an experiment, read in one query without MLflow's client.

``read_states(uri, experiment)`` (an experiment's name, or ``ById(id)``) answers what
``zoo sweep status``, the executors' "already finished" check and ``zoo gc`` need
about every run of an experiment: its identity (the ``zoo.config_hash`` tag), run id,
status and the liveness tags of ``zoo._liveness``. It never loads params or metric
histories, so its cost grows with the number of runs only (a SQL store: one query;
zoo's server: one request to ``STATES_ROUTE``, answered by the same query). It
returns None where it cannot answer so (another MLflow server, another backend):
callers then search runs through MLflow. Runs are listed oldest first, so where two
runs share an identity the newest wins."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

from zoo.store._open import check_schema

__all__ = [
    "STATES_ROUTE",
    "STATE_TAGS",
    "ById",
    "RunState",
    "experiment_of",
    "post_route",
    "query_states",
    "read_states",
    "request_body",
]

STATES_ROUTE = "/zoo/api/1/states"
IDENTITY_TAG = "zoo.config_hash"
STATE_TAGS = (IDENTITY_TAG, "zoo.heartbeat", "zoo.host", "zoo.pid")


class ById(NamedTuple):
    """An experiment named by its id."""

    experiment_id: str


Experiment = str | ById


class RunState(NamedTuple):
    """What a run's state is judged by: its id, MLflow status and liveness tags."""

    run_id: str
    status: str
    tags: dict[str, str]


_SQL = (
    "SELECT r.run_uuid, r.status, t.key, t.value FROM runs r "
    "JOIN experiments e ON e.experiment_id = r.experiment_id "
    "LEFT JOIN tags t ON t.run_uuid = r.run_uuid AND t.key IN ({keys}) "
    "WHERE e.{column} = {mark} AND r.lifecycle_stage = 'active' "
    "ORDER BY r.start_time, r.run_uuid"
)


def states_from_rows(rows: Any) -> dict[str, RunState]:
    """Identity -> RunState from ``(run id, status, tag key, tag value)`` rows in run order."""
    runs: dict[str, RunState] = {}
    for run_id, status, key, value in rows:
        runs.setdefault(run_id, RunState(run_id, status, {}))
        if key is not None:
            runs[run_id].tags[key] = value
    return {s.tags[IDENTITY_TAG]: s for s in runs.values() if IDENTITY_TAG in s.tags}


def query_states(connection: Any, experiment: Experiment, paramstyle: str) -> dict[str, RunState]:
    """The states of ``experiment``'s active runs through a DB-API ``connection`` whose
    driver takes ``paramstyle`` (``qmark`` or ``format``)."""
    mark = "?" if paramstyle == "qmark" else "%s"
    by_id = isinstance(experiment, ById)
    sql = _SQL.format(
        keys=", ".join([mark] * len(STATE_TAGS)),
        column="experiment_id" if by_id else "name",
        mark=mark,
    )
    value = int(experiment.experiment_id) if by_id else experiment
    cursor = connection.cursor()
    try:
        cursor.execute(sql, (*STATE_TAGS, value))
        return states_from_rows(cursor.fetchall())
    finally:
        cursor.close()


def read_states(uri: str, experiment: Experiment) -> dict[str, RunState] | None:
    """The states of ``experiment``'s runs in the store at ``uri`` ({} when it has no such
    experiment), or None when this store cannot be read so (see the module). A SQL
    store's schema revision is checked first (zoo.store._open.check_schema)."""
    scheme = uri.split("://", 1)[0]
    if scheme.split("+", 1)[0] in ("sqlite", "postgresql", "postgres"):
        check_schema(uri)
    if scheme == "sqlite":
        return _sqlite(uri, experiment)
    if scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        return _postgresql(uri, experiment)
    if scheme in ("http", "https"):
        return _server(uri, experiment)
    return None


def _sqlite(uri: str, experiment: Experiment) -> dict[str, RunState]:
    path = Path(uri.split("://", 1)[1][1:].split("?", 1)[0]).absolute()
    connection = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True, timeout=60)
    try:
        return query_states(connection, experiment, "qmark")
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return {}  # a store MLflow never initialised holds no runs
        raise
    finally:
        connection.close()


def _postgresql(uri: str, experiment: Experiment) -> dict[str, RunState]:
    import psycopg

    conninfo = "postgresql://" + uri.split("://", 1)[1]
    with psycopg.connect(conninfo) as connection:
        return query_states(connection, experiment, "format")


def _server(uri: str, experiment: Experiment) -> dict[str, RunState] | None:
    """Ask zoo's server; None when it cannot answer so (another MLflow server, a store
    that is not SQL, a proxy, authentication or TLS set up for MLflow's client, a server
    that does not answer): MLflow's client then answers, or names the problem."""
    import urllib.error

    try:
        body = json.loads(post_route(uri, STATES_ROUTE, request_body(experiment)))
        return {k: RunState(*v) for k, v in body["states"].items()}
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        return None


def post_route(uri: str, route: str, body: dict[str, Any]) -> bytes:
    """The answer of zoo's server at ``uri`` to ``body`` POSTed as JSON to ``route``, with
    MLflow's basic authentication when set and MLflow's client's timeout (120 s); an
    error status raises urllib.error.HTTPError, no answer URLError or OSError."""
    import urllib.request

    request = urllib.request.Request(
        uri.rstrip("/") + route,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **_auth_header()},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.read()


def request_body(experiment: Experiment) -> dict[str, str]:
    """The JSON body that asks zoo's server for ``experiment``'s states."""
    if isinstance(experiment, ById):
        return {"experiment_id": experiment.experiment_id}
    return {"experiment": experiment}


def experiment_of(body: Any) -> Experiment | None:
    """The experiment a request body names (see ``request_body``); None if it names none."""
    body = body if isinstance(body, dict) else {}
    if isinstance(body.get("experiment_id"), str) and body["experiment_id"].isdigit():
        return ById(body["experiment_id"])
    return body["experiment"] if isinstance(body.get("experiment"), str) else None


def _auth_header() -> dict[str, str]:
    """Basic authentication from MLflow's environment variables, when they are set."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not (user and password):
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
