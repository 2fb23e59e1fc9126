"""The one place that decides where zoo keeps things on disk.

Everything zoo writes lives under a project root: the current directory, or
``$ZOO_ROOT`` when set. Nothing else in zoo builds paths from string literals.
Like submitit's ``JobPaths``, the files of one SLURM submission, one shared
stage and one search study each have a class naming them. The names of a run's
MLflow artifacts (paths inside its artifact root) are the constants below.
"""

from __future__ import annotations

import functools
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import ConfigError

__all__ = [
    "BEST_WEIGHTS_ARTIFACT",
    "CONFIG_ARTIFACT",
    "HISTORY_ARTIFACT",
    "MODEL_ARTIFACTS",
    "MODEL_WEIGHTS",
    "WEIGHTS_ARTIFACTS",
    "DatasetPaths",
    "ProjectPaths",
    "StagePaths",
    "StudyPaths",
    "SubmissionPaths",
    "check_out_folder",
    "iteration_weights_name",
]

CONFIG_ARTIFACT = "config.yaml"  # a run's resolved config (also in a registered version)
HISTORY_ARTIFACT = "history.csv"  # a run's per-epoch metrics
WEIGHTS_ARTIFACTS = "weights"  # a run's logged weights: best/final, STAGE/..., iter_NN
BEST_WEIGHTS_ARTIFACT = f"{WEIGHTS_ARTIFACTS}/best.safetensors"  # what a model is loaded from
MODEL_ARTIFACTS = "model"  # a registered version's files: MODEL_WEIGHTS, CONFIG_ARTIFACT
MODEL_WEIGHTS = "model.safetensors"


def iteration_weights_name(iteration: int) -> str:
    """The file name of refinement iteration ``iteration``'s best weights, in a stage
    folder and under WEIGHTS_ARTIFACTS."""
    return f"iter_{iteration:02d}.safetensors"


def check_out_folder(out: Path, force: bool) -> None:
    """Refuse (ConfigError naming ``--out``) an ``out`` folder that holds anything, unless
    ``force``: what is written there would replace or mix with what is there."""
    if not force and out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"--out: {str(out)!r} is a folder with files in it; expected a new or empty "
            "folder, or --force to write into it (files of the same names are replaced)"
        )


@functools.lru_cache(maxsize=64)
def _resolved(root: str, cwd: str) -> Path:
    """``root`` (``cwd`` when empty) absolute, symlinks resolved: once per (root, working
    directory), as a sweep's plan asks for the project root once per run."""
    return Path(cwd, root).resolve()


@dataclass(frozen=True)
class ProjectPaths:
    """Locations of the tracking store, dataset cache, run folders and logs."""

    root: Path

    @classmethod
    def default(cls) -> ProjectPaths:
        """Paths under ``$ZOO_ROOT`` or, without it, the current directory."""
        return cls(_resolved(os.environ.get("ZOO_ROOT") or "", os.getcwd()))

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

    def dataset_staging(self, digest: str) -> Path:
        """A fresh name for the folder a dataset is written in before it is renamed to
        ``dataset(digest)``; one left behind is garbage (``zoo gc``) unless leased."""
        return self.datasets / f".{digest}-{secrets.token_hex(4)}"

    def dataset_lock(self, key: str) -> Path:
        """Held while the dataset whose source hashes to ``key`` is made (zoo.data._lock)."""
        return self.datasets / ".locks" / f"{key}.lock"

    @property
    def dataset_index_lock(self) -> Path:
        """Held while ``index.json`` is read, changed and replaced."""
        return self.datasets / ".locks" / "index.lock"

    @property
    def leases(self) -> Path:
        """One JSON file per holder of a lease (zoo._leases): what running work uses."""
        return self.state / "leases"

    def lease(self, holder_id: str) -> Path:
        """The lease file of one holder (a maker, a run, a sweep)."""
        return self.leases / f"{holder_id}.json"

    def profile(self, name: str) -> Path:
        """A throughput profile measured by ``zoo calibrate NAME`` (zoo.calibrate)."""
        return self.state / "profiles" / f"{name}.json"

    @property
    def stages(self) -> Path:
        return self.state / "stages"

    def stage(self, digest: str) -> Path:
        """Checkpoints of one training stage by its identity; shared by every run that uses it."""
        return self.stages / digest

    def stage_files(self, digest: str) -> StagePaths:
        return StagePaths(self.stage(digest))

    @property
    def artifacts(self) -> Path:
        """MLflow artifact root of experiments created in the embedded store."""
        return self.state / "artifacts"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def ui_log(self) -> Path:
        """What the MLflow server ``zoo ui`` starts writes (its INFO lines and warnings)."""
        return self.logs / "ui.log"

    def error_log(self, stamp: str, pid: int) -> Path:
        """The traceback of an internal error in process ``pid`` at time ``stamp``."""
        return self.logs / f"internal-error-{stamp}-{pid}.log"

    @property
    def server(self) -> Path:
        """The default data folder of ``zoo server`` (its store, artifacts, logs)."""
        return self.state / "server"

    def job_log(self, sweep: str, identity: str) -> Path:
        """The log of one sweep job (a run or a shared stage) run by the local executor."""
        return self.logs / sweep / f"{identity}.log"

    def run_lock(self, identity: str) -> Path:
        """Lock held by the one process training the run (or stage job) ``identity``."""
        return self.state / "locks" / f"{identity}.lock"

    def sweep(self, name: str) -> Path:
        """SLURM submissions of one sweep, one timestamped folder each."""
        return self.state / "sweeps" / name

    def submissions(self, name: str) -> list[SubmissionPaths]:
        """The sweep's SLURM submissions that got as far as writing their record, oldest first."""
        folder = self.sweep(name)
        records = sorted(folder.glob("*/runs.json")) if folder.exists() else []
        return [SubmissionPaths(r.parent) for r in records]

    def new_submission(self, name: str, stamp: str) -> SubmissionPaths:
        """A submission folder named ``stamp`` (suffixed -1, -2... if taken); not created."""
        folder = candidate = self.sweep(name) / stamp
        n = 1
        while candidate.exists():
            candidate, n = folder.with_name(f"{stamp}-{n}"), n + 1
        return SubmissionPaths(candidate)

    def study(self, name: str) -> StudyPaths:
        """The Optuna study of search ``name``, beside its submissions."""
        return StudyPaths(self.sweep(name) / "study")

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


