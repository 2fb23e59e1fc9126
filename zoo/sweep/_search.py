"""Hyperparameter search with Optuna: a spec's ``search:`` block, its study, its workers.

A search is a sweep spec whose ``search:`` block names parameters (used in
``set:`` as ``$name``, like axis values) instead of, or beside, axes. A trial
assigns every parameter a value and trains the runs that assignment expands to
(one per seed and per combination of the spec's own axes); its objective is
the mean of a logged metric over those runs. Every run is an MLflow run tagged
``zoo.trial`` (the Optuna trial number) and ``zoo.study``; a pruned run ends
KILLED with ``zoo.pruned_epoch``; the best trial's runs carry ``zoo.best_trial``.

Promises of the workers (``work``), however many run and wherever:

- the study never holds more than ``budget`` trials: asking for a trial and
  counting the trials happen under one file lock (``StudyPaths.lock``);
- a worker holds a lease (an OS file lock, released when its process dies,
  also by ``kill -9``) on each trial it runs; a RUNNING trial whose lease is
  free was interrupted, and the next worker adopts it before asking for a new
  one: same parameters, its runs resumed from their checkpoints. So no trial is
  lost, counted twice, or left RUNNING once a worker runs again;
- trials with equal parameters train nothing twice (run identity is the config
  hash), and a stage shared by several trials' configs is trained once.
"""

from __future__ import annotations

import statistics
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from zoo._typed import build
from zoo._yaml import load_yaml
from zoo.errors import ConfigError
from zoo.paths import ProjectPaths, StudyPaths
from zoo.store import Tracker, store_uri
from zoo.sweep._job import (
    Job,
    JobResult,
    job_tags,
    register_job_kind,
    run_job,
    tracker_for,
)
from zoo.sweep._search_block import (
    Objective,
    Parameter,
    SearchBlock,
    check_used,
    parse_block,
)
from zoo.sweep._spec import Expanded, SweepSpec, expand, load_spec

__all__ = [
    "Objective",
    "Parameter",
    "SearchBlock",
    "format_search_status",
    "is_search",
    "load_search",
    "open_study",
    "run_search",
    "search_jobs",
    "search_status",
    "trial_runs",
    "work",
]

BEST_TAG = "zoo.best_trial"


def load_search(
    path: str | Path, overrides: list[str] = (), resolver: Any = None
) -> tuple[SweepSpec, SearchBlock]:
    """The spec in ``path`` (``overrides`` applied and its runs resolved against
    ``resolver``: zoo.sweep.load_spec) and its validated ``search:`` block (ConfigError
    without one)."""
    document = load_yaml(path)
    block = parse_block(document.get("search") if isinstance(document, dict) else None)
    check_used(block, document)
    return load_spec(path, overrides, resolver), block


def trial_runs(spec: SweepSpec, params: dict[str, Any]) -> list[Expanded]:
    """The runs of one trial: ``params`` beside the spec's axes, once per seed."""
    point = {"product": {name: [value] for name, value in params.items()}}
    return expand(replace(spec, axes=(*spec.axes, point), search=None))


def search_jobs(
    spec: SweepSpec, block: SearchBlock, workers: int, tracker: Tracker, max_requeues: int = 3
) -> list[Job]:
    """One job per Optuna worker; each carries the whole spec, so it needs no file."""
    from zoo._typed import to_dict

    document = to_dict(spec)
    return [
        Job(
            key=f"{spec.name}-worker-{n}",
            kind="search",
            name="search",
            experiment=spec.name,
            uri=tracker.uri,
            root=str(tracker.paths.root),
            document={"spec": document, "worker": n},
            max_requeues=max_requeues,
        )
        for n in range(workers)
    ]


def _sampler(block: SearchBlock, seed: int) -> Any:
    """The block's sampler with RNG seed ``seed``."""
    import optuna

    if block.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if block.sampler == "grid":

        class Grid(optuna.samplers.GridSampler):
            def after_trial(self, *args: Any) -> None:
                """The budget ends a search (capped at the grid's size), not the sampler."""

        # trial N takes point N of the grid shuffled by the block's seed: no repeats
        return Grid({n: p.grid() for n, p in block.parameters.items()}, seed=block.seed)
    if block.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=block.startup_trials)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=block.startup_trials, multivariate=True, constant_liar=True
    )


def _pruner(block: SearchBlock, epochs: int) -> Any:
    import optuna

    if block.pruner == "median":
        return optuna.pruners.MedianPruner(  # epochs are steps 1, 2, ...
            n_startup_trials=block.startup_trials, n_warmup_steps=block.warmup_epochs + 1
        )
    if block.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


