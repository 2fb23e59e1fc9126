"""A sweep's rehearsal at full count through the local SLURM cluster into the
PostgreSQL-backed ``zoo server``, end to end, and one table of what it cost.

It starts slurm/local-cluster.sh (4 CPUs declared, MaxArraySize 1001) and ``zoo
server start --backend postgresql`` in a fresh project root, submits ``SPEC
--rehearse`` (default sweeps/defocus.yaml: 7200 runs, 30 shared pretrainings),
optionally cancels half of the remaining run tasks once ``--drill`` of the runs
have finished and resubmits with ``--resubmit-failed``, waits, then measures:

- submit seconds; arrays, tasks and runs per task; wall time;
- per-job overhead at scale: tasks' wall (start-up, and a run task's wait for its
  shared stage, included) minus the epochs their stage and run jobs recorded, over
  those jobs;
- FINISHED runs, duplicates (runs per identity beyond one), lost runs (planned
  and not FINISHED), stage trainings;
- rows in the store's runs, metrics, params and tags tables, and its bytes;
- seconds of ``zoo sweep status --rehearse``, ``zoo analyze`` and ``zoo models
  list --limit 10`` on the finished store.

Targets (issue 28, 2 cores): the defocus rehearsal completes with 7200 runs
FINISHED once, 30 stage trainings, 0 lost, in <= 40 min; per-run overhead
<= 0.25 s; submit <= 30 s; status <= 3 s; analyze <= 15 s; models list <= 3 s.
Run: ``.venv/bin/python benchmarks/bench_scale.py [--spec sweeps/noise.yaml]
[--runs-per-task N] [--drill 0.3]`` (as root: the cluster and PostgreSQL).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "slurm" / "local-cluster.sh"
PORT = 5391  # the benchmark's MLflow server; PostgreSQL on PORT + 1


def zoo(root: Path, *args: str, timeout: float = 3600) -> tuple[float, str]:
    """(seconds, output) of ``zoo ARGS`` in project ``root``; a failure raises."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "zoo.cli", *args],
        cwd=root,
        env={**os.environ, "ZOO_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"zoo {' '.join(args)}: {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - started, done.stdout


def queued() -> list[str]:
    """Job ids (``123_4`` for array tasks) still pending or running."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %t"], capture_output=True, text=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def wait_empty(timeout_s: float, poll_s: float = 5.0) -> None:
    """Wait until the queue is empty; RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while queued():
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs still queued after {timeout_s:.0f} s")
        time.sleep(poll_s)


def drill(data: Path, fraction: float, runs: int) -> int:
    """Once ``fraction`` of ``runs`` finished, cancel half the pending run tasks; the
    number cancelled."""
    while _finished_rows(data) < fraction * runs and queued():
        time.sleep(5)
    pending = subprocess.run(
        ["squeue", "-h", "-r", "-t", "PENDING", "-o", "%i %j"], capture_output=True, text=True
    ).stdout.split("\n")
    tasks = [line.split()[0] for line in pending if "-jobs-" in line]
    cancel = tasks[len(tasks) // 2 :]
    if cancel:
        subprocess.run(["scancel", *cancel], check=True)
    return len(cancel)


def _finished_rows(data: Path) -> int:
    """FINISHED runs in the server's store, counted in PostgreSQL (no run is fetched)."""
    with _store(data) as connection:
        return connection.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'").fetchone()[
            0
        ]


def _store(data: Path):
    import psycopg

    server = json.loads((data / "server.json").read_text())
    return psycopg.connect(f"postgresql://zoo@127.0.0.1:{server['pg_port']}/mlflow")


def logged_runs(data: Path, experiment: str) -> list[SimpleNamespace]:
    """The experiment's active runs as ``info.status``, ``data.tags`` (zoo's and the run
    name) and ``data.metrics`` (the latest ``train_seconds*``), read in three SQL
    queries: MLflow's search of thousands of runs reads every param and metric (minutes
    and gigabytes on its server)."""
    runs_of = (
        "runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
        "WHERE e.name = %s AND r.lifecycle_stage = 'active'"
    )
    with _store(data) as connection:
        runs = {
            run_id: SimpleNamespace(
                info=SimpleNamespace(status=status), data=SimpleNamespace(tags={}, metrics={})
            )
            for run_id, status in connection.execute(
                f"SELECT r.run_uuid, r.status FROM {runs_of}", (experiment,)
            )
        }
        tags = "(t.key LIKE 'zoo.%%' OR t.key = 'mlflow.runName')"
        metrics = "m.key LIKE 'train_seconds%%'"
        for table, alias, chosen, into in (
            ("tags", "t", tags, "tags"),
            ("latest_metrics", "m", metrics, "metrics"),
        ):
            for run_id, key, value in connection.execute(
                f"SELECT {alias}.run_uuid, {alias}.key, {alias}.value FROM {table} {alias} "
                f"WHERE {chosen} AND {alias}.run_uuid IN (SELECT r.run_uuid FROM {runs_of})",
                (experiment,),
            ):
                getattr(runs[run_id].data, into)[key] = value
    return list(runs.values())


def task_overhead(root: Path, experiment: str, runs: list) -> tuple[float, int]:
    """(seconds per job of task wall not in the epochs ``runs`` recorded, tasks measured)."""
    walls = []
    for log in root.glob(f".zoo/sweeps/{experiment}/*/logs/jobs-*.out"):
        for line in log.read_text().splitlines():
            if line.startswith("{") and '"start"' in line:
                record = json.loads(line)
                walls.append(record["end"] - record["start"])
    epochs = sum(
        r.data.metrics.get("train_seconds", 0.0) - _replayed(r.data.metrics, r.data.tags)
        for r in runs
    )
    return (sum(walls) - epochs) / max(len(runs), 1), len(walls)


def _replayed(metrics: dict, tags: dict) -> float:
    """Epoch seconds a run reports for the shared stages it replayed (not trained)."""
    if "zoo.stage_run" not in tags:
        return 0.0
    stages = tags.get("zoo.stages", "").split(",")[:-1]
    return sum(metrics.get(f"train_seconds/{s}", 0.0) for s in stages)


def store_size(data: Path) -> dict[str, int]:
    with _store(data) as connection:
        rows = {
            t: connection.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("runs", "metrics", "params", "tags")
        }
        rows["bytes"] = connection.execute("SELECT pg_database_size('mlflow')").fetchone()[0]
    return rows


def counts(runs: list, planned: set[str]) -> dict[str, int]:
    keys = Counter(r.data.tags.get("zoo.config_hash") for r in runs)
    finished = {r.data.tags.get("zoo.config_hash") for r in runs if r.info.status == "FINISHED"}
    return {
        "finished_runs": sum(r.info.status == "FINISHED" for r in runs),
        "duplicates": sum(n - 1 for n in keys.values()),
        "lost": len(planned - finished),
        "stage_trainings": sum(r.data.tags.get("zoo.kind") == "stage" for r in runs),
    }


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
UI_FILTER = ("zoo.axis.size", "64")  # the filter the UI is timed with
UI_PAGE = 100  # runs on the UI's first page (it counts those it loaded as "matching")


def ui_seconds(uri: str, experiment_id: str, logged: list, folder: Path) -> dict[str, float]:
    """Seconds until MLflow's UI (served by ``uri``) in headless Chromium shows the
    experiment's first page of runs (rows with run names: MLflow folds a shared stage's
    runs under it), and until the runs page filtered on UI_FILTER (its value "64", or
    the tag's first value where no run has 64) says how many runs match and shows
    rows; from a fresh browser each."""
    from urllib.parse import quote

    key = UI_FILTER[0]
    values = sorted({r.data.tags[key] for r in logged if key in r.data.tags}, key=len)
    value = UI_FILTER[1] if UI_FILTER[1] in values or not values else values[0]
    names = {r.data.tags.get("mlflow.runName") for r in logged} - {None}
    matching = sum(r.data.tags.get(key) == value for r in logged)
    page = f"{uri}/#/experiments/{experiment_id}/runs"
    search = quote(f"tags.\"{key}\" = '{value}'")
    return {
        "ui_first_page_s": _page_seconds(page, lambda body: any(n in body for n in names), folder),
        "ui_filtered_s": _page_seconds(
            f"{page}?searchFilter={search}",
            lambda body: (
                _matching(body) >= min(matching, UI_PAGE) and any(n in body for n in names)
            ),
            folder,
        ),
    }


def _matching(body: str) -> int:
    """The runs a filtered runs page says match (their shared stages' runs included: the
    UI shows them as the rows the matching runs fold under); 0 before it says."""
    said = re.search(r"(\d+) matching runs", body)
    return int(said.group(1)) if said else 0


def _page_seconds(url: str, ready, folder: Path, timeout: float = 120) -> float:
    """Seconds from asking headless Chromium for ``url`` until ``ready(body text)``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1700,900",
                 f"--user-data-dir={tempfile.mkdtemp(dir=folder)}"]:  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        began = time.perf_counter()
        driver.get(url)
        while not ready(driver.find_element(By.TAG_NAME, "body").text):
            if time.perf_counter() - began > timeout:
                return float("inf")
            time.sleep(0.1)
        return time.perf_counter() - began
    finally:
        driver.quit()


def measure(args: argparse.Namespace, root: Path, data: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from zoo.sweep import load_spec, make_plan, rehearsal

    plan = make_plan(rehearsal(load_spec(args.spec)))
    name, uri = plan.spec.name, f"http://127.0.0.1:{PORT}"
    client = MlflowClient(uri)
    runs = sum(j.kind == "run" for j in plan.jobs)
    submit = ["sweep", "submit", str(args.spec), "--rehearse", "--tracking-uri", uri]
    submit += ["--runs-per-task", str(args.runs_per_task), "--max-parallel", "4"]
    submit += ["--profile", args.profile] if args.runs_per_task == "auto" else []
    began = time.perf_counter()
    seconds, out = zoo(root, *submit)
    result = {"spec": str(args.spec), "runs_planned": runs, "submit_s": seconds}
    result["arrays"] = out.count("submitted ")
    picked = re.search(r"--runs-per-task auto: (\d+)", out)
    result["runs_per_task"] = picked.group(1) if picked else args.runs_per_task
    if args.drill:
        result["drill_cancelled_tasks"] = drill(data, args.drill, runs)
        wait_empty(args.timeout)
        zoo(root, *submit, "--resubmit-failed")
    wait_empty(args.timeout)
    result["wall_s"] = time.perf_counter() - began
    found = client.get_experiment_by_name(name)
    logged = logged_runs(data, name)  # fetched once
    result.update(counts(logged, {j.key for j in plan.jobs}))
    result["overhead_s_per_job"], result["tasks"] = task_overhead(root, name, logged)
    result.update(store_size(data))
    status = ["sweep", "status", str(args.spec), "--rehearse", "--tracking-uri", uri]
    result["status_s"] = zoo(root, *status)[0]
    result["analyze_s"] = zoo(root, "analyze", name, "--out", "report", "--tracking-uri", uri)[0]
    models = ["models", "list", name, "--limit", "10", "--tracking-uri", uri]
    result["models_list_s"] = zoo(root, *models)[0]
    result.update(ui_seconds(uri, found.experiment_id, logged, data))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=REPO / "sweeps" / "defocus.yaml")
    parser.add_argument("--runs-per-task", default="auto")
    parser.add_argument("--profile", default="cpu-2core", help="for --runs-per-task auto")
    parser.add_argument("--drill", type=float, default=0.0, help="cancel half at this share")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds to wait for it")
    args = parser.parse_args()
    args.spec = args.spec.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        os.chmod(folder, 0o755)  # PostgreSQL runs as user postgres when this runs as root
        root, data = Path(folder) / "project", Path(folder) / "server"
        root.mkdir()
        env = {**os.environ, "ZOO_SLURM_DIR": f"{folder}/slurm", "ZOO_SLURM_CPUS": "4"}
        try:
            started = subprocess.run(
                [str(CLUSTER), "start"], env=env, capture_output=True, text=True, check=True
            )
            os.environ["SLURM_CONF"] = started.stdout.strip()
            zoo(root, "server", "start", "--backend", "postgresql", "--port", str(PORT),
                "--data", str(data))  # fmt: skip
            try:
                result = measure(args, root, data)
            finally:
                zoo(root, "server", "stop", "--data", str(data))
        finally:
            subprocess.run([str(CLUSTER), "stop"], env=env, check=False)
    width = max(len(k) for k in result)
    print(f"bench_scale ({os.cpu_count()} cores):")
    for key, value in result.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")


if __name__ == "__main__":
    main()
