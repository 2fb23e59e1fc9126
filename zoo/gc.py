"""``zoo gc``: remove what no sweep needs any more, and say how many bytes that frees.

What is garbage:

- intermediate checkpoints (``last*``, ``previous.*``, half-written ``.*.tmp``)
  left in the folder of a finished stage (one with ``result.json``): a finished
  stage never resumes;
- scratch: half-written dataset folders and index files of makers that died,
  and artifacts downloaded for ``init: run:ID`` (downloaded again when needed);
- with sweep specs given: cached datasets that none of them references (a
  rehearsal's toy datasets included), and the SLURM submission folders of those
  sweeps and of their rehearsals whose every job has finished.

Best and final weights, stage results and the tracking store are never
touched, so re-running a finished sweep still trains nothing. A file with
another hard link (weights logged as an artifact by link) frees no bytes and
is counted as such.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.paths import ProjectPaths, StagePaths

__all__ = ["Garbage", "collect", "format_bytes", "remove"]

# a stage's resumable checkpoint, the one before it, and files half-written by a killed writer
_INTERMEDIATE = ("last*", "previous.*", ".*.tmp")


@dataclass(frozen=True)
class Garbage:
    path: Path
    bytes: int  # freed by removing it (files with other hard links count 0)
    why: str


def _size(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(s.st_size for s in (p.stat() for p in files) if s.st_nlink == 1)


def _item(path: Path, why: str) -> Garbage:
    return Garbage(path, _size(path), why)


def collect(
    paths: ProjectPaths,
    specs: Sequence[Path] = (),
    tracker: Callable[[], Any] | None = None,
) -> list[Garbage]:
    """Everything ``remove`` would delete; nothing is changed. ``tracker`` makes the
    zoo.tracking.Tracker that says which jobs finished (asked only with ``specs``)."""
    found = _checkpoints(paths) + _scratch(paths)
    if specs:
        plans = [_plan(spec) for spec in specs]
        found += _datasets(paths, plans)
        if tracker is not None:
            found += _submissions(paths, plans, tracker())
    return found


def _checkpoints(paths: ProjectPaths) -> list[Garbage]:
    if not paths.stages.exists():
        return []
    return [
        _item(f, "checkpoint of a finished stage")
        for folder in sorted(paths.stages.iterdir())
        if StagePaths(folder).result.exists()
        for pattern in _INTERMEDIATE
        for f in sorted(folder.glob(pattern))
    ]


def _scratch(paths: ProjectPaths) -> list[Garbage]:
    found = []
    if paths.datasets.exists():
        found += [_item(p, "half-written dataset") for p in sorted(paths.datasets.glob(".*-*"))]
        found += [_item(p, "half-written index") for p in sorted(paths.datasets.glob("*.tmp"))]
    downloads = paths.download("x").parent
    if downloads.exists():
        found += [_item(p, "downloaded artifacts") for p in sorted(downloads.iterdir())]
    return found


def _plan(spec: Path) -> Any:
    from zoo.sweep import load_spec, make_plan

    return make_plan(load_spec(spec))


def _datasets(paths: ProjectPaths, plans: list[Any]) -> list[Garbage]:
    from zoo.data import GeneratorSpec
    from zoo.sweep._datasets import needed
    from zoo.sweep._job import jobs_from_plan

    if not paths.datasets.exists():
        return []
    index = json.loads(paths.dataset_index.read_text()) if paths.dataset_index.exists() else {}
    used = set()
    for plan in plans:
        for name, source in needed(jobs_from_plan(plan, "", paths)).items():
            if isinstance(source, GeneratorSpec):
                used.add(source.digest())
            elif name in index:
                used.add(index[name]["digest"])
    return [
        _item(folder, "dataset no given spec references")
        for folder in sorted(paths.datasets.iterdir())
        if folder.is_dir() and not folder.name.startswith(".") and folder.name not in used
    ]


def _submissions(paths: ProjectPaths, plans: list[Any], tracker: Any) -> list[Garbage]:
    """The submission folders of the given sweeps, and of their rehearsals, whose every
    job finished."""
    from zoo.sweep._rehearsal import SUFFIX

    found = []
    names = [n for plan in plans for n in (plan.spec.name, plan.spec.name + SUFFIX)]
    for name in names:
        submissions = paths.submissions(name)
        if not submissions:
            continue
        states = tracker.states(tracker.experiment(name))
        finished = {k for k, (_, status) in states.items() if status == "FINISHED"}
        for submission in submissions:
            record = json.loads(submission.record.read_text())
            if set(record["jobs"]) <= finished:
                found.append(_item(submission.folder, f"submission of finished sweep {name}"))
    return found


def remove(found: Sequence[Garbage], paths: ProjectPaths) -> int:
    """Delete ``found`` (from ``collect``); the dataset index forgets removed datasets.
    Returns the bytes freed."""
    from zoo.data._lock import index_lock

    for item in found:
        if item.path.is_dir():
            shutil.rmtree(item.path, ignore_errors=True)
        else:
            item.path.unlink(missing_ok=True)
    gone = {item.path.name for item in found if item.path.parent == paths.datasets}
    if gone and paths.dataset_index.exists():
        with index_lock(paths):
            index = json.loads(paths.dataset_index.read_text())
            kept = {n: e for n, e in index.items() if e["digest"] not in gone}
            tmp = paths.dataset_index.with_suffix(".gc.tmp")
            tmp.write_text(json.dumps(kept, indent=1, sort_keys=True))
            tmp.replace(paths.dataset_index)
    return sum(item.bytes for item in found)


def format_bytes(count: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"
