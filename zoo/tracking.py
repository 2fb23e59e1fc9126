"""The tracking store: one contract, three backends, all writes through ``MlflowClient``.

The store is ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``mlflow.db``
in the project root. Backends, chosen by the URI's scheme:

- ``sqlite:///PATH``: a file; for one machine (never on a network filesystem).
- ``postgresql://USER@HOST:PORT/DB``: a database (driver: psycopg 3).
- ``http://HOST:PORT``: an MLflow tracking server (``zoo server start``); the cluster path.

Promises every backend keeps (tested by one shared suite, tests/test_store.py):

- Any number of processes, with any project roots, may create the same fresh store
  and experiment at once and log to it concurrently; all succeed.
- A run is found by its identity (the ``zoo.config_hash`` tag).
- Reads return exactly what was written: params, tags and every metric history point.
- ``import_runs`` is idempotent: runs whose identity is already in the experiment are skipped.
- A write that fails for a transient reason (a server restarting, a locked SQLite file)
  is retried with backoff for several minutes before it raises.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from zoo._disk import out_of_space
from zoo._signals import guarded
from zoo.errors import ConfigError
from zoo.paths import ProjectPaths

__all__ = [
    "CONFIG_HASH_TAG",
    "EXPERIMENT_KIND",
    "NETWORK_FILESYSTEMS",
    "EmptyStore",
    "FinishedRun",
    "StoreMissing",
    "Tracker",
    "backend",
    "existing_store",
    "metric_key",
    "network_filesystem",
    "refuse_network_sqlite",
    "sqlite_path",
    "store_uri",
    "tracking_uri",
]

CONFIG_HASH_TAG = "zoo.config_hash"
ERROR_TAG = "zoo.error"
# MLflow 3's UI opens experiments of this kind in its training-runs view
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
_NOTE_TAG = "mlflow.note.content"
_PARAM_BATCH = 100  # MLflow's limit of params per log_batch
_METRIC_BATCH = 1000  # MLflow's limit of metrics per log_batch
_MAX_TAG = 5000
_RETRY_S = 240.0  # how long a write keeps retrying a transient failure
_TRANSIENT = (  # failures worth retrying, as their messages read
    "database is locked",
    "could not connect",
    "server closed",
    "connection refused",
    "connection aborted",
    "connection reset",
    "connection broken",
    "timed out",
    "max retries exceeded",
    "bad gateway",
    "service unavailable",
    "queuepool limit",  # a tracking server's database connections all busy
)
_PG_LOCK = 0x7A6F6F  # advisory lock id ("zoo") held while a PostgreSQL store is created

NETWORK_FILESYSTEMS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "fuse")

T = TypeVar("T")


class StoreMissing(ConfigError):
    """A read-only command was pointed at a store that does not exist."""


@dataclass
class FinishedRun:
    """One finished run to import: tags (with its identity), params, summary metrics
    (step 0) and per-epoch histories (key -> values at steps 1..n)."""

    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    histories: dict[str, list[float]] = field(default_factory=dict)


def tracking_uri(uri: str | None, paths: ProjectPaths) -> str:
    """The store to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else the project's mlflow.db."""
    return store_uri(uri or os.environ.get("MLFLOW_TRACKING_URI") or paths.tracking_uri)


def existing_store(uri: str | None, paths: ProjectPaths | None = None) -> str:
    """The store a read-only command uses (see tracking_uri), not opened here: a missing
    SQLite file raises StoreMissing (other backends fail at their first read)."""
    uri = tracking_uri(uri, paths or ProjectPaths.default())
    if backend(uri) == "sqlite" and not sqlite_path(uri).exists():
        raise StoreMissing(
            f"tracking store {sqlite_path(uri)} does not exist "
            "(nothing was logged there yet; check --tracking-uri or $MLFLOW_TRACKING_URI)"
        )
    return uri


def store_uri(uri: str) -> str:
    """``uri`` with PostgreSQL's driver named (psycopg 3; SQLAlchemy's default is psycopg2)."""
    if uri.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + uri.split("://", 1)[1]
    return uri