@dataclass(frozen=True)
class SubmissionPaths:
    """Files of one SLURM submission: its record, one script per array, task and job logs."""

    folder: Path

    @property
    def record(self) -> Path:
        """``runs.json``: every array's job keys and each job's description."""
        return self.folder / "runs.json"

    @property
    def record_staging(self) -> Path:
        """The record while it is written, renamed to ``record`` once complete."""
        return self.folder / "runs.json.tmp"

    def script(self, array: str) -> Path:
        return self.folder / f"{array}.sbatch"

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    def task_log_pattern(self, array: str) -> Path:
        """SLURM's ``--output`` pattern: one log per array task."""
        return self.logs / f"{array}_%A_%a.out"

    def job_log(self, key: str) -> Path:
        """The log of one job (a run, a stage or a search worker) within a task."""
        return self.logs / f"{key}.log"

    def ended(self, key: str) -> Path:
        """Written when stage job ``key`` of this submission ended, however it ended."""
        return self.logs / f"{key}.ended"


@dataclass(frozen=True)
class DatasetPaths:
    """Files of one cached dataset (see zoo.data): its arrays and what made them."""

    folder: Path

    @property
    def images(self) -> Path:
        return self.folder / "images.npy"

    @property
    def masks(self) -> Path:
        """Masks, or the image targets of a regression dataset."""
        return self.folder / "masks.npy"

    @property
    def meta(self) -> Path:
        """Written with the arrays: source, train count, pixel size."""
        return self.folder / "meta.json"


@dataclass(frozen=True)
class StagePaths:
    """Files of one trained stage (see zoo.train): checkpoint, weights, result."""

    folder: Path

    @property
    def result(self) -> Path:
        """Written last: the stage finished."""
        return self.folder / "result.json"

    @property
    def checkpoint(self) -> Path:
        """Model, optimizer and progress after the last finished epoch (resumed from)."""
        return self.folder / "last.safetensors"

    @property
    def record(self) -> Path:
        """What is trained here: identity, resolved config, zoo version, commit."""
        return self.folder / "stage.json"

    @property
    def carry(self) -> Path:
        """The final training state (weights, optimizer, RNG, progress), kept when the next
        stage carries it or the stage is its run's last (so the run can be continued)."""
        return self.folder / "carry.safetensors"

    def epoch(self, number: int) -> Path:
        """Weights after epoch ``number`` (1-based), kept when the stage asks for them."""
        return self.folder / f"epoch-{number}.safetensors"

    def weights(self, kind: str) -> Path:
        """Weights of the ``best`` epoch or the ``final`` one."""
        return self.folder / f"{kind}.safetensors"

    def iteration(self, number: int) -> Path:
        """Best weights of refinement iteration ``number`` (a link to that iteration's best)."""
        return self.folder / iteration_weights_name(number)

    @property
    def lock(self) -> Path:
        return self.folder / ".lock"


@dataclass(frozen=True)
class StudyPaths:
    """Files of one Optuna study: its journal, the lock that makes asking for a trial
    atomic, and one lease file per trial held by the process running it."""

    folder: Path

    @property
    def journal(self) -> Path:
        return self.folder / "journal.log"

    @property
    def lock(self) -> Path:
        return self.folder / "study.lock"

    def lease(self, trial: int) -> Path:
        return self.folder / "leases" / f"{trial}.lock"

    def trial_log(self, trial: int) -> Path:
        """The log of one trial's training."""
        return self.folder / "trials" / f"{trial}.log"

    @property
    def log(self) -> Path:
        """Where the local search workers write what they train."""
        return self.folder / "workers.log"
