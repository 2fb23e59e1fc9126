"""Model references: a run id, a unique run-id prefix, a config-hash prefix (as sweep
progress names runs), a run's name, a registered ``NAME@alias`` or ``NAME/version``, or
a query ``EXPERIMENT[:AXIS=VALUE,...]`` (the best finished model of that experiment
matching every value, by the headline metric)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zoo.errors import ConfigError

if TYPE_CHECKING:
    from zoo.store import Tracker

__all__ = ["ModelRef", "resolve_ref"]

_RUN_ID = re.compile(r"[0-9a-f]{32}")
_PREFIX = re.compile(r"[0-9a-f]{6,31}")  # of a run id or a config hash
_QUERY = re.compile(r"[\w.+=-]+(:[\w.+-]+=[^,]*(,[\w.+-]+=[^,]*)*)?")
_FORMS = (
    "a run id or a unique prefix of one (6+ characters), a config-hash prefix, a run "
    "name, NAME@ALIAS, NAME/VERSION or EXPERIMENT[:AXIS=VALUE,...]"
)


@dataclass(frozen=True)
class ModelRef:
    """Where a model's files are: a run, and for a registered version its ``model/`` folder."""

    text: str  # the reference as given
    run_id: str
    source: str | None = None  # artifact URI of a registered version's files
    version: str | None = None  # registered version number


def _registered(text: str, tracker: Tracker) -> ModelRef:
    from zoo.store import StoreError

    name, alias = text.split("@", 1) if "@" in text else (text, None)
    version = None if alias is not None else name.rsplit("/", 1)[1]
    name = name if alias is not None else name.rsplit("/", 1)[0]
    try:
        found = tracker.get_model_version(name, version, alias=alias)
    except StoreError:
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
    from zoo.store import StoreError, Tracker

    tracker = Tracker(uri)
    if _RUN_ID.fullmatch(text):
        try:
            tracker.get_run(text)
        except StoreError:
            raise ConfigError(f"model {text!r}: no such run in {uri}") from None
        return ModelRef(text, text)
    if "@" in text or re.fullmatch(r".+/\d+", text):
        return _registered(text, tracker)
    plain = ":" not in text and tracker.experiment_id(text) is None
    if _PREFIX.fullmatch(text) or not _QUERY.fullmatch(text) or plain:
        found = _named_run(text, tracker)
        if found is not None:
            return ModelRef(text, found)
    if not _QUERY.fullmatch(text):
        raise ConfigError(f"model {text!r}: no run is named so; expected {_FORMS}")
    return _query(text, uri)


def _named_run(text: str, tracker: Tracker) -> str | None:
    """The run id ``text`` names as a run-id or config-hash prefix, or as a run name; None
    if none does; a ConfigError when it names several (a config hash's newest finished
    run is the one it names, as for every other look-up of an identity)."""
    if "'" in text:
        return None
    if _PREFIX.fullmatch(text):
        filters = [f"attributes.run_id LIKE '{text}%'", f"tags.`zoo.config_hash` LIKE '{text}%'"]
    else:
        filters = [f"attributes.run_name = '{text}'"]
    experiments = [e.experiment_id for e in tracker.search_experiments()]
    runs = {
        run.info.run_id: run
        for where in filters
        for run in (tracker.search_runs(experiments, where, max_results=50) if experiments else [])
    }
    finished = {k: r for k, r in runs.items() if r.info.status == "FINISHED"}
    by_identity = {r.data.tags.get("zoo.config_hash") for r in finished.values()}
    if len(finished) > 1 and len(by_identity) == 1 and None not in by_identity:
        return max(finished.values(), key=lambda r: r.info.start_time).info.run_id
    if len(finished or runs) > 1:
        names = sorted(
            f"{r.info.run_id[:8]} ({r.info.run_name}, experiment {r.info.experiment_id})"
            for r in runs.values()
        )
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise ConfigError(
            f"model {text!r}: names {len(runs)} runs ({shown}); expected one: give more "
            "characters of a run id or config hash, or a whole run id"
        )
    return next(iter(finished or runs), None)
