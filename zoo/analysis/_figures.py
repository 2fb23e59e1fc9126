"""The figure registry: each kind draws one seaborn figure from the tidy tables.

A kind takes (data, its entry in the report definition) and returns a
matplotlib figure, or raises ``Skip`` naming what the sweep lacks. Add a kind
with ``@figure("name")``; report definitions in ``analysis/`` choose kinds
and columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["FIGURES", "FigureData", "Skip", "figure", "heading"]


class Skip(Exception):
    """This figure does not apply to the sweep; the message says why."""


@dataclass(frozen=True)
class FigureData:
    runs: pd.DataFrame  # transfer (or single-stage) runs, filtered, with derived columns
    histories: pd.DataFrame  # run_id, key, step, value
    value: str  # the headline column
    value_label: str
    baseline: pd.DataFrame | None  # runs of a baseline sweep, when given


FIGURES: dict[str, Callable[[FigureData, dict[str, Any]], Figure]] = {}


def figure(kind: str):
    def register(draw: Callable[[FigureData, dict[str, Any]], Figure]):
        FIGURES[kind] = draw
        return draw

    return register


_HEADINGS = {  # a figure's heading in the report, from its entry's columns
    "distributions": "{value} by {panels}",
    "heatmap": "Median {value}: {rows} (rows) by {columns} (columns)",
    "baseline": "Transfer learning against single-stage training, by {size}",
    "generalisation": "Every validation domain after {stage}",
    "curves": "Learning curves on the target domain",
    "cost": "Training cost per epoch in {stage}, by {by}",
}


def heading(entry: dict[str, Any], value_label: str) -> str:
    """The words over a figure in the report: the entry's ``title``, else its kind's
    sentence filled with its columns (``value`` is the headline's label), by its ``hue``."""
    if entry.get("title"):
        return str(entry["title"])
    words = {k: ", ".join(map(str, v)) if isinstance(v, list) else v for k, v in entry.items()}
    text = _HEADINGS[entry["kind"]].format_map({**words, "value": value_label})
    text += f", by {entry['hue']}" if entry.get("hue") else ""
    return text[0].upper() + text[1:]


def readable_log(axis: Any) -> None:
    """Enough tick labels on a log y axis, in plain numbers: evenly spaced ones where the
    range spans less than a decade, else 1, 2 and 5 of every decade."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    if axis.get_yscale() != "log":
        return
    low, high = axis.get_ylim()
    narrow = low > 0 and high / low < 10
    axis.yaxis.set_major_locator(
        MaxNLocator(6, steps=[1, 2, 2.5, 5, 10]) if narrow else LogLocator(subs=(1.0, 2.0, 5.0))
    )
    axis.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.yaxis.set_minor_formatter(NullFormatter())


def spelled(names: pd.Series, runs: pd.DataFrame) -> pd.Series:
    """``names`` read from MLflow keys (``dfp10``) back in their datasets' spelling
    (``df+10``), as the runs' params name them."""
    from zoo.store import metric_key

    spelling = {}
    for column in runs.columns:
        if column.startswith("param."):
            for value in runs[column].dropna().unique():
                if isinstance(value, str) and metric_key(value) != value:
                    spelling[metric_key(value)] = value
    return names.map(lambda n: spelling.get(n, n))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def _require(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns or frame[c].isna().all()]
    if missing:
        raise Skip(f"no column {missing[0]!r}")
    return frame.dropna(subset=list(columns))


def _order(series: pd.Series) -> list:
    return sorted(series.unique(), key=lambda v: (isinstance(v, str), v))


def _numeric_first(name: str) -> tuple:
    """Sort key: names that are numbers in numeric order (-250 before -50), then the rest."""
    try:
        return (0, float(name), "")
    except ValueError:
        return (1, 0.0, name)


def _per_epoch(data: FigureData) -> tuple[str, str]:
    """The per-epoch metric that goes with the headline (its ``val_<metric>/<set>`` and
    ``best_val_<metric>/…`` columns) and its axis label: the headline's own validation metric
    (``target_psnr`` -> ``psnr``), else the adjusted loss."""
    from zoo.metrics import METRICS

    name = data.value.removeprefix("target_")
    if name in METRICS:
        return name, f"validation {name.upper()}"
    return "loss_adj", "adjusted validation loss"


def _scale(data: FigureData) -> str:
    """Losses on a log axis; metrics where higher is better (PSNR, IoU) on a linear one."""
    from zoo.analysis._columns import higher_is_better

    return "linear" if higher_is_better(data.value) else "log"


@figure("distributions")
def distributions(data: FigureData, entry: dict[str, Any]) -> Figure:
    """One panel per column: the headline value's distribution for each of its values."""
    plt, sns = _plt()
    panels = entry["panels"]
    frame = _require(data.runs, data.value, *panels)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True, squeeze=False
    )
    shown = frame.sample(min(len(frame), 600), random_state=0)  # points drawn, not computed
    for axis, column in zip(axes[0], panels, strict=True):
        order = _order(frame[column])
        sns.boxplot(
            frame,
            x=column,
            y=data.value,
            order=order,
            ax=axis,
            showfliers=False,
            color="C0",
            boxprops={"alpha": 0.45},
        )
        sns.stripplot(
            shown, x=column, y=data.value, order=order, ax=axis, size=2.5, alpha=0.5, color="k"
        )
        medians = frame.groupby(column)[data.value].median()
        for position, key in enumerate(order):
            axis.annotate(
                f"{medians[key]:.4g}",
                (position, medians[key]),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize="x-small",
                color="C3",
            )
        if max(len(str(k)) for k in order) > 6:
            axis.tick_params(axis="x", labelrotation=20)
        axis.set_title(f"by {column} (median in red)", fontsize="small")
    axes[0][0].set_ylabel(data.value_label)
    axes[0][0].set_yscale(_scale(data))
    readable_log(axes[0][0])
    fig.tight_layout()
    return fig


