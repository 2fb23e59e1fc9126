"""The trained models of one or more experiments as one table, read through the analysis
load path (a few SQL queries per experiment, not one request per run)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from zoo.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["filter_models", "format_models", "model_table", "sort_models"]

_FIXED = ("run_id", "name", "experiment")
_TAIL = ("train", "validate", "params", "state")
# what a listing reads
_PARAMS = (*(f"stages.{i}.train" for i in range(8)), "validate_on", "model.task")
_METRICS = ("target_", "best_val_", "params_total")  # key prefixes
_SHOWN = ("target_", "params_total")  # the text listing's: every headline is a target_ one


def _experiments(uri: str, names: list[str] | None) -> list[str]:
    if names:
        return names
    from zoo.store import Tracker

    return [e.name for e in Tracker(uri).search_experiments(max_results=50000)]


def _domains(runs: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per run: training domains ("a→b", in stage order) and validation domains."""
    import pandas as pd

    stages = sorted(
        (c for c in runs.columns if re.fullmatch(r"param\.stages\.\d+\.train", c)),
        key=lambda c: int(c.split(".")[2]),
    )
    train = pd.Series(pd.NA, index=runs.index, dtype="string")
    for column in stages:
        part = runs[column].astype("string")
        train = train.where(part.isna(), (train + "→" + part).fillna(part))
    train = train.fillna("")
    listed = runs.get("param.validate_on", pd.Series(pd.NA, index=runs.index)).astype("string")
    validate = listed.str.findall(r"'([^']*)'").str.join(",").fillna("")
    every = train.str.split("→").map(lambda d: ",".join(dict.fromkeys(d)) if d else "")
    return train, validate.where(validate != "", every)


def model_table(
    uri: str, experiments: list[str] | None = None, every_metric: bool = True
) -> pd.DataFrame:
    """One row per trained model (shared-stage runs left out): run id, readable name,
    experiment, axis values, summary metrics, training and validation domains,
    parameter count and state. ``experiments`` None means every experiment;
    ``every_metric=False`` reads only the target_ metrics (the headlines), a third of
    the read: all a text listing sorted by one of them shows."""
    import pandas as pd

    from zoo.analysis import load_tables

    prefixes = _METRICS if every_metric else _SHOWN
    frames = []
    for name in _experiments(uri, experiments):
        tables = load_tables(
            uri, name, histories=False, param_keys=_PARAMS, metric_prefixes=prefixes
        )
        if tables is None:
            raise ConfigError(f"experiment {name!r}: not in the tracking store {uri}")
        runs = tables.runs[tables.runs["kind"].fillna("run") == "run"]
        train, validate = _domains(runs)
        metrics = [c for c in runs.columns if c.startswith(("target_", "best_val_"))]
        frame = pd.DataFrame(
            {
                "run_id": runs["run_id"],
                "name": runs["name"] if "name" in runs else runs["run_id"].str[:8],
                "experiment": name,
                **{axis: runs[axis] for axis in tables.axes},
                **{m: runs[m] for m in metrics},
                "train": train,
                "validate": validate,
                "params": pd.to_numeric(
                    runs.get("params_total", pd.Series(pd.NA, index=runs.index))
                ).astype("Int64"),
                "state": runs["status"],
            }
        )
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*_FIXED, *_TAIL])
    return pd.concat(frames, ignore_index=True)


def _matches(column: pd.Series, value: str) -> pd.Series:
    import pandas as pd

    text = column.astype("string")
    try:
        number = float(value)
    except ValueError:
        return text == value
    return (pd.to_numeric(column, errors="coerce") == number) | (text == value)


def filter_models(table: pd.DataFrame, where: list[str]) -> pd.DataFrame:
    """Rows whose columns equal every ``AXIS=VALUE`` (numbers compare as numbers)."""
    for item in where:
        column, sep, value = item.partition("=")
        if not sep or column not in table:
            known = [c for c in table.columns if c not in (*_FIXED, *_TAIL)]
            raise ConfigError(
                f"--where {item!r}: expected AXIS=VALUE with AXIS one of "
                + ", ".join(known)
                + (did_you_mean(column, known) if sep else "")
            )
        table = table[_matches(table[column], value).fillna(False).astype(bool)]
    return table


def sort_models(table: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Best first by ``metric``, default the headline of the models' task (best adjusted loss
    for segmentation, PSNR for regression: zoo.analysis.HEADLINES): descending where higher
    is better (IoU, accuracy, PSNR, SSIM), else ascending; missing last."""
    from zoo.analysis import headline, higher_is_better

    metric = metric or headline(table)
    if metric not in table:
        known = [c for c in table.columns if c.startswith(("target_", "best_val_"))]
        raise ConfigError(f"--sort {metric!r}: not a metric here; known: " + ", ".join(known))
    return table.sort_values(
        metric, ascending=not higher_is_better(metric), na_position="last", kind="stable"
    )


def _cell(value: Any) -> str:
    if value is None or value != value:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_models(table: pd.DataFrame, metric: str | None = None, width: int | None = None) -> str:
    """``table`` as aligned text: identity (a run id prefix every command accepts), axes,
    ``metric`` (default the models' headline), domains, parameters, state. Lines fit
    ``width`` where given: the domain and parameter columns go first, then long names are
    cut in the middle, so names that differ at their end stay apart."""
    from zoo.analysis import headline

    metric = metric or headline(table)
    fixed = {*_FIXED, *_TAIL}
    axes = [
        c
        for c in table.columns
        if c not in fixed and not c.startswith(("target_", "best_val_")) and c != "seed"
    ]
    columns = [
        "run_id",
        "name",
        *axes,
        *(["seed"] if "seed" in table else []),
        metric,
        *_TAIL,
    ]
    columns = [c for c in columns if c in table]
    rows = [columns] + [[_cell(v) for v in row] for row in table[columns].itertuples(index=False)]
    for row in rows[1:]:
        row[0] = row[0][:_ID_PREFIX]
    return "\n".join("  ".join(row).rstrip() for row in _fit(rows, width))


_ID_PREFIX = 8  # characters of a run id shown: `zoo models show` takes any unique prefix
_DROPPABLE = ("validate", "train", "params")  # left out, in this order, of narrow tables


def _fit(rows: list[list[str]], width: int | None) -> list[list[str]]:
    """``rows`` padded to aligned columns, narrowed to ``width`` where given."""

    def total(rows: list[list[str]]) -> int:
        return sum(max(len(r[i]) for r in rows) for i in range(len(rows[0]))) + 2 * (
            len(rows[0]) - 1
        )

    for column in _DROPPABLE:
        if width is None or total(rows) <= width or column not in rows[0]:
            continue
        index = rows[0].index(column)
        rows = [r[:index] + r[index + 1 :] for r in rows]
    if width is not None and "name" in rows[0] and total(rows) > width:
        index = rows[0].index("name")
        widest = max(len(r[index]) for r in rows)
        keep = max(12, widest - (total(rows) - width))
        rows = [[*r[:index], _middle(r[index], keep), *r[index + 1 :]] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [[c.ljust(w) for c, w in zip(r, widths, strict=True)] for r in rows]


def _middle(text: str, keep: int) -> str:
    """``text`` cut to ``keep`` characters by an ellipsis in its middle."""
    if len(text) <= keep:
        return text
    head = (keep - 1) // 2
    return text[:head] + "…" + text[len(text) - (keep - 1 - head) :]
