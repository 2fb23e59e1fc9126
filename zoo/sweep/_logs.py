"""``zoo sweep logs RUN``: the log a sweep job wrote (``.zoo/logs/<sweep>/<identity>.log``,
on every executor), found from any name of its run."""

from __future__ import annotations

import re
from pathlib import Path

from zoo.errors import ConfigError
from zoo.paths import ProjectPaths

__all__ = ["find_log", "tail"]

_HASH_PREFIX = re.compile(r"[0-9a-f]{6,32}")


def find_log(ref: str, paths: ProjectPaths, uri: str | None) -> Path:
    """The job log of the run ``ref`` names: a config-hash prefix matched against the logs
    on disk first (no store opened), else a run id, id prefix, hash prefix or run name
    looked up in the store. A ConfigError says why none is found, or lists several."""
    if _HASH_PREFIX.fullmatch(ref):
        found = sorted(paths.logs.glob(f"*/{ref}*.log"))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(f"{p.parent.name}/{p.stem[:12]}" for p in found[:4])
            more = ", ..." if len(found) > 4 else ""
            raise ConfigError(
                f"run {ref!r}: names {len(found)} logs ({names}{more}); give more characters"
            )
    return _from_store(ref, paths, uri)


def _from_store(ref: str, paths: ProjectPaths, uri: str | None) -> Path:
    from zoo.modelzoo._ref import resolve_ref
    from zoo.store import Tracker

    store = Tracker(uri, paths, create=False)
    run = store.get_run(resolve_ref(ref, store.uri).run_id)
    identity = run.data.tags.get("zoo.config_hash")
    sweep = store.get_experiment(run.info.experiment_id).name
    log = paths.job_log(sweep, identity) if identity else None
    if log is None or not log.exists():
        raise ConfigError(
            f"run {ref!r} ({run.info.run_id[:8]}, {run.info.run_name}): no log at "
            f"{log or paths.logs / sweep}; only sweep jobs write one (`zoo train` prints "
            "to its terminal)"
        )
    return log


def tail(path: Path, lines: int | None) -> str:
    """The last ``lines`` lines of ``path`` (all of it when None)."""
    text = path.read_text(errors="replace")
    if lines is None:
        return text
    return "".join(text.splitlines(keepends=True)[-lines:])
