"""Reading a sweep's runs straight from the tracking store into tidy tables.

MLflow's ``search_runs`` builds a Python object per run and metric and is slow
at sweep scale; zoo reads SQL stores (SQLite, PostgreSQL) with a few queries and
pivots them with pandas (SQLite through ADBC's Arrow-native driver, see
``_sqlite_tables``). zoo's tracking server (``zoo server start``) runs the same
queries on its own database and sends the tables as Arrow (``zoo._server_app``); any
other MLflow server is read through its public REST API: runs searched in parts and
bulk metric histories, several requests at once (see ``_rest_tables``). Every backend
returns values exactly as logged (NaN included).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Tables", "load_tables"]

_HISTORY_KEYS = ("train_loss", "stage", "epoch_seconds", "lr")
_EPOCH_KEYS = (*_HISTORY_KEYS, "images_per_s")  # per-epoch metrics: histories, not run columns
_BULK_RUNS = 100  # run ids per get-history-bulk request (the server's limit)
_BULK_CAP = 25000  # points per get-history-bulk response (the server's limit)
_SEARCH_PAGE = 1000  # runs per runs/search response
_REST_REQUESTS = 8  # requests to a tracking server at once
_TAG_COLUMNS = {
    "zoo.kind": "kind",
    "zoo.error": "error",
    "zoo.stage_run": "stage_run",
    "zoo.config_hash": "config_hash",
    "zoo.sweep": "sweep",
    "zoo.stage": "stage_name",
    "mlflow.runName": "name",
}


@dataclass(frozen=True)
class Tables:
    runs: pd.DataFrame  # one row per run: identity, state, axes, params, summary metrics
    histories: pd.DataFrame  # run_id, key, step, value for per-epoch metrics
    axes: tuple[str, ...]  # the sweep's axis columns (from zoo.axis.* tags)


_PACKED = ["run_id", "key", "values", "steps"]
_HISTORY_PARTS = 2  # history queries at once, beside the other queries
# a metric's value as text that reads back to the same double (17 significant digits are
# not enough in SQLite's printf without "!"; quote() misses a few in a million); MLflow
# stores NaN as 0 with is_nan set
_SQLITE_VALUE = "CASE WHEN x.is_nan THEN 'nan' ELSE printf('%!.17e', x.value) END"
_POSTGRES_VALUE = "CASE WHEN x.is_nan THEN 'NaN' ELSE CAST(x.value AS TEXT) END"


def _sql_tables(
    uri: str, experiment: str, histories: bool = True, param_keys: tuple[str, ...] | None = None
) -> tuple[pd.DataFrame, ...] | None:
    """The experiment named ``experiment`` read from the SQL store at ``uri`` (see
    ``experiment_tables``); None if there is none."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                sqlalchemy.text("SELECT experiment_id FROM experiments WHERE name = :name"),
                {"name": experiment},
            ).first()
        if row is None:
            return None
        *tables, packed = experiment_tables(engine, int(row[0]), histories, param_keys)
        return (*tables, expand_history(packed))
    finally:
        engine.dispose()


def experiment_tables(
    engine: Any, experiment_id: int, histories: bool, param_keys: tuple[str, ...] | None
) -> tuple[Any, ...]:
    """runs, tags, params, latest (DataFrames) and the packed histories (an Arrow table,
    see ``_history``) of experiment ``experiment_id``'s active runs, by five queries on
    MLflow's tables through raw DB-API cursors (no ORM objects). The metric histories,
    most of the work, are read in parts on connections of their own while the other
    queries run. ``engine`` (a SQLAlchemy engine) is the caller's."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    active, in_experiment, only = _conditions(experiment_id, param_keys)
    long = ["run_id", "key", "value"]
    runs = _query(
        engine,
        f"SELECT run_uuid, status, start_time, end_time FROM runs WHERE {active}",
        ["run_id", "status", "start_time", "end_time"],
    )
    with ThreadPoolExecutor(_HISTORY_PARTS) as pool:
        parts = [
            pool.submit(_history, engine, _history_sql(engine, in_experiment, part))
            for part in (_run_ranges(runs["run_id"]) if histories else [])
        ]
        tags, params, latest = (
            _query(engine, sql, long)
            for sql in _long_sql(in_experiment, only, "x.value", "x.value")
        )
        found = [points for part in parts if len(points := part.result())]
    packed = pa.concat_tables(found) if found else _packed_schema().empty_table()
    return runs, tags, params, latest, packed


def _metric_value(number: str) -> str:
    """A metric's value selected as ``number`` (MLflow keeps NaN as 0 with is_nan set)."""
    return f"CASE WHEN x.is_nan THEN NULL ELSE {number} END"


