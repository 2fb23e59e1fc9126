"""Shared fixtures: every test gets its own project root (datasets, runs, mlflow.db)."""

from __future__ import annotations

import pytest

from zoo.paths import ProjectPaths


@pytest.fixture
def project(tmp_path, monkeypatch) -> ProjectPaths:
    """An empty project root; zoo commands run inside it see it as ``$ZOO_ROOT``."""
    monkeypatch.setenv("ZOO_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return ProjectPaths(tmp_path)


@pytest.fixture
def tiny_runs(project):
    """A function listing the MLflow runs of the project's "tiny" sweep (none yet: [])."""
    from mlflow.tracking import MlflowClient

    def runs():
        client = MlflowClient(project.tracking_uri)
        experiment = client.get_experiment_by_name("tiny")
        return client.search_runs([experiment.experiment_id]) if experiment else []

    return runs
