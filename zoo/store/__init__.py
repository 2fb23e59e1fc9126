"""The tracking store: one interface (``Store``), its write and read side, over MLflow.

The store is ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``mlflow.db`` in the
project root. Backends, chosen by the URI's scheme:

- ``sqlite:///PATH``: a file; for one machine (never on a network filesystem).
- ``postgresql://USER@HOST:PORT/DB``: a database (driver: psycopg 3).
- ``http://HOST:PORT``: an MLflow tracking server (``zoo server start``); the cluster path.

Writes and run-by-run reads go through ``Tracker`` (MLflow's client, retried, guarded
against a stopping signal); bulk reads through ``read_tables`` (a few SQL queries on SQL
stores, checked against the schema revision at open; one request to zoo's server; the
public REST API of any other server) and ``read_states`` (one query). The promises every
backend keeps are ``Store``'s. Nothing outside this package (and zoo's server app) imports
MLflow's tracking API; a caller that must tell a failed store call apart catches
``zoo.store.StoreError`` (MLflow's exception, imported only when asked for).
"""

from typing import Any

from zoo.store._base import Store
from zoo.store._calls import DatasetInput
from zoo.store._indexes import INDEXES, ensure_indexes, present_indexes
from zoo.store._open import KNOWN_REVISIONS, check_schema, schema_revision
from zoo.store._read import StoreTables, read_tables
from zoo.store._sql import HISTORY_KEYS
from zoo.store._states import STATES_ROUTE, ById, RunState, read_states
from zoo.store._tracker import (
    CONFIG_HASH_TAG,
    EXPERIMENT_KIND,
    EmptyStore,
    FinishedRun,
    Tracker,
)
from zoo.store._uri import (
    NETWORK_FILESYSTEMS,
    StoreMissing,
    backend,
    existing_store,
    metric_key,
    network_filesystem,
    refuse_network_sqlite,
    sqlite_path,
    store_uri,
    tracking_uri,
)

__all__ = [
    "CONFIG_HASH_TAG",
    "EXPERIMENT_KIND",
    "HISTORY_KEYS",
    "INDEXES",
    "KNOWN_REVISIONS",
    "NETWORK_FILESYSTEMS",
    "STATES_ROUTE",
    "ById",
    "DatasetInput",
    "EmptyStore",
    "FinishedRun",
    "Predictor",
    "RefusedInput",
    "RunState",
    "Store",
    "StoreError",
    "StoreMissing",
    "StoreTables",
    "Tracker",
    "backend",
    "check_schema",
    "ensure_indexes",
    "existing_store",
    "metric_key",
    "network_filesystem",
    "present_indexes",
    "read_states",
    "read_tables",
    "refuse_network_sqlite",
    "save_python_model",
    "schema_revision",
    "serve",
    "sqlite_path",
    "store_uri",
    "tensor_signature",
    "tracking_uri",
]


_MODEL_API = ("Predictor", "RefusedInput", "save_python_model", "serve", "tensor_signature")


def __getattr__(name: str) -> Any:
    """``StoreError``: the exception a store call raises when the store refuses it (a run,
    experiment or model version that does not exist, a bad request), loaded on first use;
    likewise MLflow's model flavour: ``serve``, ``save_python_model``, ``tensor_signature``."""
    if name == "StoreError":
        from mlflow.exceptions import MlflowException

        return MlflowException
    if name in _MODEL_API:  # MLflow's model flavour (zoo.store._pyfunc), on first use
        from zoo.store import _pyfunc

        return getattr(_pyfunc, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
