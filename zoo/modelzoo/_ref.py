"""Model references: a run id, a registered ``NAME@alias`` or ``NAME/version``, or a query
``EXPERIMENT[:AXIS=VALUE,...]`` (the best finished model of that experiment matching
every value, by the headline metric)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from zoo.errors import ConfigError

__all__ = ["ModelRef", "resolve_ref"]

_RUN_ID = re.compile(r"[0-9a-f]{32}")
_FORMS = "a run id, NAME@ALIAS, NAME/VERSION or EXPERIMENT[:AXIS=VALUE,...]"


@dataclass(frozen=True)
class ModelRef:
    """Where a model's files are: a run, and for a registered version its ``model/`` folder."""

    text: str  # the reference as given
    run_id: str
    source: str | None = None  # artifact URI of a registered version's files
    version: str | None = None  # registered version number


def _registered(text: str, client) -> ModelRef:
    from mlflow.exceptions import MlflowException

    name, alias = text.split("@", 1) if "@" in text else (text, None)
    version = None if alias is not None else name.rsplit("/", 1)[1]
    name = name if alias is not None else name.rsplit("/", 1)[0]
    try:
        found = (
            client.get_model_version_by_alias(name, alias)
            if alias is not None
            else client.get_model_version(name, version)
        )
    except MlflowException:
        raise ConfigError(f"model {text!r}: no such registered model version") from None
    return ModelRef(text, found.run_id, found.source, str(found.version))


def _query(text: str, uri: str) -> ModelRef:
    from zoo.modelzoo._list import filter_models, model_table, sort_models

    experiment, _, conditions = text.partition(":")
    table = model_table(uri, [experiment])
    table = filter_models(table, [c for c in conditions.split(",") if c])
    table = sort_models(table[table["state"] == "FINISHED"])  # by the task's headline
    if table.empty:
        raise ConfigError(f"model {text!r}: no finished model matches")
    return ModelRef(text, str(table["run_id"].iloc[0]))


def resolve_ref(text: str, uri: str) -> ModelRef:
    """The model ``text`` refers to in the store at ``uri``; a ConfigError names the forms."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if _RUN_ID.fullmatch(text):
        try:
            client.get_run(text)
        except MlflowException:
            raise ConfigError(f"model {text!r}: no such run in {uri}") from None
        return ModelRef(text, text)
    if "@" in text or re.fullmatch(r".+/\d+", text):
        return _registered(text, client)
    if not re.fullmatch(r"[\w.-]+(:[\w.+-]+=[^,]*(,[\w.+-]+=[^,]*)*)?", text):
        raise ConfigError(f"model {text!r}: expected {_FORMS}")
    return _query(text, uri)
