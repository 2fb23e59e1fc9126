"""`zoo ui` serves the project's tracking store on 127.0.0.1 and prints links to zoo's views of
its sweeps at once; analysis reads a server too."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import zoo_process
from stores import fresh_database, plain_mlflow_server

from benchmarks._bulk import BulkRun, bulk_insert
from zoo.analysis import load_tables
from zoo.modelzoo._ui import axis_params, experiment_links, links, views
from zoo.store._views import RunSample, SweepSample, read_sweeps


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


def _models(uri: str) -> None:
    """Two models of experiment "visible-in-ui" whose names differ at their end only, with
    axes `freeze` (carried by the param stages.1.freeze) and `seed`."""
    bulk_insert(
        uri,
        "visible-in-ui",
        [
            BulkRun(
                tags={
                    "zoo.kind": "run",
                    "zoo.axis.freeze": freeze,
                    "zoo.axis.seed": "0",
                    "mlflow.runName": f"df-10→df+10 · lr 1e-3→1e-4 · n 64 · {freeze}",
                },
                params={"stages.1.freeze": freeze, "seed": "0", "stages.1.lr": "0.0001"},
                metrics={"target_loss_adj": loss, "target_loss": loss},
                histories={"val_loss_adj/a": [0.3, 0.1]},
            )
            for freeze, loss in (("none", 0.02), ("encoder", 0.01))
        ],
    )


def _read_lines(stream, lines: list[tuple[float, str]]) -> None:
    for line in iter(stream.readline, ""):
        lines.append((time.monotonic(), line))


def test_ui_prints_its_links_at_once_logs_the_server_to_a_file_and_analysis_reads_it(project):
    _models(project.tracking_uri)
    (project.root / "click.py").write_text("raise SystemExit('imported')\n")  # not MLflow's
    port, lines = _free_port(), []
    started = time.monotonic()
    server = zoo_process(project.root, "ui", "--port", str(port), text=True, start_new_session=True)
    threading.Thread(target=_read_lines, args=(server.stdout, lines), daemon=True).start()
    try:
        deadline = time.time() + 180
        while not any("server answers" in line for _, line in lines):
            assert server.poll() is None and time.time() < deadline, lines
            time.sleep(0.2)
        out = [line for _, line in lines]
        assert f"http://127.0.0.1:{port}" in out[0]
        links = {
            line.split(": ", 1)[0].strip(): (at, line.split(": ", 1)[1].strip())
            for at, line in lines
            if "#/experiments/" in line
        }
        for what in ("runs", "charts", "compare"):  # each on a line of its own, within 5 s
            at, link = links[f"visible-in-ui {what}"]
            assert link.startswith(f"http://127.0.0.1:{port}/#/experiments/"), link
            assert "workflowType=machine_learning" in link and at - started < 5, (at, started)
        assert not [line for line in out if "INFO" in line or "Warning" in line]  # all in the log
        log = project.ui_log.read_text()
        assert "Uvicorn running" in log and f"--port {port}" in log
        assert _listening_on(port) == {"0100007F"}  # 127.0.0.1 only
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert b"MLflow" in response.read()
        tables = load_tables(f"http://127.0.0.1:{port}", "visible-in-ui")
        assert sorted(tables.runs["freeze"]) == ["encoder", "none"]
        assert sorted(tables.runs["target_loss_adj"]) == [0.01, 0.02]
        assert sorted(tables.histories["value"]) == [0.1, 0.1, 0.3, 0.3]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        assert server.wait(timeout=60) == 0  # stopped as asked: the server with it
    assert not _listening_on(port)


def test_ui_on_a_busy_port_says_so_in_one_line_and_exits_2(project):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "zoo.cli", "ui", "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and f"--port: {port} is in use" in done.stderr
    assert not project.ui_log.exists()  # no server was started


def test_views_list_models_flat_best_first_and_compare_them_over_the_axes():
    def run(freeze, lr, loss, name):
        return RunSample(
            name,
            {"freeze": freeze, "lr": lr, "seed": "0"},
            {"stages.1.freeze": freeze, "stages.1.lr": lr, "stages.1.optimizer": "adam",
             "stages.0.train": "df-10", "lr_label": f"lr {lr}", "seed": "0"},
            {"target_loss_adj", "target_iou", "best_epoch/transfer/a"},
        )  # fmt: skip

    runs = [run("none", "0.001", 0.2, "a · lr 1e-3 · none"), run("encoder", "0.0001", 0.1, "b")]
    sweep = SweepSample("7", "demo", {}, runs)
    # an axis's param: one to one with its values, the same values first; constant axes out
    assert axis_params(runs, ["freeze", "lr", "seed"]) == ["stages.1.freeze", "stages.1.lr"]
    tables = {k.rsplit(".", 1)[1]: json.loads(v) for k, v in views(sweep).items()}
    for view in tables.values():  # a filter and a sort: the UI lists runs flat, best first
        assert view["searchFilter"] == "tags.`zoo.kind` = 'run'"
        assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`target_loss_adj`", True)
        assert view["selectedColumns"][:3] == [
            "metrics.`target_loss_adj`", "tags.`zoo.axis.freeze`", "tags.`zoo.axis.lr`"
        ]  # fmt: skip
        assert view["columnWidths"]["attributes.`Run Name`"] >= 7 * len("a · lr 1e-3 · none")
    charts = tables["zoo-models"]["compareRunCharts"]
    assert [c["type"] for c in charts] == ["BAR", "PARALLEL"]
    assert charts[0]["metricKey"] == "target_loss_adj"
    compare = tables["zoo-compare"]["compareRunCharts"][0]
    assert compare["type"] == "PARALLEL" and compare["selectedMetrics"] == ["target_loss_adj"]
    assert compare["selectedParams"] == ["stages.1.freeze", "stages.1.lr"]
    assert tables["zoo-compare"]["compareRunSections"][0]["isReordered"] is True
    assert set(links(sweep, "http://h:1")) == {"runs", "charts", "compare"}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_views_are_written_into_a_sql_store_and_read_back(project, request, kind):
    from mlflow.tracking import MlflowClient

    uri = (
        project.tracking_uri
        if kind == "sqlite"
        else fresh_database(request.getfixturevalue("postgres"))
    )
    _models(uri)
    found = experiment_links(uri, "http://127.0.0.1:5000")
    experiment = MlflowClient(uri).get_experiment_by_name("visible-in-ui")
    assert (
        set(found) == {"visible-in-ui"}
        and experiment.experiment_id in found["visible-in-ui"]["runs"]
    )
    tags = {
        k[len("mlflow.sharedViewState.") :]: json.loads(v)
        for k, v in experiment.tags.items()
        if "ViewState" in k
    }
    assert set(tags) == {"zoo-models", "zoo-compare"}
    assert tags["zoo-compare"]["compareRunCharts"][0]["selectedParams"] == ["stages.1.freeze"]
    (sweep,) = read_sweeps(uri)
    assert {k[len("mlflow.sharedViewState.") :] for k in sweep.tags} == set(tags)
    assert sorted(run.axes["freeze"] for run in sweep.runs) == ["encoder", "none"]
    assert experiment_links(uri, "http://127.0.0.1:5000") == found  # again: the same


def test_a_killed_ui_takes_its_server_with_it(project):
    port, lines = _free_port(), []
    server = zoo_process(project.root, "ui", "--port", str(port), text=True)
    threading.Thread(target=_read_lines, args=(server.stdout, lines), daemon=True).start()
    deadline = time.time() + 180
    while not any("server answers" in line for _, line in lines):
        assert server.poll() is None and time.time() < deadline, lines
        time.sleep(0.2)
    server.kill()  # SIGKILL: zoo passes on nothing
    server.wait(timeout=30)
    deadline = time.time() + 60
    while _listening_on(port) and time.time() < deadline:
        time.sleep(0.5)
    assert not _listening_on(port)


def test_views_are_written_through_a_tracking_server(project):
    from mlflow.tracking import MlflowClient

    _models(project.tracking_uri)
    with plain_mlflow_server(project.tracking_uri, _free_port()) as uri:
        found = experiment_links(uri, uri)
        tags = MlflowClient(uri).get_experiment_by_name("visible-in-ui").tags
    assert found["visible-in-ui"]["compare"].startswith(f"{uri}/#/experiments/")
    compare = json.loads(tags["mlflow.sharedViewState.zoo-compare"])
    assert compare["compareRunCharts"][0]["selectedParams"] == ["stages.1.freeze"]
