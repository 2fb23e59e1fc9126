"""A model's files in the store: its weights and config.yaml, downloaded once into the
project's download folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from zoo.errors import ConfigError
from zoo.paths import BEST_WEIGHTS_ARTIFACT, CONFIG_ARTIFACT, MODEL_ARTIFACTS, MODEL_WEIGHTS

if TYPE_CHECKING:
    from zoo.modelzoo._ref import ModelRef
    from zoo.store import Tracker

__all__ = ["fetch_weights", "model_files"]


def _download(tracker: Tracker, run_id: str, artifact: str) -> Path:
    """A run artifact, downloaded once into the project's download folder."""
    import os

    from zoo.store import StoreError

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    local = tracker.paths.download(run_id) / artifact
    if local.exists():
        return local
    try:
        return tracker.download(run_id, artifact, tracker.paths.download(run_id))
    except (StoreError, OSError):
        raise ConfigError(f"run {run_id}: no artifact {artifact} (weights not logged?)") from None


def model_files(ref: ModelRef, tracker: Tracker) -> tuple[Path, Path]:
    """(weights, config.yaml) of a resolved reference, downloaded if needed."""
    if ref.source is None:
        return _download(tracker, ref.run_id, BEST_WEIGHTS_ARTIFACT), _download(
            tracker, ref.run_id, CONFIG_ARTIFACT
        )
    folder = _download(tracker, ref.run_id, MODEL_ARTIFACTS)
    return folder / MODEL_WEIGHTS, folder / CONFIG_ARTIFACT


def fetch_weights(target: str, tracker: Tracker) -> Path:
    """The best weights of ``init: run:ID`` or ``init: model:NAME@ALIAS|NAME/VERSION``."""
    from zoo.modelzoo._ref import resolve_ref

    return model_files(resolve_ref(target, tracker.uri), tracker)[0]
