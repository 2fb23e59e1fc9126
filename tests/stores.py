"""Real tracking stores for tests: a PostgreSQL cluster and an MLflow server on it.

Both are session-scoped (started once, stopped at the end) on ports 15410 and 15420
(``$ZOO_TEST_PORT`` moves them to that port and the one 10 above, for two test sessions
on one machine); each test gets a fresh SQLite file or PostgreSQL database, or (on the
server) its own experiment names. The server is zoo's (``mlflow server --app-name zoo``);
``plain_mlflow_server`` starts MLflow's plain one on demand.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_PORT = int(os.environ.get("ZOO_TEST_PORT", "15410"))
SERVER_PORT = PG_PORT + 10


def _reachable_folder() -> Path:
    """A temporary folder user postgres can reach too (pytest's are root-only)."""
    folder = Path(tempfile.mkdtemp(prefix="zoo-store-", dir="/tmp"))
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="session")
def postgres():
    """The base URL of a PostgreSQL cluster of the tests' own (user zoo, loopback)."""
    from zoo.server import init_postgres, start_postgres, stop_postgres

    folder = _reachable_folder()
    init_postgres(folder / "pg")
    start_postgres(folder / "pg", PG_PORT)
    yield f"postgresql://zoo@127.0.0.1:{PG_PORT}"
    stop_postgres(folder / "pg")
    shutil.rmtree(folder, ignore_errors=True)


def fresh_database(base: str) -> str:
    """The URI of a new, empty database on the cluster at ``base``."""
    import psycopg

    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def tracking_server(postgres):
    """An ``mlflow server`` on the PostgreSQL cluster (database mlflow), as a zoo Server."""
    from zoo.server import Server, start_mlflow, stop_mlflow

    folder = _reachable_folder()
    server = start_mlflow(
        Server(str(folder), "postgresql", "127.0.0.1", SERVER_PORT, PG_PORT, None, 2)
    )
    yield server
    stop_mlflow(server)
    shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def plain_mlflow_server(store: str, port: int):
    """A plain ``mlflow server`` (MLflow's app, no zoo route) on ``store``; yields its URI."""
    folder = _reachable_folder()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(folder / "mlflow.log", "w") as log:
        child = subprocess.Popen(
            command,
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while child.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.3)
        assert child.poll() is None, (folder / "mlflow.log").read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def run_python(code: str, root: Path, *args: str) -> subprocess.Popen:
    """Start ``code`` in a new Python process with project root ``root`` (its ZOO_ROOT)."""
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ZOO_ROOT": str(root)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
