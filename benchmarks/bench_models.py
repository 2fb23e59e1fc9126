"""`zoo models list` over a 10,000-run store against paging through ``MlflowClient.search_runs``.

Builds a SQLite MLflow store of N finished zoo runs shaped like a sweep's (6 axes,
a readable name, 60 params, 30 summary metrics, 4 validation curves × 20 epochs)
with bulk inserts in MLflow's own schema, then times what `zoo models list --sort
target_loss_adj --limit 20` does (the table through the analysis load path,
sorted, formatted) and MLflow's own run search over the same file. Wall and CPU
seconds are both printed: on a shared machine the CPU time (the store is read in
process) is what the wall time is on an idle one.
Target (issue 15): under 3 s for 10,000 runs.
Run: ``.venv/bin/python benchmarks/bench_models.py [--runs 10000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _bulk import BulkRun, bulk_insert

from zoo.modelzoo import format_models, model_table, sort_models
from zoo.naming import run_name

AXES = {
    "pretrain_defocus": [-10, 0, 10],
    "transfer_defocus": [-10, 0, 10],
    "transfer_lr": [1e-4, 1e-5],
    "freeze": ["none", "encoder", "decoder"],
    "size": [8, 16, 32, 64],
    "seed": [0, 1, 2, 3, 4],
}
CURVES = ["val_loss_adj/dfm10", "val_loss_adj/df0", "val_loss_adj/dfp10", "train_loss"]


def _run(i: int, rng: np.random.Generator) -> BulkRun:
    names, rest = {}, i
    for axis, values in AXES.items():
        names[axis], rest = values[rest % len(values)], rest // len(values)
    tags = {f"zoo.axis.{k}": str(v) for k, v in names.items()}
    tags.update(
        {
            "zoo.kind": "run",
            "zoo.sweep": "bench",
            "zoo.config_hash": f"{i:016x}",
            "mlflow.runName": run_name(names, ["pretrain", "transfer"]),
        }
    )
    params = {f"stages.{s}.p{j}": str(rng.random()) for s in (0, 1) for j in range(28)}
    params.update(
        {
            "stages.0.train": f"df{names['pretrain_defocus']:+d}",
            "stages.1.train": f"df{names['transfer_defocus']:+d}",
            "validate_on": "['df-10', 'df+0', 'df+10']",
            "seed": str(names["seed"]),
        }
    )
    metrics = {f"best_val_loss_adj/transfer/d{j}": rng.random() for j in range(24)}
    metrics.update(target_loss_adj=rng.random(), target_iou=rng.random(), params_total=812_000.0)
    curves = {c: list(np.exp(-np.arange(20) / 5) + rng.random(20) * 0.01) for c in CURVES}
    return BulkRun(tags=tags, params=params, metrics=metrics, histories=curves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        uri = f"sqlite:///{Path(root) / 'mlflow.db'}"
        start = time.perf_counter()
        bulk_insert(uri, "bench", [_run(i, rng) for i in range(args.runs)])
        print(f"store: {args.runs} runs, bulk-built in {time.perf_counter() - start:.1f} s")
        zoo_times, mlflow_times, zoo_cpu, mlflow_cpu = [], [], [], []
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("bench").experiment_id
        for _ in range(args.repeats):
            start, cpu = time.perf_counter(), time.process_time()
            table = sort_models(model_table(uri, ["bench"]))
            text = format_models(table.head(20))
            zoo_times.append(time.perf_counter() - start)
            zoo_cpu.append(time.process_time() - cpu)
            start, cpu, found, token = time.perf_counter(), time.process_time(), 0, None
            while True:
                page = client.search_runs([experiment], max_results=1000, page_token=token)
                found, token = found + len(page), page.token
                if not token:
                    break
            mlflow_times.append(time.perf_counter() - start)
            mlflow_cpu.append(time.process_time() - cpu)
        assert len(table) == found == args.runs and text.count("\n") == 20
        median = statistics.median
        zoo_s, mlflow_s = median(zoo_times), median(mlflow_times)
        print(
            f"zoo models list (table, sort, top 20)  {zoo_s:6.2f} s wall "
            f"{median(zoo_cpu):6.2f} s CPU  (target <= 3 s)"
        )
        print(
            f"MlflowClient.search_runs, all pages    {mlflow_s:6.2f} s wall "
            f"{median(mlflow_cpu):6.2f} s CPU"
        )
        print(f"ratio search_runs / zoo (wall)         {mlflow_s / zoo_s:6.1f}×")


if __name__ == "__main__":
    main()
