"""``zoo server``: an MLflow tracking server on a PostgreSQL cluster of its own.

The cluster path for sweeps: one server on a login or service node, every array task
logging to it over HTTP. ``start`` initialises PostgreSQL (Debian's packages,
installed when missing) under a data folder, starts it on the loopback interface
only, starts ``mlflow server`` on it with zoo's app (MLflow's own plus a bulk read
route for ``load_tables``, see ``zoo._server_app``), serving artifacts from the same
folder, and records both in ``server.json`` there. ``start`` again brings up whichever
part is down (PostgreSQL, MLflow) and keeps what runs; ``status`` tells a running
MLflow from a stopped one, from the orphaned processes of one whose parent died, and
from a port answered by processes zoo did not record; ``stop`` stops exactly what that
file names, MLflow's whole process group, and checks that its port is free. The
server has no authentication: it listens beyond loopback only when asked with
``insecure`` (``--insecure``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from zoo import _supervise
from zoo.errors import ConfigError, ServerError
from zoo.store import ensure_indexes, present_indexes

__all__ = [
    "BACKENDS",
    "Server",
    "check_host",
    "restart",
    "start",
    "start_mlflow",
    "status",
    "stop",
    "stop_mlflow",
]

BACKENDS = ("postgresql", "sqlite")
_DATABASE = "mlflow"
_USER = "zoo"
_READY_S = 120.0
_APP = "zoo"  # mlflow server --app-name: zoo._server_app, declared in setup.cfg
_MAX_CONNECTIONS = 500  # mlflow server's workers × 50 pooled connections, and clients


@dataclass(frozen=True)
class Server:
    """What ``start`` started, as recorded in ``<data>/server.json``."""

    data: str
    backend: str
    host: str
    port: int
    pg_port: int | None
    mlflow_pid: int | None
    workers: int = 4  # mlflow server's worker processes

    @property
    def uri(self) -> str:
        """The tracking URI clients use: the address it listens on, or for a wildcard
        (0.0.0.0, ::) this machine's name or address as other machines reach it."""
        return f"http://{_in_url(_client_host(self.host))}:{self.port}"

    @property
    def store(self) -> str:
        """The backend store the MLflow server writes to."""
        if self.backend == "sqlite":
            return f"sqlite:///{Path(self.data) / 'mlflow.db'}"
        return f"postgresql+psycopg://{_USER}@127.0.0.1:{self.pg_port}/{_DATABASE}"


def _record(server: Server) -> Server:
    Path(server.data, "server.json").write_text(json.dumps(asdict(server), indent=1))
    return server


def _recorded(data: Path) -> Server | None:
    path = data / "server.json"
    return Server(**json.loads(path.read_text())) if path.exists() else None


def _pg_binary(name: str) -> str:
    """A PostgreSQL program, installing Debian's ``postgresql`` package when missing."""
    for _ in range(2):
        versions = sorted(
            Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
            key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        )
        found = str(versions[-1]) if versions else shutil.which(name)
        if found:
            return found
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise ConfigError(f"PostgreSQL's {name} is not installed; install postgresql")
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "postgresql"],
            check=True,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    raise ConfigError(f"PostgreSQL's {name} is not installed; install postgresql")


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run ``command`` as user postgres."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _pg(command: list[str], log: Path) -> None:
    done = subprocess.run(_as_postgres(command), capture_output=True, text=True)
    if done.returncode:
        log.write_text(done.stdout + done.stderr)
        raise ServerError(f"{Path(command[0]).name} failed; see {log}")


def init_postgres(folder: Path) -> None:
    """A PostgreSQL cluster in ``folder`` (kept if already there): user zoo, trusted on
    loopback only, no Unix socket."""
    if (folder / "PG_VERSION").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        if subprocess.run(_as_postgres(["test", "-w", str(folder)])).returncode:
            raise ConfigError(
                f"--data {folder.parent}: as root, PostgreSQL runs as user postgres, which "
                "cannot reach this folder; choose one it can (e.g. under /var/tmp)"
            )
    command = [_pg_binary("initdb"), "-D", str(folder), "-U", _USER, "-E", "UTF8"]
    _pg([*command, "--auth=trust", "--no-instructions"], folder.parent / "initdb.log")
    with open(folder / "postgresql.conf", "a") as conf:
        conf.write("listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n")
        conf.write(f"max_connections = {_MAX_CONNECTIONS}\n")
    (folder / "pg_hba.conf").write_text(
        "host all zoo 127.0.0.1/32 trust\nhost all zoo ::1/128 trust\n"
    )


