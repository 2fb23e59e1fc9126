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
