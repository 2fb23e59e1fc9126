"""Out of space, told apart from every other failure.

A write that finds its filesystem or quota full (``ENOSPC``, ``EDQUOT``; SQLite's
"database or disk is full"; safetensors' and h5py's "No space left on device") becomes
:class:`zoo.errors.OutOfSpace`: one line naming the path, the bytes the write needed
when known and the bytes free there. SQLite reports a full disk while it opens a store
as a "disk I/O error" (its shared-memory file cannot be made); that error counts as out
of space when the store's filesystem has less than ``NEARLY_FULL`` bytes free; so does
numpy's short write ("N requested and M written"), which loses the errno.
"""

from __future__ import annotations

import errno
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from zoo.errors import OutOfSpace

__all__ = [
    "NEARLY_FULL",
    "failure_line",
    "free_bytes",
    "full_error",
    "out_of_space",
    "raise_if_full",
]

NEARLY_FULL = 1 << 20
_CODES = (errno.ENOSPC, errno.EDQUOT)
_TEXTS = (
    "no space left on device",
    "disk quota exceeded",
    "database or disk is full",  # SQLite's SQLITE_FULL
    "os error 28",  # Rust's ENOSPC (safetensors)
    "errno = 28",  # HDF5's
)
_SQLITE_IO = "disk i/o error"
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's, errno lost


def free_bytes(path: Path | str) -> int | None:
    """Bytes this user may still write on the filesystem holding ``path`` (its nearest
    existing folder); None when none can be asked."""
    path = Path(path)
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what it was raised from or while handling, and so on."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _sqlite_path(store: str | None) -> Path | None:
    if not store or not store.startswith("sqlite:///"):
        return None
    return Path(store.split("://", 1)[1][1:].split("?", 1)[0])


def full_error(path: Path | str, needed: int | None = None) -> OutOfSpace:
    """The OutOfSpace of a write to ``path`` that needed ``needed`` bytes (None: unknown)."""
    free = free_bytes(path) if not str(path).startswith(("http", "postgresql")) else None
    facts = [f"{_size(needed)} needed"] if needed is not None else []
    facts += [f"{_size(free)} free there"] if free is not None else []
    return OutOfSpace(
        f"out of space writing {path}" + (f" ({', '.join(facts)})" if facts else "") + "; free "
        "space there (`zoo gc --dry-run` lists what no sweep needs) and run the same command "
        "again: what finished is kept and unfinished runs resume from their checkpoints"
    )


def out_of_space(error: BaseException, store: str | None, root: Path) -> OutOfSpace | None:
    """``error`` as OutOfSpace when it (or an error it came from) is a write that found no
    space; None otherwise. The path named: the failing file when the error names it; for
    SQLite's errors the store file (``store``, a tracking URI); for another store's, its
    URI; else the project root ``root``."""
    sqlite = _sqlite_path(store)
    for link in _chain(error):
        if isinstance(link, OutOfSpace):
            return link
        if isinstance(link, OSError) and link.errno in _CODES:
            return full_error(link.filename or root)
        text = str(link).lower()
        from_sqlite = "sqlite" in text or type(link).__module__ == "sqlite3"
        if from_sqlite and sqlite is not None:
            nearly_full = (free_bytes(sqlite) or 0) < NEARLY_FULL
            if "database or disk is full" in text or (_SQLITE_IO in text and nearly_full):
                return full_error(sqlite)
        if _SHORT_WRITE.search(text) and (free_bytes(root) or 0) < NEARLY_FULL:
            return full_error(root)
        if any(pattern in text for pattern in _TEXTS):
            remote = type(link).__module__.split(".")[0] in ("mlflow", "sqlalchemy", "psycopg")
            return full_error(store if remote and store else root)
    return None


def raise_if_full(error: BaseException, path: Path, needed: int | None = None) -> None:
    """Raise OutOfSpace naming ``path`` (and ``needed`` bytes) from ``error`` when
    ``error`` is a write that found no space; return otherwise."""
    if out_of_space(error, None, path) is not None:
        raise full_error(path, needed) from error


def failure_line(error: BaseException, store: str | None, root: Path) -> str:
    """How a failed job reports ``error``: the OutOfSpace line when it is one, else its
    type and message."""
    full = out_of_space(error, store, root)
    return str(full) if full is not None else f"{type(error).__name__}: {error}"
