"""Reading an experiment's runs from a tracking server: zoo's server answers in one
request (``TABLES_ROUTE``, see zoo._server_app); any other MLflow server through its public
REST API, runs searched in parts and bulk metric histories, several requests at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zoo.store._sql import HISTORY_KEYS, decode_tables

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TABLES_ROUTE", "rest_tables"]

TABLES_ROUTE = "/zoo/api/1/tables"
_BULK_RUNS = 100  # run ids per get-history-bulk request (the server's limit)
_BULK_CAP = 25000  # points per get-history-bulk response (the server's limit)
_SEARCH_PAGE = 1000  # runs per runs/search response
_REST_REQUESTS = 8  # requests to a tracking server at once


def rest_tables(
    uri: str,
    experiment: str,
    histories: bool = True,
    param_keys: tuple[str, ...] | None = None,
    metric_prefixes: tuple[str, ...] | None = None,
) -> tuple[pd.DataFrame, ...] | None:
    """A tracking server: zoo's server (``zoo server start``) answers ``/zoo/api/1/tables``
    by the experiment's name in one request, without MLflow's client (see
    ``zoo._server_app`` and ``_named_tables``); any other MLflow server (that route
    404s) is read through the public REST API, much slower (see ``_public_rest_tables``).
    ``metric_prefixes``: only the latest metrics whose key starts with one of them."""
    options = (histories, param_keys, metric_prefixes)
    tables = _named_tables(uri, experiment, *options)
    if tables is _ABSENT:
        return None
    if tables is None:  # not zoo's server (or an older one): MLflow's client names the id
        from mlflow.tracking import MlflowClient

        found = MlflowClient(uri).get_experiment_by_name(experiment)
        if found is None:
            return None
        tables = _zoo_tables(uri, found.experiment_id, *options)
        if tables is None:
            tables = _public_rest_tables(uri, found.experiment_id, histories, param_keys)
    if metric_prefixes is not None:  # a server that reads every metric, or no such option
        runs, tags, params, latest, points = tables
        tables = (runs, tags, params, latest[latest.key.str.startswith(metric_prefixes)], points)
    return tables


_ABSENT = object()  # zoo's server answered: there is no such experiment


def _named_tables(
    uri: str,
    experiment: str,
    histories: bool,
    param_keys: tuple[str, ...] | None,
    metric_prefixes: tuple[str, ...] | None,
) -> tuple[pd.DataFrame, ...] | None:
    """The tables from zoo's route, asked by the experiment's name in a plain request
    (MLflow's client is not imported: a second of the command's time); ``_ABSENT`` when
    the server has no such experiment; None when it cannot answer so (another server, a
    store that is not SQL, authentication or TLS set up for MLflow's client, no answer):
    MLflow's client then asks, or names the problem."""
    import urllib.error

    from zoo.store._states import post_route

    body = {
        "experiment": experiment,
        "histories": histories,
        "param_keys": None if param_keys is None else list(param_keys),
        "metric_prefixes": None if metric_prefixes is None else list(metric_prefixes),
    }
    try:
        return decode_tables(post_route(uri, TABLES_ROUTE, body))
    except urllib.error.HTTPError as error:
        return _ABSENT if error.code == 404 and _missing(error.read()) else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _missing(body: bytes) -> bool:
    """Whether an error response says MLflow's RESOURCE_DOES_NOT_EXIST."""
    import json

    try:
        return json.loads(body).get("error_code") == "RESOURCE_DOES_NOT_EXIST"
    except (ValueError, AttributeError):
        return False


def _zoo_tables(
    uri: str,
    experiment_id: str,
    histories: bool,
    param_keys: tuple[str, ...] | None,
    metric_prefixes: tuple[str, ...] | None,
) -> tuple[pd.DataFrame, ...] | None:
    """The tables from zoo's server route; None if the server has no such route (404) or
    its store is not SQL (501)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    response = http_request(
        get_default_host_creds(uri.rstrip("/")),
        TABLES_ROUTE,
        "POST",
        json={
            "experiment_id": experiment_id,
            "histories": histories,
            "param_keys": None if param_keys is None else list(param_keys),
            "metric_prefixes": None if metric_prefixes is None else list(metric_prefixes),
        },
    )
    if response.status_code in (404, 501):
        return None
    response.raise_for_status()
    return decode_tables(response.content)


def _public_rest_tables(
    uri: str, experiment_id: str, histories: bool, param_keys: tuple[str, ...] | None
) -> tuple[pd.DataFrame, ...]:
    """The public REST API, 8 requests at a time: ``runs/search`` in 16 parts (run ids by
    their first hex digit: MLflow's run ids are uuid4 hex), then ``get-history-bulk`` (see
    ``_bulk_request``) per key and 100 runs, asked as soon as those runs are known."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    import pandas as pd

    rows: dict[str, list[tuple]] = {"runs": [], "tags": [], "params": [], "latest": []}
    pending: dict[str, list[str]] = {}  # history key -> run ids not yet asked for
    with ThreadPoolExecutor(_REST_REQUESTS) as pool:
        parts = [pool.submit(_search, uri, experiment_id, d) for d in "0123456789abcdef"]
        asked = []
        for part in as_completed(parts):
            for run in part.result():
                for key in _add_run(rows, run, param_keys) if histories else ():
                    pending.setdefault(key, []).append(run["info"]["run_id"])
                    if len(pending[key]) == _BULK_RUNS:
                        asked.append(pool.submit(_bulk_request, uri, key, pending.pop(key)))
        asked += [pool.submit(_bulk_request, uri, k, ids) for k, ids in pending.items()]
        history = [point for points in asked for point in points.result()]
    columns = ["run_id", "key", "value"]
    return (
        pd.DataFrame(rows["runs"], columns=["run_id", "status", "start_time", "end_time"]),
        pd.DataFrame(rows["tags"], columns=columns),
        pd.DataFrame(rows["params"], columns=columns),
        pd.DataFrame(rows["latest"], columns=columns),
        pd.DataFrame(history, columns=["run_id", "key", "step", "value"]),
    )


def _search(uri: str, experiment_id: str, digit: str) -> list[dict]:
    """Every active run of the experiment whose id starts with ``digit``, as the
    server's JSON (pages of 1000)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    found, token = [], None
    while True:
        query = {
            "experiment_ids": [experiment_id],
            "filter": f"attributes.run_id LIKE '{digit}%'",
            "max_results": _SEARCH_PAGE,
        }
        response = http_request(
            get_default_host_creds(uri.rstrip("/")),
            "/api/2.0/mlflow/runs/search",
            "POST",
            json={**query, "page_token": token} if token else query,
        )
        response.raise_for_status()
        page = response.json()
        found += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return found


def _add_run(
    rows: dict[str, list[tuple]], run: dict, param_keys: tuple[str, ...] | None
) -> list[str]:
    """Add one run of a search response to ``rows``; returns its per-epoch metric keys."""
    info, data = run["info"], run.get("data", {})
    run_id = info["run_id"]
    rows["runs"].append((run_id, info["status"], info.get("start_time"), info.get("end_time")))
    rows["tags"] += [(run_id, t["key"], t["value"]) for t in data.get("tags", [])]
    rows["params"] += [
        (run_id, p["key"], p["value"])
        for p in data.get("params", [])
        if param_keys is None or p["key"] in param_keys
    ]
    metrics = data.get("metrics", [])
    rows["latest"] += [(run_id, m["key"], float(m["value"])) for m in metrics]
    return [m["key"] for m in metrics if m["key"] in HISTORY_KEYS or m["key"].startswith("val_")]


def _bulk_request(uri: str, key: str, run_ids: list[str]) -> list[tuple]:
    """The points of ``key`` for ``run_ids``; a response that reaches the server's
    25,000-point cap is asked again in halves."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    response = http_request(
        get_default_host_creds(uri.rstrip("/")),  # the client's credentials and TLS settings
        "/ajax-api/2.0/mlflow/metrics/get-history-bulk",
        "GET",
        params={"run_id": run_ids, "metric_key": key, "max_results": _BULK_CAP},
    )
    response.raise_for_status()
    metrics = response.json().get("metrics", [])
    if len(metrics) >= _BULK_CAP and len(run_ids) > 1:
        half = len(run_ids) // 2
        return _bulk_request(uri, key, run_ids[:half]) + _bulk_request(uri, key, run_ids[half:])
    return [(m["run_id"], key, int(m["step"]), float(m["value"])) for m in metrics]
