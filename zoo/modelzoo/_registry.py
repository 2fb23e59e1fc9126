"""Registering models in MLflow's Model Registry in a form that loads safely."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo.modelzoo._load import LoadedModel
    from zoo.store import Tracker

__all__ = ["register_model"]


def _log_folders(loaded: LoadedModel, tracker: Tracker, ref: str) -> str:
    """Log ``model/`` (model.safetensors, config.yaml, README.md) and, for a model the
    MLflow model takes (see _pyfunc.predictable), ``mlflow-model/`` to the run, each
    once; returns the folder a version registers."""
    from zoo.modelzoo._card import export_model
    from zoo.modelzoo._pyfunc import MLFLOW_FOLDER, predictable, save_pyfunc
    from zoo.paths import CONFIG_ARTIFACT, MODEL_ARTIFACTS, MODEL_WEIGHTS

    def missing(folder: str) -> bool:
        return not tracker.list_artifacts(loaded.run_id, folder)

    as_mlflow = predictable(loaded.config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_model(loaded, tracker, Path(tmp) / MODEL_ARTIFACTS, ref)
        if missing(MODEL_ARTIFACTS):
            tracker.log_artifacts(loaded.run_id, folder, MODEL_ARTIFACTS)
        if as_mlflow and missing(MLFLOW_FOLDER):
            files = (folder / MODEL_WEIGHTS, folder / CONFIG_ARTIFACT)
            pyfunc = save_pyfunc(*files, Path(tmp) / MLFLOW_FOLDER)
            tracker.log_artifacts(loaded.run_id, pyfunc, MLFLOW_FOLDER)
    return MLFLOW_FOLDER if as_mlflow else MODEL_ARTIFACTS


def register_model(
    ref: str, name: str, tracker: Tracker, alias: str | None = None
) -> tuple[str, str]:
    """Register the model ``ref`` as a new version of ``name`` (created if missing), its
    files safetensors weights plus config.yaml, tagged with the run's axis values;
    ``alias`` then points at it. A segmentation model of one grey channel is registered
    as an MLflow model (``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` predicts masks).
    Returns (run id, version)."""
    from zoo.modelzoo._load import load, pixel_size_a

    loaded = load(ref, tracker)
    folder = _log_folders(loaded, tracker, ref)
    run = tracker.get_run(loaded.run_id)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("zoo.axis.")}
    tags.update(
        {
            "zoo.format": "safetensors+config",
            "zoo.config_hash": run.data.tags.get("zoo.config_hash", ""),
            "zoo.pixel_size_a": str(pixel_size_a(loaded.config)),
        }
    )
    version = tracker.register_version(
        name,
        f"{run.info.artifact_uri}/{folder}",
        loaded.run_id,
        tags,
        description=run.data.tags.get("mlflow.runName", ""),
        alias=alias,
    )
    return loaded.run_id, version
