"""One run: datasets made, stages trained in order, everything logged to one MLflow run.

Re-running a finished config does nothing; an interrupted one continues into
the same MLflow run from the last checkpoint of its current stage. A config that
asks for more epochs of a finished stage (same config otherwise), or appends a
stage to a finished run, continues from that stage's final state into a new run
tagged ``zoo.continued_from`` with the finished run's id; the finished run is not
changed, and the numbers equal those of an uninterrupted longer run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from zoo import distributed
from zoo._disk import failure_line
from zoo._leases import Lease
from zoo._liveness import Heartbeat, beat_tags
from zoo._run_record import (
    base_tags,
    epoch_metrics,
    log_artifacts,
    power_limit_unknown,
    summary_metrics,
)
from zoo._streaming import log_lineage, streams
from zoo.checkpoint import load_weights
from zoo.config import RunConfig, flatten
from zoo.continuation import CONTINUED_TAG, continue_stage, continued_from, intermediate_weights
from zoo.data import Dataset, load, materialise, mixture, streamed, used_folders
from zoo.errors import ConfigError
from zoo.losses import loss_floor
from zoo.models import check_buildable, check_encoder
from zoo.paths import ProjectPaths
from zoo.refine import refined
from zoo.resident import device_datasets
from zoo.store import CONFIG_HASH_TAG, Tracker, metric_key
from zoo.train import (
    Preempted,
    ShardFactory,
    StageResult,
    check_data,
    pick_device,
    train_stage,
)

__all__ = ["PREEMPTIONS_TAG", "EpochHook", "Pruned", "load_datasets", "preflight", "run"]

PREEMPTIONS_TAG = "zoo.preemptions"  # how often the run was preempted (and resumed)

EpochHook = Callable[[str, int, dict[str, Any]], None]  # (stage name, epoch, metrics)


class Pruned(Exception):
    """Raised by an ``on_epoch`` hook to stop a run early (a search pruned its trial):
    the run ends KILLED, tagged ``zoo.pruned_epoch``."""

    def __init__(self, stage: str, epoch: int):
        super().__init__(f"pruned after epoch {epoch} of {stage}")
        self.stage, self.epoch = stage, epoch


def load_datasets(config: RunConfig, paths: ProjectPaths) -> dict[str, Dataset]:
    """Every dataset the run uses, made if needed; stage sizes checked against the splits."""
    datasets: dict[str, Dataset] = {}
    for name in config.used_datasets:
        source = config.sources[name]
        if source.streamed:  # made while the run trains (zoo._streaming)
            datasets[name] = streamed(name, source)
        elif source.stored:
            datasets[name] = load(name, materialise(name, source, paths))
    for name in config.used_datasets:
        source = config.sources[name]
        if source.parts():
            datasets[name] = mixture(name, source, datasets)
    for i, stage in enumerate(config.stages):
        available = getattr(config.sources[stage.train], "train_count", None)
        available = datasets[stage.train].train_count if available is None else available
        if stage.size is not None and stage.size > available:
            raise ConfigError(
                f"config.stages.{i}.size: {stage.size} is larger than the training "
                f"split of {stage.train!r} ({available} images)"
            )
        height, width = datasets[stage.train].images.shape[-2:]
        if stage.augment == "dihedral" and height != width:
            raise ConfigError(
                f"config.stages.{i}.augment: 'dihedral' needs square images; "
                f"{stage.train!r} has {height}x{width}; expected augment: none"
            )
    check_data(config, datasets)
    return datasets


Prepared = tuple[torch.device, dict[str, Dataset]]


def preflight(config: RunConfig, paths: ProjectPaths) -> Prepared:
    """Everything checkable before a run exists and without a tracking store: the device,
    the encoder and the model, the ``init: file:`` weights, then the data (made or read
    into the dataset cache) against the stages. Any problem is a ConfigError or
    DataError; nothing but valid cached datasets is written."""
    device = pick_device(config)
    check_encoder(config.model.encoder)
    check_buildable(config.model)
    _check_init_files(config)
    return device, load_datasets(config, paths)


def _check_init_files(config: RunConfig) -> None:
    """Every stage's ``init: file:`` loads by the safe load training uses (safetensors,
    or torch.load with weights_only); one that does not is a ConfigError naming it."""
    for i, stage in enumerate(config.stages):
        path = config.init_file(stage.init)
        if path is None:
            continue
        try:
            load_weights(path)
        except Exception as error:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
            why = next((x for x in lines if x.startswith("WeightsUnpickler")), lines[0])
            raise ConfigError(
                f"config.stages.{i}.init: {stage.init!r} is not allowed; {path} is not weights "
                f"zoo loads safely ({type(error).__name__}: {why.split('. ')[0]}); expected "
                "a .safetensors file or a .pt file of tensors only"
            ) from None


def run(
    config: RunConfig,
    tracker: Tracker,
    paths: ProjectPaths,
    echo: Callable[[str], None] = print,
    *,
    identity: str | None = None,
    tags: dict[str, str] | None = None,
    prepared: Prepared | None = None,
    on_epoch: EpochHook | None = None,
    unfinished: bool = False,
) -> str:
    """Train ``config`` (or finish an interrupted attempt); returns the MLflow run id.

    The MLflow run is found by ``identity`` (default: the config hash) in the
    config's experiment; a FINISHED one means there is nothing to do. Bad input
    is refused before the run exists (see preflight; ``prepared`` is its result when
    the caller ran it already). One process at a time works on an identity: others
    wait for it, then find it finished. ``tags`` are added to a new run. ``on_epoch``
    sees every epoch's metrics as it ends (replayed ones too), before they are sent.
    Any failure after the run exists ends it FAILED. ``unfinished``: the caller (an
    executor) found the run not FINISHED, so the look-up that spares a finished run its
    preflight is skipped; the one made holding the lock is not.
    """
    identity = identity or config.digest()
    existing = None if unfinished else _existing(tracker, config.experiment, identity)
    if existing is not None and existing.info.status == "FINISHED":
        echo(f"run {existing.info.run_id} already finished; nothing to do")
        return existing.info.run_id
    device, datasets = prepared or preflight(config, paths)
    paths.run_lock(identity).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(paths.run_lock(identity)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        echo(f"run {identity} is in progress in another process; waiting for it")
        lock.acquire()
    try:
        existing = _existing(tracker, config.experiment, identity)
        if existing is not None and existing.info.status == "FINISHED":
            echo(f"run {existing.info.run_id} finished meanwhile; nothing to do")
            return existing.info.run_id
        with Lease(
            paths, used_folders(config, paths), f"run {identity[:12]} ({config.experiment})"
        ):
            return _attempt(
                config, tracker, paths, echo, identity, tags, existing, device, datasets, on_epoch
            )
    finally:
        lock.release()


def _existing(tracker: Tracker, experiment: str, identity: str) -> Any | None:
    """The newest run of ``identity``, without creating the experiment."""
    experiment_id = tracker.experiment_id(experiment)
    return tracker.find(experiment_id, identity) if experiment_id else None


def _attempt(
    config: RunConfig,
    tracker: Tracker,
    paths: ProjectPaths,
    echo: Callable[[str], None],
    identity: str,
    tags: dict[str, str] | None,
    existing: Any | None,
    device: torch.device,
    datasets: dict[str, Dataset],
    on_epoch: EpochHook | None,
) -> str:
    """One attempt at a run, holding its identity's lock."""
    floor = loss_floor(config.stages[-1].loss, config.model.head, config.model.classes)
    params = {**flatten(config.to_dict()), "loss_floor": floor}
    if existing is None:
        run_tags = {**base_tags(config, device, floor), **(tags or {}), CONFIG_HASH_TAG: identity}
        continued = continued_from(config, tracker, paths)
        if continued is not None:
            run_tags[CONTINUED_TAG] = continued
            echo(f"continuing finished run {continued} into a new run")
        run_tags.update(beat_tags())  # the first heartbeat travels with the run's creation
        run_id = tracker.create(tracker.experiment(config.experiment), run_tags)
        log = _Log(tracker, run_id, set())
    else:
        run_id = existing.info.run_id
        tracker.reopen(run_id)
        log = _Log(tracker, run_id, tracker.logged_steps(run_id, "train_loss"))
        params = {k: v for k, v in params.items() if metric_key(k) not in existing.data.params}
    log.params = params  # sent with the first send; an attempt killed before sends them next
    echo(f"run {run_id} ({identity}) on {device}")
    try:
        with Heartbeat(lambda beat: tracker.set_tags(run_id, beat), first=existing is not None):
            data = device_datasets(datasets, device, echo, config.model)
            log_lineage(config, tracker, run_id)
            with (
                streams(data, config) as data,
                distributed.group(config, paths.root, load_datasets) as shard,
            ):
                results = _train_stages(config, data, log, paths, echo, on_epoch, shard)
            _record(config, results, floor, (tracker, run_id, log), datasets)
    except Preempted:
        log.settle(echo)
        before = int(existing.data.tags.get(PREEMPTIONS_TAG, 0)) if existing else 0
        tracker.set_tags(run_id, {PREEMPTIONS_TAG: str(before + 1)})
        echo(f"run {run_id} preempted; it stays RUNNING and resumes from its checkpoint")
        raise
    except Pruned as pruned:
        log.settle(echo)
        echo(f"run {run_id} {pruned}")
        tracker.set_tags(run_id, {"zoo.pruned_epoch": str(pruned.epoch)})
        tracker.kill(run_id)
        raise
    except BaseException as error:
        log.settle(echo)
        tracker.finish(run_id, error)
        raise
    tracker.finish(run_id)
    return run_id