def _storage(block: SearchBlock, study: StudyPaths) -> Any:
    import optuna

    if block.storage != "journal":  # postgresql:// runs on psycopg 3, like the tracking store
        try:
            return optuna.storages.RDBStorage(store_uri(block.storage))
        except RuntimeError as error:  # MLflow's schema: both keep an alembic_version table
            raise ConfigError(
                f"spec.search.storage: {block.storage!r} is not allowed; its database holds "
                f"another schema ({str(error).split('.')[0]}); expected a database of its own, "
                "for example a second database on the tracking store's server"
            ) from None
    from optuna.storages.journal import JournalFileBackend

    study.folder.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(study.journal)))


def open_study(spec: SweepSpec, block: SearchBlock, paths: ProjectPaths) -> Any:
    """The search's Optuna study (created on first use)."""
    import optuna
    from filelock import FileLock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    files = paths.study(spec.name)
    files.folder.mkdir(parents=True, exist_ok=True)
    epochs = _last_stage_epochs(spec, block)
    with FileLock(str(files.lock)):
        return optuna.create_study(
            study_name=spec.name,
            storage=_storage(block, files),
            direction=block.objective.direction,
            sampler=_sampler(block, block.seed),
            pruner=_pruner(block, epochs),
            load_if_exists=True,
        )


def _last_stage_epochs(spec: SweepSpec, block: SearchBlock) -> int:
    params = {n: p.grid()[0] if p.type != "float" else p.low for n, p in block.parameters.items()}
    return trial_runs(spec, params)[0].config.stages[-1].epochs


def _claim(study: Any, block: SearchBlock, files: StudyPaths) -> tuple[Any, Any] | None:
    """(trial, lease) of an interrupted trial to adopt, else of a new trial while the
    budget allows; None when the budget is spent.

    Trial N is sampled with seed ``block.seed + N``, whichever worker asks and
    however often workers restarted, so restarts never repeat earlier samples."""
    import optuna
    from filelock import FileLock, Timeout

    with FileLock(str(files.lock)):
        trials = study.get_trials(deepcopy=False)
        for frozen in trials:
            if frozen.state != optuna.trial.TrialState.RUNNING:
                continue
            files.lease(frozen.number).parent.mkdir(parents=True, exist_ok=True)
            lease = FileLock(str(files.lease(frozen.number)))
            try:
                lease.acquire(timeout=0)
            except Timeout:
                continue  # a live worker runs it
            return optuna.trial.Trial(study, frozen._trial_id), lease
        if len(trials) >= block.trials:
            return None
        study.sampler = _sampler(block, block.seed + len(trials))
        trial = study.ask()
        files.lease(trial.number).parent.mkdir(parents=True, exist_ok=True)
        lease = FileLock(str(files.lease(trial.number)))
        lease.acquire(timeout=0)
        return trial, lease


def work(job: Job, log: Path | None = None) -> JobResult:
    """An Optuna worker: run trials (adopting interrupted ones) until the budget is spent.
    An internal error ends the worker ``failed``, its traceback in the log."""
    from zoo._signals import Preempted

    log = log or job.paths.study(job.experiment).log
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _work(job, log)
    except Preempted:
        raise
    except Exception as error:
        with log.open("a") as handle:
            handle.write(traceback.format_exc())
        return JobResult("failed", reason=f"{type(error).__name__}: {error} (log: {log})")


register_job_kind("search", work)


def _work(job: Job, log: Path) -> JobResult:
    from zoo.modelzoo._identity import store_resolver

    spec = build(SweepSpec, job.document["spec"], "spec")
    block = parse_block(spec.search)
    paths = job.paths
    study = open_study(spec, block, paths)
    files = paths.study(spec.name)
    tracker = tracker_for(job)
    # trials resolve against the job's project and store (init: run: references)
    spec = replace(spec, resolver=store_resolver(paths, tracker.uri))
    count = 0
    with log.open("a") as handle:

        def echo(line: str) -> None:
            handle.write(line + "\n")
            handle.flush()

        while (claim := _claim(study, block, files)) is not None:
            trial, lease = claim
            try:
                state = _evaluate(study, trial, spec, block, job, tracker)
            finally:
                lease.release()
            echo(f"worker {job.document['worker']}: trial {trial.number} {state}")
            count += 1
    return JobResult("finished", reason=f"{count} trials")


