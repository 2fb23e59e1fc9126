"""Indexes zoo adds to MLflow's SQL schema where zoo's reads at sweep scale need them.

MLflow indexes metrics, params, tags and latest metrics by run, but not runs by
experiment: every "runs of this experiment" query (the UI's runs page, ``zoo sweep
status``, resubmission, ``zoo analyze``) scans the runs of every experiment in the
store and sorts them. ``ensure_indexes`` creates what INDEXES lists and the store
lacks (``CREATE INDEX IF NOT EXISTS``: idempotent, safe while others write);
``present_indexes`` says which exist. Both take a SQLAlchemy URI of a SQLite or
PostgreSQL store that MLflow has created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["INDEXES", "ensure_indexes", "present_indexes"]

INDEXES = {"zoo_runs_experiment_start": "runs (experiment_id, lifecycle_stage, start_time)"}


def _engine(uri: str) -> Any:
    import sqlalchemy

    return sqlalchemy.create_engine(uri)


def ensure_indexes(uri: str) -> list[str]:
    """Create the INDEXES the store at ``uri`` lacks; their names."""
    import sqlalchemy

    missing = [name for name, there in present_indexes(uri).items() if not there]
    engine = _engine(uri)
    try:
        with engine.begin() as connection:
            for name in missing:
                connection.execute(
                    sqlalchemy.text(f"CREATE INDEX IF NOT EXISTS {name} ON {INDEXES[name]}")
                )
    finally:
        engine.dispose()
    return missing


def present_indexes(uri: str) -> dict[str, bool]:
    """Index name -> whether the store at ``uri`` has it, for each of INDEXES (all False
    for a SQLite file that does not exist: it is not created)."""
    import sqlalchemy

    if uri.startswith("sqlite:") and not Path(uri.split("://", 1)[1][1:]).exists():
        return dict.fromkeys(INDEXES, False)
    engine = _engine(uri)
    try:
        inspector = sqlalchemy.inspect(engine)
        names = {
            index["name"]
            for table in {on.split(" ", 1)[0] for on in INDEXES.values()}
            for index in inspector.get_indexes(table)
        }
    finally:
        engine.dispose()
    return {name: name in names for name in INDEXES}