def _record(
    config: RunConfig,
    results: list,
    floor: float,
    where: tuple[Tracker, str, Any],
    datasets: dict[str, Dataset],
) -> None:
    """A trained run's summary metrics, power-limit tag and artifacts, logged to its run."""
    tracker, run_id, log = where
    log.add(0, summary_metrics(config, results, floor, results[-1].total))
    log.flush()
    if power_limit_unknown(config, results):
        tracker.set_tags(run_id, {"zoo.power_limit_w": "unknown"})
    log_artifacts(config, results, datasets, tracker, run_id)


LIVE_INTERVAL_S = 5.0  # least seconds between a live run's sends of its epochs


class _Log:
    """A run's params and epoch metrics on their way to the store: held while finished
    stages replay their history, and while live epochs end within ``LIVE_INTERVAL_S`` of
    the last send (or the run's start); sent together at the first epoch after that, or
    at the end. A run of quick epochs so costs a few round trips rather than one per
    epoch. Steps already in the store (an attempt that continues) are not sent again;
    steps held when a run is killed outright are sent by its next attempt, which
    replays them from its checkpoints."""

    def __init__(self, tracker: Tracker, run_id: str, logged: set[int]):
        self.tracker, self.run_id, self.logged = tracker, run_id, logged
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.sent_at: int | None = None  # the timestamp of a send not known to have landed
        self.last_send = time.monotonic()

    def add(self, step: int, metrics: dict[str, float]) -> bool:
        """Hold ``metrics`` of ``step``; False when that step was logged before."""
        if step in self.logged:
            return False
        self.metrics.append((step, metrics))
        self.logged.add(step)
        return True

    def flush(self) -> None:
        """Send everything held; what a failed or interrupted send held stays held, for
        ``settle`` to send again under the same timestamp, so rows that did land (a send
        interrupted after its commit) are not logged twice."""
        if self.params or self.metrics:
            if self.sent_at is None:
                self.sent_at = int(time.time() * 1000)
            self.tracker.log_batch(self.run_id, self.params, self.metrics, self.sent_at)
            self.params, self.metrics, self.sent_at = {}, [], None
            self.last_send = time.monotonic()

    def flush_due(self) -> None:
        """``flush`` when the last send (or the run's start) is ``LIVE_INTERVAL_S`` ago."""
        if time.monotonic() - self.last_send >= LIVE_INTERVAL_S:
            self.flush()

    def settle(self, echo: Callable[[str], None]) -> None:
        """``flush`` for a run that is ending anyway: a failure is reported, not raised."""
        try:
            self.flush()
        except Exception as error:
            reason = failure_line(error, self.tracker.uri, self.tracker.paths.root)
            echo(f"run {self.run_id}: held metrics not logged ({reason})")


