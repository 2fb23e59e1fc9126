"""Loading a 10,000-run sweep: zoo's direct SQL read against ``mlflow.search_runs``.

Builds a SQLite MLflow store of N finished runs (25 params, 10 tags, 6 metrics
× 20 epochs each) with bulk inserts in MLflow's own schema, then times zoo's
tidy table (with full metric histories) and ``mlflow.search_runs`` (latest
values only) on the same file. Target (issue 6): zoo under 5 s for 10,000 runs
and at least 10× faster than search_runs.
Run: ``.venv/bin/python benchmarks/bench_analysis.py [--runs 10000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _bulk import BulkRun, bulk_insert

from zoo.analysis import load_tables

METRICS = ["train_loss", "val_loss/a", "val_loss_adj/a", "val_loss/b", "val_loss_adj/b", "lr"]


def build_store(uri: str, count: int) -> float:
    rng = np.random.default_rng(0)
    runs = []
    for i in range(count):
        tags = {f"zoo.axis.a{j}": str(i % (j + 2)) for j in range(6)}
        tags.update(
            {
                "zoo.kind": "run",
                "zoo.config_hash": f"{i:016x}",
                "zoo.sweep": "bench",
                "mlflow.runName": f"run-{i}",
            }
        )
        params = {f"stages.{j % 2}.p{j}": str(rng.random()) for j in range(25)}
        histories = {m: list(np.exp(-np.arange(20) / 5) + rng.random(20) * 0.01) for m in METRICS}
        runs.append(BulkRun(tags=tags, params=params, histories=histories))
    start = time.perf_counter()
    bulk_insert(uri, "bench", runs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import mlflow

    with tempfile.TemporaryDirectory() as root:
        uri = f"sqlite:///{Path(root) / 'mlflow.db'}"
        built = build_store(uri, args.runs)
        print(
            f"store: {args.runs} runs × (25 params, 10 tags, 6 metrics × 20 epochs), "
            f"bulk-built in {built:.1f} s"
        )
        zoo_times, mlflow_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            tables = load_tables(uri, "bench")
            zoo_times.append(time.perf_counter() - start)
            mlflow.set_tracking_uri(uri)
            start = time.perf_counter()
            frame = mlflow.search_runs(experiment_names=["bench"], max_results=100_000)
            mlflow_times.append(time.perf_counter() - start)
        assert len(tables.runs) == len(frame) == args.runs
        assert len(tables.histories) == args.runs * len(METRICS) * 20
        zoo_s, mlflow_s = statistics.median(zoo_times), statistics.median(mlflow_times)
        print(f"zoo load_tables (tidy table + full histories) {zoo_s:6.2f} s  (target < 5 s)")
        print(f"mlflow.search_runs (latest values only)       {mlflow_s:6.2f} s")
        print(
            f"ratio search_runs / zoo                       {mlflow_s / zoo_s:6.1f}×  "
            "(target >= 10×)"
        )


if __name__ == "__main__":
    main()
