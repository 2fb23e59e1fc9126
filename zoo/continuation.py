"""Continued runs: a stage asked for more epochs than a finished one with the same
config goes on from that stage's final state, and a run that extends a finished one
(more epochs of its last stage, or a stage appended) names it in ``zoo.continued_from``.

A stage is continued only when its learning rate is a pure function of the epoch
(every scheduler but cosine) and its checkpoints are shared (``share_stages``); the
weights, optimizer state, torch RNG and progress come from the finished stage's
``carry.safetensors`` and the shuffle of every epoch from (seed, stage, epoch), so the
numbers equal an uninterrupted longer run's. Also here: the weights that ``init:
run:ID@STAGE`` and ``run:ID@epoch:N`` name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from zoo.checkpoint import CheckpointError, reissue, weights_problem
from zoo.config import RunConfig
from zoo.errors import ConfigError
from zoo.paths import (
    CONFIG_ARTIFACT,
    WEIGHTS_ARTIFACTS,
    ProjectPaths,
    StagePaths,
    iteration_weights_name,
)
from zoo.store import Tracker
from zoo.train import stage_record

__all__ = ["CONTINUED_TAG", "continue_stage", "continued_from", "intermediate_weights"]

CONTINUED_TAG = "zoo.continued_from"  # on a run that continued a finished one: its run id


def _shorter(config: RunConfig, index: int, epochs: int) -> RunConfig:
    """``config`` with stage ``index`` trained for ``epochs`` epochs."""
    stages = list(config.stages)
    stages[index] = replace(stages[index], epochs=epochs)
    shorter = replace(config, stages=tuple(stages))
    shorter.__dict__["_table"] = config._table  # the same datasets, already parsed
    return shorter


def _shorter_stage(config: RunConfig, index: int, paths: ProjectPaths) -> RunConfig | None:
    """``config`` with stage ``index`` cut to the most epochs (fewer than asked) at which
    that stage finished and kept its final state, if any; None for a cosine schedule
    (its learning rate depends on the length) or unshared stages."""
    stage = config.stages[index]
    if stage.scheduler == "cosine" or not config.share_stages:
        return None
    for epochs in range(stage.epochs - 1, 0, -1):
        shorter = _shorter(config, index, epochs)
        files = paths.stage_files(shorter.stage_digest(index))
        if files.result.exists() and files.carry.exists():
            return shorter
    return None


def continue_stage(
    config: RunConfig, index: int, paths: ProjectPaths, echo: Callable[[str], None]
) -> None:
    """Start stage ``index`` from the final state of a finished shorter run of it (see
    _shorter_stage) when it has neither a result nor a checkpoint of its own: that state,
    its best weights and kept epoch weights become this stage's checkpoint and files."""
    files = paths.stage_files(config.stage_digest(index))
    if files.result.exists() or files.checkpoint.exists():
        return
    shorter = _shorter_stage(config, index, paths)
    if shorter is None:
        return
    source = paths.stage_files(shorter.stage_digest(index))
    try:
        _check_best(source)
        progress = reissue(source.carry, files.checkpoint, stage_record(config, index))
    except CheckpointError as error:
        echo(f"  cannot continue {source.folder.name}: {error}; training from the start")
        return
    for epoch in range(1, progress["epoch"] + 1):
        _link(source.epoch(epoch), files.epoch(epoch))
    _link(source.weights("best"), files.weights("best"))
    echo(
        f"  {config.stages[index].name}: continuing after epoch {progress['epoch']} "
        f"from stage {source.folder.name}"
    )


def _check_best(source: StagePaths) -> None:
    """CheckpointError unless the finished stage's best weights match their recorded hash."""
    try:
        recorded = json.loads(source.result.read_text()).get("weights", {}).get("best")
    except (OSError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{source.result}: unreadable ({type(error).__name__})") from None
    problem = recorded and weights_problem(source.weights("best"), recorded)
    if problem:
        raise CheckpointError(problem)


def _link(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (files are replaced, never changed in
    place), if ``source`` exists."""
    if source.exists():
        target.unlink(missing_ok=True)
        os.link(source, target)


def continued_from(config: RunConfig, tracker: Tracker, paths: ProjectPaths) -> str | None:
    """The id of the finished run this config continues: the same config with fewer
    epochs of its last stage (whose final state the last stage continues from), or
    without its last stage (whose stages this one reuses)."""
    experiment_id = tracker.experiment_id(config.experiment)
    if experiment_id is None:
        return None
    last = len(config.stages) - 1
    candidates = [_shorter_stage(config, last, paths)]
    if last > 0:
        prefix = replace(config, stages=config.stages[:-1])
        prefix.__dict__["_table"] = config._table
        if prefix.stage_digest(last - 1) == config.stage_digest(last - 1):
            candidates.append(prefix)
    for candidate in candidates:
        if candidate is None:
            continue
        run = tracker.find(experiment_id, candidate.digest())
        if run is not None and run.info.status == "FINISHED":
            return run.info.run_id
    return None


def intermediate_weights(target: str, tracker: Tracker, paths: ProjectPaths) -> Path:
    """The weights ``init: run:ID@STAGE`` (that stage's best) or ``run:ID@epoch:N`` (after
    the run's N-th epoch counted across its stages; kept by ``keep_epochs: true``, or a
    stage's final epoch) name, from this project's stage checkpoints; ``run:ID@iter:K``
    (iteration K of its refinement) from the run's artifacts."""
    from zoo.modelzoo._identity import store_resolver
    from zoo.modelzoo._load import read_config

    run_id, _, point = target.partition("@")
    if point.startswith("iter:"):  # its refinement's iteration K: a logged artifact
        name = iteration_weights_name(int(point.removeprefix("iter:")))
        local = paths.download(run_id) / WEIGHTS_ARTIFACTS / name
        if not local.exists():
            local = tracker.download(run_id, f"{WEIGHTS_ARTIFACTS}/{name}", local.parent)
        return local
    local = paths.download(run_id) / CONFIG_ARTIFACT
    if not local.exists():
        tracker.download(run_id, CONFIG_ARTIFACT, paths.download(run_id))
    source = read_config(local, store_resolver(paths, tracker.uri))
    names = [s.name for s in source.stages]
    where = f"init: run:{target}"
    if not point.startswith("epoch:"):
        if point not in names:
            raise ConfigError(f"{where}: no stage {point!r}; the run has " + ", ".join(names))
        return _present(
            paths.stage_files(source.stage_digest(names.index(point))).weights("best"), where
        )
    epoch = int(point.removeprefix("epoch:"))
    for index, stage in enumerate(source.stages):
        if epoch <= stage.epochs:
            files = paths.stage_files(source.stage_digest(index))
            if epoch == stage.epochs and not files.epoch(epoch).exists():
                return _present(files.weights("final"), where)
            return _present(files.epoch(epoch), where)
        epoch -= stage.epochs
    total = sum(s.epochs for s in source.stages)
    raise ConfigError(f"{where}: the run trained {total} epochs")


def _present(path: Path, where: str) -> Path:
    if not path.exists():
        raise ConfigError(
            f"{where}: {path} is not here (stages are kept in the project that trained "
            "them; epochs only with keep_epochs: true)"
        )
    return path
