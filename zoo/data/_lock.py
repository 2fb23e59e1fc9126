"""Locks that make each dataset once per cluster and keep the dataset index whole.

A dataset is made under a file lock named by the hash of its source
(``ProjectPaths.dataset_lock``): of concurrent makers (local workers, SLURM
array tasks, two submissions sharing a project root) the first makes it and
the others wait, then find it cached. The locks are ``fcntl`` locks on the
project's filesystem, so they hold across the nodes of a cluster where that
filesystem honours them (NFSv4, Lustre and GPFS with locking enabled).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from filelock import FileLock

from zoo._typed import to_dict
from zoo.paths import ProjectPaths

__all__ = ["index_lock", "making", "source_key"]


def source_key(source: Any) -> str:
    """The hash of a dataset's declared source: the name of its lock."""
    text = json.dumps(to_dict(source), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def making(source: Any, paths: ProjectPaths) -> Iterator[None]:
    """Hold the lock of ``source``'s dataset while the body makes it."""
    lock = paths.dataset_lock(source_key(source))
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        yield


def index_lock(paths: ProjectPaths) -> FileLock:
    """The lock under which the index is read, changed and atomically replaced."""
    paths.dataset_index_lock.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(paths.dataset_index_lock))
