"""Column spelling shared by tables and figures: templated column names and the
direction of each metric column."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["fields", "higher_is_better", "lookup", "render"]

_TEMPLATE = re.compile(r"\{(\w+)(?::([^{}]*))?\}")
_METRIC = re.compile(r"(?:pretrain_)?(?:target|best_val|val)_(\w+?)(?:/|$)")


def render(template: str, row: dict[str, Any]) -> str | None:
    """``template`` with ``{column[:format]}`` filled from ``row``; None where it cannot be."""
    try:
        return _TEMPLATE.sub(lambda m: format(row[m.group(1)], m.group(2) or ""), template)
    except (KeyError, ValueError, TypeError):
        return None


def fields(template: str) -> list[str]:
    """The columns ``template`` names, in order (``render`` reads no others)."""
    return [m.group(1) for m in _TEMPLATE.finditer(template)]


def lookup(frame: pd.DataFrame, template: str) -> pd.Series:
    """Per row, the value of the column whose name is ``template`` filled with that row
    (MLflow key spelling: '+' as 'p')."""
    import pandas as pd

    values = []
    for row in frame.to_dict("records"):
        name = render(template, row)
        name = name.replace("+", "p") if name else None
        values.append(row.get(name) if name else None)
    return pd.Series(values, index=frame.index, dtype="float64")


def higher_is_better(column: str) -> bool:
    """Whether a larger value of a metric column is better: for columns of a registered
    validation metric (``target_psnr``, ``best_val_iou/…``) its direction, else (losses) no."""
    from zoo.metrics import METRICS

    found = _METRIC.match(column)
    metric = METRICS.get(found.group(1)) if found else None
    return metric.higher_is_better if metric else False
