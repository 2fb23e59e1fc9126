"""Registering models in MLflow's Model Registry in a form that loads safely."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo.modelzoo._load import LoadedModel
    from zoo.tracking import Tracker

__all__ = ["register_model"]


def _log_folders(loaded: LoadedModel, tracker: Tracker, ref: str) -> str:
    """Log ``model/`` (model.safetensors, config.yaml, README.md) and, for a model the
    MLflow model takes (see _pyfunc.predictable), ``mlflow-model/`` to the run, each
    once; returns the folder a version registers."""
    from zoo.modelzoo._card import export_model
    from zoo.modelzoo._load import MODEL_FOLDER
    from zoo.modelzoo._pyfunc import MLFLOW_FOLDER, predictable, save_pyfunc

    def missing(folder: str) -> bool:
        return not tracker.client.list_artifacts(loaded.run_id, folder)

    as_mlflow = predictable(loaded.config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_model(loaded, tracker, Path(tmp) / MODEL_FOLDER, ref)
        if missing(MODEL_FOLDER):
            tracker.client.log_artifacts(loaded.run_id, str(folder), MODEL_FOLDER)
        if as_mlflow and missing(MLFLOW_FOLDER):
            files = (folder / "model.safetensors", folder / "config.yaml")
            pyfunc = save_pyfunc(*files, Path(tmp) / MLFLOW_FOLDER)
            tracker.client.log_artifacts(loaded.run_id, str(pyfunc), MLFLOW_FOLDER)
    return MLFLOW_FOLDER if as_mlflow else MODEL_FOLDER


def register_model(
    ref: str, name: str, tracker: Tracker, alias: str | None = None
) -> tuple[str, str]:
    """Register the model ``ref`` as a new version of ``name`` (created if missing), its
    files safetensors weights plus config.yaml, tagged with the run's axis values;
    ``alias`` then points at it. A segmentation model of one grey channel is registered
    as an MLflow model (``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` predicts masks).
    Returns (run id, version)."""
    from mlflow.exceptions import MlflowException

    from zoo.modelzoo._load import load, pixel_size_a

    loaded = load(ref, tracker)
    folder = _log_folders(loaded, tracker, ref)
    run = tracker.client.get_run(loaded.run_id)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("zoo.axis.")}
    tags.update(
        {
            "zoo.format": "safetensors+config",
            "zoo.config_hash": run.data.tags.get("zoo.config_hash", ""),
            "zoo.pixel_size_a": str(pixel_size_a(loaded.config)),
        }
    )
    with contextlib.suppress(MlflowException):  # already registered: add a version
        tracker.client.create_registered_model(name)
    version = tracker.client.create_model_version(
        name,
        f"{run.info.artifact_uri}/{folder}",
        run_id=loaded.run_id,
        tags=tags,
        description=run.data.tags.get("mlflow.runName", ""),
    )
    if alias:
        tracker.client.set_registered_model_alias(name, alias, version.version)
    return loaded.run_id, str(version.version)
