"""Self-training: a stage with ``refine:`` goes on predicting an unlabeled set and training
on its own predictions (zoo._refine_config.RefineConfig).

Iteration 0 is the stage trained as usual (its identity is the stage's without
``refine``, so a plain run shares it). Iteration k predicts the unlabeled set's
training images with iteration k-1's model (its best weights), averaged over the 8
dihedral transforms (each inverted), turns that into targets and trains from that
model for ``refine.epochs`` epochs, as a stage of its own with its own identity
(the unlabeled data's content hash, the refinement settings, k and iteration k-1's
identity), checkpoints and resume. Only the unlabeled set's images are read, never
its labels. Each iteration reports its model's validation metrics and the agreement
of its predictions with iteration k-1's (foreground IoU, or PSNR for image targets);
its best weights are the artifact ``weights/iter_NN.safetensors``. A stage that starts
from ``init: run:ID@iter:K`` takes that run's iteration K as its own and runs K+1 on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from zoo._refine_config import RefineConfig
from zoo._refine_identity import (
    PSEUDO,
    continued_iteration,
    iteration_config,
    plain_config,
    refine_folders,
)
from zoo.checkpoint import load_weights
from zoo.config import RunConfig
from zoo.continuation import continue_stage
from zoo.losses import apply_head
from zoo.paths import ProjectPaths, StagePaths
from zoo.train import DIHEDRAL, DeviceData, Shard, StageResult, dihedral, train_stage, train_step

__all__ = [
    "PSEUDO",
    "RefineHooks",
    "iteration_weights",
    "predict",
    "refine_folders",
    "refine_stage",
    "refined",
]

IGNORED = -100  # hard targets: a pixel left out of the loss (below the confidence)


@dataclass(frozen=True)
class RefineHooks:
    """How a refining stage reports to its run."""

    # (epoch counted from the stage's start across its iterations, metrics, replayed)
    on_epoch: Callable[[int, dict[str, Any], bool], None]
    # (iteration, its metrics, its best weights file): once per iteration, replayed ones too
    report: Callable[[int, dict[str, float], Path], None]
    echo: Callable[[str], None] = print


def iteration_weights(folder: Path, iteration: int) -> Path:
    """The best weights of an iteration trained into ``folder``, linked under the name
    its run logs them by (``iter_NN.safetensors``)."""
    named, best = StagePaths(folder).iteration(iteration), StagePaths(folder).weights("best")
    if not named.exists() or os.stat(named).st_ino != os.stat(best).st_ino:
        named.unlink(missing_ok=True)
        os.link(best, named)
    return named


def _undo(y: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of dihedral transform ``k`` on the last two axes."""
    y = torch.flip(y, dims=(-1,)) if k >= 4 else y
    return torch.rot90(y, -(k % 4), dims=(-2, -1))


@torch.inference_mode()
def predict(model: torch.nn.Module, images: torch.Tensor, config: RunConfig) -> torch.Tensor:
    """The model's output for scaled ``images`` (N, C, H, W), averaged over the dihedral
    transforms (the 4 that keep a non-square shape), each inverted first: class
    probabilities (N, K, H, W) for segmentation, else the output of the model's head."""
    model.eval()
    square = images.shape[-1] == images.shape[-2]
    transforms = range(DIHEDRAL) if square else (0, 2, 4, 6)
    segmentation = config.model.task == "segmentation"
    parts = []
    for start in range(0, len(images), config.val_batch_size):
        x = images[start : start + config.val_batch_size].float()
        total = torch.zeros((), device=x.device)
        for k in transforms:
            y = model(dihedral(x, k)).float()
            y = y.softmax(dim=1) if segmentation else apply_head(y, config.model.head)
            total = total + _undo(y, k)
        parts.append(total / len(transforms))
    return torch.cat(parts)


def _model(config: RunConfig, weights: Path, device: torch.device) -> torch.nn.Module:
    """The model holding ``weights``, on ``device``; torch's random stream untouched."""
    from zoo.models import create_model

    with torch.random.fork_rng(devices=[]):
        model = create_model(config.model)
    model.load_state_dict(load_weights(weights))
    return model.to(device)


def _targets(prediction: torch.Tensor, refine: RefineConfig, task: str) -> torch.Tensor:
    """Training targets from a prediction: hard class masks (int64, IGNORED below the
    confidence) or the probabilities themselves (soft, and image targets)."""
    if task != "segmentation" or refine.targets == "soft":
        return prediction
    confidence, classes = prediction.max(dim=1)
    return torch.where(confidence >= refine.confidence, classes, IGNORED)


