"""The plain MLflow calls the store offers beside zoo's own (``Tracker`` inherits them):
each names its run or experiment explicitly and is retried like every store call."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from zoo.store._open import retrying

__all__ = ["DatasetInput", "MlflowCalls"]


class DatasetInput(NamedTuple):
    """A dataset a run read (an MLflow dataset input): its name, digest, source type and
    source (JSON), profile (JSON) and the context it was read in."""

    name: str
    digest: str
    source_type: str
    source: str
    profile: str
    context: str = "training"


class MlflowCalls:
    """Reads and writes of runs, experiments, artifacts and registered models; MLflow's
    entities come back as MLflow returns them."""

    _client: Any

    def get_run(self, run_id: str) -> Any:
        """Run ``run_id`` (info and data: params, tags, latest metrics)."""
        return retrying(lambda: self._client.get_run(run_id))

    def get_experiment(self, experiment_id: str) -> Any:
        """Experiment ``experiment_id`` (its name, tags, lifecycle stage)."""
        return retrying(lambda: self._client.get_experiment(experiment_id))

    def get_metric_history(self, run_id: str, key: str) -> list[Any]:
        """Every logged point of metric ``key`` of the run."""
        return retrying(lambda: self._client.get_metric_history(run_id, key))

    def search_runs(
        self,
        experiment_ids: list[str],
        filter_string: str = "",
        max_results: int = 1000,
        order_by: list[str] | None = None,
        page_token: str | None = None,
    ) -> Any:
        """One page of the experiments' active runs that ``filter_string`` selects (its
        ``token`` names the next page; None after the last)."""
        return retrying(
            lambda: self._client.search_runs(
                experiment_ids,
                filter_string,
                max_results=max_results,
                order_by=order_by,
                page_token=page_token,
            )
        )

    def search_experiments(self, max_results: int = 1000) -> list[Any]:
        """The store's active experiments (up to ``max_results``)."""
        return retrying(lambda: self._client.search_experiments(max_results=max_results))

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        retrying(lambda: self._client.set_experiment_tag(experiment_id, key, value))

    def delete_tag(self, run_id: str, key: str) -> None:
        retrying(lambda: self._client.delete_tag(run_id, key))

    def delete_run(self, run_id: str) -> None:
        """Mark the run deleted: no read of the experiment lists it again."""
        retrying(lambda: self._client.delete_run(run_id))

    def list_artifacts(self, run_id: str, folder: str | None = None) -> list[Any]:
        """The run's artifacts directly under ``folder`` (empty when there is none)."""
        return retrying(lambda: self._client.list_artifacts(run_id, folder))

    def log_artifacts(self, run_id: str, folder: Path | str, artifact_path: str) -> None:
        """Every file under ``folder`` as artifacts under ``artifact_path``."""
        retrying(lambda: self._client.log_artifacts(run_id, str(folder), artifact_path))

    def log_inputs(self, run_id: str, datasets: Iterable[DatasetInput]) -> None:
        """Record ``datasets`` as the run's MLflow dataset inputs."""
        from mlflow.entities import Dataset, InputTag
        from mlflow.entities import DatasetInput as Entity

        inputs = [
            Entity(
                Dataset(d.name, d.digest, d.source_type, d.source, None, d.profile),
                [InputTag("mlflow.data.context", d.context)],
            )
            for d in datasets
        ]
        if inputs:
            retrying(lambda: self._client.log_inputs(run_id, inputs))

    def get_model_version(self, name: str, version: str | None = None, alias: str | None = None):
        """Version ``version`` of registered model ``name``, or the one ``alias`` points at
        (raises StoreError when there is none)."""
        if alias is not None:
            return retrying(lambda: self._client.get_model_version_by_alias(name, alias))
        return retrying(lambda: self._client.get_model_version(name, version))

    def register_version(
        self,
        name: str,
        source: str,
        run_id: str,
        tags: dict[str, str],
        description: str = "",
        alias: str | None = None,
    ) -> str:
        """A new version of registered model ``name`` (created if missing) from artifact
        URI ``source`` of the run; ``alias`` then points at it. Returns the version."""
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # already registered: add a version
            retrying(lambda: self._client.create_registered_model(name))
        version = retrying(
            lambda: self._client.create_model_version(
                name, source, run_id=run_id, tags=tags, description=description
            )
        )
        if alias:
            retrying(lambda: self._client.set_registered_model_alias(name, alias, version.version))
        return str(version.version)
