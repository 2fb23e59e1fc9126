"""Heavy imports `zoo analyze` needs later, started early: they load in a background
thread while the main one waits for the store's answer (I/O, which releases the GIL)."""

from __future__ import annotations

import importlib
import threading

__all__ = ["prefetch"]

# in the order they are used: figures (matplotlib's Agg backend, seaborn: about a second
# with scipy), then the MLflow client that publishes the report (about a second)
_LATER = ("matplotlib.pyplot", "seaborn", "mlflow.tracking")


def prefetch() -> threading.Thread:
    """Import ``_LATER`` in a daemon thread; returns it. pandas and pyarrow are imported
    here first, in the caller's thread (with urllib.request): the store's read needs them
    at once, and two threads importing the same modules could see one half-made. An
    import that fails here is left for its user to raise."""
    import urllib.request  # noqa: F401  (the store's read, and MLflow's requests, use it)

    import pandas  # noqa: F401
    import pyarrow  # noqa: F401

    thread = threading.Thread(target=_import_all, name="zoo-prefetch", daemon=True)
    thread.start()
    return thread


def _import_all() -> None:
    try:
        importlib.import_module("matplotlib").use("Agg")  # before pyplot, as _figures._plt
        for name in _LATER:
            importlib.import_module(name)
    except Exception:  # raised again where it is used
        return
