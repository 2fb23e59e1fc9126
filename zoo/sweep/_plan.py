"""A sweep's plan: its runs, the stage graph with shared stages, and what it will cost."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from zoo._typed import check, to_dict
from zoo._yaml import dump_yaml
from zoo.config import RunConfig
from zoo.errors import ConfigError
from zoo.naming import run_name
from zoo.paths import ProjectPaths
from zoo.sweep._job import Job, job_tags
from zoo.sweep._spec import Expanded, SweepSpec, expand, references

__all__ = [
    "Plan",
    "check_plan",
    "format_report",
    "jobs_from_plan",
    "make_plan",
    "plan_task",
    "report",
    "show_run",
]

FIRST_RUNS = 3  # runs a plan's report names


def dataset_key(name: str, source: Any) -> str:
    """The key of the dataset job making ``name`` as ``source`` declares it: the same in
    every plan that declares it so, whatever else the plan holds (no read of any file)."""
    text = json.dumps([name, to_dict(source)], sort_keys=True)
    return "dataset-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def image_passes(config: RunConfig, index: int) -> int:
    """Training images seen by stage ``index``: epochs × images × augmentations."""
    stage = config.stages[index]
    source = config.sources[stage.train]
    available = source.train_count if hasattr(source, "train_count") else stage.size or 0
    images = min(stage.size or available, available)
    return stage.epochs * images * (8 if stage.augment == "dihedral" else 1)


def image_side(config: RunConfig, name: str) -> int:
    """The side of dataset ``name``'s images in pixels (64 when not known before reading)."""
    return getattr(config.sources[name], "image_size", 0) or 64


def val_images(config: RunConfig, name: str) -> int:
    """Validation images of dataset ``name`` (a mixture: of its parts)."""
    source = config.sources[name]
    if hasattr(source, "mix"):
        return sum(val_images(config, part) for part in source.mix)
    return getattr(source, "val_count", 0)


def trained_stages(job: Job, stage_keys: set[str]) -> list[int]:
    """The stages ``job`` trains itself: a stage job its last, a run those that no stage
    job among ``stage_keys`` trains for it."""
    count = len(job.config.stages)
    if job.kind == "stage":
        return [count - 1]
    return [i for i in range(count) if job.config.stage_digest(i) not in stage_keys]


# A training pass is a forward pass and a backward pass at twice its cost (input and
# weight gradients). A frozen part spares its weight gradients; the frozen encoder, where
# the network starts, also its input gradients. Taking encoder and decoder as halves:
# 1 - 1/2 * 2/3 and 1 - 1/2 * 1/3 of a full pass. Measured on the demo's U-Net at 64 and
# 128 px (CPU): 0.69-0.71 and 0.81.
FROZEN_PASS_COST = {"none": 1.0, "encoder": 2 / 3, "decoder": 5 / 6}


def stage_passes(config: RunConfig, trained: list[int]) -> Iterator[tuple[str, int, int, float]]:
    """(kind, image passes, image side, cost of a pass against an unfrozen one) of
    training stages ``trained``: each stage's training passes (kind "train"), then its
    passes over each validation set ("val")."""
    for index in trained:
        stage = config.stages[index]
        cost = FROZEN_PASS_COST[stage.freeze]
        yield "train", image_passes(config, index), image_side(config, stage.train), cost
        for name in config.validation_sets:
            yield "val", stage.epochs * val_images(config, name), image_side(config, name), 1.0


_WEIGHT = {"train": 1.0, "val": 1 / 3}  # a validation pass (forward only) against training


def longest_first(plan: Plan) -> list[str]:
    """The plan's job keys: stage jobs first, in dependency order, then run jobs by the
    pixels they pass through (training at FROZEN_PASS_COST, plus validation at a
    third), most first; ties keep the plan's order. A scheduler taking ready jobs in
    this order ends a sweep with its shortest runs, so no long run started last leaves
    the other workers idle.
    Datasets read from files count by their stages' sizes only (their image counts
    are not known before they are read)."""
    stage_keys = {j.key for j in plan.jobs if j.kind == "stage"}

    def work(job: Job) -> float:
        passes = stage_passes(job.config, trained_stages(job, stage_keys))
        return sum(_WEIGHT[kind] * cost * count * side**2 for kind, count, side, cost in passes)

    runs = sorted((j for j in plan.jobs if j.kind == "run"), key=work, reverse=True)
    return [j.key for j in plan.jobs if j.kind == "stage"] + [j.key for j in runs]


