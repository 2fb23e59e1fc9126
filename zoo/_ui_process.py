"""``zoo ui``: the MLflow UI as a child process, its links printed before it answers.

The port is checked first (a busy one is bad input: one line, exit 2). The server
starts in its own session with one uvicorn worker and without MLflow's GenAI job
runner (both quick to start on a small machine), its output (INFO lines, deprecation
warnings) appended to the project's UI log; meanwhile each sweep's links
(zoo.modelzoo.experiment_links) are printed, each on a line of its own. SIGINT,
SIGTERM and SIGHUP are passed on to the server's process group, which is ended by its
id (SIGKILL after ``GRACE`` s); a ``zoo ui`` killed outright takes the server with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from zoo.errors import ConfigError

__all__ = ["GRACE", "check_port", "serve"]

GRACE = 10.0
WORKERS = 1  # uvicorn's supervisor of several restarts workers slow to start on a busy machine
_HOST = "127.0.0.1"


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((_HOST, port))
        except OSError:
            return False
    return True


def check_port(port: int) -> None:
    """Refuse (ConfigError naming ``--port``) a port something already listens on."""
    if _free(port):
        return
    spare = next((p for p in range(port + 1, min(port + 100, 65536)) if _free(p)), None)
    hint = f", e.g. --port {spare}" if spare else ""
    raise ConfigError(f"--port: {port} is in use on {_HOST}; expected a free port{hint}")


def _start(uri: str, port: int, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", _HOST, "--port", str(port), "--workers", str(WORKERS)]
    command += ["--app-name", "zoo"]  # zoo._server_app: the UI opens in the training workflow
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}  # no GenAI job runner
    env["PYTHONSAFEPATH"] = "1"  # a click.py or mlflow.py where zoo ui starts is not imported
    with log.open("a") as out:
        out.write(f"--- zoo ui {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(command)}\n")
        out.flush()
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_end_with_parent, env=env,
        )  # fmt: skip


def _end_with_parent() -> None:
    """In the child: SIGTERM when zoo ends, however it ends (Linux; MLflow passes SIGTERM
    on to its uvicorn), so a killed ``zoo ui`` leaves no server behind."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


@contextlib.contextmanager
def _passing_signals(child: subprocess.Popen) -> Iterator[list[int]]:
    """Signals that arrive are passed to ``child``'s process group (and listed)."""
    received: list[int] = []

    def forward(number: int, _frame) -> None:
        received.append(number)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, number)

    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {number: signal.signal(number, forward) for number in stops}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _wait_until_up(child: subprocess.Popen, url: str) -> bool:
    """Whether the server at ``url`` answers before ``child`` ends."""
    while child.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return True
        except OSError:
            time.sleep(0.25)
    return False


def _wait(child: subprocess.Popen, received: list[int]) -> int:
    """``child``'s exit status; its group is killed GRACE s after a signal was passed on."""
    deadline = None
    while True:
        try:
            return child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if received and deadline is None:
                deadline = time.monotonic() + GRACE
            if deadline is not None and time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)


def _end(child: subprocess.Popen) -> None:
    """Stop ``child``'s group: SIGTERM, then SIGKILL after GRACE s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    _wait(child, [signal.SIGTERM])


def _print_links(uri: str, url: str) -> None:
    from zoo.modelzoo import experiment_links

    try:
        found = experiment_links(uri, url)
    except Exception as error:  # the UI still serves the store; only the views are missing
        print(f"zoo ui: no experiment links ({type(error).__name__}: {error})", flush=True)
        return
    if not found:
        print("  (no zoo experiments in this store yet)", flush=True)
    for name, links in found.items():
        for what, link in links.items():
            print(f"  {name} {what}: {link}", flush=True)
    print(f"  all experiments: {url}/#/experiments?workflowType=machine_learning", flush=True)


def serve(uri: str, port: int, log: Path) -> int:
    """Serve the store at ``uri`` on 127.0.0.1:``port`` until a signal ends it (0) or the
    server stops by itself (1, naming ``log``)."""
    check_port(port)
    url = f"http://{_HOST}:{port}"
    child = _start(uri, port, log)
    with _passing_signals(child) as received:
        try:
            print(f"MLflow UI for {uri} at {url} (server log: {log})", flush=True)
            _print_links(uri, url)
            if _wait_until_up(child, url):
                print("zoo ui: the server answers; Ctrl-C stops it", flush=True)
            status = _wait(child, received)
        finally:
            if child.poll() is None:
                _end(child)
    if received:
        return 0
    print(f"zoo: error: the MLflow server stopped (exit {status}); see {log}", file=sys.stderr)
    return 1