def _labelled(data: DeviceData, size: int | None, like: torch.Tensor) -> torch.Tensor:
    """A labelled set's training targets in the layout of the pseudo targets ``like``."""
    masks = data.train_masks[:size]
    if like.dtype == torch.int64:
        return masks.long()
    if masks.dim() == 3:  # class masks beside soft targets: one-hot probabilities
        return torch.nn.functional.one_hot(masks.long(), like.shape[1]).permute(0, 3, 1, 2).float()
    return masks.float()


def _training_set(
    config: RunConfig, index: int, data: dict[str, DeviceData], targets: torch.Tensor
) -> DeviceData:
    """The unlabeled images with ``targets`` (and with ``mix``, the stage's labelled
    training images after them) as one training set; it has no validation split."""
    stage = config.stages[index]
    refine: RefineConfig = stage.refinement
    images = data[refine.unlabeled].train_images[: len(targets)]
    if refine.mix:
        labelled = data[stage.train]
        images = torch.cat([images, labelled.train_images[: stage.size]])
        targets = torch.cat([targets, _labelled(labelled, stage.size, targets)])
    empty = images[:0]
    return DeviceData(images, targets, empty, targets[:0])


class _RefineShard(Shard):
    """Trains every batch whole, on inputs with the iteration's Gaussian noise (drawn from
    (seed, iteration, epoch, batch), so a resumed iteration draws the same) and, for
    segmentation, cross-entropy that takes soft targets and leaves IGNORED pixels out."""

    def __init__(self, model: torch.nn.Module, level: float, seeds: tuple[int, int], soft: bool):
        super().__init__(model)
        self.level, self.seeds, self.current = level, seeds, 0
        self.loss = _soft_or_masked if soft else None

    def epoch(self, epoch: int) -> None:
        self.current = epoch

    def step(self, step: Any, batches: Any, start: int, size: int) -> torch.Tensor:
        x, y = batches(start, size)
        if self.level > 0:
            generator = torch.Generator(device=x.device)
            generator.manual_seed(hash((*self.seeds, self.current, start)) & (2**63 - 1))
            x = x + self.level * torch.randn(x.shape, generator=generator, device=x.device)
        if self.loss is not None:
            step = replace(step, loss=self.loss)
        return train_step(step, x, y) * len(x)


def _shard(
    level: float, seeds: tuple[int, int], segmentation: bool, _: Any, __: int, model: Any, ___: Any
) -> Shard:
    """A zoo.train.ShardFactory of _RefineShard (config, index and optimizer unused)."""
    return _RefineShard(model, level, seeds, segmentation)


