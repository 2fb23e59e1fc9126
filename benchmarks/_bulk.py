"""A test and benchmark fixture: finished runs written straight into an MLflow SQL
store's schema (the pinned MLflow version's, created by MLflow itself).

zoo itself writes only through ``MlflowClient`` (``Tracker.import_runs``); this
fills a store with thousands of runs in a second or two, to test and time readers.
Not part of zoo: tests import it as ``benchmarks._bulk``, benchmarks as ``_bulk``.
"""

from __future__ import annotations

import time
import uuid

from zoo.store import FinishedRun as BulkRun

__all__ = ["BulkRun", "bulk_insert"]

TABLES = ("runs", "tags", "params", "metrics", "latest_metrics")


def bulk_insert(uri: str, experiment: str, runs: list[BulkRun], chunk: int = 2000) -> list[str]:
    """Insert ``runs`` as FINISHED runs of ``experiment`` (created if missing); returns ids."""
    import sqlalchemy
    from mlflow.tracking import MlflowClient

    from zoo.paths import ProjectPaths
    from zoo.store import Tracker

    tracker = Tracker(uri, ProjectPaths.default())
    experiment_id = int(tracker.experiment(experiment))
    artifact_root = MlflowClient(tracker.uri).get_experiment(str(experiment_id)).artifact_location
    engine = sqlalchemy.create_engine(tracker.uri)
    meta = sqlalchemy.MetaData()
    meta.reflect(engine, only=list(TABLES))
    now = int(time.time() * 1000)
    ids = [uuid.uuid4().hex for _ in runs]
    rows: dict[str, list[dict]] = {name: [] for name in TABLES}
    for run_id, run in zip(ids, runs, strict=True):
        run_row = _run_row(run_id, run, experiment_id, f"{artifact_root}/{run_id}/artifacts", now)
        for name, table_rows in _run_rows(run_id, run, run_row, now).items():
            rows[name] += table_rows
    with engine.begin() as connection:
        for name, table_rows in rows.items():
            for start in range(0, len(table_rows), chunk):
                connection.execute(meta.tables[name].insert(), table_rows[start : start + chunk])
    engine.dispose()
    return ids


def _run_row(run_id: str, run: BulkRun, experiment_id: int, artifact_uri: str, now: int) -> dict:
    return {
        "run_uuid": run_id,
        "name": run.tags.get("mlflow.runName", run_id[:8]),
        "source_type": "LOCAL",
        "source_name": "",
        "entry_point_name": "",
        "user_id": "zoo",
        "status": "FINISHED",
        "start_time": now,
        "end_time": now,
        "source_version": "",
        "lifecycle_stage": "active",
        "artifact_uri": artifact_uri,
        "experiment_id": experiment_id,
        "deleted_time": None,
    }


def _run_rows(run_id: str, run: BulkRun, run_row: dict, now: int) -> dict[str, list[dict]]:
    """Every table's rows for one run."""
    rows: dict[str, list[dict]] = {"runs": [run_row], "metrics": []}
    rows["tags"] = [{"key": k, "value": str(v), "run_uuid": run_id} for k, v in run.tags.items()]
    rows["params"] = [
        {"key": k, "value": str(v), "run_uuid": run_id} for k, v in run.params.items()
    ]
    latest: dict[str, tuple[float, int]] = {}
    for key, value in run.metrics.items():
        rows["metrics"].append(_metric(run_id, key, value, 0, now))
        latest[key] = (value, 0)
    for key, values in run.histories.items():
        for step, value in enumerate(values, start=1):
            rows["metrics"].append(_metric(run_id, key, value, step, now))
        latest[key] = (values[-1], len(values))
    rows["latest_metrics"] = [
        _metric(run_id, key, value, step, now) for key, (value, step) in latest.items()
    ]
    return rows


def _metric(run_id: str, key: str, value: float, step: int, now: int) -> dict:
    nan = value != value
    return {
        "key": key,
        "value": 0.0 if nan else float(value),
        "timestamp": now,
        "run_uuid": run_id,
        "step": step,
        "is_nan": nan,
    }