def _train_stages(
    config: RunConfig,
    data: dict[str, Any],
    log: _Log,
    paths: ProjectPaths,
    echo: Callable[[str], None],
    hook: EpochHook | None = None,
    shard: ShardFactory | None = None,
) -> list[StageResult]:
    results: list[StageResult] = []
    offset = 0

    def fetch_run(init: str) -> Path:  # run:ID[@STAGE|@epoch:N] or model:NAME@ALIAS|...
        from zoo.modelzoo._files import fetch_weights

        target = init.partition(":")[2]
        if init.startswith("run:") and "@" in target:
            return intermediate_weights(target, log.tracker, paths)
        return fetch_weights(target, log.tracker)

    for index, stage in enumerate(config.stages):

        def on_epoch(
            epoch: int,
            metrics: dict[str, Any],
            replayed: bool,
            index: int = index,
            offset: int = offset,
        ) -> None:
            if log.add(offset + epoch, epoch_metrics(metrics, index)):
                echo(_epoch_line(config.stages[index], epoch, metrics))
            last = index == len(config.stages) - 1 and epoch == config.stages[index].epochs
            if not replayed and not last:  # the last epoch's metrics go with the summary
                log.flush_due()
            if hook is not None:
                hook(config.stages[index].name, epoch, metrics)

        if stage.refine is not None:  # self-training: zoo.refine
            results.append(
                refined(config, index, data, paths, results, log, (fetch_run, on_epoch, echo))
            )
            offset += stage.epochs + stage.refinement.iterations * stage.refinement.epochs
            continue
        folder = paths.stage(config.stage_digest(index))
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / ".lock")):
            continue_stage(config, index, paths, echo)
            previous = results[-1] if results else None
            results.append(
                train_stage(config, index, data, folder, previous, fetch_run, on_epoch, shard)
            )
        offset += stage.epochs
    return results


def _epoch_line(stage: Any, epoch: int, metrics: dict[str, Any]) -> str:
    """``  pretrain epoch 3/10 (2.1 s, stage ETA 0m15s): train loss 0.3412, a 0.0123``."""
    seconds = metrics.get("epoch_seconds")
    left = (stage.epochs - epoch) * seconds if seconds else None
    timing = (
        f" ({seconds:.1f} s, stage ETA {int(left // 60)}m{int(left % 60):02d}s)"
        if left is not None
        else ""
    )
    return (
        f"  {stage.name} epoch {epoch}/{stage.epochs}{timing}: train loss "
        f"{metrics['train_loss']:.4g}, "
        + ", ".join(f"{n} {v['loss_adj']:.4g}" for n, v in metrics["val"].items())
    )
