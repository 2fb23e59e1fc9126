"""Weights logged to MLflow without a second copy on disk.

When a run's artifact store is a local folder (the embedded store, or any
``file:`` artifact location), a weights file is hard-linked into it: the stage
folder and the run's artifacts then share one copy, and removing either leaves
the other intact. Elsewhere (a tracking server, S3...) it is uploaded as usual.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from zoo.tracking import Tracker

__all__ = ["local_artifact_dir", "log_linked"]


def local_artifact_dir(tracker: Tracker, run_id: str) -> Path | None:
    """The run's artifact folder when it is on this machine's filesystem, else None."""
    uri = tracker.client.get_run(run_id).info.artifact_uri
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


def log_linked(tracker: Tracker, run_id: str, path: Path, folder: str) -> None:
    """Log ``path`` as artifact ``folder/<name>``, by hard link where the store is local."""
    root = local_artifact_dir(tracker, run_id)
    if root is not None:
        target = root / folder / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)
            return
        except OSError:  # another filesystem: copy instead
            pass
    tracker.log_artifact(run_id, path, folder)
