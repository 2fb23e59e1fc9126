"""A sweep through the local SLURM cluster against the local executor, both from an
empty project root on this machine, one after the other.

Times ``zoo sweep run SPEC --workers N`` and ``zoo sweep submit SPEC --max-parallel N
[SUBMIT OPTIONS]`` until the queue is empty (slurm/local-cluster.sh with N CPUs
declared; SQLite store in the project root, as the demo), checks that both finished
every planned run, and prints the wall times and their ratio. Target (issue 28, 2
cores, the demo): SLURM with the default runs per task <= 1.25x local with 2 workers.
Run (as root: the cluster): ``.venv/bin/python benchmarks/bench_slurm_local.py
[--spec sweeps/demo.yaml] [--workers 2] [-- --runs-per-task auto --profile cpu-2core]``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from bench_scale import CLUSTER, REPO, zoo  # this folder's: a script's first path


def finished(root: Path) -> int:
    """FINISHED runs in the project's store."""
    with sqlite3.connect(root / "mlflow.db") as connection:
        return connection.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'").fetchone()[
            0
        ]


def wait_empty(poll_s: float = 1.0) -> None:
    while subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip():
        time.sleep(poll_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=REPO / "sweeps" / "demo.yaml")
    parser.add_argument("--workers", type=int, default=2, help="local workers; SLURM CPUs")
    parser.add_argument("submit", nargs="*", help="more `zoo sweep submit` options (after --)")
    args = parser.parse_args()
    spec = str(args.spec.resolve())
    with tempfile.TemporaryDirectory(prefix="bench-slurm-local-") as folder:
        local, cluster = Path(folder) / "local", Path(folder) / "slurm-root"
        local.mkdir(), cluster.mkdir()
        local_s = zoo(local, "sweep", "run", spec, "--workers", str(args.workers))[0]
        env = {
            **os.environ,
            "ZOO_SLURM_DIR": f"{folder}/slurm",
            "ZOO_SLURM_CPUS": str(args.workers),
        }
        started = subprocess.run(
            [str(CLUSTER), "start"], env=env, capture_output=True, text=True, check=True
        )
        os.environ["SLURM_CONF"] = started.stdout.strip()
        try:
            began = time.perf_counter()
            zoo(cluster, "sweep", "submit", spec, "--max-parallel", str(args.workers), *args.submit)
            wait_empty()
            slurm_s = time.perf_counter() - began
        finally:
            subprocess.run([str(CLUSTER), "stop"], env=env, check=False)
        counts = finished(local), finished(cluster)
    print(f"bench_slurm_local ({os.cpu_count()} cores), {args.spec.name}:")
    print(f"  local, {args.workers} workers       {local_s:8.1f} s  ({counts[0]} FINISHED)")
    options = " ".join(args.submit) or "default runs per task"
    print(f"  SLURM, {options}  {slurm_s:8.1f} s  ({counts[1]} FINISHED)")
    print(f"  SLURM / local                {slurm_s / local_s:8.2f}x  (target <= 1.25x)")


if __name__ == "__main__":
    main()
