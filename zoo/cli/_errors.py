"""Shared by the commands: bad-input errors, one-line messages, and the exit status
of a command a signal stopped."""

from __future__ import annotations

__all__ = ["config_error", "one_line", "stop_signal", "stop_status", "stopped_by"]


def config_error(message: str) -> Exception:
    """A bad-input error: ``main`` prints ``message`` as one line and exits 2."""
    from zoo.errors import ConfigError

    return ConfigError(message)


def one_line(error: BaseException) -> str:
    """``error``'s message on one line, at most 2000 characters."""
    return " ".join(str(error).split())[:2000]


def stop_signal(error: BaseException | None = None):
    """The signal that stopped this command (else the worker ``error`` came from);
    Ctrl-C's SIGINT when none is known."""
    import signal

    from zoo._signals import received

    return signal.Signals(received() or getattr(error, "signum", None) or signal.SIGINT)


def stopped_by(error: BaseException | None = None) -> str:
    """ "stopped by SIGNAME", the signal of :func:`stop_signal`."""
    return f"stopped by {stop_signal(error).name}"


def stop_status(error: BaseException | None = None) -> int:
    """128 + the signal number, as a shell reports a process a signal ended."""
    return 128 + stop_signal(error)
