"""A new SQLite store starts as a copy of an empty, migrated one.

MLflow makes a new SQL store by running its ~50 schema migrations, which costs 2-3 s of
CPU each time: on every new project, and on every test's fresh store. zoo runs them
once per MLflow and SQLAlchemy version into a template kept in the user's cache
(``$XDG_CACHE_HOME/zoo``, default ``~/.cache/zoo``) and copies it. The template holds
MLflow's tables and its schema revision and no rows: MLflow itself adds the Default
experiment, with this store's artifact location, when the copy is first opened.
Whatever goes wrong with the template (no home, a cache that cannot be written, a
failed migration), the new store is migrated in place instead, as before.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

__all__ = ["copy_template"]


def copy_template(path: Path) -> None:
    """Write an empty, migrated SQLite store in write-ahead-log mode at the new ``path``
    when a template can be had and copied; else write nothing."""
    template = _template()
    if template is None:
        return
    partial = path.with_name(f".{path.name}.partial")
    try:
        shutil.copyfile(template, partial)
        with closing(sqlite3.connect(partial)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
        os.replace(partial, path)
    except (OSError, sqlite3.Error):  # a full disk, say: the migration in place names it
        partial.unlink(missing_ok=True)


def _template() -> Path | None:
    """The cached template for this MLflow and SQLAlchemy, made under a lock if missing;
    None when it cannot be had."""
    import mlflow
    import sqlalchemy
    from filelock import FileLock

    try:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zoo"
        template = cache / f"mlflow-{mlflow.__version__}-sqlalchemy-{sqlalchemy.__version__}.db"
        if not template.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{template}.lock"):
                if not template.exists():
                    _make(template)
    except Exception:  # no home, a full or read-only cache, a failed migration
        return None
    return template


def _make(template: Path) -> None:
    """Migrate an empty database to MLflow's head revision beside ``template``, then
    move it into place (a reader never sees a half-made template)."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    partial = template.with_name(f".{template.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    engine = sqlalchemy.create_engine(f"sqlite:///{partial}")
    try:
        _initialize_tables(engine)
        engine.dispose()
        os.replace(partial, template)
    finally:
        engine.dispose()
        partial.unlink(missing_ok=True)
