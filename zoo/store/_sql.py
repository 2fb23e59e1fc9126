"""zoo's direct reads of MLflow's SQL schema: an experiment's runs, tags, params, latest
metrics and metric histories in a few queries, pivot-ready (no ORM objects).

SQLite is read through ADBC's Arrow-native driver (``_sqlite_tables``), PostgreSQL (and a
SQLite store this process holds open) through SQLAlchemy's raw DB-API cursors
(``_sql_tables``); zoo's tracking server runs ``experiment_tables`` on its own database
and sends the result as ``encode_tables`` bytes. Values come back exactly as logged (NaN
included). The schema revision these queries rely on is checked at open
(zoo.store._open.check_schema).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zoo.store._uri import backend, sqlite_path

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["HISTORY_KEYS", "decode_tables", "encode_tables", "experiment_tables"]
__all__ += ["expand_history", "sql_reader"]

HISTORY_KEYS = ("train_loss", "stage", "epoch_seconds", "lr")  # per-epoch keys besides val_*

_PACKED = ["run_id", "key", "values", "steps"]
_HISTORY_PARTS = 2  # history queries at once, beside the other queries
# a metric's value as text that reads back to the same double (17 significant digits are
# not enough in SQLite's printf without "!"; quote() misses a few in a million); MLflow
# stores NaN as 0 with is_nan set
_SQLITE_VALUE = "CASE WHEN x.is_nan THEN 'nan' ELSE printf('%!.17e', x.value) END"
_POSTGRES_VALUE = "CASE WHEN x.is_nan THEN 'NaN' ELSE CAST(x.value AS TEXT) END"


def _sql_tables(
    uri: str,
    experiment: str,
    histories: bool = True,
    param_keys: tuple[str, ...] | None = None,
    metric_prefixes: tuple[str, ...] | None = None,
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
        *tables, packed = experiment_tables(
            engine, int(row[0]), histories, param_keys, metric_prefixes
        )
        return (*tables, expand_history(packed))
    finally:
        engine.dispose()


def experiment_tables(
    engine: Any,
    experiment_id: int,
    histories: bool,
    param_keys: tuple[str, ...] | None,
    metric_prefixes: tuple[str, ...] | None = None,
) -> tuple[Any, ...]:
    """runs, tags, params, latest (DataFrames) and the packed histories (an Arrow table,
    see ``_history``) of experiment ``experiment_id``'s active runs (``param_keys``: only
    those params; ``metric_prefixes``: only latest metrics whose key starts with one of
    them; None: all), by five queries on MLflow's tables through raw DB-API cursors (no
    ORM objects). The metric histories, most of the work, are read in parts on
    connections of their own while the other queries run. ``engine`` (a SQLAlchemy
    engine) is the caller's."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    active, in_experiment, only = _conditions(experiment_id, param_keys)
    prefixed = _prefixed(metric_prefixes)
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
        tags, params, latest = _long_tables(engine, in_experiment, only, prefixed)
        found = [points for part in parts if len(points := part.result())]
    packed = pa.concat_tables(found) if found else _packed_schema().empty_table()
    return runs, tags, params, latest, packed


def _long_tables(engine: Any, in_experiment: str, only: str, prefixed: str) -> list[Any]:
    """tags, params and latest metrics as (run_id, key, value) frames (see ``_long_sql``):
    a table read whole is read packed (zoo.store._packed) unless that cannot be exact; one
    read in part (``only``, ``prefixed``) row by row, which its key index serves faster."""
    from zoo.store._packed import PACKED_COLUMNS, packed_sql, unpack

    dialect = engine.dialect.name
    number = _SQLITE_VALUE if dialect == "sqlite" else _POSTGRES_VALUE  # exact as text
    plain = _long_sql(in_experiment, only, "x.value", "x.value", prefixed)
    parts = [
        ("tags", "x.value", in_experiment),
        ("params", "x.value", in_experiment + only),
        ("latest_metrics", number, in_experiment + prefixed),
    ]
    frames = []
    for (table, value, where), sql in zip(parts, plain, strict=True):
        frame = None
        if where == in_experiment:
            packed = _query(engine, packed_sql(dialect, table, value, where), PACKED_COLUMNS)
            frame = unpack(packed, numeric=table == "latest_metrics")
        frames.append(_query(engine, sql, ["run_id", "key", "value"]) if frame is None else frame)
    return frames


def _metric_value(number: str) -> str:
    """A metric's value selected as ``number`` (MLflow keeps NaN as 0 with is_nan set)."""
    return f"CASE WHEN x.is_nan THEN NULL ELSE {number} END"


def _long_sql(
    in_experiment: str, only: str, text: str, number: str, prefixed: str = ""
) -> list[str]:
    """The queries of the experiment's tags, params (``only``: those asked for) and
    latest metrics (``prefixed``: those asked for) as (run, key, value) rows; ``text``,
    ``number``: how to select a text and a double-precision value."""
    return [
        f"SELECT x.run_uuid, x.key, {value} FROM {table} x WHERE {where}"
        for table, value, where in (
            ("tags", text, in_experiment),
            ("params", text, in_experiment + only),
            ("latest_metrics", _metric_value(number), in_experiment + prefixed),
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


def _prefixed(prefixes: tuple[str, ...] | None) -> str:
    """SQL condition on a table aliased ``x``: its key starts with one of ``prefixes``
    (exactly: neither LIKE's wildcards nor its case folding); empty for None."""
    if prefixes is None:
        return ""
    starts = [f"substr(x.key, 1, {len(p)}) = '" + p.replace("'", "''") + "'" for p in prefixes]
    return f" AND ({' OR '.join(starts) or 'FALSE'})"


def _sqlite_tables(
    uri: str,
    experiment: str,
    histories: bool = True,
    param_keys: tuple[str, ...] | None = None,
    metric_prefixes: tuple[str, ...] | None = None,
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
    keys = " OR ".join([f"x.key = '{k}'" for k in HISTORY_KEYS] + ["x.key LIKE 'val_%'"])
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
                in_experiment,
                only,
                "CAST(x.value AS TEXT)",
                "CAST(x.value AS REAL)",
                _prefixed(metric_prefixes),
            )
        )
        points = [part.result() for part in parts]
    return (
        _frame(runs, ["run_id", "status", "start_time", "end_time"]),
        *(_frame(t, ["run_id", "key", "value"]) for t in (tags, params, latest)),
        _points(points),
    )


def sql_reader(uri: str) -> Callable[..., tuple[pd.DataFrame, ...] | None]:
    """The reader of the SQL store at ``uri``: for PostgreSQL the DB-API reader
    (``_sql_tables``); for SQLite ``_sqlite_tables``, unless this process holds the store
    open already (through Python's ``sqlite3``, e.g. a Tracker): the ADBC driver's own
    SQLite would neither see that connection's locks nor keep them when it closes the
    file, so the DB-API reader reads it then. Without /proc to tell, the DB-API reader too."""
    if backend(uri) != "sqlite":
        return _sql_tables
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
            cursor.execute("PRAGMA busy_timeout = 60000")  # as the store's own connections
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
    keys = " OR ".join([f"x.key = '{k}'" for k in HISTORY_KEYS] + ["x.key LIKE 'val_%'"])
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
