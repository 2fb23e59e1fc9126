"""Opening a store: creating a fresh one safely, retrying transient failures, and
checking the schema revision that zoo's own SQL reads rely on."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

from zoo._disk import out_of_space
from zoo._signals import guarded
from zoo.errors import ConfigError
from zoo.store._template import copy_template
from zoo.store._uri import backend, sqlite_path

__all__ = ["KNOWN_REVISIONS", "check_schema", "create_store", "retrying", "schema_revision"]

# MLflow schema revisions (alembic_version) whose runs, experiments, tags, params, metrics
# and latest_metrics tables zoo's direct SQL reads (zoo.store._sql, _states, _indexes)
# were checked against: MLflow 3.17's head
KNOWN_REVISIONS = ("dc11669786a5",)
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
_checked: dict[str, str | None] = {}  # store URI -> its revision, once per process

T = TypeVar("T")


def _transient(error: BaseException) -> bool:
    """A failure worth retrying: a locked SQLite file, a lost database connection."""
    text = str(error).lower()
    return any(s in text for s in _TRANSIENT)


def retrying(call: Callable[[], T], within_s: float | None = None) -> T:
    """``call()``, retried with exponential backoff (0.1 s doubling to 10 s) while it fails
    transiently, for up to ``within_s`` (240 s by default); a stopping signal waits for
    each attempt to return (zoo._signals.guarded)."""
    deadline, pause = time.monotonic() + (_RETRY_S if within_s is None else within_s), 0.1
    while True:
        try:
            with guarded():
                return call()
        except Exception as error:
            if not _transient(error) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 10.0)


def create_store(uri: str) -> None:
    """Create and migrate the SQL store at ``uri`` if it is new (safe while other processes
    do the same), then check its schema revision; other backends are left alone."""
    kind = backend(uri)
    if kind == "sqlite":
        retrying(lambda: _create_sqlite(uri))
    elif kind == "postgresql":
        retrying(lambda: _create_postgresql(uri))
    else:
        return
    check_schema(uri)


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
            copy_template(path)  # or nothing: MLflow migrates the new file itself, below
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


def schema_revision(uri: str) -> str | None:
    """The MLflow schema revision (alembic_version) of the SQL store at ``uri``; None for a
    store MLflow has not initialised (or a SQLite file that does not exist: not created)."""
    import sqlite3

    if backend(uri) == "sqlite":
        path = sqlite_path(uri).absolute()
        if not path.is_file():
            return None
        connection = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True, timeout=60)
        try:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return None
            raise
        finally:
            connection.close()
        return row[0] if row else None
    import psycopg

    with psycopg.connect("postgresql://" + uri.split("://", 1)[1]) as connection:
        found = connection.execute("SELECT to_regclass('alembic_version')").fetchone()
        if found is None or found[0] is None:
            return None
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def check_schema(uri: str) -> str | None:
    """The schema revision of the SQL store at ``uri`` (None for other backends), read once
    per process; a revision not in KNOWN_REVISIONS is named in one line on stderr, and
    zoo's direct SQL reads go on (MLflow itself refuses a store it cannot use)."""
    if backend(uri) not in ("sqlite", "postgresql"):
        return None
    if _checked.get(uri) is None:  # a store not made yet is asked again next time
        revision = _checked[uri] = schema_revision(uri)
        if revision is not None and revision not in KNOWN_REVISIONS:
            print(
                f"zoo: tracking store {uri} is at MLflow schema revision {revision}, which zoo's "
                f"direct SQL reads were not checked against (known: {', '.join(KNOWN_REVISIONS)})",
                file=sys.stderr,
            )
    return _checked[uri]
