"""How zoo's long commands stop on SIGTERM, SIGINT and SIGHUP alike, and how the
processes they start end with them.

A command (``zoo train``, ``zoo sweep run``, ``zoo sweep submit``, a SLURM task)
runs under ``stop_on_signals``: the first of these signals raises ``Stopped`` (a
KeyboardInterrupt, so a run under way ends KILLED and resumes from its checkpoint)
in its main thread; a second one ends the command at once, its child processes
killed first. A worker process calls ``stop_as_worker``: the first signal stops the
job under way (``job_under_way``) the same way, later ones are left to its parent
(which kills it once ``grace_s`` has passed), and an idle worker exits quietly.
``exit_with_parent`` makes a worker stop so by itself when its parent has ended,
even one killed with SIGKILL.

Neither raises inside a store write (``guarded``, around each write a Tracker
makes): a signal landing in one is raised when the write returns, so no write is
cut halfway and no write lock is left held.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from zoo.errors import ConfigError

__all__ = [
    "SIGNALS",
    "STOP",
    "Preempted",
    "Stopped",
    "checkpointable",
    "exit_with_parent",
    "grace_s",
    "guarded",
    "job_under_way",
    "preempt_on_usr1",
    "process_runs",
    "received",
    "stop_all",
    "stop_as_worker",
    "stop_on_signals",
    "usr1_ignored",
]

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE_S = 30.0  # how long a stopping command waits for what it started, unless told

# signum: the first signal received; depth: main-thread store writes under way;
# held: a signal that landed in one; worker: stop_as_worker's rules; busy: a worker's
# job is under way; exiting: an idle worker is on its way out
_STATE: dict[str, Any] = {
    "signum": None,
    "depth": 0,
    "held": None,
    "worker": False,
    "busy": False,
    "exiting": False,
}


STOP = threading.Event()  # set (a SIGUSR1 handler: preempt_on_usr1) to checkpoint after a step


class Preempted(Exception):
    """Training stopped on request (STOP) after checkpointing; running it again resumes."""


def preempt_on_usr1() -> None:
    """Make SIGUSR1 (a scheduler preempting this process) set STOP: training then
    checkpoints after its current step and raises Preempted."""
    signal.signal(signal.SIGUSR1, lambda *_: STOP.set())


@contextlib.contextmanager
def usr1_ignored() -> Iterator[None]:
    """SIGUSR1 ignored by this process meanwhile (only the main thread can say so; from
    another thread this changes nothing): a preemption sent to the whole process group
    reaches the workers, not the command that coordinates them. Processes started
    meanwhile ignore it too until they install their own handler (preempt_on_usr1)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, before)


class Stopped(KeyboardInterrupt):
    """The process was told to stop by signal ``signum``; a command exits 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    def __reduce__(self) -> tuple[Any, tuple[int]]:  # crosses from a worker to its parent
        return Stopped, (self.signum,)


def grace_s() -> float:
    """Seconds a stopping process waits for the processes it started before it kills
    them: ``$ZOO_STOP_GRACE_S``, else GRACE_S; ConfigError when it is not a number > 0."""
    text = os.environ.get("ZOO_STOP_GRACE_S", "")
    try:
        value = float(text) if text else GRACE_S
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"ZOO_STOP_GRACE_S: {text!r} is not allowed; expected seconds > 0")
    return value


def received() -> int | None:
    """The first of SIGNALS this process received since its handlers were set, if any."""
    return _STATE["signum"]


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: the first of SIGNALS raises Stopped in the main thread (never inside a
    ``guarded`` write); a second one kills this process's multiprocessing children with
    SIGKILL and exits 128 + signum at once. The earlier handlers are back on leaving."""
    grace_s()  # a bad setting is refused before anything runs
    _STATE.update(signum=None, held=None, worker=False, busy=True, exiting=False)
    before = {s: signal.signal(s, _handle) for s in SIGNALS}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def stop_as_worker() -> None:
    """From now on this process is a worker: the first of SIGNALS raises Stopped while a
    job is under way (``job_under_way``; never inside a ``guarded`` write) and later ones
    are ignored; one received while idle exits the process (status 128 + signum)."""
    _STATE.update(signum=None, held=None, worker=True, busy=False, exiting=False)
    for number in SIGNALS:
        signal.signal(number, _handle)


