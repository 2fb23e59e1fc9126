"""The store's bulk read: every active run of an experiment as five long tables, from
whichever backend the URI names (zoo.store._sql for SQL stores, zoo.store._rest for a
tracking server)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from zoo.store import _rest, _sql
from zoo.store._open import check_schema
from zoo.store._uri import backend, store_uri

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["StoreTables", "read_tables"]


class StoreTables(NamedTuple):
    """An experiment's active runs, as logged (values exact, NaN included)."""

    runs: pd.DataFrame  # run_id, status, start_time, end_time
    tags: pd.DataFrame  # run_id, key, value (text)
    params: pd.DataFrame  # run_id, key, value (text)
    latest: pd.DataFrame  # run_id, key, value: each metric's latest value
    histories: pd.DataFrame  # run_id, key, step, value: per-epoch metrics' every point


def read_tables(
    uri: str,
    experiment: str,
    *,
    histories: bool = True,
    param_keys: tuple[str, ...] | None = None,
    metric_prefixes: tuple[str, ...] | None = None,
) -> StoreTables | None:
    """Experiment ``experiment``'s runs in the store at ``uri``; None if there is no such
    experiment. ``histories=False`` leaves the histories empty, ``param_keys`` reads
    only those params and ``metric_prefixes`` only the latest metrics whose key starts
    with one of them. A SQLite store is opened read-only (never created); a SQL store's
    schema revision is checked first (zoo.store._open.check_schema)."""
    uri = store_uri(uri)
    kind = backend(uri)
    if kind == "http":
        reader = _rest.rest_tables
    else:
        check_schema(uri)
        reader = _sql.sql_reader(uri)
    found = reader(uri, experiment, histories, param_keys, metric_prefixes)
    return None if found is None else StoreTables(*found)
