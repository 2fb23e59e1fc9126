"""``zoo import``: an external results table logged as finished MLflow runs, idempotently."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from zoo._typed import build, check, check_name
from zoo._yaml import load_yaml
from zoo.errors import ConfigError
from zoo.store import FinishedRun, Tracker

__all__ = ["ImportMapping", "import_table", "load_mapping", "table_runs"]


@dataclass(frozen=True)
class ImportMapping:
    # column -> axis name: logged as a param and a zoo.axis.<name> tag
    axes: dict[str, str] = field(default_factory=dict)
    # column (a regular expression; named groups fill {name} in the target) -> metric name,
    # in the raw-loss family ("target_loss", "best_val_loss/transfer/{d}"); each loss also
    # gets its adjusted twin ("loss" -> "loss_adj")
    metrics: dict[str, str] = field(default_factory=dict)
    losses: Literal["raw", "adjusted"] = "adjusted"  # what the table's loss columns hold
    offset: float = 0.3133  # the loss floor: adjusted = raw - offset
    stages: tuple[str, ...] = ("pretrain", "transfer")  # stage names recorded with each run

    def validate(self, where: str) -> None:
        check(bool(self.axes), f"{where}.axes", self.axes, "at least one column -> axis name")
        check(
            bool(self.metrics),
            f"{where}.metrics",
            self.metrics,
            "at least one column -> metric name",
        )


def load_mapping(
    path: Path | None, axes: list[str], metrics: list[str], overrides: dict[str, Any]
) -> ImportMapping:
    """A mapping from a YAML file and/or ``COLUMN[=NAME]`` command-line items."""
    document = dict(load_yaml(path)) if path else {}
    for kind, items in (("axes", axes), ("metrics", metrics)):
        for item in items:
            column, _, name = item.partition("=")
            document.setdefault(kind, {})[column] = name or column
    document.update({k: v for k, v in overrides.items() if v is not None})
    return build(ImportMapping, document, "mapping")


def _adjusted_name(name: str) -> str:
    return name.replace("loss", "loss_adj", 1)


def _row_metrics(
    row: dict[str, Any], compiled: list[tuple[re.Pattern, str]], mapping: ImportMapping
) -> dict[str, float]:
    metrics: dict[str, float] = {"loss_floor": mapping.offset}
    for column, value in row.items():
        for pattern, target in compiled:
            match = pattern.fullmatch(column)
            if match is None or value is None or value != value:
                continue
            name = target.format(**match.groupdict())
            if "loss" in name:
                raw = value + mapping.offset if mapping.losses == "adjusted" else value
                metrics[name], metrics[_adjusted_name(name)] = raw, raw - mapping.offset
            else:
                metrics[name] = value
    return metrics


def import_table(table: Path, experiment: str, mapping: ImportMapping, uri: str) -> tuple[int, int]:
    """Log each row of ``table`` (CSV) as a finished run of ``experiment`` through the
    store's batched logging; a row already imported (same table name, row and axes) is
    skipped. Returns (rows, runs added). A bad ``experiment`` name is a ConfigError."""
    check_name(experiment, "--experiment")
    runs = table_runs(table, experiment, mapping)
    tracker = Tracker(uri)
    return len(runs), tracker.import_runs(tracker.experiment(experiment), runs)


def table_runs(table: Path, experiment: str, mapping: ImportMapping) -> list[FinishedRun]:
    """The finished run of each row of ``table``, its identity from the table's name, the
    row's index and its axes."""
    import pandas as pd

    try:
        frame = pd.read_csv(table)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{table}: cannot read as CSV ({error})") from None
    missing = [c for c in mapping.axes if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"mapping.axes: column {missing[0]!r} is not in {table.name}; "
            f"columns: {', '.join(frame.columns)}"
        )
    compiled = [(re.compile(c), t) for c, t in mapping.metrics.items()]
    if not any(p.fullmatch(c) for p, _ in compiled for c in frame.columns):
        raise ConfigError(f"mapping.metrics: no column of {table.name} matches")
    runs = []
    for index, row in enumerate(frame.to_dict("records")):
        axes = {name: row[column] for column, name in mapping.axes.items()}
        identity = hashlib.sha256(
            json.dumps([table.name, index, axes], default=str).encode()
        ).hexdigest()[:16]
        tags = {
            "zoo.kind": "run",
            "zoo.config_hash": identity,
            "zoo.sweep": experiment,
            "zoo.stages": ",".join(mapping.stages),
            "zoo.imported_from": table.name,
            "mlflow.runName": f"import-{index}",
        }
        tags.update({f"zoo.axis.{k}": str(v) for k, v in axes.items()})
        runs.append(
            FinishedRun(
                tags=tags,
                params={k: str(v) for k, v in axes.items()},
                metrics=_row_metrics(row, compiled, mapping),
            )
        )
    return runs
