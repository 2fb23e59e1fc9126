"""Readable run names from a sweep's axis values.

A name says what differs between runs, e.g.
``df-10→df+10 · lr 1e-3→1e-4 · frozen encoder · n 16 · seed 0``: axes named
``<stage>_<what>`` for two stages are paired as ``a→b``; well-known axes
(defocus, lr, freeze, size, seed) get short forms; any other axis reads
``name value``. A spec may set its own pattern (``run_name: "{freeze} · seed {seed}"``,
``{name:format}`` fields); a name the pattern needs but a job lacks (a shared stage
knows only its own axes) falls back to the default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["SEPARATOR", "format_value", "run_name"]

SEPARATOR = " · "
_TEMPLATE = re.compile(r"\{(\w+)(?::([^{}]*))?\}")
_FREEZE = {"none": "no freeze", "encoder": "frozen encoder", "decoder": "frozen decoder"}


def _number(value: float) -> str:
    """``1e-3`` rather than ``0.001``; plain digits for integers."""
    if float(value).is_integer() and abs(value) < 1e4:
        return str(int(value))
    if value != 0 and not 1e-2 <= abs(value) < 1e4:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}"


def format_value(what: str, value: Any) -> str:
    """One value of axis kind ``what`` (``defocus``, ``lr``, ...) as it reads in a name."""
    if what == "defocus" and isinstance(value, int | float):
        return f"df{int(value):+d}" if float(value).is_integer() else f"df{value:+g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return _number(value)


def _part(what: str, values: list[Any]) -> str:
    text = "→".join(format_value(what, v) for v in values)
    if what == "defocus":
        return text
    if what == "freeze" and len(values) == 1:
        return _FREEZE.get(str(values[0]), f"freeze {values[0]}")
    label = {"size": "n", "lr": "lr", "seed": "seed"}.get(what, what)
    return f"{label} {text}"


def _default(names: Mapping[str, Any], stages: Sequence[str]) -> str:
    """Axes ``<stage>_<what>`` grouped by ``what`` in stage order; the rest one part each."""
    groups: dict[str, list[Any]] = {}
    for name, value in names.items():
        stage, _, what = name.partition("_")
        key = what if stage in stages and what else name
        groups.setdefault(key, []).append(value)
    return SEPARATOR.join(_part(what, values) for what, values in groups.items())


def run_name(
    names: Mapping[str, Any],
    stages: Sequence[str] = (),
    pattern: str = "",
    stage: str | None = None,
) -> str:
    """The readable name of a sweep job with axis values ``names``.

    ``stages`` are the run's stage names (to pair ``pretrain_lr`` with
    ``transfer_lr``); ``stage`` names a shared-stage job, whose name then starts
    with it. A non-empty ``pattern`` is filled with ``names`` when it can be.
    """
    text = ""
    if pattern:
        try:
            text = _TEMPLATE.sub(lambda m: format(names[m.group(1)], m.group(2) or ""), pattern)
        except (KeyError, ValueError, TypeError):
            text = ""
    text = text or _default(names, stages)
    if stage:
        return f"{stage}{SEPARATOR}{text}" if text else stage
    return text or "run"