def start_postgres(folder: Path, port: int) -> None:
    """Start the cluster in ``folder`` on 127.0.0.1:``port`` and create the database."""
    import psycopg

    log = folder / "postgresql.log"
    if not _pg_running(folder):
        command = [_pg_binary("pg_ctl"), "-D", str(folder), "-l", str(log), "-w", "-t", "60"]
        _pg([*command, "-o", f"-p {port}", "start"], folder.parent / "pg_ctl.log")
    with psycopg.connect(
        f"postgresql://{_USER}@127.0.0.1:{port}/postgres", autocommit=True
    ) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (_DATABASE,)
        ).fetchone()
        if not exists:
            connection.execute(f"CREATE DATABASE {_DATABASE}")


def _pg_running(folder: Path) -> bool:
    command = [_pg_binary("pg_ctl"), "-D", str(folder), "status"]
    return subprocess.run(_as_postgres(command), capture_output=True).returncode == 0


def stop_postgres(folder: Path) -> None:
    if _pg_running(folder):
        command = [_pg_binary("pg_ctl"), "-D", str(folder), "-m", "fast", "-w", "stop"]
        _pg(command, folder.parent / "pg_ctl.log")


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost
        return False


def check_host(host: str, insecure: bool) -> None:
    """Refuse (ConfigError naming ``--host``) a non-loopback ``host`` unless ``insecure``:
    the server has no authentication, so whoever reaches it may change every experiment."""
    if not insecure and not _loopback(host):
        raise ConfigError(
            f"--host: {host!r} is not allowed without --insecure: zoo's server has no "
            "authentication, so anyone who reaches it can create and delete experiments; "
            "expected 127.0.0.1, ::1 or localhost, or --insecure to listen there anyway"
        )


def _client_host(host: str) -> str:
    """``host``, or for a wildcard this machine's name when it resolves beyond loopback,
    else the address its default route leaves from, else its name."""
    if host not in ("0.0.0.0", "::"):
        return host
    for name in (socket.getfqdn(), socket.gethostname()):
        try:
            addresses = {found[4][0] for found in socket.getaddrinfo(name, None)}
        except OSError:
            continue
        if not all(_loopback(a) for a in addresses):
            return name
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("203.0.113.1", 9))  # routes only: a UDP connect sends nothing
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()


def _in_url(host: str) -> str:
    """``host`` as a URL names it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def _allowed_hosts(host: str) -> str:
    """The Host headers mlflow server accepts: every name clients of ``host`` may use."""
    names = {"localhost", "127.0.0.1", host, _client_host(host)}
    names |= {socket.gethostname(), socket.getfqdn()}
    patterns = []
    for name in sorted(names):  # fnmatch patterns: "[" escaped as "[[]"
        patterns += [_in_url(name), f"{_in_url(name).replace('[', '[[]', 1)}:*"]
    return ",".join(patterns)


def _check_app() -> None:
    """zoo's app must be registered with MLflow (setup.cfg's ``mlflow.app`` entry point)."""
    from importlib.metadata import entry_points

    if not entry_points(group="mlflow.app", name=_APP):
        raise ServerError(
            f"zoo's MLflow app ({_APP!r} in entry point group mlflow.app) is not installed; "
            "reinstall zoo (make .venv/.installed, or pip install -e .)"
        )


def _local_host(server: Server) -> str:
    """The server's address on this machine (loopback when it listens on every address)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(server.host, server.host)


def _local_url(server: Server) -> str:
    return f"http://{_in_url(_local_host(server))}:{server.port}"


