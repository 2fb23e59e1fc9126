"""`zoo server`: PostgreSQL and an MLflow server of zoo's own; a sweep survives the
server going away for 30 s."""

from __future__ import annotations

import importlib.metadata
import ipaddress
import os
import re
import shutil
import signal
import socket
import time
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import zoo_process
from mlflow.tracking import MlflowClient
from stores import PG_PORT, _reachable_folder

from zoo._supervise import group
from zoo.cli import main
from zoo.server import Server, _record, _recorded, start_mlflow, stop, stop_mlflow

PORT = PG_PORT + 40  # 15450 by default; $ZOO_TEST_PORT moves it
OUTAGE_S = 30


def _runs(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def _metric_rows(uri: str, runs: list) -> int:
    client = MlflowClient(uri)
    return sum(
        len(client.get_metric_history(r.info.run_id, key)) for r in runs for key in r.data.metrics
    )


@pytest.fixture
def data():
    """The server's data folder; whatever the test started there is stopped at the end."""
    folder = _reachable_folder()
    yield folder
    stop(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_sweep_through_the_server_survives_a_30_s_outage(tiny_spec, project, data, capsys):
    start = ["server", "start", "--data", str(data), "--port", str(PORT), "--workers", "2"]
    assert main(start) == 0
    uri = f"http://127.0.0.1:{PORT}"
    assert f"--tracking-uri {uri}" in capsys.readouterr().out
    assert main(["server", "status", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "mlflow: running\npostgresql: running" in out
    assert "indexes: zoo_runs_experiment_start present" in out  # made by start (zoo._indexes)
    spec = tiny_spec(sources=("a",), freezes=("none", "encoder"), epochs=3)
    sweep = zoo_process(project.root, "sweep", "run", str(spec), "--tracking-uri", uri, text=True)
    try:
        deadline = time.time() + 600
        while not any(r.data.metrics for r in _runs(uri, "tiny")) and time.time() < deadline:
            time.sleep(0.5)
        server = stop_mlflow(_recorded(data))
        time.sleep(OUTAGE_S)  # training goes on; its logging retries with backoff
        assert sweep.poll() is None, sweep.stdout.read()
        start_mlflow(server)
        output = sweep.communicate(timeout=900)[0]
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, output
    runs = _runs(uri, "tiny")
    identities = Counter(r.data.tags["zoo.config_hash"] for r in runs)
    assert len(runs) == 1 + 2 and set(identities.values()) == {1}  # no duplicate runs
    assert {r.info.status for r in runs} == {"FINISHED"}
    client = MlflowClient(uri)
    for run in runs:  # every epoch's row is there once
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert steps and len(set(steps)) == len(steps), (run.data.tags, steps)
    rows = _metric_rows(uri, runs)
    assert main(["server", "stop", "--data", str(data)]) == 0
    assert main(["server", "status", "--data", str(data)]) == 3
    out = capsys.readouterr().out
    assert "mlflow: stopped\npostgresql: stopped" in out
    assert "indexes: unknown (OperationalError" in out
    # the same sweep into a fresh SQLite store, never interrupted, logs as many rows
    reference = project.root / "reference.db"
    assert main(["sweep", "run", str(spec), "--tracking-uri", f"sqlite:///{reference}"]) == 0
    uninterrupted = _runs(f"sqlite:///{reference}", "tiny")
    assert rows == _metric_rows(f"sqlite:///{reference}", uninterrupted)


def test_start_names_the_fix_when_zoos_app_is_not_installed(data, monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kwargs: ())
    with pytest.raises(RuntimeError, match=r"reinstall zoo \(make"):
        start_mlflow(Server(str(data), "sqlite", "127.0.0.1", PORT, None, None, 1))
    assert not (data / "mlflow.db").exists()


def test_every_address_needs_insecure_and_prints_the_uri_other_machines_use(data, capsys):
    """Refused without --insecure (nothing written); with it, the printed URI names this
    machine as others reach it, not loopback, and the server answers there (Host check
    included)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("203.0.113.1", 9))  # a route beyond loopback; nothing is sent
    except OSError:
        pytest.skip("this machine has no network beyond loopback")
    start = ["server", "start", "--data", str(data), "--backend", "sqlite", "--host", "0.0.0.0"]
    start += ["--port", str(PORT + 2), "--workers", "1"]
    assert main(start) == 2
    assert "--insecure" in capsys.readouterr().err and not any(data.iterdir())
    assert main([*start, "--insecure"]) == 0
    uri = re.search(r"tracking server at (\S+) ", capsys.readouterr().out).group(1)
    host = urlsplit(uri).hostname
    addresses = {found[4][0] for found in socket.getaddrinfo(host, None)}
    assert not any(ipaddress.ip_address(a).is_loopback for a in addresses), (uri, addresses)
    url = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200


def test_ipv6_loopback_needs_no_insecure_and_answers_at_its_uri(data, capsys):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    uri = f"http://[::1]:{PORT + 4}"
    start = ["server", "start", "--data", str(data), "--backend", "sqlite", "--host", "::1"]
    assert main([*start, "--port", str(PORT + 4), "--workers", "1"]) == 0
    assert f"tracking server at {uri} " in capsys.readouterr().out
    url = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    with urllib.request.urlopen(url, timeout=30) as response:  # Host [::1]:PORT accepted
        assert response.status == 200


def _answers_with_its_store(uri: str) -> bool:
    """Whether the server at ``uri`` reads its backend store (not only /health)."""
    url = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status == 200
    except OSError:
        return False


def _start(data, port, *extra):
    return ["server", "start", "--data", str(data), "--port", str(port), "--workers", "1", *extra]


def test_start_brings_back_a_killed_postgres_and_keeps_mlflow(data, capsys):
    port = PORT + 6
    assert main(_start(data, port)) == 0
    mlflow_pid = _recorded(data).mlflow_pid
    postmaster = int((data / "postgresql" / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGKILL)
    while Path(f"/proc/{postmaster}").exists():
        time.sleep(0.1)
    capsys.readouterr()
    assert main(["server", "status", "--data", str(data)]) == 3
    assert "postgresql: stopped" in capsys.readouterr().out
    assert main(_start(data, port)) == 0
    out = capsys.readouterr().out
    assert f"postgresql: started on 127.0.0.1:{port + 1}\nmlflow: running (pid {mlflow_pid})" in out
    assert main(["server", "status", "--data", str(data)]) == 0
    assert "mlflow: running\npostgresql: running" in capsys.readouterr().out
    assert _answers_with_its_store(f"http://127.0.0.1:{port}")


def test_workers_left_by_a_dead_parent_are_told_apart_replaced_and_stopped(data, capsys):
    """The drill: kill -9 of mlflow server's parent leaves its workers serving. status
    says so; start replaces them; stop leaves the port free; restart starts anew."""
    port = PORT + 8
    assert main(_start(data, port, "--backend", "sqlite")) == 0
    parent = _recorded(data).mlflow_pid
    os.kill(parent, signal.SIGKILL)
    time.sleep(1)
    assert _answers_with_its_store(f"http://127.0.0.1:{port}")  # its workers still serve
    capsys.readouterr()
    assert main(["server", "status", "--data", str(data)]) == 3
    assert f"mlflow: orphaned: its parent (pid {parent}) is gone" in capsys.readouterr().out
    assert main(_start(data, port, "--backend", "sqlite")) == 0
    assert "mlflow: stopped the processes its dead parent left" in capsys.readouterr().out
    assert _recorded(data).mlflow_pid != parent and _answers_with_its_store(
        f"http://127.0.0.1:{port}"
    )
    assert main(["server", "restart", "--data", str(data)]) == 0
    assert "mlflow: started" in capsys.readouterr().out
    restarted = _recorded(data).mlflow_pid
    assert main(["server", "stop", "--data", str(data)]) == 0
    assert group(restarted) == []  # its whole process group
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_port_zoo_did_not_record_is_named_and_left_alone(data, capsys):
    port = PORT + 10
    with socket.socket() as listener:  # this test's process answers the port
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert main(_start(data, port, "--backend", "sqlite")) == 1
        err = capsys.readouterr().err
        assert f"--port {port}: port {port} answers, from processes zoo did not " in err
        assert f"record ({os.getpid()} (" in err and err.count("\n") == 1
        assert not (data / "mlflow.log").exists()  # nothing was started
        _record(Server(str(data), "sqlite", "127.0.0.1", port, None, None, 1))
        assert main(["server", "status", "--data", str(data)]) == 3
        assert f"mlflow: serving but not ours: port {port} answers" in capsys.readouterr().out