def _long_sql(in_experiment: str, only: str, text: str, number: str) -> list[str]:
    """The queries of the experiment's tags, params (``only``: those asked for) and
    summary metrics as (run, key, value) rows; ``text``, ``number``: how to select a
    text and a double-precision value."""
    return [
        f"SELECT x.run_uuid, x.key, {value} FROM {table} x WHERE {where}"
        for table, value, where in (
            ("tags", text, in_experiment),
            ("params", text, in_experiment + only),
            ("latest_metrics", _metric_value(number), in_experiment),
        )
    ]


def _conditions(experiment_id: int, param_keys: tuple[str, ...] | None) -> tuple[str, str, str]:
    """SQL conditions: the experiment's active runs (on ``runs``), rows of those runs (on a
    table aliased ``x``), and the params to read (empty for all)."""
    active = f"experiment_id = {int(experiment_id)} AND lifecycle_stage = 'active'"
    in_experiment = f"x.run_uuid IN (SELECT run_uuid FROM runs WHERE {active})"
    only = ""
    if param_keys is not None:
        listed = ",".join("'" + k.replace("'", "''") + "'" for k in param_keys) or "NULL"
        only = f" AND x.key IN ({listed})"
    return active, in_experiment, only


def _sqlite_tables(
    uri: str, experiment: str, histories: bool = True, param_keys: tuple[str, ...] | None = None
) -> tuple[pd.DataFrame, ...] | None:
    """``_sql_tables`` for a SQLite store, read through ADBC's SQLite driver: Arrow-native,
    doubles arrive as binary (exact, NaN included, no text formatting). The same frames
    as ``_sql_tables`` (histories ordered by run, key and step). The file is opened
    read-only (never created or changed; a missing or unreadable one raises
    ``sqlite3.OperationalError``, one line naming it); each connection waits up to 60 s
    for a writer's lock; every value is CAST to its column's one type, so the driver's
    per-batch type inference cannot meet two types in a column. The driver links its own
    SQLite, which does not see the POSIX locks that Python's ``sqlite3`` holds in the
    same process (and closing a file drops them): a process reads here only while it is
    not itself writing the store (zoo's readers, ``analyze`` and ``models list``, never are)."""
    from concurrent.futures import ThreadPoolExecutor

    found = _adbc(uri, "SELECT experiment_id FROM experiments WHERE name = ?", (experiment,))
    if found.num_rows == 0:
        return None
    active, in_experiment, only = _conditions(found.column(0)[0].as_py(), param_keys)
    runs = _adbc(uri, f"SELECT run_uuid, status, start_time, end_time FROM runs WHERE {active}")
    keys = " OR ".join([f"x.key = '{k}'" for k in _HISTORY_KEYS] + ["x.key LIKE 'val_%'"])
    value = _metric_value("CAST(x.value AS REAL)")  # SQLite's REAL: double precision
    with ThreadPoolExecutor(_HISTORY_PARTS) as pool:
        parts = [
            pool.submit(
                _adbc,
                uri,
                f"SELECT x.run_uuid, x.key, CAST(x.step AS INTEGER), {value} "
                "FROM metrics x "
                f"WHERE {in_experiment}{part} AND ({keys}) ORDER BY x.run_uuid, x.key, x.step",
            )
            for part in (_run_ranges(runs.column(0).to_pylist()) if histories else [])
        ]
        tags, params, latest = (
            _adbc(uri, sql)
            for sql in _long_sql(
                in_experiment, only, "CAST(x.value AS TEXT)", "CAST(x.value AS REAL)"
            )
        )
        points = [part.result() for part in parts]
    return (
        _frame(runs, ["run_id", "status", "start_time", "end_time"]),
        *(_frame(t, ["run_id", "key", "value"]) for t in (tags, params, latest)),
        _points(points),
    )


