"""Which store a URI names and where it may live: URI forms, backends, network filesystems."""

from __future__ import annotations

import os
import re
from pathlib import Path

from zoo.errors import ConfigError
from zoo.paths import ProjectPaths

__all__ = [
    "NETWORK_FILESYSTEMS",
    "StoreMissing",
    "backend",
    "existing_store",
    "metric_key",
    "network_filesystem",
    "refuse_network_sqlite",
    "sqlite_path",
    "store_uri",
    "tracking_uri",
]

NETWORK_FILESYSTEMS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "fuse")


class StoreMissing(ConfigError):
    """A read-only command was pointed at a store that does not exist."""


def tracking_uri(uri: str | None, paths: ProjectPaths | None) -> str:
    """The store to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else the project's mlflow.db
    (``paths`` may be None when one of the first two is set)."""
    named = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not named and paths is None:
        raise ValueError("no tracking store: give a URI or the project's paths")
    return store_uri(named or paths.tracking_uri)


def existing_store(uri: str | None, paths: ProjectPaths | None) -> str:
    """The store a read-only command in project ``paths`` uses (see tracking_uri), not
    opened here: a missing SQLite file raises StoreMissing (other backends fail at their
    first read)."""
    uri = tracking_uri(uri, paths)
    if backend(uri) == "sqlite" and not sqlite_path(uri).exists():
        raise StoreMissing(
            f"tracking store {sqlite_path(uri)} does not exist "
            "(nothing was logged there yet; check --tracking-uri or $MLFLOW_TRACKING_URI)"
        )
    return uri


def store_uri(uri: str) -> str:
    """``uri`` with PostgreSQL's driver named (psycopg 3; SQLAlchemy's default is psycopg2)."""
    if uri.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + uri.split("://", 1)[1]
    return uri


def backend(uri: str) -> str:
    """The backend of ``uri``: sqlite, postgresql, http (a tracking server) or other."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme == "https":
        return "http"
    return scheme if scheme in ("sqlite", "postgresql", "http") else "other"


def sqlite_path(uri: str) -> Path:
    """The database file of a ``sqlite:///`` URI."""
    return Path(uri.split("://", 1)[1][1:].split("?", 1)[0])


def metric_key(*parts: str) -> str:
    """An MLflow metric or param key from parts joined by '/'.

    MLflow allows only alphanumerics, '_', '-', '.', ' ' and '/': '+' becomes 'p'
    (``df+10`` -> ``dfp10``) and any other character '_'.
    """
    return "/".join(re.sub(r"[^\w\-. ]", "_", p.replace("+", "p")) for p in parts)


def network_filesystem(path: Path, mounts: str | None = None) -> str | None:
    """The type of the network filesystem ``path`` lives on (from the mount table,
    ``/proc/self/mounts`` unless ``mounts`` is given), or None on a local one."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    path = Path(os.path.abspath(path))
    best, kind = "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == Path(point) or Path(point) in path.parents
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    network = kind.split(".", 1)[0] in NETWORK_FILESYSTEMS or kind.startswith("fuse")
    return kind if network else None


def refuse_network_sqlite(uri: str, mounts: str | None = None) -> None:
    """Raise ConfigError when ``uri`` is a SQLite store on a network filesystem, where
    SQLite's file locking is unreliable and many writers corrupt or lock the store."""
    if backend(uri) != "sqlite":
        return
    kind = network_filesystem(sqlite_path(uri), mounts)
    if kind:
        raise ConfigError(
            f"--tracking-uri {uri}: SQLite on a network filesystem ({kind}) is unsafe for "
            "many writers; run `zoo server start --host 0.0.0.0` on a login node, then submit "
            "with --tracking-uri http://HOST:PORT (or pass --allow-network-sqlite)"
        )
