"""``zoo server``: a tracking server on PostgreSQL (or SQLite) for clusters."""

from __future__ import annotations

import argparse
import sys

from zoo.cli._errors import one_line
from zoo.cli._types import positive, tcp_port, writable

__all__ = ["add_server_parser"]


def add_server_parser(commands) -> None:
    """The `server` parsers: start, status, stop and restart."""
    server = commands.add_parser("server", help="a tracking server on PostgreSQL, for clusters")
    server_commands = server.add_subparsers(dest="server_command", required=True)
    start = server_commands.add_parser(
        "start", help="start PostgreSQL and mlflow server (whichever is down)"
    )
    start.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    start.add_argument(
        "--port", type=tcp_port, default=5001, help="mlflow server's (PostgreSQL: +1)"
    )
    start.add_argument("--host", default="127.0.0.1", help="listen here (e.g. 0.0.0.0)")
    start.add_argument("--insecure", action="store_true", help="allow a non-loopback --host")
    start.add_argument("--workers", type=positive(int), default=4, help="mlflow server processes")
    verbs = (("status", "is it running"), ("stop", "stop what start started"))
    verbs += (("restart", "stop, then start with the recorded settings"),)
    for verb, help_text in verbs:
        server_commands.add_parser(verb, help=help_text)
    for sub in server_commands.choices.values():
        sub.add_argument(
            "--data", type=writable("folder"), help="server data folder (default: .zoo/server)"
        )
    server.set_defaults(func=_server)


def _server(args: argparse.Namespace) -> int:
    from zoo import server
    from zoo.errors import ServerError
    from zoo.paths import ProjectPaths

    data = args.data or ProjectPaths.default().server
    try:
        if args.server_command == "status":
            found = server.status(data)
            print("\n".join(f"{k}: {v}" for k, v in found.items()))
            parts = (found.get("mlflow"), found.get("postgresql", "running"))
            return 0 if parts == ("running", "running") else 3
        if args.server_command == "stop":
            stopped = server.stop(data)
            print(f"stopped the server in {data}" if stopped else f"no server recorded in {data}")
            return 0
        if args.server_command == "start":
            settings = (args.backend, args.host, args.port, args.workers, args.insecure)
            started = server.start(data, *settings, echo=print)
        else:
            started = server.restart(data, echo=print)
    except ServerError as error:  # a part that will not start, a port not ours
        print(f"zoo: error: {one_line(error)}", file=sys.stderr)
        return 1
    print(f"tracking server at {started.uri} (store {started.store}, data {data})")
    print(f"use: --tracking-uri {started.uri}  or  export MLFLOW_TRACKING_URI={started.uri}")
    return 0
