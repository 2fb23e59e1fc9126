"""Strict construction of typed, frozen dataclasses from YAML mappings.

``build(cls, mapping, where)`` refuses unknown keys, wrong types and (through
each class's ``validate``) impossible values with a ConfigError naming the
dotted field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from zoo.errors import ConfigError, did_you_mean

__all__ = ["CONTROL_CHARACTERS", "build", "check", "check_key", "check_name", "to_dict"]

# refused in any value that reaches a file name, a tag or a rendered script
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
# sweep and experiment names: they name folders (.zoo/sweeps/NAME, .zoo/logs/NAME)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.+=-]+")  # no '@': NAME@ALIAS names a model

T = TypeVar("T")


def check(condition: bool, where: str, value: Any, allowed: str) -> None:
    """Raise a one-line ConfigError unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{where}: {value!r} is not allowed; expected {allowed}")


def check_name(name: str, where: str) -> None:
    """Refuse (ConfigError naming ``where``) a sweep or experiment name that is empty,
    has a character other than ASCII letters, digits and ``- _ . + @ =``, is ``.`` or
    contains ``..``: such a name could not name a folder of its own."""
    check(
        _SAFE_NAME.fullmatch(name) is not None and name != "." and ".." not in name,
        where,
        name,
        "letters, digits, '-', '_', '.', '+', '@' or '=' (not '.' alone, no '..')",
    )


def _require(condition: bool, where: str, value: Any, tp: Any) -> None:
    """check(), describing ``tp`` only when it fails (descriptions are not free)."""
    if not condition:
        raise ConfigError(f"{where}: {value!r} is not allowed; expected {_describe(tp)}")


def build(cls: type[T], mapping: Any, where: str) -> T:
    """An instance of dataclass ``cls`` from ``mapping``; errors name ``where.<field>``."""
    check(isinstance(mapping, dict), where, mapping, "a mapping")
    hints, fields = _schema(cls)
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise _unknown_key(f"{where}.{unknown[0]}: unknown key", unknown[0], fields)
    values = {}
    for name, field in fields.items():
        if name in mapping:
            values[name] = _convert(hints[name], mapping[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{name}: missing required key")
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if validate:
        validate(where)
    return instance


def check_key(cls: type, key: str, where: str) -> None:
    """Refuse a dotted ``key`` (``stages.0.lr``) naming no field of dataclass ``cls``: a
    ConfigError ``where: unknown key ...`` with the closest keys. List parts pass as
    indices (their range is the caller's to check), and so does every key below a
    mapping of ``Any`` (a dataset's parameters) or a scalar."""
    tp: Any = cls
    for part in key.split("."):
        if dataclasses.is_dataclass(tp):
            hints, fields = _schema(tp)
            if part not in fields:
                raise _unknown_key(f"{where}: unknown key {part!r}", part, fields)
            tp = hints[part]
        elif get_origin(tp) in (list, tuple, dict):
            tp = get_args(tp)[-1 if get_origin(tp) is dict else 0]
        else:
            return


def _unknown_key(message: str, key: str, fields: dict[str, Any]) -> ConfigError:
    """``message`` with the allowed keys and the closest ones to ``key``."""
    allowed = ", ".join(sorted(fields))
    return ConfigError(f"{message}; allowed keys: {allowed}{did_you_mean(key, fields)}")


@functools.cache
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    """Resolved type hints and init fields of ``cls`` (computed once per class)."""
    return typing.get_type_hints(cls), {f.name: f for f in _fields(cls) if f.init}


def _fields(instance: Any) -> list[dataclasses.Field]:
    """The config fields of a dataclass (or instance): not those marked internal (a
    resolved config's Resolver), which no file holds."""
    return [f for f in dataclasses.fields(instance) if not f.metadata.get("internal")]


_SORTED_JSON = json.JSONEncoder(sort_keys=True)  # json.dumps(..., sort_keys=True), made once


def _build_nested(cls: type[T], value: Any, where: str) -> T:
    """build() for a nested config; equal mappings share one (frozen) instance."""
    try:
        text = _SORTED_JSON.encode(value)
    except (TypeError, ValueError):
        return build(cls, value, where)
    return _build_from_json(cls, text, where)


@functools.lru_cache(maxsize=4096)
def _build_from_json(cls: type[T], text: str, where: str) -> T:
    return build(cls, json.loads(text), where)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    names = {float: "a finite number", int: "an integer", str: "a string", bool: "true or false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, value: Any, where: str) -> Any:
    if tp is float:  # finite: no config field means anything by nan or inf
        number = isinstance(value, int | float) and not isinstance(value, bool)
        check(number and math.isfinite(value), where, value, "a finite number")
        return float(value)
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), where, value, "an integer")
        return value
    if tp in (str, bool):
        _require(isinstance(value, tp), where, value, tp)
        return value
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _convert(option, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not allowed; expected {_describe(tp)}")
    if tp is type(None):
        check(value is None, where, value, "null")
        return None
    if origin is Literal:
        if value not in get_args(tp):  # a near miss ('cosin') names the value it meant
            suggestion = did_you_mean(value, get_args(tp)) if isinstance(value, str) else ""
            raise ConfigError(
                f"{where}: {value!r} is not allowed; expected {_describe(tp)}{suggestion}"
            )
        return value
    if origin is tuple:
        args = get_args(tp)
        _require(isinstance(value, list | tuple), where, value, tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}.{i}") for i, v in enumerate(value))
        check(len(value) == len(args), where, value, f"a list of {len(args)} values")
        return tuple(
            _convert(a, v, f"{where}.{i}") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is list:
        _require(isinstance(value, list | tuple), where, value, tp)
        return [_convert(get_args(tp)[0], v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        check(isinstance(value, dict), where, value, "a mapping")
        _, value_type = get_args(tp)
        return {k: _convert(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build_nested(tp, value, where)
    raise TypeError(f"unsupported config type {tp!r} at {where}")


@functools.lru_cache(maxsize=4096)
def _frozen_to_dict(instance: Any) -> dict[str, Any]:
    """to_dict of a hashable config, computed once; callers must not modify the result."""
    return {f.name: to_dict(getattr(instance, f.name)) for f in _fields(instance)}


def to_dict(instance: Any) -> Any:
    """Plain YAML/JSON-ready data (dicts, lists, scalars) from a config dataclass."""
    if instance is None or isinstance(instance, str | int | float):
        return instance
    if dataclasses.is_dataclass(instance):
        try:
            return _frozen_to_dict(instance)
        except TypeError:  # holds a dict: unhashable, so not memoised
            return {f.name: to_dict(getattr(instance, f.name)) for f in _fields(instance)}
    if isinstance(instance, list | tuple):
        return [to_dict(v) for v in instance]
    if isinstance(instance, dict):
        return {k: to_dict(v) for k, v in instance.items()}
    return instance
