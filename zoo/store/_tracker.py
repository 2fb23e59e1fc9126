"""The store's one implementation over MLflow: ``Tracker`` (every backend) and
``EmptyStore`` (the read side of a store not made yet). See zoo.store for the promises."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.paths import ProjectPaths
from zoo.store._calls import MlflowCalls
from zoo.store._open import create_store, retrying
from zoo.store._uri import backend, existing_store, metric_key, tracking_uri

__all__ = ["CONFIG_HASH_TAG", "EXPERIMENT_KIND", "EmptyStore", "FinishedRun"]
__all__ += ["Tracker"]

CONFIG_HASH_TAG = "zoo.config_hash"
ERROR_TAG = "zoo.error"
# MLflow 3's UI opens experiments of this kind in its training-runs view
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
_NOTE_TAG = "mlflow.note.content"
_PARAM_BATCH = 100  # MLflow's limit of params per log_batch
_METRIC_BATCH = 1000  # MLflow's limit of metrics per log_batch
_MAX_TAG = 5000


@dataclass
class FinishedRun:
    """One finished run to import: tags (with its identity), params, summary metrics
    (step 0) and per-epoch histories (key -> values at steps 1..n)."""

    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    histories: dict[str, list[float]] = field(default_factory=dict)


class EmptyStore:
    """The read side of a store that does not exist yet: no experiments, no runs."""

    read_only = True

    def __init__(self, uri: str | None, paths: ProjectPaths):
        self.paths = paths
        self.uri = tracking_uri(uri, self.paths)

    def experiment(self, name: str, description: str | None = None) -> None:
        return None

    def find(self, experiment_id: str | None, config_hash: str) -> None:
        return None

    def states(self, experiment_id: str | None) -> dict[str, tuple[str, str]]:
        return {}

    def tables(self, experiment: str, **options: Any) -> None:
        return None


class Tracker(MlflowCalls):
    """One tracking store (zoo.store's write and read side over MLflow): every call names
    its run explicitly and is retried while it fails transiently, a stopping signal
    waiting for it to return (zoo.store._open.retrying); MLflow's plain reads and writes
    come from MlflowCalls.

    ``create=False`` opens an existing store read-only: it never creates the store (a
    missing SQLite file raises :class:`StoreMissing`) nor an experiment. ``paths`` is the
    project (its mlflow.db the default store, its .zoo/artifacts new experiments'
    artifacts); without it, for Python callers, the project under ``$ZOO_ROOT`` or the
    current directory (ProjectPaths.default), asked only when one of those is needed.
    """

    def __init__(
        self, uri: str | None = None, paths: ProjectPaths | None = None, create: bool = True
    ):
        import logging

        from mlflow.tracking import MlflowClient

        # MLflow logs each database error's traceback before raising it; zoo reports it once
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        self._paths = paths
        named = uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = tracking_uri(named, None if named else self.paths)
        self.read_only = not create
        if not create:
            existing_store(self.uri, None)
        create_store(self.uri)
        if backend(self.uri) == "http":  # a short retry in MLflow's client, then zoo's
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # per run
        self._client = MlflowClient(self.uri)
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
            found = retrying(lambda: self._client.get_experiment_by_name(name))
            if found is None:
                return None
            self._experiment_ids[name] = found.experiment_id
        return self._experiment_ids[name]

    def artifact_uri(self, run_id: str) -> str:
        """Where run ``run_id`` keeps its artifacts."""
        if run_id not in self._artifact_uris:
            self._artifact_uris[run_id] = self.get_run(run_id).info.artifact_uri
        return self._artifact_uris[run_id]

    def experiment(self, name: str, description: str | None = None) -> str | None:
        """The id of experiment ``name``, created if missing (read-only: None if missing).

        Its tags open MLflow 3's training-runs view and hold ``description`` as its note.
        """
        if (name, description) in self._tagged:
            return self._experiment_ids[name]
        found = retrying(lambda: self._client.get_experiment_by_name(name))
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
                    self.set_experiment_tag(experiment_id, key, value)
            self._experiment_ids[name] = experiment_id
            self._tagged.add((name, description))
        return experiment_id

    @property
    def paths(self) -> ProjectPaths:
        """The project (given, else, for Python callers, ProjectPaths.default(): asked
        only when needed, for the default store or a new experiment's artifacts)."""
        if self._paths is None:
            self._paths = ProjectPaths.default()
        return self._paths

    def _create_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        location = None
        if backend(self.uri) in ("sqlite", "postgresql"):
            location = (self.paths.artifacts / re.sub(r"[^\w.-]", "_", name)).as_uri()
        try:
            return retrying(
                lambda: self._client.create_experiment(
                    name, artifact_location=location, tags=dict([EXPERIMENT_KIND])
                )
            )
        except MlflowException:  # created meanwhile by another process
            return self._client.get_experiment_by_name(name).experiment_id

    def find(self, experiment_id: str | None, config_hash: str) -> Any | None:
        """The newest run of ``experiment_id`` tagged with ``config_hash``, or None."""
        if experiment_id is None:
            return None
        runs = self.search_runs(
            [experiment_id],
            f"tags.`{CONFIG_HASH_TAG}` = '{config_hash}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def states(self, experiment_id: str | None) -> dict[str, tuple[str, str]]:
        """Identity tag -> (run id, status) of every run in the experiment (newest wins);
        read without params or metrics where the store allows (zoo.store._states)."""
        from zoo.store._states import ById, read_states

        if experiment_id is None:
            return {}
        quick = retrying(lambda: read_states(self.uri, ById(experiment_id)))
        if quick is not None:
            return {k: (s.run_id, s.status) for k, s in quick.items()}
        found: dict[str, tuple[str, str]] = {}
        token = None
        while True:
            page = self.search_runs(
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
                break
        return found

    def tables(self, experiment: str, **options: Any) -> Any:
        """Experiment ``experiment``'s runs in bulk (zoo.store.read_tables; None if there is
        no such experiment)."""
        from zoo.store._read import read_tables

        return read_tables(self.uri, experiment, **options)

    def create(self, experiment_id: str, tags: dict[str, str]) -> str:
        """A new RUNNING run with ``tags``; returns its id."""
        info = retrying(lambda: self._client.create_run(experiment_id, tags=tags)).info
        self._artifact_uris[info.run_id] = info.artifact_uri
        return info.run_id

    def _batch(self, run_id: str, **items: list) -> None:
        retrying(lambda: self._client.log_batch(run_id, **items))

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
        retrying(lambda: self._client.update_run(run_id, status="RUNNING"))
        self._reopened.add(run_id)

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """Steps already logged for metric ``key``."""
        return {m.step for m in self.get_metric_history(run_id, key)}

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """All ``metrics`` of one step in one batch."""
        self.log_batch(run_id, metrics=[(step, metrics)])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """``tags`` on the run in one batch, each value cut to MLflow's 5000 characters."""
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
            retrying(lambda: self._client.log_artifact(run_id, str(path), folder))
            return
        target = root / (folder or "") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
        shutil.copyfile(path, partial)
        os.replace(partial, target)

    def download(self, run_id: str, artifact: str, into: Path) -> Path:
        """Artifact ``artifact`` of the run copied under ``into``; its local path."""
        into.mkdir(parents=True, exist_ok=True)
        return Path(self._client.download_artifacts(run_id, artifact, str(into)))

    def finish(self, run_id: str, error: BaseException | None = None) -> None:
        """End the run FINISHED (clearing a ``zoo.error`` left by an earlier attempt), or
        FAILED with the error's type and message in ``zoo.error``."""
        if error is None:
            run = self.get_run(run_id) if run_id in self._reopened else None
            if run is not None and ERROR_TAG in run.data.tags:
                self.delete_tag(run_id, ERROR_TAG)
            self._terminate(run_id, "FINISHED")
            return
        self.set_tags(run_id, {ERROR_TAG: f"{type(error).__name__}: {error}"})
        self._terminate(run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    def kill(self, run_id: str) -> None:
        """End the run KILLED on purpose (a pruned trial), with no error tag."""
        self._terminate(run_id, "KILLED")

    def _terminate(self, run_id: str, status: str) -> None:
        retrying(lambda: self._client.set_terminated(run_id, status))

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
        from mlflow.entities import Metric, Param

        run_id = self.create(experiment_id, {k: str(v)[:_MAX_TAG] for k, v in run.tags.items()})
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in run.metrics.items()]
        for key, values in run.histories.items():
            metrics += [Metric(key, float(v), now, step) for step, v in enumerate(values, start=1)]
        params = [Param(k, str(v)) for k, v in run.params.items()]
        while metrics or params:
            self._batch(run_id, metrics=metrics[:_METRIC_BATCH], params=params[:_PARAM_BATCH])
            metrics, params = metrics[_METRIC_BATCH:], params[_PARAM_BATCH:]
        self._terminate(run_id, "FINISHED")
