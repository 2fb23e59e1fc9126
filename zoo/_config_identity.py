"""Identities of resolved run configs: the documents a run's and each stage's identity
hash, datasets parsed once per distinct declaration, and the contents of the files and
runs a config names. Reads nothing but through the config's Resolver. A config is a
zoo.config.RunConfig (typed Any here: zoo.config imports this module)."""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from zoo._resolver import Resolver
from zoo._typed import to_dict

__all__ = ["DatasetTable", "Identity", "config_identity", "content_hash", "execution", "table_of"]

# Stage identity version: raise it whenever a change to zoo alters the numbers a stage
# computes (training loop, data pipeline, model construction), so checkpoints made by older
# code are never reused. Version 1 is left out of the hash (hashes made before it existed).
STAGE_VERSION = 1
# Fields that change how a run executes; each enters the identity only when set to a
# non-default value, so hashes made before that stay valid. `device` (where a run is
# placed: cpu, cuda, cuda:N) never enters it: a sweep worker places runs on its own device.
EXECUTION_FIELDS = ("devices", "power_cap_w", "log_weights", "share_stages")
# Fields that enter a stage's identity too: the stage's numbers depend on how many devices
# train it (not bit for bit those of one process), its energy on the power cap.
STAGE_EXECUTION_FIELDS = ("devices", "power_cap_w")
# Fields left out of the identity document (execution fields return through execution()
# when not default); `figures` never enters it: switching it on a finished sweep changes
# nothing; `resolver` is what resolved the config, not part of it
NOT_IDENTITY = ("experiment", "figures", "device", "resolver", *EXECUTION_FIELDS)


# fields the run's identity document does not take as they are (datasets by their
# digests, stages and the model by their identities, set below)
_NOT_IN_DOCUMENT = frozenset((*NOT_IDENTITY, "datasets", "stages", "model"))


_ENCODER = json.JSONEncoder(sort_keys=True)  # json.dumps(document, sort_keys=True), made once