def _sqlite_reader(uri: str) -> Callable[..., tuple[pd.DataFrame, ...] | None]:
    """``_sqlite_tables``, unless this process holds the store open already (through
    Python's ``sqlite3``, e.g. a Tracker): the ADBC driver's own SQLite would neither see
    that connection's locks nor keep them when it closes the file, so the DB-API reader
    (``_sql_tables``) reads it then. Without /proc to tell, the DB-API reader too."""
    from zoo.tracking import sqlite_path

    path = os.path.realpath(sqlite_path(uri))
    ours = {path, f"{path}-wal", f"{path}-shm", f"{path}-journal"}
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return _sql_tables
    held = set()
    for descriptor in descriptors:
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own one)
            held.add(os.readlink(f"/proc/self/fd/{descriptor}"))
    return _sql_tables if ours & held else _sqlite_tables


def _adbc(uri: str, sql: str, parameters: tuple = ()) -> Any:
    """``sql``'s result (an Arrow table) on a read-only connection of its own to the SQLite
    store at ``uri`` (safe from any thread); the driver's errors as one-line
    ``sqlite3.OperationalError``s naming the file."""
    import sqlite3
    from urllib.parse import quote

    import adbc_driver_manager
    import adbc_driver_sqlite.dbapi

    from zoo.tracking import sqlite_path

    path = sqlite_path(uri).absolute()
    if not path.is_file():
        raise sqlite3.OperationalError(f"unable to open database file {path}: no such file")
    try:
        with (
            adbc_driver_sqlite.dbapi.connect(
                f"file:{quote(str(path))}?mode=ro", autocommit=True
            ) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute("PRAGMA busy_timeout = 60000")  # as zoo.tracking's connections
            cursor.execute(sql, parameters or None)
            return cursor.fetch_arrow_table()
    except adbc_driver_manager.Error as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise sqlite3.OperationalError(f"{path}: {first}") from error


def _frame(table: Any, columns: list[str]) -> pd.DataFrame:
    """An Arrow result as the frame DB-API rows would give (no rows, or a column of only
    NULLs: object columns, as ``pd.DataFrame`` makes them)."""
    import pandas as pd

    if any(c.null_count == table.num_rows for c in table.columns):  # or no rows
        return pd.DataFrame(list(zip(*table.to_pydict().values(), strict=True)), columns=columns)
    return table.rename_columns(columns).to_pandas()


def _points(parts: list[Any]) -> pd.DataFrame:
    """run_id, key, step, value from the history queries' Arrow results."""
    import pyarrow as pa

    found = [part for part in parts if part.num_rows]
    if not found:
        return expand_history(_packed_schema().empty_table())
    schema = pa.schema(
        [
            ("run_id", pa.string()),
            ("key", pa.string()),
            ("step", pa.int64()),
            ("value", pa.float64()),
        ]
    )
    return pa.concat_tables(
        [part.rename_columns(schema.names).cast(schema) for part in found]
    ).to_pandas()


def _query(engine: Any, sql: str, columns: list[str]) -> pd.DataFrame:
    """``sql``'s rows on a connection of its own (safe from any thread)."""
    import pandas as pd

    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(sql)
        return pd.DataFrame(cursor.fetchall(), columns=columns)
    finally:
        raw.close()


def _run_ranges(run_ids: Any) -> list[str]:
    """Conditions splitting the runs into ``_HISTORY_PARTS`` ranges of run ids."""
    ids = sorted(run_ids)
    if not ids:
        return []
    bounds = [ids[len(ids) * i // _HISTORY_PARTS] for i in range(1, _HISTORY_PARTS)]
    quoted = ["'" + b.replace("'", "''") + "'" for b in bounds]
    lower = [""] + [f" AND x.run_uuid >= {b}" for b in quoted]
    upper = [f" AND x.run_uuid < {b}" for b in quoted] + [""]
    return [lo + hi for lo, hi in zip(lower, upper, strict=True)]


def _history_sql(engine: Any, in_experiment: str, part: str) -> str:
    """One row per run (of those ``part`` selects) and per-epoch key: its values and
    steps, comma-separated."""
    keys = " OR ".join([f"x.key = '{k}'" for k in _HISTORY_KEYS] + ["x.key LIKE 'val_%'"])
    if engine.dialect.name == "sqlite":
        values = f"group_concat({_SQLITE_VALUE}), group_concat(x.step)"  # in the same order
    else:
        values = (
            f"string_agg({_POSTGRES_VALUE}, ',' ORDER BY x.step), "
            "string_agg(CAST(x.step AS TEXT), ',' ORDER BY x.step)"
        )
    return (
        f"SELECT x.run_uuid, x.key, {values} FROM metrics x WHERE {in_experiment}{part} "
        f"AND ({keys}) GROUP BY x.run_uuid, x.key"
    )


def _packed_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("key", pa.string()),
            ("step", pa.list_(pa.int64())),
            ("value", pa.list_(pa.float64())),
        ]
    )


def _history(engine: Any, sql: str) -> Any:
    """The packed (run, key) rows that ``sql`` reads as an Arrow table: run_id, key, and
    the lists of steps and values, split and parsed by Arrow (exact, and off the GIL)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    packed = _query(engine, sql, _PACKED)
    values = pc.split_pattern(pa.array(packed["values"], pa.string()), ",")
    steps = pc.split_pattern(pa.array(packed["steps"], pa.string()), ",")
    if not np.array_equal(
        pc.list_value_length(steps).to_numpy(zero_copy_only=False),
        pc.list_value_length(values).to_numpy(zero_copy_only=False),
    ):
        raise ValueError("metric values and steps read back in different numbers")  # a guard
    columns = [pa.array(packed["run_id"], pa.string()), pa.array(packed["key"], pa.string())]
    columns += [pc.cast(steps, pa.list_(pa.int64())), pc.cast(values, pa.list_(pa.float64()))]
    return pa.Table.from_arrays(columns, schema=_packed_schema())


def expand_history(packed: Any) -> pd.DataFrame:
    """run_id, key, step, value: one row per point of the packed Arrow table that
    ``_history`` builds."""
    import numpy as np
    import pandas as pd
    import pyarrow.compute as pc

    if not len(packed):
        empty = pd.Series([], dtype="str")
        return pd.DataFrame(
            {"run_id": empty, "key": empty, "step": np.zeros(0, np.int64), "value": []}
        )
    counts = pc.list_value_length(packed["step"]).to_numpy(zero_copy_only=False)
    labels = packed.select(["run_id", "key"]).to_pandas()
    history = labels.take(np.repeat(np.arange(len(packed)), counts))
    return history.reset_index(drop=True).assign(
        step=pc.list_flatten(packed["step"]).to_numpy(zero_copy_only=False),
        value=pc.list_flatten(packed["value"]).to_numpy(zero_copy_only=False),
    )


def encode_tables(tables: tuple[Any, ...]) -> bytes:
    """``experiment_tables``' result as bytes: per table, its length (8 bytes, little
    endian) and an Arrow IPC stream, zstd-compressed (10,000 runs: 15 MB, 55 raw)."""
    import pyarrow as pa

    out = bytearray()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    for table in tables:
        if not isinstance(table, pa.Table):
            table = pa.Table.from_pandas(table, preserve_index=False)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
            writer.write_table(table)
        out += len(sink.getvalue()).to_bytes(8, "little") + sink.getvalue().to_pybytes()
    return bytes(out)


def decode_tables(data: bytes) -> tuple[pd.DataFrame, ...]:
    """runs, tags, params, latest and history frames from ``encode_tables``' bytes."""
    import pyarrow as pa

    tables, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 8], "little")
        tables.append(pa.ipc.open_stream(pa.py_buffer(data[at + 8 : at + 8 + size])).read_all())
        at += 8 + size
    *frames, packed = tables
    return (*(t.to_pandas() for t in frames), expand_history(packed))


