"""Errors that zoo reports to a user as one line."""

__all__ = ["ConfigError", "DataError"]


class ConfigError(ValueError):
    """A config, spec or command-line value is wrong; the message names the field.

    The CLI prints the message on one line and exits with status 2.
    """


class DataError(ValueError):
    """A dataset on disk cannot be used; the message names the file."""