def content_hash(document: Any) -> str:
    return hashlib.sha256(_ENCODER.encode(document).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DatasetTable:
    resolved: dict[str, Any]  # name -> every parameter (JSON-ready)
    sources: dict[str, Any]  # name -> parsed zoo.data source
    digests: dict[str, str]  # name -> hash of its parameters and, for files, their contents


@functools.lru_cache(maxsize=256)
def _dataset_table(text: str) -> DatasetTable:
    """Datasets parsed once per distinct declaration: a sweep's runs share a few."""
    from zoo.data import dataset_source

    sources = {n: dataset_source(v, f"datasets.{n}") for n, v in json.loads(text).items()}
    resolved = {
        n: getattr(s, "resolved", functools.partial(to_dict, s))() for n, s in sources.items()
    }
    return DatasetTable(resolved, sources, {n: content_hash(v) for n, v in resolved.items()})


_TABLES_BY_ID: dict[int, tuple[Any, Resolver | None, DatasetTable]] = {}


def table_of(datasets: Any, resolver: Resolver | None) -> DatasetTable:
    """The DatasetTable of a datasets mapping, file contents read through ``resolver``;
    the same object (a sweep's shared base) is serialised only once per resolver."""
    entry = _TABLES_BY_ID.get(id(datasets))
    if entry is None or entry[0] is not datasets or entry[1] != resolver:
        if len(_TABLES_BY_ID) > 1024:
            _TABLES_BY_ID.clear()
        table = _with_contents(_dataset_table(_ENCODER.encode(datasets)), resolver)
        entry = _TABLES_BY_ID[id(datasets)] = (datasets, resolver, table)
    return entry[2]


def _with_contents(table: DatasetTable, resolver: Resolver | None) -> DatasetTable:
    """``table`` with each folder or HDF5 dataset identified by its files' contents too
    (hashes cached by path, size and mtime), so rewriting the data changes the identity."""
    files = {n: s for n, s in table.sources.items() if s.files()}
    if not files:
        return table
    if resolver is None:
        raise ValueError("a config with file datasets was not resolved (no project root)")
    digests = dict(table.digests)
    for name, source in files.items():
        content = resolver.dataset_content(source)
        digests[name] = content_hash({**table.resolved[name], "content": content})
    return replace(table, digests=digests)


def init_kind(init: str) -> dict[str, str]:
    """The ``init`` entry of a stage's identity: ``run`` for a run or a registered model
    (identified by ``init_run``), else the stage's own value."""
    return {"init": "run"} if init.partition(":")[0] in ("run", "model") else {}


def init_content(init: str, where: str, resolver: Resolver | None) -> dict[str, str]:
    """{"init_file": content hash} for an ``init: file:``, {"init_run": the referenced
    run's identity} for a run or registered model; a missing target is a ConfigError."""
    kind, _, target = init.partition(":")
    if kind not in ("file", "run", "model"):
        return {}
    if resolver is None:
        raise ValueError(f"{where}: {init!r} in a config that was not resolved")
    if kind in ("run", "model"):
        return {"init_run": resolver.init_identity(kind, target, where)}
    return {"init_file": resolver.init_file_hash(init, where)}


@functools.cache
def _fields_of(cls: type) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The names a class's identity document takes as they are, and the defaults of its
    execution fields."""
    names = tuple(f.name for f in fields(cls) if f.name not in _NOT_IN_DOCUMENT)
    defaults = {f.name: f.default for f in fields(cls) if f.name in EXECUTION_FIELDS}
    return names, {**defaults, "log_weights": ("best", "final")}


def execution(config: Any) -> dict[str, Any]:
    """The execution fields of ``config`` set to non-default values."""
    defaults = _fields_of(type(config))[1]
    return {
        name: to_dict(getattr(config, name))
        for name in EXECUTION_FIELDS
        if getattr(config, name) != defaults[name]
    }


@dataclass(frozen=True)
class Identity:
    """A config's (stage 0, stage 1, ..., run) identity documents, their hashes, and the
    JSON each hash is taken of, cut where the values another seed changes go (_template)."""

    documents: tuple[dict[str, Any], ...]
    digests: tuple[str, ...]
    templates: tuple[tuple[str, ...], ...]

    def reseeded(self, seed: int) -> Identity:
        """The identity config_identity gives the same config with ``seed``: the seed in
        every document, and through the hashes each stage's parent and owner."""
        run_document = {**self.documents[-1], "seed": seed}
        run = _filled(self.templates[-1], run_document)
        digests: list[str] = []
        documents: list[dict[str, Any]] = []
        for document, template in zip(self.documents[:-1], self.templates[:-1], strict=True):
            document = {
                **document,
                "seed": seed,
                "parent": None if document["parent"] is None else digests[-1],
                "owner": None if document["owner"] is None else run,
            }
            documents.append(document)
            digests.append(_filled(template, document))
        return Identity((*documents, run_document), (*digests, run), self.templates)


def config_identity(config: Any) -> Identity:
    """The (stage 0, stage 1, ..., run) identity documents of ``config`` and their hashes."""
    document, texts = _run_document(config)
    run_template = _template(document, texts)
    run = _filled(run_template, document)
    # execution fields are in the document only when set (execution())
    placement = {k: document[k] for k in STAGE_EXECUTION_FIELDS if k in document}
    inits = document.get("init_files", {})
    digests: list[str] = []
    documents: list[dict[str, Any]] = []
    templates: list[tuple[str, ...]] = []
    for index, stage in enumerate(config.stages):
        continues = digests and stage.init in ("auto", "best", "last")
        stage_document, stage_texts = _stage_document(config, index, document, texts)
        stage_document |= {
            "parent": digests[-1] if continues else None,
            "owner": None if config.share_stages else run,
            **({"compile": True} if config.compile else {}),  # older hashes kept
            **placement,
            **inits.get(str(index), {}),
            **({"version": STAGE_VERSION} if STAGE_VERSION > 1 else {}),
        }
        documents.append(stage_document)
        templates.append(_template(stage_document, stage_texts))
        digests.append(_filled(templates[-1], stage_document))
    return Identity((*documents, document), (*digests, run), (*templates, run_template))


def _run_document(config: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The run's identity document, and the JSON of its parts that many runs share."""
    data = config._table.digests
    document = {name: to_dict(getattr(config, name)) for name in _fields_of(type(config))[0]}
    # an init run or model by what it is (its identity), not by its id
    document["stages"] = [{**s.identity(), **init_kind(s.init)} for s in config.stages]
    document["model"] = config.model.identity()
    resolver = config.resolver
    inits = {
        str(i): init_content(s.init, f"config.stages.{i}.init", resolver)
        for i, s in enumerate(config.stages)
        if s.init.partition(":")[0] in ("file", "run", "model")
    }
    document |= {"datasets": data, **execution(config)}
    if inits:  # the contents of init files and the identities of init runs
        document["init_files"] = inits
    stages = (_text(("stage", id(s)), s, lambda s=s: _stage_entry(s)) for s in config.stages)
    texts = {
        "stages": "[" + ", ".join(stages) + "]",
        "model": _text(("model", id(config.model)), config.model, config.model.identity),
        "datasets": _text(("datasets", id(data)), data, lambda: data),
    }
    return document, texts


def _stage_entry(stage: Any) -> dict[str, Any]:
    return {**stage.identity(), **init_kind(stage.init)}


def _stage_document(
    config: Any, index: int, run: dict[str, Any], texts: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Stage ``index``'s identity document but for what it takes from the stages before
    it, and the JSON of its parts that many runs share."""
    stage, data, val = config.stages[index], config._table.digests, config.validation_sets
    used = _used(config, stage, val)
    keep = config.keeps_optimizer(index)
    entry = {**run["stages"][index], "name": ""}  # not its name
    if keep:
        entry["keep_optimizer"] = True
    document = {
        "stage": entry,
        "model": run["model"],
        "seed": config.seed,
        "amp": config.amp,
        "val": list(val),
        "datasets": {n: data[n] for n in used},
        "val_batch_size": config.val_batch_size,
    }
    stage_texts = {
        "stage": _text(("stage-document", id(stage), keep), stage, lambda: entry),
        "model": texts["model"],
        "val": _text(("names", val), None, lambda: list(val)),
        "datasets": _text(("used", id(data), used), data, lambda: document["datasets"]),
    }
    return document, stage_texts


def _used(config: Any, stage: Any, val: tuple[str, ...]) -> tuple[str, ...]:
    """The datasets a stage's numbers depend on, sorted: its training set, the validation
    sets, their mixture parts and its refinement's unlabeled set."""
    unlabeled = (stage.refinement.unlabeled,) if stage.refine is not None else ()
    datasets = config.datasets

    def names() -> tuple[str, ...]:
        parts = [p for n in (stage.train, *val) for p in datasets[n].get("mix", {})]
        return tuple(sorted({stage.train, *val, *parts, *unlabeled}))

    return _remembered(("used", id(datasets), stage.train, val, unlabeled), datasets, names)


def _text(key: Any, pin: Any, value: Callable[[], Any]) -> str:
    """The JSON (sorted keys) of ``value()``, remembered (see _remembered)."""
    return _remembered(("json", *key), pin, lambda: _ENCODER.encode(value()))


_REMEMBERED: dict[Any, tuple[Any, Any]] = {}  # key -> (the object whose id it holds, value)


def _remembered(key: Any, pin: Any, make: Callable[[], Any]) -> Any:
    """``make()``, remembered under ``key`` for as long as ``pin``, the object whose id
    the key holds, is the one it was made for (held here, so its id names no other
    object): parts many runs of a sweep share are made once."""
    entry = _REMEMBERED.get(key)
    if entry is None or entry[0] is not pin:
        if len(_REMEMBERED) > 8192:
            _REMEMBERED.clear()
        entry = _REMEMBERED[key] = (pin, make())
    return entry[1]


# the values of a document that another seed changes, in the order JSON's sorted keys
# give them: the seed, and through the hashes a stage's parent and owner
_RESEEDED = ("owner", "parent", "seed")


def _template(document: dict[str, Any], texts: dict[str, str]) -> tuple[str, ...]:
    """The text json.dumps(document, sort_keys=True) makes, the values under the keys of
    ``texts`` taken as that JSON, cut where the values under _RESEEDED go: encoded in
    one pass with a marker (a random token no config holds) standing for each of them."""
    slots = {key: _MARK for key in _RESEEDED if key in document}
    text = _ENCODER.encode({**document, **slots, **{key: _MARK + key for key in texts}})
    for key, value in texts.items():
        text = text.replace(f'"{_MARK}{key}"', value, 1)
    return tuple(text.split(f'"{_MARK}"'))


def _filled(template: tuple[str, ...], document: dict[str, Any]) -> str:
    """The hash of ``template`` (of ``document`` but for its _RESEEDED values) with the
    values ``document`` has there: content_hash(document)."""
    values = [_scalar_json(document[key]) for key in _RESEEDED if key in document]
    pieces = [template[0]]
    for value, part in zip(values, template[1:], strict=True):
        pieces += (value, part)
    text = "".join(pieces)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _scalar_json(value: Any) -> str:
    """_ENCODER.encode(value), for a seed (int) or a hash (str or None) on a short path."""
    if value is None:
        return "null"
    return int.__repr__(value) if type(value) is int else _ENCODER.encode(value)


_MARK = secrets.token_hex(16)
