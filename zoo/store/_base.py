"""The store interface: what zoo writes to and reads from a tracking store, whatever its
backend. ``zoo.store.Tracker`` implements it over MLflow; a test subclasses the shared
contract suite (tests/store_contract.py) once per backend to hold a store to it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Store"]


class Store(Protocol):
    """One tracking store, addressed run by run (never through a global active run).

    Promises (each kept by every backend, tested by the shared contract suite):

    - Any number of processes, with any project roots, may create the same fresh store
      and experiment at once and log to it concurrently; all succeed.
    - A run is found by its identity (the ``zoo.config_hash`` tag).
    - Reads return exactly what was written: params, tags and every metric history
      point, NaN and every double included.
    - ``import_runs`` is idempotent: runs whose identity is already in the experiment
      are skipped.
    - A call that fails for a transient reason (a server restarting, a locked SQLite
      file) is retried with backoff for several minutes before it raises; a stopping
      signal (SIGTERM) that lands inside a call is raised once the call returns, so a
      write lands whole.
    - A read-only store (``create=False``) never creates the store nor an experiment.
    """

    uri: str
    read_only: bool

    # the write side
    def experiment(self, name: str, description: str | None = None) -> str | None: ...
    def create(self, experiment_id: str, tags: dict[str, str]) -> str: ...
    def log_batch(
        self,
        run_id: str,
        params: dict[str, Any] | None = None,
        metrics: Iterable[tuple[int, dict[str, float]]] = (),
        timestamp: int | None = None,
    ) -> None: ...
    def set_tags(self, run_id: str, tags: dict[str, str]) -> None: ...
    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None: ...
    def reopen(self, run_id: str) -> None: ...
    def finish(self, run_id: str, error: BaseException | None = None) -> None: ...
    def import_runs(self, experiment_id: str, runs: Iterable[Any]) -> int: ...

    # the read side
    def experiment_id(self, name: str) -> str | None: ...
    def find(self, experiment_id: str | None, config_hash: str) -> Any | None: ...
    def states(self, experiment_id: str | None) -> dict[str, tuple[str, str]]: ...
    def tables(self, experiment: str, **options: Any) -> Any: ...
    def get_run(self, run_id: str) -> Any: ...
    def get_metric_history(self, run_id: str, key: str) -> list[Any]: ...
