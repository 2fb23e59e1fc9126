"""Long (run, key, value) tables read packed: one row per run, its keys and values joined
by a separator in SQL and split by Arrow. A sweep's 2 M param rows arrive as a few
thousand rows: a third of the query's time and no per-row Python objects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PACKED_COLUMNS", "packed_sql", "unpack"]

PACKED_COLUMNS = ["run_id", "count", "present", "keys", "values"]
_SEPARATOR = "\x1f"  # ASCII unit separator: a value holding it is read row by row


def packed_sql(dialect: str, table: str, value: str, where: str) -> str:
    """Per run of ``table`` (aliased ``x``) that ``where`` selects: its id, row count, count
    of values that are not NULL, and its keys and values (``value``: a text expression)
    joined in the same order."""
    if dialect == "sqlite":  # SQLite's aggregates of one query see the rows in one order
        joined = f"group_concat(x.key, char(31)), group_concat({value}, char(31))"
    else:
        joined = (
            f"string_agg(x.key, chr(31) ORDER BY x.key), "
            f"string_agg({value}, chr(31) ORDER BY x.key)"
        )
    counts = f"count(*), count({value})"
    return f"SELECT x.run_uuid, {counts}, {joined} FROM {table} x WHERE {where} GROUP BY x.run_uuid"


def unpack(packed: pd.DataFrame, numeric: bool) -> pd.DataFrame | None:
    """run_id, key, value rows of ``packed_sql``'s result (``numeric``: values as doubles,
    NaN included); None where that cannot be told exactly (a value holding the separator,
    a NULL, no rows, no value but NaN): the caller then reads the rows themselves."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if packed.empty:
        return None
    counts = packed["count"].to_numpy(dtype=np.int64)
    if not np.array_equal(packed["present"].to_numpy(dtype=np.int64), counts):
        return None  # a NULL: the joined values would lose its place
    keys, values = (
        pc.split_pattern(pa.array(packed[c], pa.string(), from_pandas=True), _SEPARATOR)
        for c in ("keys", "values")
    )
    for split in (keys, values):
        lengths = pc.list_value_length(split).fill_null(-1).to_numpy(zero_copy_only=False)
        if not np.array_equal(lengths, counts):
            return None
    value: Any = pc.list_flatten(values)
    if numeric:
        try:
            value = pc.cast(value, pa.float64())
        except pa.ArrowInvalid:  # a text SQL printed that Arrow does not parse
            return None
        if pc.all(pc.is_nan(value)).as_py():
            return None  # read row by row, each NaN a NULL there
    return pd.DataFrame(
        {
            "run_id": np.repeat(packed["run_id"].to_numpy(dtype=object), counts),
            "key": pc.list_flatten(keys).to_pandas(),
            "value": value.to_pandas(),
        }
    )