@dataclass(frozen=True)
class Plan:
    """A sweep's runs and jobs. Dataset jobs are kept apart from ``jobs``, so that what
    reads ``jobs`` (costs, packing, status) sees stage and run jobs only;
    ``jobs_from_plan`` hands executors both, dataset jobs first."""

    spec: SweepSpec
    runs: list[Expanded]
    jobs: list[Job]  # stage jobs first, in dependency order, then run jobs
    datasets: list[Job] = field(default_factory=list)  # dataset jobs, in order of first use

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.runs[0].config.stages] if self.runs else []

    def counts(self) -> dict[str, Any]:
        """Configs, runs, stage trainings and image passes with and without sharing; jobs
        by kind (stage, run) and the dataset jobs apart (``dataset_jobs``)."""
        trained: dict[str, set[str]] = {n: set() for n in self.stage_names}
        unshared: Counter[str] = Counter()
        passes = passes_unshared = 0
        works: dict[tuple[int, int], int] = {}  # seeds share stage objects and sources
        for run in self.runs:
            for index, stage in enumerate(run.config.stages):
                shared = (id(stage), id(run.config.sources))  # all held by self.runs
                work = works.get(shared)
                if work is None:
                    work = works[shared] = image_passes(run.config, index)
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
            "dataset_jobs": len(self.datasets),
        }


def make_plan(spec: SweepSpec) -> Plan:
    """Expand ``spec`` and lay out its jobs; a stage used by two or more runs is a stage
    job, a stored dataset a job loads is a dataset job (see ``_DatasetJobs``)."""
    runs = expand(spec)
    if not spec.share_stages:
        runs = [replace(r, config=replace(r.config, share_stages=False)) for r in runs]
    try:
        _refuse_collisions(runs)
    except ConfigError as error:
        if not spec.rehearse:
            raise
        raise ConfigError(
            f"{error} (a rehearsal fixes epochs, the model and image sizes)"
        ) from None
    users: Counter[str] = Counter()
    for run in runs:
        for index in range(len(run.config.stages) - 1):
            users[run.config.stage_digest(index)] += 1
    datasets = _DatasetJobs()
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
                    datasets.keys(prefix),
                )
            depends.append(digest)
        run_jobs.append(
            Job(
                config.digest(),
                "run",
                "run",
                config,
                run.names,
                tuple(depends[-1:]),
                datasets.keys(config),
            )
        )
    jobs = [*stage_jobs.values(), *run_jobs]
    return Plan(spec, runs, jobs, datasets.jobs(jobs))


class _DatasetJobs:
    """A plan's dataset jobs: one per stored dataset its jobs load (streamed datasets and
    mixtures are not stored: a run makes them as it loads them)."""

    def __init__(self) -> None:
        self._known: dict[tuple, tuple[Any, tuple[str, ...]]] = {}  # by sources and names
        self._loads: dict[tuple, tuple[Any, Any, tuple[str, ...]]] = {}  # by stages, datasets
        self._names: dict[str, str] = {}  # dataset job key -> dataset name

    def keys(self, config: RunConfig) -> tuple[str, ...]:
        """The keys of the dataset jobs of what ``config`` loads, in the order it loads
        them; found once for configs with the same stages and datasets (a config's
        seeds), and for those of one datasets table (which share sources) loading the
        same datasets. Every object whose id a key holds is held beside it."""
        shared = (id(config.stages), id(config.datasets), config.validate_on)
        loads = self._loads.get(shared)
        if loads is None or loads[0] is not config.stages or loads[1] is not config.datasets:
            sources, used = config.sources, config.used_datasets
            known = self._known.get((id(sources), used))
            if known is None or known[0] is not sources:
                keys = {dataset_key(n, sources[n]): n for n in used if sources[n].stored}
                self._names |= keys
                known = self._known[id(sources), used] = (sources, tuple(keys))
            loads = self._loads[shared] = (config.stages, config.datasets, known[1])
        return loads[2]

    def jobs(self, jobs: list[Job]) -> list[Job]:
        """The dataset jobs ``jobs`` name, in order of first use, each with the config of
        its first user."""
        made: dict[str, Job] = {}
        for job in jobs:
            for key in job.datasets:
                if key not in made:
                    made[key] = Job(key, "dataset", self._names[key], job.config, {}, ())
        return list(made.values())


def _refuse_collisions(runs: list[Expanded]) -> None:
    """Refuse a plan in which two runs share an identity: one would silently stand for both."""
    seen: dict[str, Expanded] = {}
    for run in runs:
        other = seen.setdefault(run.config.digest(), run)
        if other is run:
            continue
        axes = sorted(
            k for k in {*run.names, *other.names} if run.names.get(k) != other.names.get(k)
        )
        raise ConfigError(
            f"spec.axes: runs {json.dumps(other.names)} and {json.dumps(run.names)} are the same "
            f"run (identity {run.config.digest()}); "
            + (
                f"axes {', '.join(axes)} change nothing the run computes"
                if axes
                else "an include entry repeats a planned run"
            )
        )


