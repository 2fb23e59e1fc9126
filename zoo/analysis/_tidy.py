"""From the store's rows to the tables a report shows: offsets, derived columns, aggregates."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zoo._typed import check
from zoo.analysis._columns import fields, lookup, render
from zoo.metrics import TASK_HEADLINE

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "HEADLINES",
    "STATS",
    "Definition",
    "aggregate",
    "apply_offset",
    "headline",
    "prepare",
    "run_tasks",
    "table_task",
]

STATS = ["count", "mean", "median", "std", "min"]

# The headline column of each task, with its label: zoo.metrics.TASK_HEADLINE's metric as the
# report column of the target domain.
HEADLINES: dict[str, tuple[str, str]] = {
    task: (f"target_{metric}", label) for task, (metric, label) in TASK_HEADLINE.items()
}


@dataclass(frozen=True)
class Definition:
    """A report definition (``analysis/*.yaml``): what to tabulate and draw."""

    title: str = "Sweep report"
    value: str | None = None  # the headline column; None: the runs' task's (HEADLINES)
    value_label: str | None = None  # None: the task's label, or the column's name
    derive: dict[str, Any] = field(default_factory=dict)  # name -> "template" or {column: tmpl}
    exclude: dict[str, list[Any]] = field(default_factory=dict)  # column -> values left out
    tables: tuple[tuple[str, ...], ...] = ()  # extra groupings to aggregate over seeds
    medians: tuple[str, ...] = ()  # further columns whose median every table shows beside
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

    def resolved(self, runs: pd.DataFrame) -> Definition:
        """This definition with ``value`` and ``value_label`` filled in where it leaves them
        out: the headline of the task of ``runs`` (see ``table_task``)."""
        from dataclasses import replace

        value, label = HEADLINES[table_task(runs)]
        if self.value is not None:
            value, label = self.value, label if self.value == value else self.value
        return replace(self, value=value, value_label=self.value_label or label)


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
    templates = [t for t in definition.derive.values() if not isinstance(t, dict)]
    named = dict.fromkeys(f for t in templates for f in fields(t) if f in runs)
    rows = runs[list(named)].to_dict("records")  # the columns templates name, not all
    for name, template in definition.derive.items():
        if isinstance(template, dict):
            runs[name] = lookup(runs, template["column"])
        else:
            runs[name] = [render(template, row) for row in rows]
    for column, values in definition.exclude.items():
        if column in runs:
            runs = runs[~runs[column].isin(values)]
    return runs


def aggregate(
    runs: pd.DataFrame, by: list[str], value: str, medians: tuple[str, ...] = ()
) -> pd.DataFrame:
    """count, mean, median, std, min of ``value`` for each combination of ``by``, then the
    median of each column of ``medians`` that ``runs`` has (as ``median <column>``)."""
    groups = runs.groupby(by, dropna=False)
    table = groups[value].agg(STATS)
    for column in medians:
        if column in runs:
            table[f"median {column}"] = groups[column].median()
    return table.reset_index()


def run_tasks(runs: pd.DataFrame) -> pd.Series:
    """Per run, its task: the logged ``model.task`` param where there is one, else
    "regression" for a run that logged a regression headline metric, "segmentation" for one
    that logged its loss (``target_loss``), missing for a run that logged neither (failed
    before its first epoch)."""
    import pandas as pd

    tasks = pd.Series(pd.NA, index=runs.index, dtype="object")
    if "target_loss" in runs:
        tasks[runs["target_loss"].notna()] = "segmentation"
    if HEADLINES["regression"][0] in runs:
        tasks[runs[HEADLINES["regression"][0]].notna()] = "regression"
    if "param.model.task" in runs:
        tasks = runs["param.model.task"].where(runs["param.model.task"].notna(), tasks)
    return tasks


def table_task(runs: pd.DataFrame) -> str:
    """The task of ``runs`` when every run whose task is known shares it; "segmentation"
    (today's default) when none is known or they mix."""
    known = set(run_tasks(runs).dropna())
    return known.pop() if len(known) == 1 else "segmentation"


def headline(runs: pd.DataFrame) -> str:
    """The headline column for ``runs``: their task's (HEADLINES)."""
    return HEADLINES[table_task(runs)][0]
