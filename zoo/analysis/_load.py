"""A sweep's runs as tidy tables: the store's bulk read (zoo.store.read_tables), pivoted.

One row per run (identity, state, axes, params, summary metrics) and the per-epoch
histories, values exactly as logged (NaN included), whatever the store's backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zoo.store import HISTORY_KEYS, read_tables

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Tables", "load_tables"]

_EPOCH_KEYS = (*HISTORY_KEYS, "images_per_s")  # per-epoch metrics: histories, not run columns
_AXIS = "zoo.axis."
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


def _wide(long: pd.DataFrame, name: Callable[[str], str | None] = str) -> pd.DataFrame:
    """One column per key that ``name`` names (None: left out), named so and in the order
    of those names, one row per run with any of them (ordered by run id): what
    ``DataFrame.pivot`` gives for those rows, built on integer codes (pivoting text in
    Arrow-backed columns takes seconds for thousands of runs). A text column whose every
    value reads as a number becomes numeric (Int64 where every value is a whole number
    written without a point or exponent)."""
    import numpy as np
    import pandas as pd

    keys, key_names = pd.factorize(long["key"], sort=True)
    named = {i: name(key) for i, key in enumerate(key_names)}
    chosen = sorted((n, i) for i, n in named.items() if n is not None)
    column_of = np.full(len(key_names) + 1, -1)  # key code (-1: NULL, last) -> column
    column_of[[i for _, i in chosen]] = np.arange(len(chosen))
    columns = column_of[keys]
    kept = columns >= 0
    runs, run_ids = pd.factorize(long["run_id"], sort=True)
    present = np.unique(runs[kept])
    row_of = np.full(len(run_ids), -1)
    row_of[present] = np.arange(len(present))
    index = pd.Index(run_ids.take(present), name="run_id")
    value = long["value"]
    if not (value.dtype == object or pd.api.types.is_string_dtype(value)):
        grid = np.full((len(present), len(chosen)), np.nan)
        grid[row_of[runs[kept]], columns[kept]] = value.to_numpy()[kept]
        return pd.DataFrame(grid, index=index, columns=pd.Index([n for n, _ in chosen], name="key"))
    codes, texts = pd.factorize(value)
    grid = np.full((len(present), len(chosen)), -1)
    grid[row_of[runs[kept]], columns[kept]] = codes[kept]
    text = _Texts(texts)
    frame = {n: text.column(grid[:, j], index, value.dtype) for j, (n, _) in enumerate(chosen)}
    return pd.DataFrame(frame, index=index, columns=pd.Index([n for n, _ in chosen], name="key"))


class _Texts:
    """A text column's distinct values, each read as a number once."""

    def __init__(self, texts: pd.Index):
        import numpy as np
        import pandas as pd

        self.texts = texts
        self.objects = np.append(np.asarray(texts, dtype=object), np.nan)  # code -1: missing
        self.numbers = pd.to_numeric(self.objects, errors="coerce").astype(float)
        self.dotted = np.append(texts.astype(str).str.contains(r"[.eE]"), False)

    def column(self, codes, index: pd.Index, dtype) -> pd.Series:
        """The column of values ``codes`` (-1: missing): numeric when every present value
        reads as a number (as ``pd.to_numeric`` reads it), else text (of ``dtype`` where
        that is a string type, else inferred as ``DataFrame.pivot`` infers it)."""
        import numpy as np
        import pandas as pd

        used = self.numbers[codes[codes >= 0]]
        if np.isnan(used).any() and isinstance(dtype, pd.StringDtype):
            return pd.Series(self.texts.array.take(codes, allow_fill=True), index, dtype=dtype)
        if np.isnan(used).any():
            return pd.Series(self.objects[codes], index)  # its type inferred, as by pivot
        numbers = pd.Series(self.numbers[codes], index)
        if not (np.mod(used, 1) == 0).all() or self.dotted[codes[codes >= 0]].any():
            return numbers
        if np.abs(used).max(initial=0) >= 2**53:  # not exact as a double: read as an integer
            numbers = pd.Series(pd.to_numeric(self.objects[codes], errors="coerce"), index)
        return numbers.astype("Int64")


def _tag_column(key: str) -> str | None:
    return _TAG_COLUMNS.get(key)


def _axis(key: str) -> str | None:
    return key[len(_AXIS) :] if key.startswith(_AXIS) else None


def _param(key: str) -> str:
    return "param." + key


def _summary(key: str) -> str | None:
    """Metrics logged once per run; per-epoch ones belong to the histories."""
    return None if key in _EPOCH_KEYS or key.startswith("val_") else key


def load_tables(
    uri: str,
    experiment: str,
    *,
    histories: bool = True,
    param_keys: tuple[str, ...] | None = None,
    metric_prefixes: tuple[str, ...] | None = None,
) -> Tables | None:
    """Every active run of ``experiment`` as one row, plus per-epoch histories; None if the
    experiment does not exist. ``histories=False`` leaves the histories empty,
    ``param_keys`` reads only those params and ``metric_prefixes`` only the summary
    metrics whose key starts with one of them: a lighter read for listings."""
    import pandas as pd

    found = read_tables(
        uri,
        experiment,
        histories=histories,
        param_keys=param_keys,
        metric_prefixes=metric_prefixes,
    )
    if found is None:
        return None
    runs, tags, params, latest, history = found
    axes = _wide(tags, _axis)
    table = runs.set_index("run_id").join(
        [_wide(tags, _tag_column), axes, _wide(params, _param), _wide(latest, _summary)],
        how="left",
    )
    table = table.reset_index()
    for column in ("kind", "error", "stage_run"):
        if column not in table:
            table[column] = pd.NA
    return Tables(table, history, tuple(axes.columns))