def start_mlflow(server: Server) -> Server:
    """Start ``mlflow server`` for ``server`` and wait until it answers; returns the record."""
    from zoo.store import Tracker

    _check_app()
    data = Path(server.data)
    Tracker(server.store, None)  # creates and migrates the store once, under its lock
    ensure_indexes(server.store)  # those zoo's reads need at sweep scale (zoo._indexes)
    log = open(data / "mlflow.log", "a")  # noqa: SIM115 (the child keeps it open)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", server.store]
    command += ["--app-name", _APP]  # MLflow's app plus zoo's bulk read (zoo._server_app)
    command += ["--artifacts-destination", str(data / "artifacts"), "--serve-artifacts"]
    command += ["--host", server.host, "--port", str(server.port), "--workers", str(server.workers)]
    command += ["--allowed-hosts", _allowed_hosts(server.host)]
    # a busy worker is slow to answer uvicorn's health check, not dead: do not restart it
    command += ["--uvicorn-opts", "--timeout-worker-healthcheck 120 --timeout-keep-alive 30"]
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # zoo runs no server-side jobs
        # each worker serves up to 40 requests at once: as many database connections
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "10",
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "40",
    }
    child = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=data, env=env
    )
    log.close()
    started = _record(Server(**{**asdict(server), "mlflow_pid": child.pid}))
    deadline = time.monotonic() + _READY_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise ServerError(f"mlflow server exited; see {data / 'mlflow.log'}")
        try:
            with urllib.request.urlopen(f"{_local_url(server)}/health", timeout=2):
                return started
        except OSError:
            time.sleep(0.3)
    raise ServerError(f"mlflow server did not answer in {_READY_S:.0f} s; see {data}/mlflow.log")


def stop_mlflow(server: Server) -> Server:
    """Stop the ``mlflow server`` that ``server`` records: its whole process group, so
    workers whose parent died go too (zoo._supervise)."""
    _supervise.stop_group(server.mlflow_pid)
    return _record(replace(server, mlflow_pid=None))


def _mlflow_state(server: Server) -> tuple[str, list[int]]:
    """How the recorded MLflow server stands, and the processes behind that: "running"
    (its parent lives), "orphaned" (its parent died, processes of its group live on),
    "not ours" (its port answers, from processes zoo did not record) or "stopped"."""
    members = _supervise.group(server.mlflow_pid)
    if server.mlflow_pid in members:
        return "running", members
    if members:
        return "orphaned", members
    if _supervise.answers(_local_host(server), server.port):
        return "not ours", _supervise.listeners(server.port)
    return "stopped", []


def _not_ours(server: Server, pids: list[int]) -> str:
    return (
        f"port {server.port} answers, from processes zoo did not record "
        f"({_supervise.describe(pids)})"
    )


def _mlflow_line(server: Server) -> str:
    state, pids = _mlflow_state(server)
    if state == "orphaned":
        return (
            f"orphaned: its parent (pid {server.mlflow_pid}) is gone, processes of its group "
            f"({', '.join(map(str, pids))}) still serve port {server.port}; "
            "`zoo server start` or `restart` replaces them"
        )
    return f"serving but not ours: {_not_ours(server, pids)}" if state == "not ours" else state


def _bring_up_postgres(server: Server, echo: Callable[[str], None]) -> None:
    """Start the recorded PostgreSQL cluster unless it runs (made first if missing)."""
    folder = Path(server.data) / "postgresql"
    made = (folder / "PG_VERSION").exists()
    running = made and _pg_running(folder)
    init_postgres(folder)
    start_postgres(folder, server.pg_port)
    how = "running" if running else "started" + ("" if made else " (a new cluster)")
    echo(f"postgresql: {how} on 127.0.0.1:{server.pg_port}")


