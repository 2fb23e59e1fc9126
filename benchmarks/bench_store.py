"""The store under load and at sweep scale: SQLite, PostgreSQL and the tracking server.

(a) load: N concurrent clients (threads, each with its own ``Tracker``) each log runs
at the paper's per-run volume (30 params, 10 tags, 20 epochs of 50 metrics, one batch
per epoch) for N = 16, 64, 256: runs/s, p50/p99 batch latency, errors, lost rows.
By default a client logs its batches back to back (a closed loop: the store saturated,
latency ~ clients / throughput). ``--epoch-seconds S`` paces each client like a run
that trains S seconds per epoch (an open loop: epoch k is logged at start + k·S, the
clients' starts spread over the first S seconds). The paper's defocus series at
zoo's GPU target (1600 images/s per GPU shared by 16 packed runs: 100 images/s per
run) trains 64-512 images of 512 px and validates 128 per epoch: 2-6 s per epoch;
``--epoch-seconds 2`` is its fast end.
(b) read: 10,000 finished runs with full histories (6 metrics × 20 epochs), built with
the bulk-insert fixture, loaded by zoo's ``load_tables`` (through the server: by zoo's
route, ``zoo._server_app``, and by MLflow's public REST API as from a plain ``mlflow
server``) and by ``mlflow.search_runs``.

A PostgreSQL cluster (``--port``, default 15460) and an MLflow server on it (port + 10,
``--workers``) are started here and stopped at the end; each row also prints the
1-minute load average, since figures on a shared machine are only indicative.
Targets (issue 11): through the server, 256 clients with 0 errors, 0 lost rows, p99
batch latency <= 1 s; loading 10,000 runs <= 2 s on SQLite, <= 5 s on PostgreSQL,
<= 30 s through the server.
Run: ``.venv/bin/python benchmarks/bench_store.py [--clients 16,64,256] [--runs 10000]
[--backends sqlite,postgresql,server] [--epoch-seconds S] [--workers W] [--port P]
[--skip-load] [--skip-read]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _bulk import BulkRun, bulk_insert

from zoo.analysis import load_tables
from zoo.paths import ProjectPaths
from zoo.server import (
    Server,
    init_postgres,
    start_mlflow,
    start_postgres,
    stop_mlflow,
    stop_postgres,
)
from zoo.store import CONFIG_HASH_TAG, Tracker

EPOCHS, METRICS = 20, 50
HISTORY = ["train_loss", "val_loss/a", "val_loss_adj/a", "val_loss/b", "val_loss_adj/b", "lr"]


def _database(base: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name}")
        connection.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"


def _client(uri: str, root: Path, name: str, who: int, load: Load, out: dict) -> None:
    """One client: its runs at the paper's volume; batch latencies and errors into ``out``."""
    latencies, errors = [], []
    try:
        tracker = Tracker(uri, ProjectPaths(root))
        experiment = tracker.experiment(name)
        due = time.perf_counter() + load.epoch_seconds * who / load.clients  # spread starts
        for r in range(load.runs):
            _pause_until(due)
            run_id = tracker.create(experiment, {CONFIG_HASH_TAG: f"{who}-{r}"})
            tracker.set_tags(run_id, {f"zoo.axis.a{j}": str(j) for j in range(9)})
            tracker.log_params(run_id, {f"stages.0.p{j}": j for j in range(30)})
            for step in range(1, EPOCHS + 1):
                due += load.epoch_seconds  # training this epoch
                _pause_until(due)
                start = time.perf_counter()
                tracker.log_metrics(run_id, {f"val_m{k}": step + k for k in range(METRICS)}, step)
                latencies.append(time.perf_counter() - start)
            tracker.finish(run_id)
    except Exception as error:
        errors.append(f"{type(error).__name__}: {str(error)[:200]}")
    out[who] = (latencies, errors)


@dataclass(frozen=True)
class Load:
    clients: int
    runs: int  # per client
    epoch_seconds: float  # 0: batches back to back


