"""The model zoo: find, compare, export, register and load trained models.

Public API: :func:`model_table` (+ :func:`filter_models`, :func:`sort_models`),
:func:`resolve_ref`, :func:`load_model`, :func:`describe`, :func:`export_model`,
:func:`register_model`, :func:`store_resolver` (what a config is resolved against: a
project and the store its ``init: run:``/``model:`` references name). A model
reference is a run id, a registered ``NAME@alias`` or ``NAME/version``, or a query
``EXPERIMENT[:AXIS=VALUE,...]``.
"""

from zoo.modelzoo._card import describe, export_model, model_card
from zoo.modelzoo._identity import store_resolver
from zoo.modelzoo._list import filter_models, format_models, model_table, sort_models
from zoo.modelzoo._load import (
    LoadedModel,
    fetch_weights,
    image_size,
    load,
    load_model,
    pixel_size_a,
    read_config,
)
from zoo.modelzoo._ref import ModelRef, resolve_ref
from zoo.modelzoo._registry import register_model
from zoo.modelzoo._ui import experiment_links

__all__ = [
    "LoadedModel",
    "ModelRef",
    "describe",
    "experiment_links",
    "export_model",
    "fetch_weights",
    "filter_models",
    "format_models",
    "image_size",
    "load",
    "load_model",
    "model_card",
    "model_table",
    "pixel_size_a",
    "read_config",
    "register_model",
    "resolve_ref",
    "sort_models",
    "store_resolver",
]
