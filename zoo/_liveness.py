"""Whether a RUNNING run's process is still alive: a heartbeat tag and the process id.

A training process sets ``zoo.heartbeat`` (unix seconds) every HEARTBEAT_S while it
runs, and ``zoo.host``/``zoo.pid`` when it starts. A RUNNING run is ``interrupted``
when its process is gone from this host, or when its heartbeat is older than
STALE_S (another host, or a hung process).
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["HEARTBEAT_S", "HEARTBEAT_TAG", "STALE_S", "Heartbeat", "alive", "beat_tags"]

HEARTBEAT_TAG = "zoo.heartbeat"
HEARTBEAT_S = 30.0
STALE_S = 10 * HEARTBEAT_S


def alive(tags: Mapping[str, str], now: float | None = None) -> bool:
    """False when the run's process is known dead: gone from this host, or silent too long."""
    if tags.get("zoo.host") == platform.node() and tags.get("zoo.pid", "").isdigit():
        try:
            os.kill(int(tags["zoo.pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    beat = tags.get(HEARTBEAT_TAG)
    if beat is None:
        return True  # made before heartbeats: nothing to judge by
    try:
        return (now or time.time()) - float(beat) < STALE_S
    except ValueError:
        return True


def beat_tags() -> dict[str, str]:
    """The tags of a first heartbeat: now, this host and this process."""
    return {
        HEARTBEAT_TAG: f"{time.time():.0f}",
        "zoo.host": platform.node(),
        "zoo.pid": str(os.getpid()),
    }


class Heartbeat:
    """Context manager calling ``beat(tags)`` now (``beat_tags()``; skipped with
    ``first=False``, when the run was created with them) and every ``interval`` seconds
    until exit; a failing periodic beat is skipped (the next one retries)."""

    def __init__(
        self,
        beat: Callable[[dict[str, str]], None],
        interval: float = HEARTBEAT_S,
        first: bool = True,
    ):
        self._beat, self._interval, self._stop = beat, interval, threading.Event()
        self._first = first

    def _send(self) -> None:
        with contextlib.suppress(Exception):  # a store hiccup must not stop training
            self._beat({HEARTBEAT_TAG: f"{time.time():.0f}"})

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._send()

    def __enter__(self) -> Heartbeat:
        if self._first:
            self._beat(beat_tags())
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
