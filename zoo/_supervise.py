"""The processes behind zoo's server, read from Linux's ``/proc``: whole process groups,
and who listens on a port.

``zoo server start`` starts ``mlflow server`` as the leader of a new session and process
group (its uvicorn parent and workers inherit both), so the group outlives its leader:
when the leader dies alone, its workers go on serving, and only the group finds them.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

__all__ = ["answers", "describe", "group", "listeners", "stop_group", "wait_free"]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, session) of ``pid``; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (command)", which may hold spaces
    return fields[0], int(fields[2]), int(fields[3])


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group(leader: int | None) -> list[int]:
    """The live processes (zombies left out) of the session and process group that
    ``leader`` started, ``leader`` included while it lives; [] for None."""
    if not leader:
        return []
    members = []
    for pid in _pids():
        found = _stat(pid)
        if found and found[0] != "Z" and found[1] == leader and found[2] == leader:
            members.append(pid)
    return sorted(members)


def stop_group(leader: int | None, grace_s: float = 10.0) -> None:
    """SIGTERM every process of ``leader``'s group (see group), SIGKILL those left after
    ``grace_s``; returns once none is left (or 5 s after SIGKILL)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not group(leader):
            return
        try:
            os.killpg(leader, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while group(leader) and time.monotonic() < deadline:
            time.sleep(0.2)


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{inode}]")
    return inodes


def listeners(port: int) -> list[int]:
    """The processes listening on TCP ``port`` (any address) that this user may see."""
    inodes = _listening_inodes(port)
    found = []
    for pid in _pids() if inodes else ():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                found.append(pid)
        except OSError:  # gone, or another user's
            continue
    return sorted(found)


def describe(pids: list[int]) -> str:
    """``pids`` with each one's command line (shortened), for a message."""
    named = []
    for pid in pids[:4]:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            command = "?"
        named.append(f"{pid} ({command.strip()[:60]})")
    more = f" and {len(pids) - 4} more" if len(pids) > 4 else ""
    return ", ".join(named) + more if pids else "pids this user cannot see"


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``host``:``port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_free(host: str, port: int, within_s: float = 10.0) -> bool:
    """Whether ``host``:``port`` stops answering within ``within_s``."""
    deadline = time.monotonic() + within_s
    while answers(host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
