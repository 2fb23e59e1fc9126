"""The datasets a sweep's pending jobs need, made before any of those jobs starts.

Making a dataset takes a lock per dataset (zoo.data._lock), so whoever makes it
(the local executor's workers, a SLURM dataset array task, a run that finds it
missing) makes it once, and every other maker waits and finds it cached.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from zoo.paths import DatasetPaths, ProjectPaths
from zoo.sweep._job import JobSpec

__all__ = [
    "is_cached",
    "make_datasets",
    "make_one",
    "make_task",
    "missing_sources",
    "needed",
    "sweep_folders",
]


def needed(jobs: Sequence[JobSpec]) -> dict[str, Any]:
    """Dataset name -> source of every dataset the jobs load, mixtures left out (they are
    cut from their parts when a run loads them) and streamed ones (made while a run
    trains, never stored); a name declared with two sources keeps the first (the run that
    uses the second makes it itself)."""
    from zoo.config import resolve
    from zoo.modelzoo._identity import store_resolver

    found: dict[str, Any] = {}
    seen: set[str] = set()
    for job in jobs:
        if job.kind == "search":
            continue
        config = job.config
        key = json.dumps(
            [config["datasets"], [s["train"] for s in config["stages"]], config.get("validate_on")],
            sort_keys=True,
        )
        if key in seen:
            continue
        seen.add(key)
        resolved = resolve(config, resolver=store_resolver(job.paths, job.uri))
        for name in resolved.used_datasets:
            source = resolved.sources[name]
            if source.stored:
                found.setdefault(name, source)
    return found


def is_cached(name: str, source: Any, paths: ProjectPaths) -> bool:
    """Whether the dataset is in the cache: by content hash for a generator, by name and
    declaration for files (their hash needs a read)."""
    from zoo.data import dataset_folder

    folder = dataset_folder(name, source, paths)
    return folder is not None and DatasetPaths(folder).meta.exists()


def sweep_folders(plan: Any, paths: ProjectPaths) -> Callable[[], list[Path]]:
    """What a running or queued sweep of ``plan`` keeps from ``zoo gc`` (zoo._leases): its
    stages' folders and its datasets' (asked again at each heartbeat: a file dataset's
    folder is known once it is read)."""
    from zoo.data import dataset_folder

    stages = {
        paths.stage(job.config.stage_digest(i))
        for job in plan.jobs
        for i in range(len(job.config.stages))
    }
    sources: dict[tuple[str, int], Any] = {}  # configs of one datasets table share sources
    for job in plan.jobs:
        for name in job.config.used_datasets:
            sources.setdefault((name, id(job.config.sources[name])), job.config.sources[name])

    def folders() -> list[Path]:
        found = (dataset_folder(name, s, paths) for (name, _), s in sources.items())
        return sorted(stages) + sorted({f for f in found if f is not None})

    return folders


def make_one(item: tuple[str, Any, str]) -> str:
    """Make dataset (name, source, project root); a worker-process entry point."""
    from zoo.data import materialise

    name, source, root = item
    return materialise(name, source, ProjectPaths(Path(root))).name


def make_datasets(
    jobs: Sequence[JobSpec],
    paths: ProjectPaths,
    echo: Callable[[str], None] = print,
    mapper: Callable[[Callable, Iterable], Iterable] = map,
) -> list[str]:
    """Make the datasets ``jobs`` need and the cache lacks, with ``mapper`` (a process
    pool's ``map`` makes them in parallel); returns their names."""
    missing = [(n, s) for n, s in needed(jobs).items() if not is_cached(n, s, paths)]
    if not missing:
        return []
    echo(f"making {len(missing)} dataset(s): {', '.join(n for n, _ in missing)}")
    for (name, _), digest in zip(
        missing, mapper(make_one, [(n, s, str(paths.root)) for n, s in missing]), strict=True
    ):
        echo(f"  dataset {name}: {digest}")
    return [n for n, _ in missing]


def missing_sources(jobs: Sequence[JobSpec], paths: ProjectPaths) -> dict[str, Any]:
    """Name -> declaration (JSON-ready) of each dataset ``jobs`` need and the cache lacks."""
    from zoo._typed import to_dict

    return {n: to_dict(s) for n, s in needed(jobs).items() if not is_cached(n, s, paths)}


def make_task(declared: dict[str, Any], names: Sequence[str], paths: ProjectPaths) -> int:
    """Make datasets ``names`` of ``declared`` (a SLURM dataset array task); exit code 0."""
    from zoo.data import dataset_source

    for name in names:
        source = dataset_source(declared[name], f"datasets.{name}")
        print(f"dataset {name}: {make_one((name, source, str(paths.root)))}", flush=True)
    return 0
