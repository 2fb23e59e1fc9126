"""A sweep's runs as tidy tables: the store's bulk read (zoo.store.read_tables), pivoted.

One row per run (identity, state, axes, params, summary metrics) and the per-epoch
histories, values exactly as logged (NaN included), whatever the store's backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from zoo.store import HISTORY_KEYS, read_tables

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Tables", "load_tables"]

_EPOCH_KEYS = (*HISTORY_KEYS, "images_per_s")  # per-epoch metrics: histories, not run columns
_TAG_COLUMNS = {
    "zoo.kind": "kind",
    "zoo.error": "error",
    "zoo.stage_run": "stage_run",
    "zoo.config_hash": "config_hash",
    "zoo.sweep": "sweep",
    "zoo.stage": "stage_name",
    "mlflow.runName": "name",
}


@dataclass(frozen=True)
class Tables:
    runs: pd.DataFrame  # one row per run: identity, state, axes, params, summary metrics
    histories: pd.DataFrame  # run_id, key, step, value for per-epoch metrics
    axes: tuple[str, ...]  # the sweep's axis columns (from zoo.axis.* tags)


def _wide(long: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
    """One column per key; a column whose every value reads as a number becomes numeric."""
    import pandas as pd

    wide = long.pivot(index="run_id", columns="key", values="value")
    for column in wide.columns:
        if wide[column].dtype == object or pd.api.types.is_string_dtype(wide[column]):
            numbers = pd.to_numeric(wide[column], errors="coerce")
            if numbers.notna().sum() == wide[column].notna().sum():
                integral = (
                    numbers.dropna().mod(1).eq(0).all()
                    and not wide[column].dropna().str.contains(r"[.eE]").any()
                )
                wide[column] = numbers.astype("Int64") if integral else numbers
    return wide.add_prefix(prefix) if prefix else wide


def load_tables(
    uri: str,
    experiment: str,
    *,
    histories: bool = True,
    param_keys: tuple[str, ...] | None = None,
) -> Tables | None:
    """Every active run of ``experiment`` as one row, plus per-epoch histories; None if the
    experiment does not exist. ``histories=False`` leaves the histories empty and
    ``param_keys`` reads only those params: a lighter read for listings."""
    import pandas as pd

    found = read_tables(uri, experiment, histories=histories, param_keys=param_keys)
    if found is None:
        return None
    runs, tags, params, latest, history = found
    axes = tags[tags.key.str.startswith("zoo.axis.")].assign(
        key=lambda t: t.key.str.slice(len("zoo.axis."))
    )
    kept_tags = tags[tags.key.isin(_TAG_COLUMNS)].assign(key=lambda t: t.key.map(_TAG_COLUMNS))
    summary = latest[~latest.key.isin(_EPOCH_KEYS) & ~latest.key.str.startswith("val_")]
    table = runs.set_index("run_id").join(
        [
            _wide(kept_tags),
            _wide(axes),
            _wide(params, "param."),
            _wide(summary),
        ],
        how="left",
    )
    table = table.reset_index()
    for column in ("kind", "error", "stage_run"):
        if column not in table:
            table[column] = pd.NA
    return Tables(table, history, tuple(sorted(axes.key.unique())))
