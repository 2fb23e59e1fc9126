"""Where a stage starts and what it leaves behind.

A stage starts from its saved result when finished (replayed, not trained again),
else from its newest good checkpoint, else afresh (its initial weights, or the
optimizer state the previous stage carried on). Once trained it leaves its final
weights, the carried state when kept, and ``result.json`` (``finish_stage``). What
every checkpoint and result records of the stage (``stage_record``) decides whether
they are its own.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.checkpoint import (
    CheckpointError,
    atomic_write_text,
    checkpoint_record,
    load_checkpoint,
    load_weights,
    previous_path,
    save_weights,
    set_aside,
    weights_digest,
    weights_problem,
)
from zoo.config import STAGE_VERSION, RunConfig, StageConfig
from zoo.errors import DataError
from zoo.models import create_model, freeze, meta_model, parameter_counts
from zoo.optim import make_optimizer
from zoo.paths import StagePaths

__all__ = [
    "EpochCallback",
    "StageResult",
    "finish_stage",
    "finished_result",
    "git_commit",
    "replay",
    "resume",
    "stage_record",
]

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float], bool], None]  # (epoch, metrics, replayed)


@dataclass(frozen=True)
class StageResult:
    """What training a stage gave, read back from its ``result.json``."""

    folder: Path  # holds best.safetensors, final.safetensors, result.json
    history: list[dict[str, float]]  # metrics of each epoch, in order
    best: dict[str, dict[str, float]]  # validation set -> best adjusted loss, its epoch, IoU
    seconds: float
    telemetry: dict[str, float]
    trainable: int
    total: int  # parameters of the model
    images: int  # training images processed (augmented copies counted)
    compile_seconds: float  # torch.compile's first steps, left out of the epoch times
    # the classes the best weights predicted for the first validation images of the
    # training set (zoo.train.SAMPLE_IMAGES; segmentation), when this process trained
    # the best epoch
    predicted: np.ndarray | None = None


@functools.cache
def git_commit() -> str | None:
    """The commit of zoo's own checkout (asked once per process), if it is one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).parent,
        )
    except OSError:
        return None
    return commit.stdout.strip() if commit.returncode == 0 else None


def stage_record(config: RunConfig, index: int) -> dict[str, Any]:
    """What makes stage ``index``: its identity document, the resolved config cut after
    it, zoo's version, commit and STAGE_VERSION. Saved in every checkpoint and result."""
    from zoo._version import __version__

    cut = replace(config, stages=config.stages[: index + 1])
    return json.loads(
        json.dumps(
            {
                "stage_version": STAGE_VERSION,
                "digest": config.stage_digest(index),
                "identity": config.stage_identity(index),
                "config": cut.to_dict(),
                "zoo": __version__,
                "commit": git_commit(),
            }
        )
    )


def resume(
    config: RunConfig,
    index: int,
    previous: StageResult | None,
    fetch_run: Callable[[str], Path],
    device: torch.device,
    checkpoint: Path,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict[str, Any]]:
    """Model, optimizer and progress from the newest good checkpoint (the last, else the
    one before it), else a fresh start. A damaged or foreign checkpoint is reported in one
    line, set aside and skipped: never a permanent failure."""
    model, optimizer = _fresh(config, index, previous, fetch_run, device)
    digest = config.stage_digest(index)
    for path in (checkpoint, previous_path(checkpoint)):
        if not path.exists():
            continue
        try:
            record = checkpoint_record(path)
            if record is not None and record.get("digest") != digest:
                raise CheckpointError(
                    f"{path}: made for stage {record.get('digest')}, not {digest}"
                )
            return model, optimizer, load_checkpoint(path, model, optimizer)
        except CheckpointError as error:
            aside = set_aside(path)
            log.warning("zoo: %s; set aside as %s", error, aside.name)
            model, optimizer = _fresh(config, index, previous, fetch_run, device)
    return model, optimizer, {"epoch": 0, "history": [], "best": {}, "seconds": 0.0}