def backend(uri: str) -> str:
    """The backend of ``uri``: sqlite, postgresql, http (a tracking server) or other."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme == "https":
        return "http"
    return scheme if scheme in ("sqlite", "postgresql", "http") else "other"


def sqlite_path(uri: str) -> Path:
    """The database file of a ``sqlite:///`` URI."""
    return Path(uri.split("://", 1)[1][1:].split("?", 1)[0])


def metric_key(*parts: str) -> str:
    """An MLflow metric or param key from parts joined by '/'.

    MLflow allows only alphanumerics, '_', '-', '.', ' ' and '/': '+' becomes 'p'
    (``df+10`` -> ``dfp10``) and any other character '_'.
    """
    return "/".join(re.sub(r"[^\w\-. ]", "_", p.replace("+", "p")) for p in parts)


def network_filesystem(path: Path, mounts: str | None = None) -> str | None:
    """The type of the network filesystem ``path`` lives on (from the mount table,
    ``/proc/self/mounts`` unless ``mounts`` is given), or None on a local one."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    path = Path(os.path.abspath(path))
    best, kind = "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == Path(point) or Path(point) in path.parents
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    network = kind.split(".", 1)[0] in NETWORK_FILESYSTEMS or kind.startswith("fuse")
    return kind if network else None


def refuse_network_sqlite(uri: str, mounts: str | None = None) -> None:
    """Raise ConfigError when ``uri`` is a SQLite store on a network filesystem, where
    SQLite's file locking is unreliable and many writers corrupt or lock the store."""
    if backend(uri) != "sqlite":
        return
    kind = network_filesystem(sqlite_path(uri), mounts)
    if kind:
        raise ConfigError(
            f"--tracking-uri {uri}: SQLite on a network filesystem ({kind}) is unsafe for "
            "many writers; run `zoo server start --host 0.0.0.0` on a login node, then submit "
            "with --tracking-uri http://HOST:PORT (or pass --allow-network-sqlite)"
        )


def _transient(error: BaseException) -> bool:
    """A failure worth retrying: a locked SQLite file, a lost database connection."""
    text = str(error).lower()
    return any(s in text for s in _TRANSIENT)


def _retrying(call: Callable[[], T], within_s: float = _RETRY_S) -> T:
    """``call()``, retried with exponential backoff (0.1 s doubling to 10 s) while it fails
    transiently, for up to ``within_s``; a stopping signal waits for each attempt to
    return (zoo._signals.guarded)."""
    deadline, pause = time.monotonic() + within_s, 0.1
    while True:
        try:
            with guarded():
                return call()
        except Exception as error:
            if not _transient(error) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 10.0)


def _on_sqlite_connect(connection: Any, _record: Any) -> None:
    """Every SQLite connection in this process waits up to 60 s for the write lock and,
    in write-ahead-log mode, syncs at checkpoints rather than at every commit (a crash
    of the machine may lose the last commits, never corrupt the store)."""
    import sqlite3

    if isinstance(connection, sqlite3.Connection):
        connection.execute("PRAGMA busy_timeout = 60000")
        connection.execute("PRAGMA synchronous = NORMAL")


def _create_sqlite(uri: str) -> None:
    """Create and migrate a SQLite store under a lock beside its file, so processes with
    any project roots may open a fresh store at once. A new store uses write-ahead
    logging: readers do not block writers and a commit costs one sync, not three."""
    import sqlite3

    import sqlalchemy
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    if not sqlalchemy.event.contains(sqlalchemy.engine.Engine, "connect", _on_sqlite_connect):
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", _on_sqlite_connect)
    path = sqlite_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    _refuse_read_only(uri, path)
    with FileLock(f"{path}.lock"):
        if not path.exists():
            with closing(sqlite3.connect(path)) as connection:
                connection.execute("PRAGMA journal_mode=WAL")
        _refuse_non_sqlite(uri, path)
        MlflowClient(uri).search_experiments(max_results=1)


def _refuse_read_only(uri: str, path: Path) -> None:
    """Raise ConfigError when this process may not write the store file or, since SQLite
    creates its journal beside the file, the folder holding it."""
    for target in (path, path.parent):
        if target.exists() and not os.access(target, os.W_OK):
            raise ConfigError(
                f"tracking store {uri}: cannot be used ({target} is not writable by this user)"
            )


