"""A report published to the tracking store, so the MLflow UI reaches it from its experiment.

The report folder becomes the ``report/`` artifacts of one run per experiment, tagged
``zoo.kind = report`` and named ``report · EXPERIMENT``; tables, listings and status
counts leave that run out (they keep ``zoo.kind = run`` and stage runs).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPORT_KIND", "publish"]

REPORT_KIND = "report"


def publish(report: Path, uri: str, experiment: str) -> str | None:
    """Log the folder of ``report`` (report.html and its figures) as the artifacts of the
    experiment's report run, created on first use; returns the run id. Never creates a
    store or an experiment: None when ``experiment`` is not in the store."""
    from zoo.store import Tracker

    tracker = Tracker(uri, create=False)
    experiment_id = tracker.experiment(experiment)
    if experiment_id is None:
        return None
    found = tracker.search_runs(
        [experiment_id], f"tags.`zoo.kind` = '{REPORT_KIND}'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
    else:
        tags = {"zoo.kind": REPORT_KIND, "mlflow.runName": f"report · {experiment}"}
        run_id = tracker.create(experiment_id, tags)
    tracker.log_artifacts(run_id, report.parent, "report")
    tracker.finish(run_id)
    return run_id
