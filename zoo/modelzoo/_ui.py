"""Links that open zoo's sweeps in the MLflow UI: runs, charts and a comparison.

MLflow 3.17's UI picks its workflow (GenAI or model training) from the URL's
``workflowType`` or the browser's last choice, not from the experiment's
``mlflow.experimentKind`` tag (which zoo also sets). A zoo link therefore names
the training workflow and a shared view state, stored as the experiment tag
``mlflow.sharedViewState.<key>`` the way the UI's own "share" button stores it
(search facets and UI state in one JSON object). Each sweep gets two views:

- ``zoo-models``: the models (``zoo.kind = run``; shared stages left out) sorted by
  the headline metric of their task (zoo.analysis.HEADLINES), best first. A search
  filter with a sort makes the UI list runs flat (it folds children under their
  parents only without either). The axis and metric columns are shown, and the name
  column is as wide as the longest name. Its chart view opens on the headline's
  chart, then parallel coordinates.
- ``zoo-compare``: the same runs in the chart view, parallel coordinates first: the
  params that carry the axes and the headline, over the best 10 runs (the UI charts
  the first 10 rows).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable

from zoo.store._views import RunSample, SweepSample, read_sweeps, write_tags

__all__ = ["COMPARE_KEY", "VIEW_KEY", "axis_params", "experiment_links", "links", "views"]

VIEW_KEY = "zoo-models"
COMPARE_KEY = "zoo-compare"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
_COLUMNS = {  # the metric columns shown for each task, its headline first
    "segmentation": ("target_loss_adj", "target_iou", "params_total"),
    "regression": ("target_psnr", "target_ssim", "target_mae", "target_loss_adj", "params_total"),
}
_NAME_COLUMN = "attributes.`Run Name`"  # the UI's column id of run names
_SECTION = "Model metrics"  # the UI's chart section of metrics without a "/" prefix


def _task(metrics: Collection[str], params: dict[str, str] | None = None) -> str:
    """A run's task: its ``model.task`` param, else by its headline metrics (as
    zoo.analysis.run_tasks reads a table)."""
    task = (params or {}).get("model.task")
    if task in _COLUMNS:
        return task
    return "regression" if "target_psnr" in metrics else "segmentation"


def axis_params(runs: Iterable[RunSample], axes: Iterable[str]) -> list[str]:
    """The param carrying each axis that varies over ``runs``: one whose values pair one
    to one with the axis's, preferring one with the same values, then the shortest key."""
    runs = list(runs)
    chosen = []
    for axis in axes:
        pairs = [(run.axes[axis], run.params) for run in runs if axis in run.axes and run.params]
        if len({value for value, _ in pairs}) < 2:
            continue
        fits = []
        for key in set().union(*(params for _, params in pairs)):
            seen = {(value, params.get(key)) for value, params in pairs}
            one_to_one = len(seen) == len({v for v, _ in seen}) == len({p for _, p in seen})
            if one_to_one and None not in {p for _, p in seen}:
                fits.append((any(v != p for v, p in seen), len(key), key))
        if fits:
            chosen.append(min(fits)[2])
    return list(dict.fromkeys(chosen))


def _charts(headline: str, params: list[str], parallel_first: bool) -> dict:
    """Chart cards and their section: the headline's and parallel coordinates first, in a
    section kept first and in this order (charts the UI adds go after them)."""
    card = {"runsCountToCompare": 10, "metricSectionId": "zoo-main", "deleted": False}
    charts = [
        {**card, "uuid": "zoo-headline", "type": "BAR", "isGenerated": True}
        | {"metricKey": headline, "displayName": headline}
    ]
    if params:
        parallel = {**card, "uuid": "zoo-parallel", "type": "PARALLEL", "isGenerated": False}
        parallel |= {"selectedParams": params, "selectedMetrics": [headline], "showAllRuns": False}
        charts.insert(0 if parallel_first else 1, parallel)
    section = {"uuid": "zoo-main", "name": _SECTION, "display": True, "isReordered": True}
    if parallel_first:  # one chart a row, the run list hidden: the comparison at full width
        section |= {"columns": 1, "cardHeight": 480}
    return {
        "compareRunCharts": charts,
        "compareRunSections": [{**section, "deleted": False, "isGenerated": True}],
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
        "runListHidden": parallel_first,
    }


