"""`zoo ui` serves the project's tracking store on 127.0.0.1; analysis reads a server too."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from pathlib import Path

from conftest import zoo_process

from zoo.analysis import BulkRun, bulk_insert, load_tables


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening_on(port: int) -> set[str]:
    """The local addresses listening on TCP ``port`` (hex, as /proc/net/tcp* writes them)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_ui_lists_the_project_experiments_on_loopback_only_and_analysis_reads_it(project):
    bulk_insert(
        project.tracking_uri,
        "visible-in-ui",
        [
            BulkRun(
                tags={"zoo.kind": "run", "zoo.axis.freeze": "none"},
                metrics={"target_loss_adj": 0.02},
                histories={"val_loss_adj/a": [0.3, 0.1]},
            )
        ],
    )
    port = _free_port()
    server = zoo_process(project.root, "ui", "--port", str(port), start_new_session=True)
    try:
        assert f"http://127.0.0.1:{port}" in server.stdout.readline().decode()
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=50"
        deadline, names = time.time() + 90, []
        while time.time() < deadline and "visible-in-ui" not in names:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    names = [e["name"] for e in json.load(response)["experiments"]]
            except OSError:
                time.sleep(0.5)
        assert "visible-in-ui" in names
        assert _listening_on(port) == {"0100007F"}  # 127.0.0.1 only
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert b"MLflow" in response.read()
        tables = load_tables(f"http://127.0.0.1:{port}", "visible-in-ui")
        assert tables.runs["freeze"].tolist() == ["none"]
        assert tables.runs["target_loss_adj"].tolist() == [0.02]
        assert sorted(tables.histories["value"]) == [0.1, 0.3]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
