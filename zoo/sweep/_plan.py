"""A sweep's plan: its runs, the stage graph with shared stages, and what it will cost."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from zoo.config import RunConfig
from zoo.sweep._spec import Expanded, SweepSpec, expand, references

__all__ = ["Job", "Plan", "make_plan"]


@dataclass(frozen=True)
class Job:
    """One unit of work: a shared stage (trained once for many runs) or a run."""

    key: str  # the MLflow identity tag: stage hash for a stage job, config hash for a run job
    kind: str  # "stage" or "run"
    name: str  # stage name for a stage job, "run" for a run job
    config: RunConfig  # for a stage job, the run config cut after that stage
    names: dict[str, Any]  # axis values
    depends: tuple[str, ...]  # keys of the stage jobs that must finish first


def image_passes(config: RunConfig, index: int) -> int:
    """Training images seen by stage ``index``: epochs × images × augmentations."""
    stage = config.stages[index]
    source = config.sources[stage.train]
    available = source.train_count if hasattr(source, "train_count") else stage.size or 0
    images = min(stage.size or available, available)
    return stage.epochs * images * (8 if stage.augment == "dihedral" else 1)


@dataclass(frozen=True)
class Plan:
    spec: SweepSpec
    runs: list[Expanded]
    jobs: list[Job]  # stage jobs first, in dependency order, then run jobs

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.runs[0].config.stages] if self.runs else []

    def counts(self) -> dict[str, Any]:
        """Configs, runs, stage trainings and image passes with and without sharing."""
        trained: dict[str, set[str]] = {n: set() for n in self.stage_names}
        unshared: Counter[str] = Counter()
        passes = passes_unshared = 0
        for run in self.runs:
            for index, stage in enumerate(run.config.stages):
                work = image_passes(run.config, index)
                passes_unshared += work
                unshared[stage.name] += 1
                digest = run.config.stage_digest(index)
                if digest not in trained.setdefault(stage.name, set()):
                    trained[stage.name].add(digest)
                    passes += work
        return {
            "configs": len(self.runs) // len(self.spec.seeds),
            "seeds": len(self.spec.seeds),
            "runs": len(self.runs),
            "stage_trainings": {n: len(d) for n, d in trained.items()},
            "stage_trainings_unshared": dict(unshared),
            "image_passes": passes,
            "image_passes_unshared": passes_unshared,
            "jobs": dict(Counter(j.kind for j in self.jobs)),
        }


def make_plan(spec: SweepSpec) -> Plan:
    """Expand ``spec`` and lay out its jobs; a stage used by two or more runs is a stage job."""
    runs = expand(spec)
    if not spec.share_stages:
        runs = [replace(r, config=replace(r.config, share_stages=False)) for r in runs]
    users: Counter[str] = Counter()
    for run in runs:
        for index in range(len(run.config.stages) - 1):
            users[run.config.stage_digest(index)] += 1
    stage_jobs: dict[str, Job] = {}
    run_jobs = []
    for run in runs:
        config, depends = run.config, []
        for index in range(len(config.stages) - 1):
            digest = config.stage_digest(index)
            if users[digest] < 2:
                break
            if digest not in stage_jobs:
                prefix = replace(config, stages=config.stages[: index + 1])
                stage_jobs[digest] = Job(
                    digest,
                    "stage",
                    config.stages[index].name,
                    prefix,
                    _stage_names(spec, run.names, index),
                    tuple(depends[-1:]),
                )
            depends.append(digest)
        run_jobs.append(Job(config.digest(), "run", "run", config, run.names, tuple(depends[-1:])))
    return Plan(spec, runs, [*stage_jobs.values(), *run_jobs])


def _stage_names(spec: SweepSpec, names: dict[str, Any], index: int) -> dict[str, Any]:
    """The axis values a shared stage is defined by: those its config fields are set from."""
    used = {"seed"}
    for key, value in spec.set.items():
        if key.startswith(f"stages.{index}.") or not key.startswith("stages."):
            used |= references(value) | references(key)
    return {k: v for k, v in names.items() if k in used}
