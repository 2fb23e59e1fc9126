"""The one place that decides where zoo keeps things on disk.

Everything zoo writes lives under a project root: the current directory, or
``$ZOO_ROOT`` when set. Nothing else in zoo builds paths from string literals.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProjectPaths"]


@dataclass(frozen=True)
class ProjectPaths:
    """Locations of the tracking store, dataset cache, run folders and logs."""

    root: Path

    @classmethod
    def default(cls) -> ProjectPaths:
        """Paths under ``$ZOO_ROOT`` or, without it, the current directory."""
        return cls(Path(os.environ.get("ZOO_ROOT") or Path.cwd()).resolve())

    @property
    def state(self) -> Path:
        return self.root / ".zoo"

    @property
    def datasets(self) -> Path:
        return self.state / "datasets"

    @property
    def dataset_index(self) -> Path:
        """JSON map of dataset names to their content hashes."""
        return self.datasets / "index.json"

    @property
    def file_hashes(self) -> Path:
        """JSON cache of data files' content hashes by (path, size, mtime)."""
        return self.datasets / "file-hashes.json"

    def dataset(self, digest: str) -> Path:
        return self.datasets / digest

    @property
    def stages(self) -> Path:
        return self.state / "stages"

    def stage(self, digest: str) -> Path:
        """Checkpoints of one training stage by its identity; shared by every run that uses it."""
        return self.stages / digest

    @property
    def artifacts(self) -> Path:
        """MLflow artifact root of experiments created in the embedded store."""
        return self.state / "artifacts"

    @property
    def tracking_lock(self) -> Path:
        """Lock held while the embedded tracking store is created or migrated."""
        return self.root / "mlflow.db.lock"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    def job_log(self, sweep: str, identity: str) -> Path:
        """The log of one sweep job (a run or a shared stage) run by the local executor."""
        return self.logs / sweep / f"{identity}.log"

    def run_lock(self, identity: str) -> Path:
        """Lock held by the one process training the run (or stage job) ``identity``."""
        return self.state / "locks" / f"{identity}.lock"

    def sweep(self, name: str) -> Path:
        """SLURM submissions of one sweep, one timestamped folder each."""
        return self.state / "sweeps" / name

    def download(self, run_id: str) -> Path:
        """Where artifacts of another MLflow run (``init: run:ID``) are downloaded to."""
        return self.state / "downloads" / run_id

    @property
    def tracking_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def tracking_uri(self) -> str:
        """The embedded default store: ``mlflow.db`` in the project root."""
        return f"sqlite:///{self.tracking_db}"