def _soft_or_masked(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against probabilities (float targets) or class masks with IGNORED
    pixels left out (the mean over the others; 0 when there are none)."""
    import torch.nn.functional as F

    if target.is_floating_point():
        return F.cross_entropy(output.float(), target)
    total = F.cross_entropy(output.float(), target, ignore_index=IGNORED, reduction="sum")
    return total / (target != IGNORED).sum().clamp_min(1)


def _agreement(now: torch.Tensor, before: torch.Tensor, task: str) -> dict[str, float]:
    """How far iteration k's predictions agree with iteration k-1's: the IoU of their
    foregrounds (1 when both are empty), or for image targets the mean PSNR of ``now``
    against ``before`` (each image's range as the data range, capped at 120 dB)."""
    if task == "segmentation":
        a, b = now.argmax(dim=1) > 0, before.argmax(dim=1) > 0
        union = (a | b).sum().item()
        return {"iter_agreement_iou": (a & b).sum().item() / union if union else 1.0}
    error = (now - before).pow(2).flatten(1).mean(dim=1)
    flat = before.flatten(1)
    span = (flat.amax(dim=1) - flat.amin(dim=1)).clamp_min(1e-8)
    psnr = 10 * torch.log10(span.pow(2) / error.clamp_min(1e-12 * span.pow(2)))
    return {"iter_agreement_psnr": psnr.mean().item()}


def _model_metrics(result: StageResult, selection: str) -> dict[str, float]:
    """The validation metrics of an iteration's model (its best epoch on ``selection``)."""
    from zoo.store import metric_key
    from zoo.train import headline

    epoch = result.best[selection]["epoch"]
    metrics = {}
    for name, values in result.history[epoch - 1]["val"].items():
        for key in ("loss", *headline(values)):
            metrics[metric_key(f"iter_val_{key}", name)] = values[key]
    return metrics


def _start(
    config: RunConfig,
    index: int,
    data: dict[str, DeviceData],
    paths: ProjectPaths,
    previous: StageResult | None,
    fetch_run: Callable[[str], Path],
    hooks: RefineHooks,
) -> tuple[int, StageResult, str]:
    """(its number, result, identity) of the iteration a refining stage starts from: the
    stage trained as usual (iteration 0), or the iteration K ``init: run:ID@iter:K`` names
    (its weights linked as the best of a folder of this stage's identity)."""
    stage = config.stages[index]
    continued = continued_iteration(stage.init)
    if continued is not None:
        identity = config.stage_digest(index)
        folder = paths.stage(identity)
        folder.mkdir(parents=True, exist_ok=True)
        best = StagePaths(folder).weights("best")
        best.unlink(missing_ok=True)
        os.link(fetch_run(stage.init), best)
        return (
            continued,
            StageResult(folder, [], {}, 0.0, {}, 0, 0, 0, 0.0),
            identity,
        )
    plain = plain_config(config, index)
    identity = plain.stage_digest(index)
    folder = paths.stage(identity)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(StagePaths(folder).lock)):
        continue_stage(plain, index, paths, hooks.echo)
        result = train_stage(plain, index, data, folder, previous, fetch_run, hooks.on_epoch)
    hooks.report(0, _model_metrics(result, stage.selection_set), iteration_weights(folder, 0))
    return 0, result, identity


def refine_stage(
    config: RunConfig,
    index: int,
    data: dict[str, DeviceData],
    paths: ProjectPaths,
    previous: StageResult | None,
    fetch_run: Callable[[str], Path],
    hooks: RefineHooks,
) -> StageResult:
    """Train refining stage ``index`` (see the module's docstring); finished iterations
    are replayed, an interrupted one resumes from its checkpoint. Returns the last
    iteration's result with every iteration's epochs as its history."""
    stage = config.stages[index]
    refine: RefineConfig = stage.refinement
    task = config.model.task
    first, result, parent = _start(config, index, data, paths, previous, fetch_run, hooks)
    images = data[refine.unlabeled].train_images[: refine.subset]
    device = images.device
    before = predict(
        _model(config, StagePaths(result.folder).weights("best"), device), images, config
    )
    history, seconds = list(result.history), result.seconds
    for k in range(first + 1, refine.iterations + 1):
        made = iteration_config(config, index, k, parent)
        parent = made.stage_digest(index)
        offset = stage.epochs + (k - 1) * refine.epochs

        def on_epoch(epoch: int, metrics: dict[str, Any], replayed: bool, at: int = offset) -> None:
            hooks.on_epoch(at + epoch, metrics, replayed)

        level = refine.noise.level if refine.noisy(k) else 0.0
        shard = functools.partial(_shard, level, (config.seed, k), task == "segmentation")
        pseudo = _training_set(config, index, data, _targets(before, refine, task))
        folder = paths.stage(parent)
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(StagePaths(folder).lock)):
            result = train_stage(
                made, index, {**data, PSEUDO: pseudo}, folder, result, fetch_run, on_epoch, shard
            )
        now = predict(_model(config, StagePaths(folder).weights("best"), device), images, config)
        metrics = {**_model_metrics(result, stage.selection_set), **_agreement(now, before, task)}
        hooks.report(k, metrics, iteration_weights(folder, k))
        history, seconds, before = history + result.history, seconds + result.seconds, now
    return replace(result, history=history, seconds=seconds)


def refined(
    config: RunConfig,
    index: int,
    data: dict[str, DeviceData],
    paths: ProjectPaths,
    results: list[StageResult],
    log: Any,
    calls: tuple[Callable[[str], Path], Callable[..., None], Callable[[str], None]],
) -> StageResult:
    """refine_stage for zoo.run: ``log`` is its run's metric log (``tracker``, ``run_id``),
    ``calls`` its (fetch_run, on_epoch, echo). Each iteration's metrics go to the store
    once, at step = the iteration, beside metric ``iteration``; its weights as artifact
    ``weights/iter_NN.safetensors``."""
    import time

    from zoo.artifacts import log_linked

    fetch_run, on_epoch, echo = calls
    tracker, run_id, name = log.tracker, log.run_id, config.stages[index].name
    logged = tracker.logged_steps(run_id, "iteration")

    def report(iteration: int, metrics: dict[str, float], weights: Path) -> None:
        if iteration not in logged:
            row = {"iteration": float(iteration), **metrics}
            tracker.log_batch(run_id, {}, [(iteration, row)], int(time.time() * 1000))
            logged.add(iteration)
            shown = ", ".join(
                f"{k} {v:.4f}" for k, v in metrics.items() if "iou" in k or "psnr" in k
            )
            echo(f"  {name} iteration {iteration}: {shown}")
        log_linked(tracker, run_id, weights, "weights")

    previous = results[-1] if results else None
    hooks = RefineHooks(on_epoch, report, echo)
    return refine_stage(config, index, data, paths, previous, fetch_run, hooks)