def _fresh(
    config: RunConfig,
    index: int,
    previous: StageResult | None,
    fetch_run: Callable[[str], Path],
    device: torch.device,
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The stage's starting model (seeded, initialised, on the device, frozen) and optimizer."""
    stage = config.stages[index]
    torch.manual_seed(config.seed)
    if stage.optimizer_state == "carry":
        return _carried(create_model(config.model), stage, previous, device)
    initial = _initial_weights(config, index, previous, fetch_run)
    model = create_model(config.model) if initial is None else _loaded(config, index, initial)
    model.to(device)
    if device.type == "cuda":  # fast defaults: cuDNN autotuning, NHWC convolutions
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    freeze(model, stage.freeze)
    return model, make_optimizer(stage, model)


def _loaded(config: RunConfig, index: int, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The model holding ``weights`` (every parameter and buffer, in the model's dtypes).
    It is built on the meta device, without the random initialisation the weights
    replace, unless it has dropout (which draws from the random stream initialisation
    advances) or buffers no state dict holds: then it is initialised as before, so the
    numbers stay those of the stage's identity. Weights that do not fit are one line."""
    model = meta_model(config.model)
    expected = model.state_dict()
    dropout = any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in model.modules())
    unsaved = any(name not in expected for name, _ in model.named_buffers())
    if dropout or unsaved:  # the random stream as it always was: a meta build, then a real one
        with torch.device("meta"):
            create_model(config.model)
        model = create_model(config.model)  # seeded by the caller
    weights = {k: v.to(expected[k].dtype) if k in expected else v for k, v in weights.items()}
    try:
        model.load_state_dict(weights, assign=not (dropout or unsaved))
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise DataError(
            f"config.stages.{index}.init: {config.stages[index].init!r} does not fit the model "
            f"({first})"
        ) from None
    return model


def _carried(
    model: torch.nn.Module, stage: StageConfig, previous: StageResult | None, device: torch.device
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """``model`` and an optimizer as the previous stage left them (last weights, optimizer
    state, torch RNG), with this stage's weight decay."""
    assert previous is not None
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    freeze(model, stage.freeze)
    optimizer = make_optimizer(stage, model)
    try:
        load_checkpoint(StagePaths(previous.folder).carry, model, optimizer)
    except (CheckpointError, OSError) as error:
        raise DataError(f"optimizer_state carry: {error}") from None
    for group in optimizer.param_groups:
        group["weight_decay"] = stage.weight_decay
    return model, optimizer


def _initial_weights(
    config: RunConfig, index: int, previous: StageResult | None, fetch_run: Callable[[str], Path]
) -> dict[str, torch.Tensor] | None:
    """The state dict a stage starts from; None for random initialisation."""
    init = config.stages[index].init
    if init == "auto":
        init = "random" if index == 0 else "best"
    kind = init.partition(":")[0]
    if kind == "random":
        return None
    if kind in ("best", "last"):
        assert previous is not None
        return load_weights(
            StagePaths(previous.folder).weights("best" if kind == "best" else "final")
        )
    path = config.init_file(init) if kind == "file" else fetch_run(init)
    try:
        return load_weights(path)
    except Exception as error:  # not a weights file: name it, one line
        raise DataError(f"{path}: unreadable weights ({type(error).__name__}: {error})") from None


def finished_result(done: Path, config: RunConfig, index: int) -> dict[str, Any] | None:
    """The saved result of a finished stage, or None to train it. A damaged result, one
    recorded for another identity, or one whose best or final weights no longer match
    their recorded sha256, is set aside (one line naming the file); one made by other
    zoo code with the same identity is reused with a one-line note."""
    if not done.exists():
        return None
    try:
        result = json.loads(done.read_text())
        _ = result["history"], result["best"], result["seconds"], result["telemetry"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("zoo: %s: damaged stage result (%s); set aside, training again", done, error)
        set_aside(done)
        return None
    record, asked = result.get("record"), stage_record(config, index)
    if record is not None and record.get("identity") != asked["identity"]:
        log.warning("zoo: %s: recorded for another stage identity; set aside", done)
        set_aside(done)
        return None
    for kind, digest in result.get("weights", {}).items():
        problem = weights_problem(StagePaths(done.parent).weights(kind), digest)
        if problem is not None:  # damaged best/final weights: the stage trains again
            log.warning("zoo: %s; set aside, training the stage again", problem)
            for path in (StagePaths(done.parent).weights(kind), done):
                if path.exists():
                    set_aside(path)
            return None
    made = {k: (record or {}).get(k) for k in ("zoo", "commit", "stage_version")}
    if made != {k: asked[k] for k in made}:
        log.warning("zoo: reusing stage %s made by %s (now %s)", done.parent.name, made, asked)
    return result


def replay(result: dict[str, Any], folder: Path, on_epoch: EpochCallback) -> StageResult:
    for epoch, metrics in enumerate(result["history"], start=1):
        on_epoch(epoch, metrics, True)
    return StageResult(
        folder,
        result["history"],
        result["best"],
        result["seconds"],
        result["telemetry"],
        result["trainable"],
        result["total"],
        result["images"],
        result.get("compile_seconds", 0.0),
    )


def finish_stage(
    config: RunConfig,
    index: int,
    model: torch.nn.Module,
    progress: dict[str, Any],
    files: StagePaths,
    record: dict[str, Any],
    telemetry: dict[str, float],
) -> StageResult:
    """Once every epoch's files are written: the final weights, the carried state when
    kept, then ``result.json`` (the stage is finished); returns the stage's result
    (without ``predicted``, which only the training process knows)."""
    stage, checkpoint = config.stages[index], files.checkpoint
    final, best_weights = files.weights("final"), files.weights("best")
    digests = {"best": weights_digest(best_weights)}
    if progress["best"][stage.selection_set]["epoch"] == stage.epochs:
        final.unlink(missing_ok=True)
        os.link(best_weights, final)  # the same weights: one file on disk
        digests["final"] = digests["best"]
    else:
        save_weights(model, final)
        digests["final"] = weights_digest(final)
    if config.keeps_optimizer(index) or index == len(config.stages) - 1:
        # the next stage carries this optimizer on; a run's last stage may be continued.
        # The last epoch's checkpoint is that state: linked, not written again (it stays
        # until result.json is written, so a kill before then resumes from it)
        files.carry.unlink(missing_ok=True)
        os.link(checkpoint, files.carry)
    total, trainable = parameter_counts(model)
    result = {
        "history": progress["history"],
        "best": progress["best"],
        "seconds": progress["seconds"],
        "telemetry": telemetry,
        "trainable": trainable,
        "total": total,
        "images": progress.get("images", 0),
        "compile_seconds": progress.get("compile_seconds", 0.0),
        "weights": digests,
    }
    atomic_write_text(files.result, json.dumps({**result, "record": record}, indent=1))
    checkpoint.unlink(missing_ok=True)
    previous_path(checkpoint).unlink(missing_ok=True)
    return replay(result, files.folder, lambda *_: None)