def _rest_tables(
    uri: str, experiment: str, histories: bool = True, param_keys: tuple[str, ...] | None = None
) -> tuple[pd.DataFrame, ...] | None:
    """A tracking server: zoo's server (``zoo server start``) answers ``/zoo/api/1/tables``
    in one request (see ``zoo._server_app``); any other MLflow server (that route 404s)
    is read through the public REST API, much slower (see ``_public_rest_tables``)."""
    from mlflow.tracking import MlflowClient

    found = MlflowClient(uri).get_experiment_by_name(experiment)
    if found is None:
        return None
    tables = _zoo_tables(uri, found.experiment_id, histories, param_keys)
    if tables is None:
        tables = _public_rest_tables(uri, found.experiment_id, histories, param_keys)
    return tables


def _zoo_tables(
    uri: str, experiment_id: str, histories: bool, param_keys: tuple[str, ...] | None
) -> tuple[pd.DataFrame, ...] | None:
    """The tables from zoo's server route; None if the server has no such route (404) or
    its store is not SQL (501)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    from zoo._server_app import ROUTE

    response = http_request(
        get_default_host_creds(uri.rstrip("/")),
        ROUTE,
        "POST",
        json={
            "experiment_id": experiment_id,
            "histories": histories,
            "param_keys": None if param_keys is None else list(param_keys),
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
    return [m["key"] for m in metrics if m["key"] in _HISTORY_KEYS or m["key"].startswith("val_")]


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


def _wide(long: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
    """One column per key; a column whose every value reads as a number becomes numeric."""
    import pandas as pd

    wide = long.pivot(index="run_id", columns="key", values="value")
    for column in wide.columns:
        if wide[column].dtype == object or pd.api.types.is_string_dtype(wide[column]):
            numbers = pd.to_numeric(wide[column], errors="coerce")
            if numbers.notna().sum() == wide[column].notna().sum():
                integral = (
                    numbers.dropna().mod(1).eq(0).all()
                    and not wide[column].dropna().str.contains(r"[.eE]").any()
                )
                wide[column] = numbers.astype("Int64") if integral else numbers
    return wide.add_prefix(prefix) if prefix else wide


def load_tables(
    uri: str,
    experiment: str,
    *,
    histories: bool = True,
    param_keys: tuple[str, ...] | None = None,
) -> Tables | None:
    """Every active run of ``experiment`` as one row, plus per-epoch histories; None if the
    experiment does not exist. ``histories=False`` leaves the histories empty and
    ``param_keys`` reads only those params: a lighter read for listings."""
    import pandas as pd

    from zoo.tracking import backend, store_uri

    uri = store_uri(uri)
    kind = backend(uri)
    if kind == "http":
        reader = _rest_tables
    elif kind == "sqlite":
        reader = _sqlite_reader(uri)
    else:
        reader = _sql_tables
    found = reader(uri, experiment, histories, param_keys)
    if found is None:
        return None
    runs, tags, params, latest, history = found
    axes = tags[tags.key.str.startswith("zoo.axis.")].assign(
        key=lambda t: t.key.str.slice(len("zoo.axis."))
    )
    kept_tags = tags[tags.key.isin(_TAG_COLUMNS)].assign(key=lambda t: t.key.map(_TAG_COLUMNS))
    summary = latest[~latest.key.isin(_EPOCH_KEYS) & ~latest.key.str.startswith("val_")]
    table = runs.set_index("run_id").join(
        [
            _wide(kept_tags),
            _wide(axes),
            _wide(params, "param."),
            _wide(summary),
        ],
        how="left",
    )
    table = table.reset_index()
    for column in ("kind", "error", "stage_run"):
        if column not in table:
            table[column] = pd.NA
    return Tables(table, history, tuple(sorted(axes.key.unique())))