@figure("heatmap")
def heatmap(data: FigureData, entry: dict[str, Any]) -> Figure:
    """Median headline value over two columns (e.g. pretrain × transfer domain); brighter is
    better."""
    plt, sns = _plt()
    rows, columns = entry["rows"], entry["columns"]
    frame = _require(data.runs, data.value, rows, columns)
    table = frame.pivot_table(index=rows, columns=columns, values=data.value, aggfunc="median")
    width, height = 1.0 + 0.7 * table.shape[1], 1.0 + 0.55 * table.shape[0]
    fig, axis = plt.subplots(figsize=(max(width, 5.0), max(height, 3.0)))  # room for the labels
    sns.heatmap(
        table,
        annot=True,
        fmt=".3g",
        cmap="viridis_r" if _scale(data) == "log" else "viridis",
        ax=axis,
        annot_kws={"size": 7},
    )
    axis.set_title(f"median {data.value_label}", fontsize="small")
    fig.tight_layout()
    return fig


@figure("baseline")
def baseline(data: FigureData, entry: dict[str, Any]) -> Figure:
    """Transfer learning against single-stage training on a mixture, by target-domain images."""
    plt, sns = _plt()
    if data.baseline is None:
        raise Skip("no baseline sweep given (--baseline SPEC)")
    import pandas as pd

    from zoo.analysis._columns import lookup

    transfer = _require(data.runs, data.value, entry["size"])
    base = data.baseline.assign(_value=lookup(data.baseline, entry["baseline_value"]))
    base = _require(base, "_value", entry["baseline_size"])
    frame = pd.concat(
        [
            pd.DataFrame(
                {
                    "target-domain images": transfer[entry["size"]],
                    "loss": transfer[data.value],
                    "method": "transfer learning",
                }
            ),
            pd.DataFrame(
                {
                    "target-domain images": base[entry["baseline_size"]],
                    "loss": base["_value"],
                    "method": "single-stage baseline",
                }
            ),
        ]
    )
    fig, axis = plt.subplots(figsize=(6, 3.6))
    sns.boxplot(
        frame,
        x="target-domain images",
        y="loss",
        hue="method",
        ax=axis,
        showfliers=False,
        order=_order(frame["target-domain images"]),
    )
    axis.set(ylabel=data.value_label, yscale="log")
    readable_log(axis)
    fig.tight_layout()
    return fig


