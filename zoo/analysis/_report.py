"""``zoo analyze``: a sweep's tidy table, aggregates, figures and one self-contained report."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo._typed import build
from zoo._yaml import load_yaml
from zoo.analysis._figures import FIGURES, FigureData, Skip
from zoo.analysis._load import Tables, load_tables
from zoo.analysis._publish import REPORT_KIND
from zoo.analysis._tidy import Definition, aggregate, prepare
from zoo.errors import ConfigError

__all__ = ["Analysis", "analyze", "load", "load_definition"]


def load_definition(path: Path) -> Definition:
    return build(Definition, load_yaml(path), "definition")


@dataclass
class Analysis:
    """What ``analyze`` wrote and counted."""

    out: Path
    status: dict[str, int]
    failures: list[tuple[str, str]]
    figures: dict[str, list[Path]] = field(default_factory=dict)  # name -> PNG, SVG
    skipped: dict[str, str] = field(default_factory=dict)  # figure name -> why
    tables: dict[str, Path] = field(default_factory=dict)

    @property
    def report(self) -> Path:
        return self.out / "report.html"


def _status(tables: Tables, expected: set[str] | None) -> tuple[dict[str, int], list]:
    runs = tables.runs[tables.runs["kind"].fillna("run") != REPORT_KIND]  # not a trained run
    counts = {s.lower(): int(n) for s, n in runs.status.value_counts().items()}
    status = {
        "finished": counts.get("finished", 0),
        "failed": counts.get("failed", 0) + counts.get("killed", 0),
        "running": counts.get("running", 0),
    }
    if expected is not None:
        status["missing"] = len(expected - set(runs.get("config_hash", [])))
    failed = runs[runs.status.isin(["FAILED", "KILLED"])]
    failures = list(zip(failed.run_id, failed.error.fillna("(no reason logged)"), strict=True))
    return status, failures


def _save(figure: Any, stem: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        figure.savefig(path, dpi=110)
    plt.close(figure)
    return paths


def _write_csv(frame: Any, path: Path) -> None:
    """``frame.to_csv(path, index=False)``, the same bytes, with its Arrow-backed text
    columns written as Python objects (pandas formats those several times faster)."""
    import pandas as pd

    text = [c for c, t in frame.dtypes.items() if isinstance(t, pd.StringDtype)]
    frame.astype(dict.fromkeys(text, object)).to_csv(path, index=False)


def _aggregates(runs: Any, axes: list[str], definition: Definition, out: Path) -> dict:
    value = definition.value
    if value not in runs or runs[value].isna().all():
        return {}
    written = {}
    varying = [a for a in axes if a != "seed" and a in runs]
    groupings = {"all_axes": varying, **{a: [a] for a in varying}}
    groupings.update({"_".join(t): list(t) for t in definition.tables if all(c in runs for c in t)})
    for name, columns in groupings.items():
        if columns:
            path = out / f"aggregate_{name}.csv"
            aggregate(runs, columns, value, definition.medians).to_csv(path, index=False)
            written[name] = path
    return written


def analyze(
    tables: Tables,
    out: Path,
    definition: Definition,
    *,
    offset: float | None = None,
    baseline: Tables | None = None,
    expected: set[str] | None = None,
    sweep: str | None = None,
    ui: str | None = None,
) -> Analysis:
    """Write runs.parquet/csv, aggregate CSVs, figures (PNG, SVG) and report.html into ``out``.

    The headline value is the definition's, or where it names none the runs' task's
    (best adjusted loss for segmentation, PSNR for regression). The report's title names
    ``sweep``; it opens with the best runs, each linked to its page in the MLflow UI at
    ``ui`` (no links without one)."""
    out.mkdir(parents=True, exist_ok=True)
    tables.runs.to_parquet(out / "runs.parquet", index=False)
    _write_csv(tables.runs, out / "runs.csv")
    status, failures = _status(tables, expected)
    analysis = Analysis(out, status, failures)
    runs = prepare(tables.runs, definition, offset)
    definition = definition.resolved(runs)
    analysis.tables = _aggregates(runs, list(tables.axes), definition, out)
    data = FigureData(
        runs,
        tables.histories,
        definition.value,
        definition.value_label,
        prepare(baseline.runs, Definition(), offset) if baseline else None,
    )
    for entry in definition.figures:
        try:
            drawn = FIGURES[entry["kind"]](data, entry)
        except Skip as reason:
            analysis.skipped[entry["name"]] = str(reason)
            continue
        analysis.figures[entry["name"]] = _save(drawn, out / entry["name"])
    best = best_runs(runs, list(tables.axes), definition.value)
    analysis.report.write_text(_html(definition, analysis, _best_html(best, definition, ui), sweep))
    return analysis


def best_runs(runs: Any, axes: list[str], value: str, count: int = 10) -> Any:
    """The ``count`` best runs by ``value`` (its direction: losses low, PSNR high), with
    their name, run id, axes (seed last) and value."""
    from zoo.analysis._columns import higher_is_better

    if value not in runs:
        return runs.iloc[0:0]
    shown = [a for a in axes if a != "seed" and a in runs] + [a for a in ["seed"] if a in runs]
    columns = [c for c in ("name", "run_id") if c in runs] + shown + [value]
    ranked = runs.dropna(subset=[value]).sort_values(value, ascending=not higher_is_better(value))
    return ranked[columns].head(count)


def _best_html(best: Any, definition: Definition, ui: str | None) -> str:
    if best.empty:
        return ""
    rows = []
    for row in best.to_dict("records"):
        name = html.escape(str(row.get("name") or row["run_id"][:8]))
        if ui:
            name = f"<a href='{html.escape(ui)}/#/runs/{html.escape(row['run_id'])}'>{name}</a>"
        cells = [name] + [
            html.escape(_cell(row[c])) for c in best.columns if c not in ("name", "run_id")
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = ["run"] + [
        html.escape(definition.value_label if c == definition.value else c)
        for c in best.columns
        if c not in ("name", "run_id")
    ]
    where = f"<p>Links open the run in the MLflow UI at {html.escape(ui)}.</p>" if ui else ""
    return (
        f"<h2>Best {len(rows)} runs</h2>{where}<table class='best'><tr>"
        + "".join(f"<th>{h}</th>" for h in header)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _image(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{encoded}">'


def _html(definition: Definition, analysis: Analysis, best: str, sweep: str | None) -> str:
    import pandas as pd

    from zoo.analysis._figures import heading

    title = f"{definition.title}: {sweep}" if sweep else definition.title
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        best,
        "<h2>Status</h2>",
        "<table class='status'>"
        + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in analysis.status.items())
        + "</table>",
    ]
    if analysis.failures:
        parts.append(
            "<h3>Failures</h3><ul>"
            + "".join(
                f"<li><code>{html.escape(r)}</code>: {html.escape(str(e))}</li>"
                for r, e in analysis.failures
            )
            + "</ul>"
        )
    parts.append("<h2>Figures</h2>")
    entries = {entry["name"]: entry for entry in definition.figures}
    for name, paths in analysis.figures.items():
        words = heading(entries[name], definition.value_label)
        parts.append(f"<h3>{html.escape(words)}</h3>{_image(paths[0])}")
    if analysis.skipped:
        parts.append(
            "<p>Not drawn: "
            + "; ".join(f"{html.escape(n)} ({html.escape(r)})" for n, r in analysis.skipped.items())
            + "</p>"
        )
    parts.append(f"<h2>Tables: {html.escape(definition.value_label)} over seeds</h2>")
    for name, path in analysis.tables.items():
        table = pd.read_csv(path)
        parts.append(
            f"<h3>by {html.escape(name)}</h3>"
            + table.to_html(index=False, float_format=lambda v: f"{v:.4g}")
        )
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:auto}img{max-width:100%}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
        "padding:2px 6px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>"
        f"{html.escape(title)}</title><style>{style}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )


def load(uri: str, experiment: str) -> Tables:
    found = load_tables(uri, experiment)
    if found is None:
        raise ConfigError(f"experiment {experiment!r}: not in the tracking store {uri}")
    return found