def _pause_until(due: float) -> None:
    """Sleep until ``due`` (open loop: a late client goes on at once)."""
    time.sleep(max(0.0, due - time.perf_counter()))


def _cpu(server_pid: int | None, pg: Path | None) -> tuple[float, float, float]:
    """CPU seconds so far of this process (the clients), of the MLflow server's process
    group and of the PostgreSQL cluster in ``pg`` (exited backends included)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    tick = os.sysconf("SC_CLK_TCK")
    postmaster = int((pg / "postmaster.pid").read_text().split()[0]) if pg else -1
    server = database = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(stat[11]) + int(stat[12])) / tick
        if server_pid and int(stat[2]) == server_pid:
            server += seconds
        elif int(pid) == postmaster:
            database += seconds + (int(stat[13]) + int(stat[14])) / tick
        elif int(stat[1]) == postmaster:
            database += seconds
    return usage.ru_utime + usage.ru_stime, server, database


def load_test(uri: str, root: Path, load: Load, watch: tuple = (None, None)) -> dict:
    """``load`` on the store at ``uri``; ``watch`` names the server's process group and
    the PostgreSQL folder whose CPU time is counted (see ``_cpu``)."""
    clients, runs = load.clients, load.runs
    name = f"load-{clients}-{time.monotonic_ns()}"
    Tracker(uri, ProjectPaths(root)).experiment(name)
    out: dict = {}
    threads = [
        threading.Thread(target=_client, args=(uri, root, name, w, load, out))
        for w in range(clients)
    ]
    start, cpu = time.perf_counter(), _cpu(*watch)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    batches = clients * runs * EPOCHS  # CPU ms per epoch batch, run set-up included
    cpu_ms = [
        1000 * (after - before) / batches for before, after in zip(cpu, _cpu(*watch), strict=True)
    ]
    latencies = sorted(x for lat, _ in out.values() for x in lat)
    tables = load_tables(uri, name)
    rows = 0 if tables is None else len(tables.histories)
    errors = [e for _, found in out.values() for e in found]
    if errors:
        print(f"  first error of {len(errors)}: {errors[0]}")
    return {
        "runs/s": clients * runs / seconds,
        "p50": latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "errors": len(errors),
        "lost": clients * runs * EPOCHS * METRICS - rows,
        "load": os.getloadavg()[0],
        "cpu_ms": cpu_ms,
    }


def build(uri: str, count: int) -> float:
    rng = np.random.default_rng(0)
    runs = []
    for i in range(count):
        tags = {f"zoo.axis.a{j}": str(i % (j + 2)) for j in range(6)}
        tags.update({"zoo.kind": "run", CONFIG_HASH_TAG: f"{i:016x}", "zoo.sweep": "bench"})
        params = {f"stages.{j % 2}.p{j}": str(rng.random()) for j in range(25)}
        histories = {m: list(np.exp(-np.arange(20) / 5) + rng.random(20) * 0.01) for m in HISTORY}
        runs.append(BulkRun(tags=tags, params=params, histories=histories))
    start = time.perf_counter()
    bulk_insert(uri, "bench", runs)
    return time.perf_counter() - start


_LOAD = """
import sys, time
from contextlib import nullcontext
from unittest import mock
from zoo.analysis import load_tables
from zoo.store import _rest
uri, count, public = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "public"
start = time.perf_counter()
with mock.patch.object(_rest, "_zoo_tables", lambda *a: None) if public else nullcontext():
    tables = load_tables(uri, "bench")
seconds = time.perf_counter() - start
assert len(tables.runs) == count and len(tables.histories) == count * 6 * 20  # HISTORY
print(seconds)
"""


def _timed_load(uri: str, count: int, public: bool = False) -> float:
    """Seconds ``load_tables`` takes in a process of its own, as in ``zoo analyze`` (not
    this one, which wrote the store and holds it open); ``public``: a server read
    through MLflow's public REST API, as from a plain ``mlflow server``."""
    import subprocess
    import sys

    mode = "public" if public else "zoo"
    command = [sys.executable, "-c", _LOAD, uri, str(count), mode]
    found = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(found.stdout.split()[-1])


