"""A job as it travels from the planner through an executor to a worker, and the one
function that runs it.

The plan decides a :class:`Job` (its identity, kind, typed config and dependencies);
``Job.for_worker`` fills in where it runs and the document a worker resolves, as the
executors receive it (zoo.sweep._plan.jobs_from_plan); a producer of jobs makes its own
(a search's Optuna workers). A job is typed and frozen and survives a JSON round-trip
unchanged but for its typed config and axis values, which stay with the planner
(``Job.from_json(job.to_json()) == job``), so the SLURM executor writes the very job
the local executor passes to its worker processes. Whichever executor started it, a
job is run by :func:`run_job`, so a run's metrics do not depend on where it ran.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from zoo._disk import failure_line
from zoo._typed import build, check, to_dict
from zoo.config import RunConfig
from zoo.errors import ConfigError
from zoo.paths import ProjectPaths
from zoo.store import CONFIG_HASH_TAG, Tracker

__all__ = [
    "JOB_KINDS",
    "Job",
    "JobResult",
    "become_worker",
    "identity_differs",
    "identity_index",
    "job_tags",
    "place_worker",
    "placed",
    "register_job_kind",
    "requeued",
    "requeues_left",
    "requeues_made",
    "run_job",
    "source_of",
    "with_parent",
]

_WORKER: dict[str, Any] = {}  # per process: the tracker in use, the worker's device
_PLANS = {"internal": True}  # a Job field only the plan reads: no file holds it (zoo._typed)


@dataclass(frozen=True)
class Job:
    """One unit of work: a stored dataset made (once, before the jobs that load it), a
    shared stage (trained once for many runs), a run, or a search's Optuna worker.

    The plan decides its first fields; ``for_worker`` fills in the rest, everything a
    worker needs and nothing it must look up elsewhere. A job waits for two kinds of
    jobs, kept apart: ``depends``, the stage jobs it starts from (the last is the stage
    whose checkpoint it loads, its parent run in MLflow), and ``datasets``, the dataset
    jobs of the stored datasets it loads. A dataset job depends on nothing, makes no
    MLflow run, and is done once the dataset cache has it."""

    key: str  # MLflow identity tag: stage hash, config hash; a dataset job: dataset_key;
    # a search worker: <search>-worker-N
    # search: an Optuna worker asking for trials; dataset: makes one stored dataset, no run
    kind: Literal["dataset", "stage", "run", "search"]
    name: str  # the stage's name, "run", "search", or a dataset job's dataset
    # the plan's alone (never written, so a job read from JSON has neither): its typed
    # config (a stage job's: cut after that stage; a dataset job's: its first user's; a
    # search worker has none) and its axis values (none for a dataset job)
    config: RunConfig | None = field(default=None, compare=False, repr=False, metadata=_PLANS)
    names: dict[str, Any] = field(default_factory=dict, compare=False, metadata=_PLANS)
    depends: tuple[str, ...] = ()  # keys of the stage jobs that must finish first
    datasets: tuple[str, ...] = ()  # keys of the dataset jobs that must finish first
    # where it runs (for_worker)
    experiment: str = ""  # MLflow experiment: the sweep's or search's name
    uri: str = ""  # tracking store
    root: str = ""  # project root (zoo.paths.ProjectPaths)
    tags: dict[str, str] = field(default_factory=dict)  # added to a new MLflow run
    max_requeues: int = 3  # preemptions requeued before the run ends FAILED
    requeues: int = 0  # preemptions its backend requeued it for (SLURM counts its own)
    # the plan's identity document of a stage or run job, field -> short hash
    # (RunConfig.identity_fields): a worker computing another key names what differs
    planned: dict[str, str] = field(default_factory=dict)
    # what a worker resolves: a resolved run config's to_dict(); a search worker's
    # {spec, worker: N}; a dataset job's {datasets: {name: declaration}}
    document: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        check(self.max_requeues >= 0, f"{where}.max_requeues", self.max_requeues, "an integer >= 0")
        check(self.requeues >= 0, f"{where}.requeues", self.requeues, "an integer >= 0")

    @property
    def paths(self) -> ProjectPaths:
        return ProjectPaths(Path(self.root))

    def for_worker(
        self, experiment: str, uri: str, root: str, tags: dict[str, str], max_requeues: int = 3
    ) -> Job:
        """This planned job as a worker receives it: its key, kind, name, dependencies and
        identity fields (``planned``) as the plan decided them, and its config as a
        document; a dataset job carries its dataset's declaration only, and no tags."""
        where = {"experiment": experiment, "uri": uri, "root": root}
        if self.kind == "dataset":
            declared = {self.name: to_dict(self.config.sources[self.name])}
            return replace(self, **where, document={"datasets": declared})
        return replace(
            self,
            **where,
            tags=tags,
            max_requeues=max_requeues,
            planned=self.config.identity_fields(identity_index(self.kind, self.config)),
            document=self.config.to_dict(),
        )

    def to_json(self) -> str:
        """Every field but the plan's own (``config``, ``names``)."""
        document = {
            f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("internal")
        }
        tuples = {"depends": list(self.depends), "datasets": list(self.datasets)}
        return json.dumps({**document, **tuples}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Job:
        """The job ``to_json`` wrote (no ``config``, no ``names``); unknown or mistyped
        fields are refused."""
        return build(cls, json.loads(text), "job")


@dataclass(frozen=True)
class JobResult:
    status: Literal["finished", "failed", "skipped"]
    run_id: str = ""  # the MLflow run, when one exists
    reason: str = ""  # why it failed or was skipped
    seconds: float = 0.0  # wall time of run_job in its worker


def job_tags(
    sweep: str, kind: str, name: str, names: dict[str, Any], title: str = ""
) -> dict[str, str]:
    """Tags that let the MLflow UI filter and group a sweep's runs by axis value, and the
    run's readable name ``title`` when given (zoo.naming)."""
    tags = {"zoo.sweep": sweep, "zoo.kind": kind}
    tags.update({f"zoo.axis.{k}": str(v) for k, v in names.items()})
    if kind == "stage":
        tags["zoo.stage"] = name
    if title:
        tags["mlflow.runName"] = title
    return tags


def identity_index(kind: str, config: RunConfig) -> int | None:
    """What a job's key identifies: for a stage job its config's last stage (the index),
    for a run job the run (None); RunConfig.identity_fields takes the same."""
    return len(config.stages) - 1 if kind == "stage" else None


def place_worker(index: int, gpus: int) -> str:
    """The device of sweep worker ``index`` on a machine with ``gpus`` CUDA devices: GPU
    ``index`` modulo ``gpus``, or ``cpu`` without one. The same code places workers on CPU
    and GPU nodes; placement never changes an identity (``device`` is not part of one)."""
    return f"cuda:{index % gpus}" if gpus > 0 else "cpu"


def placed(config: RunConfig) -> RunConfig:
    """``config`` on this worker's device where the config leaves the choice to zoo
    (``device: auto``, or ``cuda`` on a GPU worker; one device per run), else as it is."""
    device = _WORKER.get("device")
    choose = config.device == "auto" or (config.device == "cuda" and str(device).startswith("cuda"))
    if device is None or not choose or config.devices != 1:
        return config
    return replace(config, device=device)


def become_worker(index: int) -> None:
    """Make this process sweep worker number ``index``, local or SLURM alike: one intra-op
    CPU thread (a run's numbers then do not depend on what shares the machine), freed
    host memory kept for reuse (zoo._malloc), its device by number (place_worker), figures
    drawn in the background (zoo.artifacts; drained when the process exits)."""
    import torch

    from zoo._malloc import keep_freed_memory
    from zoo.artifacts import figures_in_background

    torch.set_num_threads(1)
    keep_freed_memory()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    _WORKER["device"] = place_worker(index, gpus)
    figures_in_background()


def tracker_for(job: Job) -> Tracker:
    """One tracker per process and store, reused by the jobs this process runs."""
    key = (job.uri, job.root)
    if _WORKER.get("tracker_key") != key:
        _WORKER["tracker"], _WORKER["tracker_key"] = Tracker(job.uri, job.paths), key
    return _WORKER["tracker"]


def requeues_made() -> int:
    """How often SLURM requeued this task (0 outside SLURM)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def requeues_left(job: Job) -> bool:
    """Whether a preempted job may be requeued: the requeues it carries (a backend that
    requeues jobs itself) and SLURM's restarts of its task are below ``max_requeues``."""
    return job.requeues + requeues_made() < job.max_requeues


def requeued(job: Job) -> Job:
    """``job`` handed back to its backend after a preemption, counting it."""
    return replace(job, requeues=job.requeues + 1)


EpochHook = Callable[[str, int, dict[str, Any]], None]

# kind -> what runs a job of a kind other than stage and run, given the job and its log:
# a producer of jobs registers its own (zoo.sweep._search: "search", its Optuna workers)
JOB_KINDS: dict[str, Callable[[Job, Path | None], JobResult]] = {}


def register_job_kind(kind: str, runner: Callable[[Job, Path | None], JobResult]) -> None:
    """Make ``run_job`` hand jobs of ``kind`` to ``runner(job, log)``."""
    JOB_KINDS[kind] = runner


def run_job(
    job: Job,
    log: Path | None = None,
    on_epoch: EpochHook | None = None,
    unfinished: bool = False,
) -> JobResult:
    """Run ``job``; a failure is recorded in MLflow (FAILED with its reason) when this returns.

    A job of a registered kind (JOB_KINDS: a search's Optuna workers) is handed to its
    runner. A dataset job makes its dataset unless the cache has it (no MLflow run; a
    failure is its result only). A job whose shared stage has no finished checkpoint is
    skipped. A preempted job (zoo._signals.Preempted) propagates while ``requeues_left``;
    past the cap its run ends FAILED, naming the cap. ``on_epoch`` may raise zoo.run.Pruned.
    ``unfinished``: the caller found the job's run not FINISHED just now (see zoo.run.run).
    """
    started = time.perf_counter()
    result = _run_job(job, log, on_epoch, unfinished)
    return replace(result, seconds=time.perf_counter() - started)


def _run_job(job: Job, log: Path | None, on_epoch: EpochHook | None, unfinished: bool) -> JobResult:
    if job.kind in JOB_KINDS:
        return JOB_KINDS[job.kind](job, log)
    if job.kind == "dataset":
        return _make_dataset(job)
    paths = job.paths
    if job.depends and not paths.stage_files(job.depends[-1]).result.exists():
        return JobResult("skipped", reason=f"shared stage {job.depends[-1]} has no checkpoint")
    tracker = tracker_for(job)
    job = _with_parent(job, tracker)
    log = log or paths.job_log(job.experiment, job.key)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:

        def echo(line: str) -> None:
            handle.write(line + "\n")
            handle.flush()

        return _train(job, tracker, echo, on_epoch, unfinished)


def source_of(job: Job) -> Any:
    """A dataset job's dataset source, from the declaration the job carries."""
    from zoo.data import dataset_source

    return dataset_source(job.document["datasets"][job.name], f"datasets.{job.name}")


def _make_dataset(job: Job) -> JobResult:
    """Make a dataset job's dataset (under its lock, once: zoo.data.materialise); a
    failure is a failed result naming it."""
    from zoo.data import materialise

    try:
        materialise(job.name, source_of(job), job.paths)
    except Exception as error:
        return JobResult("failed", reason=failure_line(error, job.uri, job.paths.root))
    return JobResult("finished")


def _train(
    job: Job,
    tracker: Tracker,
    echo: Callable[[str], None],
    on_epoch: EpochHook | None,
    unfinished: bool,
) -> JobResult:
    from zoo._signals import Preempted
    from zoo.config import resolve
    from zoo.modelzoo._identity import store_resolver
    from zoo.run import Pruned, run

    # init: run: references are identified in the store this job logs to
    config = placed(resolve(job.document, resolver=store_resolver(job.paths, tracker.uri)))
    differs = identity_differs(job, config)
    if differs:
        return _refuse(job, tracker, echo, differs)
    try:
        run_id = run(
            config,
            tracker,
            job.paths,
            echo,
            identity=job.key,
            tags=job.tags,
            on_epoch=on_epoch,
            unfinished=unfinished,
        )
    except Preempted as error:
        if requeues_left(job):
            raise
        return _give_up(job, tracker, echo, error)
    except Pruned:
        raise
    except Exception as error:  # the run is already FAILED in MLflow; report and go on
        reason = failure_line(error, tracker.uri, job.paths.root)  # out of space: one line
        echo(f"FAILED: {reason}")
        return JobResult("failed", reason=reason)
    return JobResult("finished", run_id)


def identity_differs(job: Job, config: RunConfig) -> str:
    """ "" when ``config`` (as this worker resolved and placed it) has the identity the plan
    gave ``job``; otherwise why not, naming the identity fields that differ."""
    index = identity_index(job.kind, config)
    computed = config.digest() if index is None else config.stage_digest(index)
    if computed == job.key:
        return ""
    mine = config.identity_fields(index)
    fields = sorted(k for k in {*mine, *job.planned} if mine.get(k) != job.planned.get(k))
    named = ", ".join(fields) if job.planned else "unknown (the job carries no planned fields)"
    return f"this worker computes identity {computed}, not the planned {job.key} (differs: {named})"


def _refuse(job: Job, tracker: Tracker, echo: Callable[[str], None], why: str) -> JobResult:
    """End ``job``'s run FAILED with ``why``, training nothing (the sweep goes on); a run
    of the planned key that FINISHED already stays as it is."""
    error = ConfigError(f"job {job.key}: {why}; trained nothing")
    experiment = tracker.experiment(job.experiment)
    found = tracker.find(experiment, job.key)
    if found is not None and found.info.status == "FINISHED":
        echo(f"run {found.info.run_id} already finished; nothing to do ({why})")
        return JobResult("finished", found.info.run_id)
    run_id = (
        found.info.run_id
        if found
        else tracker.create(experiment, {**job.tags, CONFIG_HASH_TAG: job.key})
    )
    tracker.finish(run_id, error)
    echo(f"FAILED: {error}")
    return JobResult("failed", run_id, str(error))


def _give_up(job: Job, tracker: Tracker, echo: Callable[[str], None], error: Exception):
    reason = RuntimeError(
        f"preempted {job.max_requeues + 1} times; requeued at most --max-requeues "
        f"{job.max_requeues} times ({error})"
    )
    found = tracker.find(tracker.experiment(job.experiment), job.key)
    if found is not None:
        tracker.finish(found.info.run_id, reason)
    echo(f"FAILED: {reason}")
    return JobResult("failed", found.info.run_id if found else "", str(reason))


def with_parent(job: Job, parent: str) -> Job:
    """``job`` tagged with ``parent``, the MLflow run of the shared stage it starts from."""
    return replace(job, tags={**job.tags, "mlflow.parentRunId": parent, "zoo.stage_run": parent})


def _with_parent(job: Job, tracker: Tracker) -> Job:
    """``job`` tagged with its shared stage's MLflow run, looked up unless it came with it
    (once per process and stage: a finished stage's run never changes)."""
    if not job.depends or job.tags.get("mlflow.parentRunId"):
        return job
    parents = _WORKER.setdefault("parents", {})
    key = (tracker.uri, job.experiment, job.depends[-1])
    if key not in parents:
        found = tracker.find(tracker.experiment(job.experiment), job.depends[-1])
        if found is None or found.info.status != "FINISHED":
            return job if found is None else with_parent(job, found.info.run_id)
        parents[key] = found.info.run_id
    return with_parent(job, parents[key])