def _evaluate(
    study: Any,
    trial: Any,
    spec: SweepSpec,
    block: SearchBlock,
    job: Job,
    tracker: Tracker,
) -> str:
    """Train the trial's runs and tell the study; returns the trial's final state."""
    from optuna.trial import TrialState

    from zoo.run import Pruned

    params = {name: p.suggest(trial, name) for name, p in block.parameters.items()}
    runs = trial_runs(spec, params)
    if not runs:
        study.tell(trial.number, state=TrialState.FAIL)
        return "failed: the spec's where: or exclude: leaves no run"
    values, run_ids = [], []
    for index, expanded in enumerate(runs):
        run_job_spec = _trial_job(spec, expanded, trial.number, job)
        hook = _pruning_hook(trial, expanded, block.prune_on) if index == 0 else None
        log = job.paths.study(job.experiment).trial_log(trial.number)
        try:
            result = run_job(run_job_spec, log, hook)
        except Pruned:
            study.tell(trial.number, state=TrialState.PRUNED)
            return "pruned"
        value = None
        if result.status == "finished":
            run_ids.append(result.run_id)
            metrics = tracker.get_run(result.run_id).data.metrics
            value = metrics.get(block.objective.metric)
        if value is None:
            reason = result.reason or f"metric {block.objective.metric!r} was not logged"
            trial.set_user_attr("zoo.error", reason[:1000])
            study.tell(trial.number, state=TrialState.FAIL)
            return f"failed: {reason}"
        values.append(value)
    trial.set_user_attr("mlflow_run_ids", run_ids)
    study.tell(trial.number, statistics.fmean(values))
    _tag_best(study, tracker, spec.name)
    return f"complete {statistics.fmean(values):.4g}"


def _trial_job(spec: SweepSpec, expanded: Expanded, number: int, worker: Job) -> Job:
    config = expanded.config
    tags = job_tags(spec.name, "run", "run", expanded.names)
    tags.update({"zoo.trial": str(number), "zoo.study": spec.name})
    planned = Job(config.digest(), "run", "run", config, expanded.names)
    placed = planned.for_worker(
        spec.name, worker.uri, worker.root, tags, max_requeues=worker.max_requeues
    )
    return replace(placed, requeues=worker.requeues)  # its worker's preemptions count


def _pruning_hook(
    trial: Any, expanded: Expanded, metric: str
) -> Callable[[str, int, dict[str, Any]], None]:
    """Report the last stage's validation ``metric`` on its selection set every epoch;
    raise Pruned when the pruner says so."""
    from zoo.run import Pruned

    last = expanded.config.stages[-1]

    def hook(stage: str, epoch: int, metrics: dict[str, Any]) -> None:
        if stage != last.name:
            return
        trial.report(metrics["val"][last.selection_set][metric], epoch)
        if trial.should_prune():
            raise Pruned(stage, epoch)

    return hook


def _tag_best(study: Any, tracker: Tracker, name: str) -> None:
    """Move ``zoo.best_trial`` to the runs of the study's best trial, under the study's
    lock: two workers finishing at once must not leave the tag on a stale best."""
    from filelock import FileLock

    with FileLock(str(tracker.paths.study(name).lock)):
        best = study.best_trial
        keep = set(best.user_attrs.get("mlflow_run_ids", []))
        experiment = tracker.experiment(name)
        for run in tracker.search_runs([experiment], f"tags.`{BEST_TAG}` = 'true'"):
            if run.info.run_id not in keep:
                tracker.delete_tag(run.info.run_id, BEST_TAG)
        for run_id in keep:
            tracker.set_tags(run_id, {BEST_TAG: "true", "zoo.best_value": f"{best.value:.6g}"})


def search_status(spec: SweepSpec, block: SearchBlock, paths: ProjectPaths) -> dict[str, Any]:
    """Trials by state, the budget, and the best trial so far."""
    from collections import Counter

    study = open_study(spec, block, paths)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name.lower() for t in trials)
    status: dict[str, Any] = {"budget": block.trials, "trials": len(trials), **states}
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        status["best"] = {"trial": best.number, "value": best.value, "params": best.params}
    return status


def is_search(path: str | Path) -> bool:
    """Whether the spec in ``path`` has a ``search:`` block."""
    document = load_yaml(path)
    return isinstance(document, dict) and "search" in document


def run_search(
    spec: SweepSpec,
    block: SearchBlock,
    tracker: Tracker,
    workers: int,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the search on ``workers`` local processes until its budget is spent (or
    resume it); returns ``search_status`` afterwards, ``interrupted`` added."""
    from zoo.sweep._local import LocalExecutor

    open_study(spec, block, tracker.paths)  # created once, before the workers race
    jobs = search_jobs(spec, block, workers, tracker)
    report = LocalExecutor(workers, echo).submit(spec.name, jobs, tracker)
    status = search_status(spec, block, tracker.paths)
    status["interrupted"] = report.interrupted
    status["failed_workers"] = report.failed
    return status


def format_search_status(name: str, status: dict[str, Any]) -> str:
    """``search_status`` as text."""
    counts = ", ".join(
        f"{state} {status.get(state, 0)}" for state in ("complete", "pruned", "fail", "running")
    )
    lines = [f"search {name}: {status['trials']} of {status['budget']} trials ({counts})"]
    if "best" in status:
        best = status["best"]
        lines.append(f"  best: trial {best['trial']}, value {best['value']:.4g}, {best['params']}")
    return "\n".join(lines)