@contextlib.contextmanager
def job_under_way() -> Iterator[None]:
    """Marks a worker's job: a signal stops it (Stopped) rather than exiting the worker."""
    _STATE["busy"] = True
    try:
        yield
    finally:
        _STATE["busy"] = False


def _handle(signum: int, _frame: Any) -> None:
    first = _STATE["signum"] is None
    if first:
        _STATE["signum"] = signum
    if _STATE["worker"] and not _STATE["busy"]:
        if not _STATE["exiting"] and not _STATE["depth"]:
            _STATE["exiting"] = True
            raise SystemExit(128 + signum)  # idle: leave quietly (finalizers run)
        return
    if first:
        if _STATE["depth"]:
            _STATE["held"] = signum
            return
        raise Stopped(signum)
    if not _STATE["worker"]:  # a command's second signal: stop at once
        for child in multiprocessing.active_children():
            with contextlib.suppress(OSError):
                os.kill(child.pid, signal.SIGKILL)
        os.write(2, f"zoo: stopped at once by a second {signal.Signals(signum).name}\n".encode())
        os._exit(128 + signum)


@contextlib.contextmanager
def checkpointable() -> Iterator[Callable[[], int | None]]:
    """Training steps: a first signal landing inside is held, not raised; the loop asks the
    function this yields after each step (the held signal, or None), checkpoints mid-epoch
    and raises Stopped itself, so a resumed run continues at that step. A signal still
    held on leaving is raised then."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    _STATE["depth"] += 1
    try:
        yield lambda: _STATE["held"]
    except Stopped:
        _STATE["held"] = None  # raised by the loop: not again below
        raise
    finally:
        _leave_held()


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """A store write: a signal that lands inside is raised (Stopped) once it returns."""
    if threading.current_thread() is not threading.main_thread():  # signals go to main only
        yield
        return
    _STATE["depth"] += 1
    try:
        yield
    finally:
        _leave_held()


def _leave_held() -> None:
    """Leave a section where signals are held: the one held is raised (Stopped) once the
    outermost section is left."""
    _STATE["depth"] -= 1
    held = _STATE["held"]
    if not _STATE["depth"] and held is not None:
        _STATE["held"] = None
        raise Stopped(held)


def exit_with_parent(parent: int) -> None:
    """Once process ``parent`` has ended (however: SIGKILL too), this process is sent
    SIGTERM every half second, so its job stops as on a signal and it then exits; after
    ``grace_s`` it exits at once. Watched from a daemon thread."""
    grace = grace_s()
    threading.Thread(
        target=_watch, args=(parent, grace), name="zoo-parent-watch", daemon=True
    ).start()


def _watch(parent: int, grace: float) -> None:
    _wait_for_end(parent)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
    os._exit(128 + signal.SIGTERM)


def _wait_for_end(pid: int) -> None:
    """Return once process ``pid`` has ended (at once when it is gone already)."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd here: ask every second
        while process_runs(pid):
            time.sleep(1.0)
        return
    try:
        select.select([handle], [], [])  # readable once the process has ended
    finally:
        os.close(handle)


def stop_all(pids: list[int], deadline: float) -> None:
    """Send SIGTERM to each of ``pids`` every half second until it has ended (a worker
    stops its job at the first, then exits once idle); those still running at
    ``deadline`` (time.monotonic) are killed with SIGKILL."""
    while True:
        left = [pid for pid in pids if process_runs(pid)]
        if not left or time.monotonic() >= deadline:
            break
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def process_runs(pid: int) -> bool:
    """Whether process ``pid`` runs; one that ended but is not reaped yet has ended."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        if os.path.isdir("/proc"):
            return False
    except (OSError, IndexError):
        return False
    try:  # no /proc here
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
