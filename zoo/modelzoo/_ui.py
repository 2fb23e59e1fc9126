"""Links that open zoo's experiments in the MLflow UI on their trained models.

MLflow 3.17's UI picks its workflow (GenAI or model training) from the URL's
``workflowType`` or the browser's last choice, not from the experiment's
``mlflow.experimentKind`` tag (which zoo also sets). A zoo link therefore names
the training workflow and a shared view state, stored as the experiment tag
``mlflow.sharedViewState.<key>`` the way the UI's own "share" button stores it:
the models (``zoo.kind = run``, shared stages left out) sorted by the headline
metric of their task (zoo.analysis.HEADLINES), best first, with the axis and metric
columns shown.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo.tracking import Tracker

__all__ = ["VIEW_KEY", "experiment_links"]

VIEW_KEY = "zoo-models"
_SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
_COLUMNS = {  # the metric columns shown for each task, its headline first
    "segmentation": ("target_loss_adj", "target_iou", "params_total"),
    "regression": ("target_psnr", "target_ssim", "target_mae", "target_loss_adj", "params_total"),
}


def _view(axes: list[str], metrics: dict[str, float]) -> str:
    """The view of an experiment whose models log ``metrics`` (those of one of its runs)."""
    import pandas as pd

    from zoo.analysis import HEADLINES, higher_is_better, table_task

    task = table_task(pd.DataFrame([metrics]))
    best = HEADLINES[task][0]
    return json.dumps(
        {
            "searchFilter": "tags.`zoo.kind` = 'run'",
            "orderByKey": f"metrics.`{best}`",
            "orderByAsc": not higher_is_better(best),
            "startTime": "ALL",
            "lifecycleFilter": "Active",
            "modelVersionFilter": "All Runs",
            "datasetsFilter": [],
            "selectedColumns": [f"tags.`zoo.axis.{a}`" for a in axes]
            + [f"metrics.`{m}`" for m in _COLUMNS[task]],
            "runsExpanded": {},
        }
    )


def experiment_links(tracker: Tracker, base_url: str) -> dict[str, str]:
    """Experiment name -> URL of its models view, for every experiment with zoo runs;
    writes (or refreshes) each experiment's view tag."""
    links = {}
    for experiment in tracker.client.search_experiments(max_results=50000):
        found = tracker.client.search_runs(
            [experiment.experiment_id], "tags.`zoo.kind` = 'run'", max_results=1
        )
        if not found:
            continue
        tags = found[0].data.tags
        axes = [k[len("zoo.axis.") :] for k in tags if k.startswith("zoo.axis.")]
        key = _SHARED_VIEW_PREFIX + VIEW_KEY
        view = _view(axes, found[0].data.metrics)
        if experiment.tags.get(key) != view:
            tracker.client.set_experiment_tag(experiment.experiment_id, key, view)
        links[experiment.name] = (
            f"{base_url}/#/experiments/{experiment.experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
        )
    return links
