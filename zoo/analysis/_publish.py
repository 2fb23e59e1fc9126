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
    from zoo.tracking import Tracker

    tracker = Tracker(uri, create=False)
    experiment_id = tracker.experiment(experiment)
    if experiment_id is None:
        return None
    client = tracker.client
    found = client.search_runs([experiment_id], f"tags.`zoo.kind` = '{REPORT_KIND}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        tags = {"zoo.kind": REPORT_KIND, "mlflow.runName": f"report · {experiment}"}
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
    client.log_artifacts(run_id, str(report.parent), "report")
    client.set_terminated(run_id, "FINISHED")
    return run_id
