"""Loading a trained model without unpickling: safetensors weights plus the resolved
``config.yaml`` (read with ``yaml.safe_load``), built by zoo's own model factory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from zoo.config import RunConfig
    from zoo.modelzoo._ref import ModelRef
    from zoo.tracking import Tracker

__all__ = [
    "LoadedModel",
    "fetch_weights",
    "image_size",
    "load",
    "load_model",
    "model_files",
    "pixel_size_a",
    "read_config",
]

WEIGHTS = "weights/best.safetensors"  # the run artifact a model is loaded from
MODEL_FOLDER = "model"  # a registered version's files: model.safetensors, config.yaml


@dataclass(frozen=True)
class LoadedModel:
    module: nn.Module  # in eval mode, on the requested device
    config: RunConfig
    run_id: str
    weights: Path  # the local safetensors file it was loaded from


def pixel_size_a(config: RunConfig) -> float | None:
    """Å per pixel of the last stage's training images, when known."""
    from zoo.data import GeneratorSpec, MixSpec

    source = config.sources[config.stages[-1].train]
    if isinstance(source, MixSpec):
        source = config.sources[next(iter(source.mix))]
    if isinstance(source, GeneratorSpec):
        return source.field_nm * 10 / source.image_size
    return source.pixel_size_a


def image_size(config: RunConfig) -> int | None:
    """Side in pixels of the last stage's training images, when known from the config."""
    from zoo.data import MixSpec

    source = config.sources[config.stages[-1].train]
    if isinstance(source, MixSpec):
        source = config.sources[next(iter(source.mix))]
    return getattr(source, "image_size", None)


def _download(tracker: Tracker, run_id: str, artifact: str) -> Path:
    """A run artifact, downloaded once into the project's download folder."""
    import os

    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    local = tracker.paths.download(run_id) / artifact
    if local.exists():
        return local
    try:
        return tracker.download(run_id, artifact, tracker.paths.download(run_id))
    except (MlflowException, OSError):
        raise ConfigError(f"run {run_id}: no artifact {artifact} (weights not logged?)") from None


def model_files(ref: ModelRef, tracker: Tracker) -> tuple[Path, Path]:
    """(weights, config.yaml) of a resolved reference, downloaded if needed."""
    if ref.source is None:
        return _download(tracker, ref.run_id, WEIGHTS), _download(
            tracker, ref.run_id, "config.yaml"
        )
    folder = _download(tracker, ref.run_id, MODEL_FOLDER)
    return folder / "model.safetensors", folder / "config.yaml"


def read_config(path: Path) -> RunConfig:
    from zoo._yaml import load_yaml
    from zoo.config import resolve

    return resolve(load_yaml(path), str(path))


def load(ref_text: str, tracker: Tracker, device: str = "cpu") -> LoadedModel:
    """The model ``ref_text`` refers to (see resolve_ref), in eval mode on ``device``."""
    from safetensors.torch import load_file

    from zoo.models import create_model
    from zoo.modelzoo._ref import resolve_ref

    ref = resolve_ref(ref_text, tracker.uri)
    weights, config_file = model_files(ref, tracker)
    config = read_config(config_file)
    module = create_model(config.model)
    module.load_state_dict(load_file(weights))
    return LoadedModel(module.to(device).eval(), config, ref.run_id, weights)


def load_model(
    ref: str, tracking_uri: str | None = None, device: str = "cpu"
) -> tuple[nn.Module, RunConfig]:
    """(module in eval mode, its resolved run config) for a run id, ``NAME@alias``,
    ``NAME/version`` or query; nothing is unpickled."""
    from zoo.tracking import Tracker

    loaded = load(ref, Tracker(tracking_uri), device)
    return loaded.module, loaded.config


def fetch_weights(target: str, tracker: Tracker) -> Path:
    """The best weights of ``init: run:ID`` or ``init: model:NAME@ALIAS|NAME/VERSION``."""
    from zoo.modelzoo._ref import resolve_ref

    return model_files(resolve_ref(target, tracker.uri), tracker)[0]
