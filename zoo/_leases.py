"""Leases: what running work uses, so that ``zoo gc`` leaves it alone.

A holder (a dataset maker, a run, a sweep) writes one lease file under
``.zoo/leases/`` (ProjectPaths.lease) naming the folders it uses (datasets, their
staging folders, stages), its host, process id and a heartbeat time that a thread
refreshes every HEARTBEAT_S while the lease is held; the file is removed when the
holder lets go. A lease is live until its holder is known dead: its process gone
from this host, or its heartbeat older than the lease's timeout (STALE_S; QUEUED_S
for the lease a SLURM sweep writes at submit, which no process refreshes).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo._liveness import HEARTBEAT_S, STALE_S
from zoo.paths import ProjectPaths

__all__ = [
    "HEARTBEAT_S",
    "QUEUED_S",
    "STALE_S",
    "Held",
    "Lease",
    "holders",
    "leased",
    "leases",
    "queue_lease",
]

QUEUED_S = 7 * 24 * 3600.0  # a queued SLURM sweep: a week, unless gc finds its jobs ended

Things = Iterable[Path] | Callable[[], Iterable[Path]]


@dataclass(frozen=True)
class Held:
    """One lease file as read: who holds which folders, and whether the holder lives."""

    file: Path
    holder: str
    things: tuple[Path, ...]
    live: bool
    document: dict[str, Any]  # all the file says (a queued sweep's: sweep, submission)


def _write(file: Path, document: dict[str, Any]) -> None:
    """Replace ``file`` atomically: a reader sees the old lease or the new one."""
    tmp = file.with_name(f".{file.name}.tmp")
    for attempt in range(3):  # the last holder to let go removes the folder meanwhile
        file.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.write_text(json.dumps(document, indent=1))
            os.replace(tmp, file)
            return
        except FileNotFoundError:
            if attempt == 2:
                raise


def _document(holder: str, things: Iterable[Path], pid: int | None, timeout: float) -> dict:
    return {
        "holder": holder,
        "host": platform.node(),
        "pid": pid,
        "heartbeat": time.time(),
        "timeout_s": timeout,
        "things": [str(t) for t in things],
    }


class Lease:
    """Context manager: ``things`` held by ``holder`` from entry to exit. A callable
    ``things`` is asked again at every heartbeat (for folders made meanwhile)."""

    def __init__(
        self, paths: ProjectPaths, things: Things, holder: str, interval: float = HEARTBEAT_S
    ):
        fixed = () if callable(things) else tuple(things)
        self._things = things if callable(things) else (lambda: fixed)
        self.holder, self._interval, self._stop = holder, interval, threading.Event()
        self.file = paths.lease(f"{platform.node()}-{os.getpid()}-{secrets.token_hex(4)}")

    def renew(self) -> None:
        """Write the lease now: the things as they are, the heartbeat now."""
        _write(self.file, _document(self.holder, self._things(), os.getpid(), STALE_S))

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(Exception):  # a missed beat: the next one retries
                self.renew()

    def __enter__(self) -> Lease:
        self.renew()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="zoo-lease")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the last holder leaves no folder behind
            self.file.parent.rmdir()


def queue_lease(
    paths: ProjectPaths,
    things: Iterable[Path],
    holder: str,
    record: dict[str, str],
    timeout: float = QUEUED_S,
) -> Path:
    """Write a lease no process refreshes (a SLURM sweep's, at submit), live for
    ``timeout`` seconds; ``record`` (sweep, submission) lets gc find it done earlier."""
    file = paths.lease(f"queued-{secrets.token_hex(6)}")
    _write(file, {**_document(holder, things, None, timeout), **record})
    return file


def _alive(document: dict[str, Any], now: float) -> bool:
    """False once the holder is known dead: its process gone from this host, or its
    heartbeat older than the lease's timeout."""
    pid = document.get("pid")
    if pid is not None and document.get("host") == platform.node():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: alive
    return now - float(document["heartbeat"]) < float(document["timeout_s"])


def leases(paths: ProjectPaths, now: float | None = None) -> list[Held]:
    """Every lease file of the project, live or not; an unreadable one is not live."""
    found = []
    files = sorted(paths.leases.glob("*.json")) if paths.leases.exists() else []
    for file in files:
        try:
            document = json.loads(file.read_text())
            things = tuple(Path(t) for t in document["things"])
            live = _alive(document, now or time.time())
        except FileNotFoundError:
            continue  # its holder let go just now
        except (ValueError, KeyError, TypeError):
            document, things, live = {}, (), False
        found.append(Held(file, str(document.get("holder", "?")), things, live, document))
    return found


def holders(held: Sequence[Held]) -> Callable[[Path], str | None]:
    """A look-up: the holder of a live lease among ``held`` on a path (or on a folder
    holding it), or None."""
    table: dict[Path, str] = {}
    for lease in held:
        if lease.live:
            table.update((t, lease.holder) for t in lease.things if t not in table)

    def holder(path: Path) -> str | None:
        return next((table[p] for p in (path, *path.parents) if p in table), None)

    return holder


def leased(paths: ProjectPaths, thing: Path) -> str | None:
    """Who holds ``thing`` (or a folder holding it) now; None when no live lease does."""
    return holders(leases(paths))(thing)