@figure("generalisation")
def generalisation(data: FigureData, entry: dict[str, Any]) -> Figure:
    """The headline's validation metric (adjusted loss, PSNR...) of the final models on every
    validation domain."""
    plt, sns = _plt()
    metric, label = _per_epoch(data)
    prefix = f"best_val_{metric}/{entry['stage']}/"
    columns = [c for c in data.runs.columns if c.startswith(prefix)]
    if not columns:
        raise Skip(f"no columns {prefix}*")
    hue = entry.get("hue")
    keep = ["run_id", *([hue] if hue in data.runs else [])]
    long = data.runs[keep + columns].melt(id_vars=keep, var_name="domain", value_name="loss")
    long["domain"] = spelled(long["domain"].str.slice(len(prefix)), data.runs)
    fig, axis = plt.subplots(figsize=(max(5, 0.9 * len(columns)), 3.6))
    sns.boxplot(
        long.dropna(),
        x="domain",
        y="loss",
        hue=hue if hue in long else None,
        order=sorted(long["domain"].unique(), key=_numeric_first),
        ax=axis,
        showfliers=False,
    )
    axis.set(
        ylabel=f"best {label}",
        yscale=_scale(data),
        title=f"after {entry['stage']}, on every validation domain",
    )
    readable_log(axis)
    fig.tight_layout()
    return fig


@figure("curves")
def curves(data: FigureData, entry: dict[str, Any]) -> Figure:
    """The headline's validation metric on each run's target domain per epoch: mean ± sd over
    runs."""
    plt, sns = _plt()
    hue = entry.get("hue") if entry.get("hue") in data.runs else None  # a sweep without it
    metric, label = _per_epoch(data)
    runs = _require(data.runs, "target_key").copy()
    runs["target_key"] = runs["target_key"].str.replace("val_loss_adj/", f"val_{metric}/", n=1)
    history = data.histories.merge(
        runs[["run_id", "target_key", *([hue] if hue else [])]], on="run_id"
    )
    history = history[history.key == history.target_key]
    if history.empty:
        raise Skip("no per-epoch validation histories")
    fig, axis = plt.subplots(figsize=(6, 3.6))
    sns.lineplot(history, x="step", y="value", hue=hue, errorbar="sd", ax=axis, marker="o")
    axis.set(xlabel="epoch (all stages)", ylabel=f"{label}, target domain", yscale=_scale(data))
    readable_log(axis)
    fig.tight_layout()
    return fig


@figure("cost")
def cost(data: FigureData, entry: dict[str, Any]) -> Figure:
    """Training seconds (and energy, when measured) per epoch by a column such as freezing."""
    plt, sns = _plt()
    stage, by = entry["stage"], entry["by"]
    seconds = f"train_seconds/{stage}"
    epochs = f"epochs/{stage}"
    frame = _require(data.runs, seconds, by, epochs).copy()
    frame["seconds per epoch"] = frame[seconds] / frame[epochs]
    energy = f"energy_wh/{stage}"
    panels = ["seconds per epoch"]
    if energy in frame and frame[energy].notna().any():
        frame["Wh per epoch"] = frame[energy] / frame[epochs]
        panels.append("Wh per epoch")
    hue = next(
        (c for c in ("param.power_cap_w", "param.amp") if c in frame and frame[c].nunique() > 1),
        None,
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for axis, column in zip(axes[0], panels, strict=True):
        sns.barplot(frame, x=by, y=column, hue=hue, ax=axis, errorbar="sd", order=_order(frame[by]))
    fig.tight_layout()
    return fig
