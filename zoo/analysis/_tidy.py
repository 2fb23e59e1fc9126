"""From the store's rows to the tables a report shows: offsets, derived columns, aggregates."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zoo._typed import check

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["STATS", "Definition", "aggregate", "apply_offset", "lookup", "prepare"]

STATS = ["count", "mean", "median", "std", "min"]
_TEMPLATE = re.compile(r"\{(\w+)(?::([^{}]*))?\}")


@dataclass(frozen=True)
class Definition:
    """A report definition (``analysis/*.yaml``): what to tabulate and draw."""

    title: str = "Sweep report"
    value: str = "target_loss_adj"  # the headline column
    value_label: str = "best adjusted loss, target domain"
    derive: dict[str, Any] = field(default_factory=dict)  # name -> "template" or {column: tmpl}
    exclude: dict[str, list[Any]] = field(default_factory=dict)  # column -> values left out
    tables: tuple[tuple[str, ...], ...] = ()  # extra groupings to aggregate over seeds
    figures: tuple[dict[str, Any], ...] = ()  # {kind: ..., name: ..., kind-specific columns}

    def validate(self, where: str) -> None:
        from zoo.analysis._figures import FIGURES

        for i, entry in enumerate(self.figures):
            check(
                isinstance(entry, dict) and entry.get("kind") in FIGURES and "name" in entry,
                f"{where}.figures.{i}",
                entry,
                "{kind: ..., name: ...} with kind one of " + ", ".join(FIGURES),
            )


def _render(template: str, row: dict[str, Any]) -> str | None:
    try:
        return _TEMPLATE.sub(lambda m: format(row[m.group(1)], m.group(2) or ""), template)
    except (KeyError, ValueError, TypeError):
        return None


def lookup(frame: pd.DataFrame, template: str) -> pd.Series:
    """Per row, the value of the column whose name is ``template`` filled with that row
    (MLflow key spelling: '+' as 'p')."""
    import pandas as pd

    values = []
    for row in frame.to_dict("records"):
        name = _render(template, row)
        name = name.replace("+", "p") if name else None
        values.append(row.get(name) if name else None)
    return pd.Series(values, index=frame.index, dtype="float64")


def apply_offset(runs: pd.DataFrame, offset: float) -> pd.DataFrame:
    """Adjusted losses recomputed as raw − ``offset`` for every raw loss column."""
    runs = runs.copy()
    for column in list(runs.columns):
        if re.search(r"(^|_)loss($|/)", column) and "loss_adj" not in column:
            runs[column.replace("loss", "loss_adj", 1)] = runs[column] - offset
    runs["loss_floor"] = offset
    return runs


def prepare(runs: pd.DataFrame, definition: Definition, offset: float | None) -> pd.DataFrame:
    """The runs a report is about (not shared-stage runs), with offsets and derived columns."""
    runs = runs[runs["kind"].fillna("run") == "run"].copy()
    if offset is not None:
        runs = apply_offset(runs, offset)
    for index in range(8):
        name, epochs = f"param.stages.{index}.name", f"param.stages.{index}.epochs"
        if name in runs and epochs in runs:
            for stage in runs[name].dropna().unique():
                runs.loc[runs[name] == stage, f"epochs/{stage}"] = runs[epochs]
    last = max((i for i in range(8) if f"param.stages.{i}.train" in runs), default=None)
    if last is not None:
        runs["target_key"] = "val_loss_adj/" + runs[f"param.stages.{last}.train"].astype(
            str
        ).str.replace("+", "p")
    rows = runs.to_dict("records")
    for name, template in definition.derive.items():
        if isinstance(template, dict):
            runs[name] = lookup(runs, template["column"])
        else:
            runs[name] = [_render(template, row) for row in rows]
    for column, values in definition.exclude.items():
        if column in runs:
            runs = runs[~runs[column].isin(values)]
    return runs


def aggregate(runs: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """count, mean, median, std, min of ``value`` for each combination of ``by``."""
    return runs.groupby(by, dropna=False)[value].agg(STATS).reset_index()
