"""Tracking through MLflow's ``MlflowClient`` with explicit run ids (never the active run).

The store is ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``mlflow.db``
in the project root. A SQLite store is created (and migrated) once under a
file lock before anything logs: many processes opening a fresh ``mlflow.db`` at
once crash in MLflow's schema migration.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from zoo.paths import ProjectPaths

__all__ = ["CONFIG_HASH_TAG", "Tracker", "metric_key", "tracking_uri"]

CONFIG_HASH_TAG = "zoo.config_hash"
_PARAM_BATCH = 100  # MLflow's limit of params per log_batch
_MAX_TAG = 5000


def tracking_uri(uri: str | None, paths: ProjectPaths) -> str:
    """The store to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else the project's mlflow.db."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or paths.tracking_uri


def metric_key(*parts: str) -> str:
    """An MLflow metric or param key from parts joined by '/'.

    MLflow allows only alphanumerics, '_', '-', '.', ' ' and '/': '+' becomes 'p'
    (``df+10`` -> ``dfp10``) and any other character '_'.
    """
    return "/".join(re.sub(r"[^\w\-. ]", "_", p.replace("+", "p")) for p in parts)


def _initialise(uri: str, paths: ProjectPaths) -> None:
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:"):
        return
    with FileLock(str(paths.tracking_lock)):
        MlflowClient(uri).search_experiments(max_results=1)


class Tracker:
    """One tracking store; every call names its run explicitly."""

    def __init__(self, uri: str | None = None, paths: ProjectPaths | None = None):
        from mlflow.tracking import MlflowClient

        self.paths = paths or ProjectPaths.default()
        self.uri = tracking_uri(uri, self.paths)
        _initialise(self.uri, self.paths)
        self.client = MlflowClient(self.uri)

    def experiment(self, name: str, description: str | None = None) -> str:
        """The id of experiment ``name``, created if missing, tagged as a training experiment
        (``mlflow.experimentKind``, so the MLflow UI opens on its runs) with ``description``
        as its note when given."""
        from mlflow.exceptions import MlflowException

        tags = {"mlflow.experimentKind": "custom_model_development"}
        if description:
            tags["mlflow.note.content"] = description
        found = self.client.get_experiment_by_name(name)
        if found:
            for key, value in tags.items():
                if found.tags.get(key) != value:
                    self.client.set_experiment_tag(found.experiment_id, key, value)
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            location = (self.paths.artifacts / re.sub(r"[^\w.-]", "_", name)).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location, tags=tags)
        except MlflowException:  # created meanwhile by another process
            return self.experiment(name, description)

    def find(self, experiment_id: str, config_hash: str) -> Any | None:
        """The newest run of ``experiment_id`` tagged with ``config_hash``, or None."""
        runs = self.client.search_runs(
            [experiment_id],
            f"tags.`{CONFIG_HASH_TAG}` = '{config_hash}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def states(self, experiment_id: str) -> dict[str, tuple[str, str]]:
        """Identity tag -> (run id, status) of every run in the experiment (newest wins)."""
        found: dict[str, tuple[str, str]] = {}
        token = None
        while True:
            page = self.client.search_runs(
                [experiment_id],
                max_results=10000,
                page_token=token,
                order_by=["attributes.start_time ASC"],
            )
            for run in page:
                identity = run.data.tags.get(CONFIG_HASH_TAG)
                if identity:
                    found[identity] = (run.info.run_id, run.info.status)
            token = page.token
            if not token:
                return found

    def create(self, experiment_id: str, tags: dict[str, str]) -> str:
        """A new RUNNING run with ``tags``; returns its id."""
        return self.client.create_run(experiment_id, tags=tags).info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """``params`` under MLflow-safe keys (see metric_key), in batches of 100."""
        from mlflow.entities import Param

        items = [Param(metric_key(k), str(v)) for k, v in params.items()]
        for i in range(0, len(items), _PARAM_BATCH):
            self.client.log_batch(run_id, params=items[i : i + _PARAM_BATCH])

    def reopen(self, run_id: str) -> None:
        """Mark an interrupted or failed run RUNNING again, to continue into it."""
        self.client.update_run(run_id, status="RUNNING")

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """Steps already logged for metric ``key``."""
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """All ``metrics`` of one step in one batch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
        )

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:_MAX_TAG]) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def download(self, run_id: str, artifact: str, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, artifact, str(into)))

    def finish(self, run_id: str, error: BaseException | None = None) -> None:
        """End the run FINISHED, or FAILED with the error's type and message in ``zoo.error``."""
        if error is None:
            self.client.set_terminated(run_id, "FINISHED")
            return
        self.set_tags(run_id, {"zoo.error": f"{type(error).__name__}: {error}"})
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        self.client.set_terminated(run_id, status)
