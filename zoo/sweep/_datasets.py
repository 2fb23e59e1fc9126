"""The datasets a sweep's pending jobs need: the plan's dataset jobs (see
``zoo.sweep._plan.make_plan``), which the executors run before the jobs that load
them, through zoo.sweep._job.run_job like any job.

Making a dataset takes a lock per dataset (zoo.data._lock), so whoever makes it
(the local executor's workers, a SLURM dataset array task, a run that finds it
missing) makes it once, and every other maker waits and finds it cached.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zoo.paths import DatasetPaths, ProjectPaths
from zoo.sweep._job import Job, JobResult, source_of

__all__ = [
    "is_cached",
    "made",
    "needed",
    "sweep_folders",
    "to_make",
]


def needed(jobs: Sequence[Job]) -> dict[str, Any]:
    """Dataset name -> source of every dataset the jobs load, mixtures left out (they are
    cut from their parts when a run loads them) and streamed ones (made while a run
    trains, never stored); a name declared with two sources keeps the first (the run that
    uses the second makes it itself)."""
    from zoo.config import resolve
    from zoo.modelzoo._identity import store_resolver

    found: dict[str, Any] = {}
    seen: set[str] = set()
    for job in jobs:
        if job.kind not in ("stage", "run"):
            continue
        config = job.document
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


def to_make(jobs: Sequence[Job]) -> tuple[list[Job], set[str]]:
    """The dataset jobs among ``jobs`` that another of ``jobs`` loads and the cache lacks
    (in their order), and the keys of the other dataset jobs (nothing to do)."""
    loaded = {key for job in jobs for key in job.datasets}
    make, done = [], set()
    for job in (j for j in jobs if j.kind == "dataset"):
        if job.key in loaded and not is_cached(job.name, source_of(job), job.paths):
            make.append(job)
        else:
            done.add(job.key)
    return make, done


def made(job: Job, result: JobResult) -> str:
    """What dataset job ``job`` did, in one line: ``dataset NAME: DIGEST`` (its cache
    folder) or ``dataset NAME: failed: REASON``."""
    from zoo.data import dataset_folder

    if result.status != "finished":
        return f"dataset {job.name}: {result.status}: {result.reason}"
    folder = dataset_folder(job.name, source_of(job), job.paths)
    return f"dataset {job.name}: {folder.name if folder else 'made'}"