def _refuse_non_sqlite(uri: str, path: Path) -> None:
    """Raise ConfigError when ``path`` exists but is not a SQLite database (before MLflow
    logs its own multi-line warnings about it)."""
    import sqlite3

    # through SQLite itself: a plain open() and close() of the file would drop the POSIX
    # locks this process's SQLite connections hold on it
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            connection.execute("PRAGMA schema_version")
    except sqlite3.DatabaseError as error:
        full = out_of_space(error, uri, path.parent)  # a full disk reads as "disk I/O error"
        if full is not None:
            raise full from error
        raise ConfigError(f"tracking store {uri}: cannot be used ({path}: {error})") from None


def _create_postgresql(uri: str) -> None:
    """Create and migrate a PostgreSQL store under an advisory lock."""
    import psycopg
    from mlflow.tracking import MlflowClient

    plain = "postgresql://" + uri.split("://", 1)[1]
    with psycopg.connect(plain, autocommit=True) as connection:
        connection.execute("SELECT pg_advisory_lock(%s)", (_PG_LOCK,))
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        finally:
            connection.execute("SELECT pg_advisory_unlock(%s)", (_PG_LOCK,))


class EmptyStore:
    """The read side of a store that does not exist yet: no experiments, no runs."""

    read_only = True
    client = None

    def __init__(self, uri: str | None = None, paths: ProjectPaths | None = None):
        self.paths = paths or ProjectPaths.default()
        self.uri = tracking_uri(uri, self.paths)

    def experiment(self, name: str, description: str | None = None) -> None:
        return None

    def find(self, experiment_id: str | None, config_hash: str) -> None:
        return None

    def states(self, experiment_id: str | None) -> dict[str, tuple[str, str]]:
        return {}


