"""Loading a trained model without unpickling: safetensors weights plus the resolved
``config.yaml`` (read with ``yaml.safe_load``), built by zoo's own model factory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.modelzoo._files import fetch_weights, model_files

if TYPE_CHECKING:
    from torch import nn

    from zoo._resolver import Resolver
    from zoo.config import RunConfig
    from zoo.store import Tracker

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


@dataclass(frozen=True)
class LoadedModel:
    module: nn.Module  # in eval mode, on the requested device
    config: RunConfig
    run_id: str
    weights: Path  # the local safetensors file it was loaded from


def pixel_size_a(config: RunConfig) -> float | None:
    """Å per pixel of the last stage's training images, when known."""
    source = config.sources[config.stages[-1].train]
    source = config.sources[source.parts()[0]] if source.parts() else source
    return source.pixel_size_a


def image_size(config: RunConfig) -> int | None:
    """Side in pixels of the last stage's training images, when known from the config."""
    source = config.sources[config.stages[-1].train]
    source = config.sources[source.parts()[0]] if source.parts() else source
    return getattr(source, "image_size", None)


def read_config(path: Path, resolver: Resolver | None = None) -> RunConfig:
    """The run config a model was trained with (its config.yaml), resolved against
    ``resolver`` (None, for callers outside zoo: the project and store of this process,
    zoo.modelzoo.store_resolver of ProjectPaths.default())."""
    from zoo._yaml import load_yaml
    from zoo.config import resolve
    from zoo.modelzoo._identity import store_resolver
    from zoo.paths import ProjectPaths

    resolver = resolver or store_resolver(ProjectPaths.default())
    return resolve(load_yaml(path), str(path), resolver)


def load(ref_text: str, tracker: Tracker, device: str = "cpu") -> LoadedModel:
    """The model ``ref_text`` refers to (see resolve_ref), in eval mode on ``device``."""
    from safetensors.torch import load_file

    from zoo.models import create_model
    from zoo.modelzoo._identity import store_resolver
    from zoo.modelzoo._ref import resolve_ref

    ref = resolve_ref(ref_text, tracker.uri)
    weights, config_file = model_files(ref, tracker)
    config = read_config(config_file, store_resolver(tracker.paths, tracker.uri))
    module = create_model(config.model)
    module.load_state_dict(load_file(weights))
    return LoadedModel(module.to(device).eval(), config, ref.run_id, weights)


def load_model(
    ref: str, tracking_uri: str | None = None, device: str = "cpu"
) -> tuple[nn.Module, RunConfig]:
    """(module in eval mode, its resolved run config) for a run id, ``NAME@alias``,
    ``NAME/version`` or query; nothing is unpickled."""
    from zoo.store import Tracker

    loaded = load(ref, Tracker(tracking_uri), device)
    return loaded.module, loaded.config
