"""Errors that zoo reports to a user as one line."""

from collections.abc import Iterable

__all__ = ["ConfigError", "DataError", "did_you_mean"]


class ConfigError(ValueError):
    """A config, spec or command-line value is wrong; the message names the field.

    The CLI prints the message on one line and exits with status 2.
    """


class DataError(ValueError):
    """A dataset on disk cannot be used; the message names the file."""


def did_you_mean(given: str, valid: Iterable[str]) -> str:
    """``"; did you mean 'a' or 'b'?"``: the (at most 3) entries of ``valid`` closest to
    ``given`` by difflib, to append to a message; "" when none is close."""
    import difflib

    close = difflib.get_close_matches(str(given), [str(v) for v in valid], n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