def _bring_up_mlflow(server: Server, echo: Callable[[str], None]) -> Server:
    """Start the recorded MLflow server unless it runs, after stopping what its dead
    parent left serving; ServerError when processes zoo did not record hold its port."""
    state, pids = _mlflow_state(server)
    if state == "running":
        echo(f"mlflow: running (pid {server.mlflow_pid})")
        return server
    if state == "orphaned":
        _supervise.stop_group(server.mlflow_pid)
        echo(f"mlflow: stopped the processes its dead parent left ({', '.join(map(str, pids))})")
        state, pids = _mlflow_state(replace(server, mlflow_pid=None))
    if state == "not ours":
        raise ServerError(
            f"--port {server.port}: {_not_ours(server, pids)}; stop them, or choose another --port"
        )
    started = start_mlflow(_record(replace(server, mlflow_pid=None)))
    echo(f"mlflow: started (pid {started.mlflow_pid})")
    return started


def start(
    data: Path,
    backend: str = "postgresql",
    host: str = "127.0.0.1",
    port: int = 5001,
    workers: int = 4,
    insecure: bool = False,
    echo: Callable[[str], None] = lambda line: None,
) -> Server:
    """Bring up whatever part of the server recorded in ``data`` is down (PostgreSQL,
    then MLflow), saying through ``echo`` what each part was and is; returns the record.
    While any part runs, the recorded settings are kept; otherwise the ones given here
    apply. A ``host`` beyond loopback needs ``insecure`` (see check_host); refused,
    nothing is written. A port answered by processes zoo did not record: ServerError."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: {backend!r}; allowed: {', '.join(BACKENDS)}")
    check_host(host, insecure)
    data = data.resolve()
    server = _recorded(data)
    if server is None or not _any_running(server):
        pg_port = port + 1 if backend == "postgresql" else None
        server = Server(str(data), backend, host, port, pg_port, None, workers)
    data.mkdir(parents=True, exist_ok=True)
    if server.backend == "postgresql":
        _bring_up_postgres(server, echo)
    return _bring_up_mlflow(server, echo)


def _any_running(server: Server) -> bool:
    """Whether any part ``server`` records still runs (MLflow's group, PostgreSQL)."""
    if _supervise.group(server.mlflow_pid):
        return True
    folder = Path(server.data) / "postgresql"
    return (
        server.backend == "postgresql" and (folder / "PG_VERSION").exists() and _pg_running(folder)
    )


def restart(data: Path, echo: Callable[[str], None] = lambda line: None) -> Server:
    """``stop`` then ``start`` the server recorded in ``data``, with its recorded settings
    (a recorded host beyond loopback was allowed when it started)."""
    server = stop(data)
    if server is None:
        raise ConfigError(f"--data {data}: no server recorded there; use zoo server start")
    echo(f"stopped the server in {data}")
    return start(
        data, server.backend, server.host, server.port, server.workers, insecure=True, echo=echo
    )


def status(data: Path) -> dict[str, str]:
    """The tracking URI and how the MLflow server (see _mlflow_state) and PostgreSQL stand."""
    server = _recorded(data.resolve())
    if server is None:
        return {"server": f"none recorded in {data}"}
    found = {"uri": server.uri, "store": server.store, "mlflow": _mlflow_line(server)}
    if server.backend == "postgresql":
        running = _pg_running(Path(server.data) / "postgresql")
        found["postgresql"] = "running" if running else "stopped"
    found["indexes"] = _indexes_status(server.store)
    return found


def _indexes_status(store: str) -> str:
    """zoo's indexes (zoo._indexes) in the store: each name and whether it is present."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        present = present_indexes(store)
    except SQLAlchemyError as error:  # a stopped database: status still answers
        return f"unknown ({type(error).__name__}: the store did not answer)"
    return ", ".join(
        f"{name} {'present' if there else 'missing'}" for name, there in present.items()
    )


def stop(data: Path) -> Server | None:
    """Stop the MLflow server (its whole process group) and PostgreSQL recorded in
    ``data``; None if none was. ServerError when its port still answers after that."""
    server = _recorded(data.resolve())
    if server is None:
        return None
    server = stop_mlflow(server)
    if server.backend == "postgresql":
        stop_postgres(Path(server.data) / "postgresql")
    if not _supervise.wait_free(_local_host(server), server.port):
        raise ServerError(
            f"stopped the server in {data}, but "
            f"{_not_ours(server, _supervise.listeners(server.port))}; stop them yourself"
        )
    return server
