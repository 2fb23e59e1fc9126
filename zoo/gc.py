"""``zoo gc``: remove what no sweep needs any more, and say how many bytes that frees.

What is garbage:

- intermediate checkpoints (``last*``, ``previous.*``, half-written ``.*.tmp``)
  left in the folder of a finished stage (one with ``result.json``): a finished
  stage never resumes;
- scratch: half-written dataset folders and index files of makers that died,
  and artifacts downloaded for ``init: run:ID`` (downloaded again when needed);
- with sweep specs given: cached datasets that none of them references (a
  rehearsal's toy datasets included), and the SLURM submission folders of those
  sweeps and of their rehearsals whose every job has finished;
- lease files (zoo._leases) of holders that died, and of queued SLURM sweeps
  whose every job ended.

Nothing that running or queued work holds a live lease on is touched, whichever
specs are given: a maker's dataset and staging folder, a run's stages and
datasets, a running or queued sweep's stages and datasets. Such items are
returned with their ``holder`` set, and kept.

Best and final weights, stage results and the tracking store are never
touched, so re-running a finished sweep still trains nothing. A file with
another hard link (weights logged as an artifact by link) frees no bytes and
is counted as such.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo._leases import Held, holders, leases
from zoo.paths import ProjectPaths, StagePaths, SubmissionPaths

__all__ = ["Garbage", "collect", "format_bytes", "kept", "remove"]

# a stage's resumable checkpoint, the one before it, and files half-written by a killed writer
_INTERMEDIATE = ("last*", "previous.*", ".*.tmp")


@dataclass(frozen=True)
class Garbage:
    path: Path
    bytes: int  # freed by removing it (files with other hard links count 0)
    why: str
    holder: str = ""  # who holds it (a live lease): kept, not removed


def _size(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(s.st_size for s in (p.stat() for p in files) if s.st_nlink == 1)


def _item(path: Path, why: str) -> Garbage:
    return Garbage(path, _size(path), why)


def collect(
    paths: ProjectPaths,
    specs: Sequence[Path] = (),
    tracker: Callable[[], Any] | None = None,
    resolver: Any = None,
) -> list[Garbage]:
    """Everything ``remove`` would delete, and with ``holder`` set what running or queued
    work holds (kept); nothing is changed. ``tracker`` makes the zoo.tracking.Tracker that
    says which jobs finished (asked with ``specs``, and for queued SLURM sweeps' leases);
    ``resolver`` (a zoo.config.Resolver) resolves the specs' runs (None: the project at
    ``paths`` and its default store)."""
    store = functools.cache(tracker) if tracker is not None else None
    found = _checkpoints(paths) + _scratch(paths)
    if specs:
        plans = [_plan(spec, resolver or _store_resolver(paths)) for spec in specs]
        found += _datasets(paths, plans)
        if store is not None:
            found += _submissions(paths, plans, store())
    held = leases(paths)
    ended = [h for h in held if not h.live or (store is not None and _queue_ended(h, store))]
    live = [h for h in held if h not in ended]
    holder = holders(live)
    found = [Garbage(g.path, g.bytes, g.why, holder(g.path) or "") for g in found]
    return found + [_item(h.file, "lease of work that ended") for h in ended]


def _queue_ended(held: Held, store: Callable[[], Any]) -> bool:
    """Whether ``held`` is a queued SLURM sweep's lease whose every job ended (FINISHED
    or FAILED in the store), or whose submission is gone."""
    if "submission" not in held.document:
        return False
    record = SubmissionPaths(Path(held.document["submission"])).record
    if not record.exists():
        return True
    tracker = store()
    states = tracker.states(tracker.experiment(held.document["sweep"]))
    ended = {k for k, (_, status) in states.items() if status in ("FINISHED", "FAILED")}
    return set(json.loads(record.read_text())["jobs"]) <= ended


def kept(found: Sequence[Garbage]) -> str:
    """The line saying what was kept because running work holds it ("" when nothing)."""
    names = sorted({g.holder for g in found if g.holder})
    count = sum(1 for g in found if g.holder)
    return f"kept {count} leased (in use by {'; '.join(names)})" if count else ""


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


def _plan(spec: Path, resolver: Any) -> Any:
    from zoo.sweep import load_spec, make_plan

    return make_plan(load_spec(spec, resolver=resolver))


def _store_resolver(paths: ProjectPaths) -> Any:
    from zoo.modelzoo._identity import store_resolver

    return store_resolver(paths)


def _datasets(paths: ProjectPaths, plans: list[Any]) -> list[Garbage]:
    from zoo.sweep._datasets import needed
    from zoo.sweep._plan import jobs_from_plan

    if not paths.datasets.exists():
        return []
    index = json.loads(paths.dataset_index.read_text()) if paths.dataset_index.exists() else {}
    used = set()
    for plan in plans:
        for name, source in needed(jobs_from_plan(plan, "", paths)).items():
            if (digest := source.digest()) is not None:  # a generator: named by its declaration
                used.add(digest)
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
    """Delete ``found`` (from ``collect``) but what a live lease holds, asked again now
    (work may have started since); the dataset index forgets removed datasets. Returns
    the bytes freed."""
    from zoo.data._lock import index_lock

    ending = {g.path for g in found}  # leases found ended hold nothing
    holder = holders([h for h in leases(paths) if h.file not in ending])
    gone = [g for g in found if not g.holder and holder(g.path) is None]
    for item in gone:
        if item.path.is_dir():
            shutil.rmtree(item.path, ignore_errors=True)
        elif item.path.parent == paths.datasets:  # an index being written holds this lock
            with index_lock(paths):
                item.path.unlink(missing_ok=True)
        else:
            item.path.unlink(missing_ok=True)
    names = {item.path.name for item in gone if item.path.parent == paths.datasets}
    if names and paths.dataset_index.exists():
        with index_lock(paths):
            index = json.loads(paths.dataset_index.read_text())
            entries = {n: e for n, e in index.items() if e["digest"] not in names}
            tmp = paths.dataset_index.with_suffix(".gc.tmp")
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
            tmp.replace(paths.dataset_index)
    return sum(item.bytes for item in gone)


def format_bytes(count: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"