class Tracker:
    """One tracking store; every call names its run explicitly (see the module's promises).

    ``create=False`` opens an existing store read-only: it never creates the store (a
    missing SQLite file raises :class:`StoreMissing`) nor an experiment.
    """

    def __init__(
        self, uri: str | None = None, paths: ProjectPaths | None = None, create: bool = True
    ):
        import logging

        from mlflow.tracking import MlflowClient

        # MLflow logs each database error's traceback before raising it; zoo reports it once
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        self.paths = paths or ProjectPaths.default()
        self.uri = tracking_uri(uri, self.paths)
        self.read_only = not create
        kind = backend(self.uri)
        if not create:
            existing_store(self.uri, self.paths)
        if kind == "sqlite":
            _retrying(lambda: _create_sqlite(self.uri))
        elif kind == "postgresql":
            _retrying(lambda: _create_postgresql(self.uri))
        elif kind == "http":  # a short retry in MLflow's client, then zoo's (capped at 10 s)
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # per run
        self.client = MlflowClient(self.uri)
        # what this process learnt once and relies on: experiment ids by name (an id
        # never changes), experiments whose tags it set, runs' artifact locations, and
        # the runs it reopened (only those may carry an earlier attempt's error tag)
        self._experiment_ids: dict[str, str] = {}
        self._tagged: set[tuple[str, str | None]] = set()
        self._artifact_uris: dict[str, str] = {}
        self._reopened: set[str] = set()

    def experiment_id(self, name: str) -> str | None:
        """The id of experiment ``name``, or None; never creates it."""
        if name not in self._experiment_ids:
            found = _retrying(lambda: self.client.get_experiment_by_name(name))
            if found is None:
                return None
            self._experiment_ids[name] = found.experiment_id
        return self._experiment_ids[name]

    def artifact_uri(self, run_id: str) -> str:
        """Where run ``run_id`` keeps its artifacts."""
        if run_id not in self._artifact_uris:
            run = _retrying(lambda: self.client.get_run(run_id))
            self._artifact_uris[run_id] = run.info.artifact_uri
        return self._artifact_uris[run_id]

    def experiment(self, name: str, description: str | None = None) -> str | None:
        """The id of experiment ``name``, created if missing (read-only: None if missing).

        Its tags open MLflow 3's training-runs view and hold ``description`` as its note.
        """
        if (name, description) in self._tagged:
            return self._experiment_ids[name]
        found = _retrying(lambda: self.client.get_experiment_by_name(name))
        if found is None and self.read_only:
            return None
        experiment_id = found.experiment_id if found else self._create_experiment(name)
        if not self.read_only:
            tags = dict([EXPERIMENT_KIND])
            if description is not None:
                tags[_NOTE_TAG] = description
            current = found.tags if found else dict([EXPERIMENT_KIND])
            for key, value in tags.items():
                if current.get(key) != value:
                    _retrying(
                        lambda k=key, v=value: self.client.set_experiment_tag(experiment_id, k, v)
                    )
            self._experiment_ids[name] = experiment_id
            self._tagged.add((name, description))
        return experiment_id

    def _create_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        location = None
        if backend(self.uri) in ("sqlite", "postgresql"):
            location = (self.paths.artifacts / re.sub(r"[^\w.-]", "_", name)).as_uri()
        try:
            return _retrying(
                lambda: self.client.create_experiment(
                    name, artifact_location=location, tags=dict([EXPERIMENT_KIND])
                )
            )
        except MlflowException:  # created meanwhile by another process
            return self.client.get_experiment_by_name(name).experiment_id

    def find(self, experiment_id: str | None, config_hash: str) -> Any | None:
        """The newest run of ``experiment_id`` tagged with ``config_hash``, or None."""
        if experiment_id is None:
            return None
        runs = _retrying(
            lambda: self.client.search_runs(
                [experiment_id],
                f"tags.`{CONFIG_HASH_TAG}` = '{config_hash}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
        )
        return runs[0] if runs else None

    def states(self, experiment_id: str | None) -> dict[str, tuple[str, str]]:
        """Identity tag -> (run id, status) of every run in the experiment (newest wins);
        read without params or metrics where the store allows (zoo._states)."""
        from zoo._states import ById, read_states

        if experiment_id is None:
            return {}
        quick = _retrying(lambda: read_states(self.uri, ById(experiment_id)))
        if quick is not None:
            return {k: (s.run_id, s.status) for k, s in quick.items()}
        found: dict[str, tuple[str, str]] = {}
        token = None
        while True:
            page = _retrying(
                lambda t=token: self.client.search_runs(
                    [experiment_id],
                    max_results=10000,
                    page_token=t,
                    order_by=["attributes.start_time ASC"],
                )
            )
            for run in page:
                identity = run.data.tags.get(CONFIG_HASH_TAG)
                if identity:
                    found[identity] = (run.info.run_id, run.info.status)
            token = page.token
            if not token:
                break
        return found

    def create(self, experiment_id: str, tags: dict[str, str]) -> str:
        """A new RUNNING run with ``tags``; returns its id."""
        info = _retrying(lambda: self.client.create_run(experiment_id, tags=tags)).info
        self._artifact_uris[info.run_id] = info.artifact_uri
        return info.run_id

    def _batch(self, run_id: str, **items: list) -> None:
        _retrying(lambda: self.client.log_batch(run_id, **items))

    def log_batch(
        self,
        run_id: str,
        params: dict[str, Any] | None = None,
        metrics: Iterable[tuple[int, dict[str, float]]] = (),
        timestamp: int | None = None,
    ) -> None:
        """``params`` (under MLflow-safe keys, see metric_key) and the metrics of several
        steps, as (step, {key: value}), in as few round trips as MLflow's batch limits
        allow (100 params, 1000 values per call). A step's values travel in one call
        (split only when they alone exceed the limit), so a step is logged whole or not.
        Every metric carries ``timestamp`` (ms; now by default): a batch sent again with
        the same timestamp adds no row twice, as MLflow skips a metric equal in key, step,
        timestamp and value."""
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000) if timestamp is None else timestamp
        named = [Param(metric_key(k), str(v)) for k, v in (params or {}).items()]
        rows = [[Metric(k, float(v), now, step) for k, v in row.items()] for step, row in metrics]
        rows = [row for row in rows if row]
        while named or rows:
            chunk, named, values = named[:_PARAM_BATCH], named[_PARAM_BATCH:], []
            while rows and len(chunk) + len(values) + len(rows[0]) <= _METRIC_BATCH:
                values += rows.pop(0)
            if not chunk and not values:  # one step above the limit
                values, rows[0] = rows[0][:_METRIC_BATCH], rows[0][_METRIC_BATCH:]
                rows = [row for row in rows if row]
            self._batch(run_id, params=chunk, metrics=values)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """``params`` under MLflow-safe keys (see metric_key), in batches of 100."""
        self.log_batch(run_id, params)

    def reopen(self, run_id: str) -> None:
        """Mark an interrupted or failed run RUNNING again, to continue into it."""
        _retrying(lambda: self.client.update_run(run_id, status="RUNNING"))
        self._reopened.add(run_id)

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """Steps already logged for metric ``key``."""
        return {m.step for m in _retrying(lambda: self.client.get_metric_history(run_id, key))}

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """All ``metrics`` of one step in one batch."""
        self.log_batch(run_id, metrics=[(step, metrics)])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._batch(run_id, tags=[RunTag(k, str(v)[:_MAX_TAG]) for k, v in tags.items()])

    def local_artifacts(self, run_id: str) -> Path | None:
        """Run ``run_id``'s artifact folder when it is on this machine's filesystem (the
        embedded store, any ``file:`` artifact location), else None."""
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        uri = self.artifact_uri(run_id)
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            return Path(url2pathname(parsed.path))
        if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
            return Path(uri)
        return None

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        """``path`` as artifact ``folder/<name>`` (``folder``: a relative path zoo names):
        in a local artifact folder, copied beside its target and renamed over it (a
        reader sees the old file or the new one; a hard link there is replaced, not
        written through), without MLflow's look-up of the run; else uploaded through
        MLflow."""
        root = self.local_artifacts(run_id)
        if root is None:
            _retrying(lambda: self.client.log_artifact(run_id, str(path), folder))
            return
        target = root / (folder or "") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
        shutil.copyfile(path, partial)
        os.replace(partial, target)

    def download(self, run_id: str, artifact: str, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, artifact, str(into)))

    def finish(self, run_id: str, error: BaseException | None = None) -> None:
        """End the run FINISHED (clearing a ``zoo.error`` left by an earlier attempt), or
        FAILED with the error's type and message in ``zoo.error``."""
        if error is None:
            reopened = run_id in self._reopened
            run = _retrying(lambda: self.client.get_run(run_id)) if reopened else None
            if run is not None and ERROR_TAG in run.data.tags:
                _retrying(lambda: self.client.delete_tag(run_id, ERROR_TAG))
            _retrying(lambda: self.client.set_terminated(run_id, "FINISHED"))
            return
        self.set_tags(run_id, {ERROR_TAG: f"{type(error).__name__}: {error}"})
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        _retrying(lambda: self.client.set_terminated(run_id, status))

    def kill(self, run_id: str) -> None:
        """End the run KILLED on purpose (a pruned trial), with no error tag."""
        _retrying(lambda: self.client.set_terminated(run_id, "KILLED"))

    def import_runs(self, experiment_id: str, runs: Iterable[FinishedRun]) -> int:
        """Log ``runs`` as FINISHED runs through batched logging, skipping identities
        already in the experiment; returns how many were added. A SQLite store takes one
        writer at a time; other backends take eight at once."""
        from concurrent.futures import ThreadPoolExecutor

        present = self.states(experiment_id)
        todo = [r for r in runs if r.tags.get(CONFIG_HASH_TAG) not in present]
        workers = 1 if backend(self.uri) == "sqlite" else 8
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda run: self._import_one(experiment_id, run), todo))
        return len(todo)

    def _import_one(self, experiment_id: str, run: FinishedRun) -> None:
        from mlflow.entities import Param

        run_id = self.create(experiment_id, {k: str(v)[:_MAX_TAG] for k, v in run.tags.items()})
        now = int(time.time() * 1000)
        metrics = [_metric(k, v, 0, now) for k, v in run.metrics.items()]
        for key, values in run.histories.items():
            metrics += [_metric(key, v, step, now) for step, v in enumerate(values, start=1)]
        params = [Param(k, str(v)) for k, v in run.params.items()]
        while metrics or params:
            self._batch(run_id, metrics=metrics[:_METRIC_BATCH], params=params[:_PARAM_BATCH])
            metrics, params = metrics[_METRIC_BATCH:], params[_PARAM_BATCH:]
        _retrying(lambda: self.client.set_terminated(run_id, "FINISHED"))


def _metric(key: str, value: float, step: int, now: int) -> Any:
    from mlflow.entities import Metric

    return Metric(key, float(value), now, step)
