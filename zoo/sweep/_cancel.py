"""``zoo sweep cancel SPEC``: stop a running sweep's jobs and leave them resumable.

Locally, each ``zoo sweep run`` of the sweep on this host (found by the lease it holds,
zoo._leases) gets SIGTERM, as ``kill`` would send: its runs end KILLED and it exits
(zoo._signals); the same ``zoo sweep run`` resumes them. On SLURM, the sweep's arrays
with tasks still pending or running are cancelled (``scancel``): SLURM sends their tasks
SIGTERM, their runs end KILLED, and ``zoo sweep submit`` queues them again.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import time
from collections.abc import Callable

from zoo._leases import leases
from zoo._signals import grace_s, process_runs
from zoo.paths import ProjectPaths

__all__ = ["cancel"]


def cancel(name: str, paths: ProjectPaths, echo: Callable[[str], None] = print) -> int:
    """Stop sweep ``name``'s local sweep processes and SLURM arrays; returns how many
    were stopped (0: nothing of it was running, which ``echo`` says)."""
    stopped = _local(name, paths, echo) + _slurm(name, paths, echo)
    if not stopped:
        echo(f"sweep {name}: nothing running here (no live zoo sweep run, no queued array)")
    return stopped


def _local(name: str, paths: ProjectPaths, echo: Callable[[str], None]) -> int:
    host, stopped = platform.node(), 0
    for lease in leases(paths):
        document = lease.document
        if not lease.live or lease.holder != f"sweep {name} (zoo sweep run)":
            continue
        pid = int(document.get("pid") or 0)
        if document.get("host") != host or not pid:
            echo(f"sweep {name}: running on {document.get('host')} (pid {pid}); cancel it there")
            continue
        os.kill(pid, signal.SIGTERM)
        gone = _wait_gone(pid, grace_s() + 10)
        echo(
            f"stopped zoo sweep run (pid {pid}); its runs end KILLED and resume with the same "
            "zoo sweep run"
            if gone
            else f"zoo sweep run (pid {pid}) got SIGTERM and is still stopping"
        )
        stopped += 1
    return stopped


def _wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while process_runs(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _slurm(name: str, paths: ProjectPaths, echo: Callable[[str], None]) -> int:
    if not paths.submissions(name) or shutil.which("squeue") is None:
        return 0
    from zoo.sweep._slurm import active_tasks, scancel

    arrays = sorted({array for array, _ in active_tasks(name)})
    if arrays:
        scancel(*arrays)
        echo(
            f"cancelled SLURM job(s) {', '.join(arrays)} of sweep {name}; their runs end "
            "KILLED and zoo sweep submit queues them again"
        )
    return len(arrays)