def read_test(write_uri: str, read_uri: str, count: int, public: bool) -> list[float]:
    """Seconds to read ``count`` runs: zoo's ``load_tables`` (through a server: also by the
    public REST API when ``public``), then ``mlflow.search_runs``."""
    import mlflow

    build(write_uri, count)
    seconds = [_timed_load(read_uri, count)]
    if public:
        seconds.append(_timed_load(read_uri, count, public=True))
    mlflow.set_tracking_uri(read_uri)
    start = time.perf_counter()
    frame = mlflow.search_runs(experiment_names=["bench"], max_results=100_000)
    assert len(frame) == count
    return [*seconds, time.perf_counter() - start]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="16,64,256")
    parser.add_argument("--runs-per-client", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--backends", default="sqlite,postgresql,server")
    parser.add_argument("--epoch-seconds", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=Server.workers)
    parser.add_argument("--port", type=int, default=15460)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-read", action="store_true")
    args = parser.parse_args()
    backends = args.backends.split(",")
    # the clients are threads of this process sharing one engine per store: give it a
    # connection per client, as N separate client processes would have
    clients = max(map(int, args.clients.split(",")))
    os.environ["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"] = str(clients + 5)
    os.environ["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"] = "0"
    folder = Path(tempfile.mkdtemp(prefix="zoo-bench-", dir="/tmp"))
    folder.chmod(0o755)
    init_postgres(folder / "pg")
    start_postgres(folder / "pg", args.port)
    base = f"postgresql://zoo@127.0.0.1:{args.port}"
    server = start_mlflow(
        Server(
            str(folder), "postgresql", "127.0.0.1", args.port + 10, args.port, None, args.workers
        )
    )
    try:
        if not args.skip_load:
            uris = {
                "sqlite": f"sqlite:///{folder / 'load.db'}",
                "postgresql": _database(base, "load"),
                "server": server.uri,
            }
            print(
                f"(a) load, epoch every {args.epoch_seconds:g} s (0: back to back), server "
                f"workers {args.workers}: backend, clients, runs/s, p50 s, p99 s, errors, "
                "lost rows, load average; CPU ms per epoch batch: clients, server, database; "
                f"batches/s that {os.cpu_count()} idle cores could take at that CPU cost"
            )
            watch = {
                "sqlite": (None, None),
                "postgresql": (None, folder / "pg"),
                "server": (server.mlflow_pid, folder / "pg"),
            }
            for backend in backends:
                for clients in map(int, args.clients.split(",")):
                    load = Load(clients, args.runs_per_client, args.epoch_seconds)
                    found = load_test(uris[backend], folder, load, watch[backend])
                    cpu = found["cpu_ms"]
                    print(
                        f"{backend:10} {clients:4} {found['runs/s']:8.2f} {found['p50']:7.3f} "
                        f"{found['p99']:7.3f} {found['errors']:4} {found['lost']:6} "
                        f"{found['load']:6.1f}  {cpu[0]:5.1f} {cpu[1]:5.1f} {cpu[2]:5.1f}  "
                        f"{os.cpu_count() * 1000 / max(sum(cpu), 1e-9):6.0f}",
                        flush=True,
                    )
        if not args.skip_read:
            print(
                f"(b) read {args.runs} runs: backend, zoo load_tables s (through the server: "
                "zoo's route, then the public REST API), mlflow.search_runs s, load average"
            )
            reads = {
                "sqlite": (f"sqlite:///{folder / 'read.db'}",) * 2,
                "postgresql": (_database(base, "read"),) * 2,
                "server": (server.store, server.uri),
            }
            for backend in backends:
                found = read_test(*reads[backend], args.runs, public=backend == "server")
                figures = " ".join(f"{s:8.2f}" for s in found)
                print(f"{backend:10} {figures}  load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        stop_mlflow(server)
        stop_postgres(folder / "pg")
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