def _view(
    axes: list[str],
    metrics: Collection[str],
    params: tuple[str, ...] = (),
    name_chars: int = 0,
    parallel_first: bool = False,
    task: str | None = None,
) -> str:
    """The shared view state of a sweep whose models log ``metrics`` (keys), with axis
    ``params`` for parallel coordinates and names of up to ``name_chars`` characters."""
    from zoo.analysis import HEADLINES, higher_is_better

    task = task or _task(metrics)
    best = HEADLINES[task][0]
    width = min(max(190, 40 + 7 * name_chars), 560)  # px: the UI's default is 190
    columns = [f"metrics.`{best}`"] + [f"tags.`zoo.axis.{a}`" for a in axes]
    columns += [f"metrics.`{m}`" for m in _COLUMNS[task] if m != best]
    return json.dumps(
        {
            "searchFilter": "tags.`zoo.kind` = 'run'",
            "orderByKey": f"metrics.`{best}`",
            "orderByAsc": not higher_is_better(best),
            "startTime": "ALL",
            "lifecycleFilter": "Active",
            "modelVersionFilter": "All Runs",
            "datasetsFilter": [],
            "selectedColumns": columns,
            "columnOrder": [_NAME_COLUMN, *columns],  # the columns it leaves out are hidden
            "columnWidths": {_NAME_COLUMN: width},
            **_charts(best, list(params), parallel_first),
        }
    )


def views(sweep: SweepSample) -> dict[str, str]:
    """Experiment tag -> value: the sweep's two shared views (see the module)."""
    runs = sweep.runs
    axes = list(dict.fromkeys(a for run in runs for a in run.axes))
    metrics = set().union(*(run.metrics for run in runs)) if runs else set()
    task = _task(metrics, next((r.params for r in runs if "model.task" in r.params), None))
    common = {
        "axes": axes,
        "metrics": metrics,
        "params": tuple(axis_params(runs, axes)),
        "name_chars": max((len(run.name) for run in runs), default=0),
        "task": task,
    }
    return {
        SHARED_VIEW_PREFIX + VIEW_KEY: _view(**common),
        SHARED_VIEW_PREFIX + COMPARE_KEY: _view(**common, parallel_first=True),
    }


def links(sweep: SweepSample, base_url: str) -> dict[str, str]:
    """What each link opens ("runs", "charts", "compare") -> its URL."""
    page = f"{base_url}/#/experiments/{sweep.experiment_id}/runs?workflowType=machine_learning"
    return {
        "runs": f"{page}&viewStateShareKey={VIEW_KEY}",
        "charts": f"{page}&viewStateShareKey={VIEW_KEY}&compareRunsMode=CHART",
        "compare": f"{page}&viewStateShareKey={COMPARE_KEY}&compareRunsMode=CHART",
    }


def experiment_links(uri: str, base_url: str) -> dict[str, dict[str, str]]:
    """Experiment name -> its links (see ``links``), for every experiment of the store at
    ``uri`` with zoo models; writes (or refreshes) each one's view tags first. SQLite and
    PostgreSQL stores are read and written directly (no MLflow import: quick), others
    through MLflow's client."""
    found = {}
    sweeps = read_sweeps(uri)
    changed = {}
    for sweep in sweeps:
        tags = {k: v for k, v in views(sweep).items() if sweep.tags.get(k) != v}
        if tags:
            changed[sweep.experiment_id] = tags
        found[sweep.name] = links(sweep, base_url)
    if changed:
        write_tags(uri, changed)
    return found
