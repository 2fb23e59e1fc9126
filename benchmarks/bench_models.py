"""`zoo models list` over a 10,000-run store against paging through ``MlflowClient.search_runs``.

Builds a SQLite MLflow store of N finished zoo runs shaped like a sweep's (6 axes,
a readable name, 60 params, 30 summary metrics, 4 validation curves × 20 epochs)
with bulk inserts in MLflow's own schema, then times what `zoo models list --sort
target_loss_adj --limit 20` does (the table through the analysis load path,
sorted, formatted) and MLflow's own run search over the same file. Wall and CPU
seconds are both printed: on a shared machine the CPU time (the store is read in
process) is what the wall time is on an idle one.
Target (issue 15): under 3 s for 10,000 runs.

``--defocus`` instead builds the store the defocus series' rehearsal leaves (7230 runs:
30 shared stages and 7200 runs of sweeps/defocus.yaml's plan, with their tags, every
config param and the per-epoch and summary metrics of their 11 validation domains:
2.2 M param and 1.4 M metric rows) and times the whole commands `zoo models list
defocus-rehearsal --limit 10` and `zoo analyze defocus-rehearsal` on it, each in a fresh
process. Targets (issue 28): <= 3 s and <= 15 s.
``--keep DIR`` builds that store in DIR (or reuses the one there); ``--tracking-uri URI``
times the commands on URI instead (e.g. a `zoo server start` serving DIR/mlflow.db).
Run: ``.venv/bin/python benchmarks/bench_models.py [--runs 10000] [--repeats 3] [--defocus
[--keep DIR] [--tracking-uri URI]]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _bulk import BulkRun, bulk_insert

from zoo.config import flatten
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


_LOGGED_TAGS = {  # what every run of the rehearsal logged besides its identity and axes
    "zoo.host": "vm",
    "zoo.torch": "2.14.1",
    "zoo.cuda": "13.0",
    "zoo.loss_floor": "0.313262",
    "zoo.precision": "off",
    "mlflow.source.git.commit": "0" * 40,
    "zoo.heartbeat": "1796641504",
    "zoo.pid": "15002",
}


def _rehearsed(job, plan, stage_run: str, rng: np.random.Generator) -> BulkRun:
    """One job of the defocus rehearsal as it logs itself: one epoch per stage."""
    from zoo.naming import run_name
    from zoo.store import metric_key

    stage = job.name if job.kind == "stage" else None
    config = job.config.to_dict()
    stages = [s["name"] for s in config["stages"]][: 1 if stage else None]
    title = run_name(job.names, plan.stage_names, plan.spec.run_name, stage)
    tags = {"zoo.sweep": plan.spec.name, "zoo.kind": job.kind, "mlflow.runName": title}
    tags |= {f"zoo.axis.{k}": str(v) for k, v in job.names.items()}
    tags |= {"zoo.stage": job.name} if stage else {}
    tags.update({"zoo.config_hash": job.key, "zoo.rehearsal": "true", **_LOGGED_TAGS})
    tags["zoo.seed"], tags["zoo.stages"] = str(job.names.get("seed", 0)), ",".join(stages)
    tags.update({"zoo.stage_run": stage_run, "mlflow.parentRunId": stage_run} if stage_run else {})
    params = {k: str(v) for k, v in flatten(config).items()} | {"loss_floor": "0.313262"}
    domains = [metric_key(d) for d in config["validate_on"]]
    histories = {k: [] for k in ("train_loss", "lr", "epoch_seconds", "images_per_s", "stage")}
    metrics = {"loss_floor": 0.313, "params_total": 141426.0, "train_seconds": 0.5}
    for index, name in enumerate(stages):
        for key in ("train_loss", "lr", "epoch_seconds", "images_per_s"):
            histories[key].append(float(rng.random()))
        histories["stage"].append(float(index))
        metrics |= {f"params_trainable/{name}": 141426.0, f"train_seconds/{name}": 0.25}
        for domain in domains:
            for kind in ("loss", "iou", "acc", "loss_adj"):
                histories.setdefault(f"val_{kind}/{domain}", []).append(float(rng.random()))
            for kind in ("val_loss_adj", "val_loss", "epoch", "val_iou"):
                metrics[f"best_{kind}/{name}/{domain}"] = float(rng.random())
    metrics |= {f"target_{k}": float(rng.random()) for k in ("loss", "loss_adj", "iou", "epoch")}
    if not stage:
        metrics |= {f"pretrain_target_{k}": float(rng.random()) for k in ("loss", "loss_adj")}
    return BulkRun(tags=tags, params=params, metrics=metrics, histories=histories)


def _build_defocus(plan, root: Path) -> str:
    """The rehearsal's store as ``root``/mlflow.db (kept when it is there already); its URI."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    if (root / "mlflow.db").exists():
        return uri
    os.environ["ZOO_ROOT"] = str(root)  # the experiment's artifacts go there too
    rng = np.random.default_rng(0)
    stages = [j for j in plan.jobs if j.kind == "stage"]
    ids = bulk_insert(uri, plan.spec.name, [_rehearsed(j, plan, "", rng) for j in stages])
    stage_ids = {j.key: i for j, i in zip(stages, ids, strict=True)}
    runs = [j for j in plan.jobs if j.kind == "run"]
    bulk_insert(
        uri, plan.spec.name, [_rehearsed(j, plan, stage_ids[j.depends[0]], rng) for j in runs]
    )
    return uri


def defocus(repeats: int, keep: Path | None, uri: str | None) -> None:
    """Build the defocus rehearsal's store (in ``keep``, reused when there) and time
    `models list` and `analyze` on it, or on ``uri`` (e.g. a `zoo server` serving it)."""
    from zoo.sweep import load_spec, make_plan, rehearsal

    plan = make_plan(rehearsal(load_spec(Path(__file__).parent.parent / "sweeps/defocus.yaml")))
    with tempfile.TemporaryDirectory() as scratch:
        root = keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        uri = uri or _build_defocus(plan, root)
        env = {**os.environ, "ZOO_ROOT": str(root)}
        listing = ["models", "list", plan.spec.name, "--limit", "10"]
        analyze = ["analyze", plan.spec.name, "--out", f"{scratch}/report"]
        for name, command in (("models list", listing), ("analyze", analyze)):
            command += ["--tracking-uri", uri]
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "zoo.cli", *command], env=env, check=True,
                               capture_output=True)  # fmt: skip
                seconds.append(time.perf_counter() - start)
            print(f"zoo {name:<12} {statistics.median(seconds):6.2f} s (median of {repeats})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--defocus", action="store_true", help="the defocus rehearsal's store")
    parser.add_argument("--keep", type=Path, help="--defocus: build the store here, or reuse it")
    parser.add_argument("--tracking-uri", help="--defocus: time the commands on this store")
    args = parser.parse_args()
    if args.defocus:
        defocus(args.repeats, args.keep, args.tracking_uri)
        return
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