def jobs_from_plan(plan: Plan, uri: str, paths: ProjectPaths, max_requeues: int = 3) -> list[Job]:
    """The jobs of a sweep plan as its executor receives them (Job.for_worker): dataset
    jobs first, then stage jobs, then run jobs."""
    return [
        job.for_worker(
            plan.spec.name, uri, str(paths.root), _tags(plan, job), max_requeues=max_requeues
        )
        for job in [*plan.datasets, *plan.jobs]
    ]


def _tags(plan: Plan, job: Job) -> dict[str, str]:
    if job.kind == "dataset":  # makes no MLflow run
        return {}
    stage = job.name if job.kind == "stage" else None
    title = run_name(job.names, plan.stage_names, plan.spec.run_name, stage)
    return {
        **job_tags(plan.spec.name, job.kind, job.name, job.names, title),
        **({"zoo.rehearsal": "true"} if plan.spec.rehearse else {}),
    }


def check_plan(plan: Plan) -> None:
    """Checks of every run that need no data, made once per distinct value before any job
    starts: encoders (with the closest known names), models that can be built, devices
    this machine has. A problem is a ConfigError naming the field and the run."""
    from zoo.models import check_encoder, create_model
    from zoo.train import pick_device

    models, devices = {}, {}
    for run in plan.runs:
        models.setdefault(run.config.model, run)
        devices.setdefault((run.config.device, run.config.devices), run)
    for run in models.values():
        _with_run(lambda r: check_encoder(r.config.model.encoder), run)
        _with_run(lambda r: create_model(r.config.model), run)
    for run in devices.values():
        _with_run(lambda r: pick_device(r.config), run)


def _with_run(check: Any, run: Expanded) -> None:
    try:
        check(run)
    except ConfigError as error:
        raise ConfigError(f"spec run {json.dumps(run.names, default=str)}: {error}") from None


def _stage_names(spec: SweepSpec, names: dict[str, Any], index: int) -> dict[str, Any]:
    """The axis values a shared stage is defined by: those its config fields are set from."""
    used = {"seed"}
    for key, value in spec.set.items():
        if key.startswith(f"stages.{index}.") or not key.startswith("stages."):
            used |= references(value) | references(key)
    return {k: v for k, v in names.items() if k in used}


def plan_task(plan: Plan) -> str:
    """The task of the plan's runs (``model.task``, read from its first run; "segmentation"
    for a plan without runs)."""
    return plan.runs[0].config.model.task if plan.runs else "segmentation"


def report(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data: counts, the task and the headline its reports rank by,
    and the names of its first runs; no price (zoo.sweep._cost.priced_report adds one)."""
    from zoo.analysis import HEADLINES

    task = plan_task(plan)
    return {
        "sweep": plan.spec.name,
        **plan.counts(),
        "task": task,
        "headline": HEADLINES[task][0],
        "first_configs": [r.names for r in plan.runs[:FIRST_RUNS]],
    }


def format_report(summary: dict[str, Any]) -> str:
    """``report`` as text for a terminal."""
    lines = [
        f"sweep {summary['sweep']}: {summary['configs']} configs × {summary['seeds']} "
        f"seeds = {summary['runs']} runs"
    ]
    for name, count in summary["stage_trainings"].items():
        lines.append(
            f"  stage {name}: {count} trainings "
            f"({summary['stage_trainings_unshared'][name]} without sharing)"
        )
    ratio = summary["image_passes_unshared"] / max(summary["image_passes"], 1)
    lines.append(
        f"  training image passes: {summary['image_passes']:,} "
        f"({summary['image_passes_unshared']:,} without sharing, {ratio:.1f}× more)"
    )
    if "dataset_jobs" in summary:
        lines.append(
            f"  dataset jobs: {summary['dataset_jobs']} (stored datasets, each made once "
            "before the jobs that load it)"
        )
    lines.append(
        f"  task {summary['task']}: reports and `zoo models list` rank by {summary['headline']}"
    )
    lines.append("  first runs (`--show N` prints run N's resolved config):")
    lines += [f"    {i}: {names}" for i, names in enumerate(summary["first_configs"])]
    return "\n".join(lines)


def show_run(plan: Plan, index: int) -> str:
    """Run ``index`` (0-based, in the plan's order)'s resolved config as YAML, as
    ``yaml.safe_dump`` writes it: a config ``zoo train`` trains as that run. An index
    outside the plan is a ConfigError naming the range."""
    check(
        0 <= index < len(plan.runs),
        "--show",
        index,
        f"a run index 0-{len(plan.runs) - 1} (the plan has {len(plan.runs)} runs)"
        if plan.runs
        else "none (the plan has no runs)",
    )
    return dump_yaml(plan.runs[index].config.to_dict())
