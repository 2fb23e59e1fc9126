"""Errors that zoo reports to a user as one line."""

from collections.abc import Iterable

__all__ = ["ConfigError", "DataError", "OutOfSpace", "ServerError", "did_you_mean"]


class ConfigError(ValueError):
    """A config, spec or command-line value is wrong; the message names the field.

    The CLI prints the message on one line and exits with status 2.
    """


class DataError(ValueError):
    """A dataset on disk cannot be used; the message names the file."""


class OutOfSpace(Exception):
    """A write found its filesystem (or quota) full; the message names the path and, when
    known, the bytes the write needed (made by ``zoo._disk.out_of_space``).

    The CLI prints the message on one line and exits with status 1. Everything written
    before stays intact, and the same command, run again once space is freed, resumes.
    """


class ServerError(RuntimeError):
    """zoo's tracking server cannot be brought to the state asked for (a port another
    process answers, a part that will not start); the message names the cause and the
    fix. ``zoo server`` prints it on one line and exits with status 1."""


def did_you_mean(given: str, valid: Iterable[str]) -> str:
    """``"; did you mean 'a' or 'b'?"``: the (at most 3) entries of ``valid`` closest to
    ``given`` by difflib, to append to a message; "" when none is close."""
    import difflib

    close = difflib.get_close_matches(str(given), [str(v) for v in valid], n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
