"""zoo's MLflow tracking server and UI: MLflow's own app plus two read-only routes.

``mlflow server --app-name zoo`` (what ``zoo server start`` runs; the entry point is
declared in setup.cfg under ``mlflow.app``) serves everything a plain server serves
and ``POST /zoo/api/1/tables`` with JSON ``{"experiment_id": "1", "histories": true,
"param_keys": null, "metric_prefixes": null}`` (or ``"experiment": "NAME"`` for the id;
404 with MLflow's error code ``RESOURCE_DOES_NOT_EXIST`` when there is no experiment of
that name): that experiment's active runs, tags,
params, latest metrics and packed metric histories, read from the server's SQL backend
store by the same queries that read a SQLite or PostgreSQL store directly
(``zoo.store._sql``), as Arrow IPC (``encode_tables``). 400 for a malformed request;
501 when the backend store is not SQL.

``POST /zoo/api/1/states`` with JSON ``{"experiment": "NAME"}`` (or ``{"experiment_id":
"1"}``) answers
``{"states": {identity: [run id, status, liveness tags]}}`` for that experiment's
active runs (see ``zoo.store._states``), by one query; the same 400 and 501.
"""

from __future__ import annotations

import re
from typing import Any

from zoo.store._rest import TABLES_ROUTE
from zoo.store._states import STATES_ROUTE

__all__ = ["create_app"]


def _tables() -> Any:
    from flask import Response, request
    from mlflow.server.handlers import _get_tracking_store

    from zoo.store._sql import encode_tables, experiment_tables

    body = request.get_json(silent=True)
    body = body if isinstance(body, dict) else {}
    keys, prefixes = body.get("param_keys"), body.get("metric_prefixes")
    named = isinstance(body.get("experiment"), str) and "experiment_id" not in body
    try:
        experiment_id = None if named else int(body["experiment_id"])
    except (KeyError, TypeError, ValueError):
        return Response("experiment_id or experiment: an experiment is required", 400)
    if not _keys_or_none(keys):
        return Response("param_keys: a list of MLflow keys or null", 400)
    if not _keys_or_none(prefixes):
        return Response("metric_prefixes: a list of MLflow keys or null", 400)
    engine = getattr(_get_tracking_store(), "engine", None)  # a SqlAlchemyStore's
    if engine is None:
        return Response("zoo tables: the backend store is not a SQL database", 501)
    if named and (experiment_id := _experiment_id(engine, body["experiment"])) is None:
        return _no_experiment(body["experiment"])
    tables = experiment_tables(
        engine,
        experiment_id,
        bool(body.get("histories", True)),
        None if keys is None else tuple(keys),
        None if prefixes is None else tuple(prefixes),
    )
    return Response(encode_tables(tables), mimetype="application/vnd.apache.arrow.stream")


def _experiment_id(engine: Any, name: str) -> int | None:
    """The id of the experiment named ``name`` (deleted ones too, as MLflow's
    ``get_experiment_by_name`` finds them); None if there is none."""
    import sqlalchemy

    with engine.connect() as connection:
        row = connection.execute(
            sqlalchemy.text("SELECT experiment_id FROM experiments WHERE name = :name"),
            {"name": name},
        ).first()
    return None if row is None else int(row[0])


def _no_experiment(name: str) -> Any:
    """404 as MLflow answers for a missing experiment (its error code tells it from a
    server without this route)."""
    from flask import jsonify

    message = f"Could not find experiment with name {name!r}"
    return jsonify({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": message}), 404


def _states() -> Any:
    from flask import Response, jsonify, request
    from mlflow.server.handlers import _get_tracking_store

    from zoo.store._states import experiment_of, query_states

    experiment = experiment_of(request.get_json(silent=True))
    if experiment is None:
        return Response("experiment or experiment_id: an experiment is required", 400)
    engine = getattr(_get_tracking_store(), "engine", None)
    if engine is None:
        return Response("zoo states: the backend store is not a SQL database", 501)
    paramstyle = "qmark" if engine.dialect.name == "sqlite" else "format"
    connection = engine.raw_connection()
    try:
        states = query_states(connection, experiment, paramstyle)
    finally:
        connection.close()
    return jsonify({"states": {k: list(v) for k, v in states.items()}})


# MLflow 3's UI opens in the GenAI workflow unless the URL or the browser's stored choice
# (localStorage "mlflow.workflowType_v1", JSON) says otherwise: a browser that never chose
# is given the training workflow, zoo's kind of experiment; a choice made later is kept
TRAINING_BY_DEFAULT = (
    '<script>try{var k="mlflow.workflowType_v1";if(localStorage.getItem(k)===null)'
    'localStorage.setItem(k,JSON.stringify("machine_learning"))}catch(e){}</script>'
)


def _training_by_default(response: Any) -> Any:
    """The UI's page with TRAINING_BY_DEFAULT at the start of its head; others unchanged."""
    if response.mimetype != "text/html":
        return response
    response.direct_passthrough = False  # index.html is sent as a file: read it here
    page = response.get_data(as_text=True)
    if "<head>" in page and TRAINING_BY_DEFAULT not in page:
        response.set_data(page.replace("<head>", "<head>" + TRAINING_BY_DEFAULT, 1))
    return response


def create_app() -> Any:
    """MLflow's app (FastAPI under uvicorn, its Flask app under gunicorn or waitress) with
    zoo's routes added to the Flask app, which both serve, and its UI page opening in
    the training workflow for a browser that never chose one."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app
    from mlflow.server.handlers import _add_static_prefix

    if "zoo_tables" not in app.view_functions:
        app.add_url_rule(_add_static_prefix(TABLES_ROUTE), "zoo_tables", _tables, methods=["POST"])
        app.add_url_rule(_add_static_prefix(STATES_ROUTE), "zoo_states", _states, methods=["POST"])
        app.after_request(_training_by_default)
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import app as fastapi_app

        return fastapi_app
    return app


_KEY = re.compile(r"[\w\-. /]*")  # MLflow's key characters: nothing SQL could read as syntax


def _keys_or_none(value: object) -> bool:
    """Whether ``value`` is None or a list of strings made of MLflow's key characters (they
    are written into zoo's SQL as literals)."""
    if value is None:
        return True
    return isinstance(value, list) and all(isinstance(k, str) and _KEY.fullmatch(k) for k in value)
