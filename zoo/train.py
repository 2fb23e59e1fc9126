"""The training loop of one stage: epochs of steps over in-memory data on the device,
validation on every domain each epoch, a checkpoint after every epoch (and mid-epoch on
a stop), the stage's files once it is done.

Its parts live beside it: placement and input scaling (zoo._placement), dihedral
augmentation and batching (zoo.augment), optimizer and scheduler registries (zoo.optim),
where a stage starts and what it leaves (zoo._resume), best-epoch tracking (zoo._best).

Same config and seed on CPU give bit-identical metrics, interrupted or not: the
shuffle of each epoch is derived from (seed, stage, epoch), the learning rate
from the epoch, and everything else is restored from the checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo._best import epoch_metrics, headline, update_best
from zoo._placement import (
    DEFAULT_MODEL,
    STORAGE,
    DeviceData,
    check_data,
    dataset_stats,
    model_inputs,
    pick_device,
    precision,
    scaling,
    standardise,
    to_device,
)
from zoo._placement import amp_dtype as _amp_dtype  # zoo.distributed imports it by this name
from zoo._resume import (
    EpochCallback,
    StageResult,
    finish_stage,
    finished_result,
    git_commit,
    replay,
    resume,
    stage_record,
)
from zoo._signals import STOP, Preempted, Stopped, checkpointable
from zoo.augment import DIHEDRAL, Batcher, dihedral, epoch_order
from zoo.checkpoint import BackgroundWrites, atomic_write_text
from zoo.config import RunConfig, StageConfig
from zoo.losses import LOSSES, apply_head, loss_floor, loss_task, make_loss
from zoo.metrics import batch_totals, finish
from zoo.models import set_train_mode
from zoo.optim import make_optimizer, stage_lr
from zoo.paths import StagePaths
from zoo.telemetry import GpuMeter

# the loop's own names, and those of its parts that other modules import from here
__all__ = [
    "DEFAULT_MODEL",
    "DIHEDRAL",
    "SAMPLE_IMAGES",
    "STOP",
    "STORAGE",
    "Batcher",
    "DeviceData",
    "EpochCallback",
    "Preempted",
    "Shard",
    "ShardFactory",
    "StageResult",
    "Step",
    "check_data",
    "dataset_stats",
    "dihedral",
    "epoch_order",
    "evaluate",
    "git_commit",
    "gpu_index",
    "headline",
    "make_optimizer",
    "model_inputs",
    "pick_device",
    "precision",
    "scaling",
    "stage_lr",
    "stage_record",
    "standardise",
    "to_device",
    "train_stage",
    "train_step",
]


SAMPLE_IMAGES = 4  # validation images a run's last stage keeps predictions of (its figure)


def _clock(device: torch.device) -> float:
    """Wall time after the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass(frozen=True)
class Step:
    """What one optimisation step needs; the defaults are the paper's softmax head with
    cross-entropy, in float32, without a gradient scaler (needed for fp16 AMP only)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = LOSSES["cross_entropy"].compute
    head: str = "softmax"
    amp: torch.dtype | None = None
    scaler: torch.amp.GradScaler = field(
        default_factory=lambda: torch.amp.GradScaler(enabled=False)
    )


def train_step(step: Step, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One forward/backward/update; returns the batch loss as a device tensor (no sync)."""
    with torch.autocast(x.device.type, step.amp, enabled=step.amp is not None):
        loss = step.loss(apply_head(step.model(x), step.head), y)
    step.optimizer.zero_grad(set_to_none=True)
    step.scaler.scale(loss).backward()
    step.scaler.step(step.optimizer)
    step.scaler.update()
    return loss.detach()


class Shard:
    """How one process takes part in training a stage; this one trains every batch whole.
    zoo.distributed's subclass trains its share of each batch as one of several ranks."""

    def __init__(self, model: torch.nn.Module):
        self.network = model  # what the training steps call

    def epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` starts (after its learning rate and train mode are set)."""

    def step(self, step: Step, batches: Batcher, start: int, size: int) -> torch.Tensor:
        """Train on the batch of ``size`` images from ``start`` of the epoch's order;
        returns the summed loss of the images this process trained on (a device tensor)."""
        x, y = batches(start, size)
        return train_step(step, x, y) * len(x)

    def total(self, total: torch.Tensor) -> torch.Tensor:
        """The summed training loss of every process, given this one's."""
        return total


ShardFactory = Callable[[RunConfig, int, torch.nn.Module, torch.optim.Optimizer], Shard]


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    config: RunConfig,
    stage: StageConfig,
    amp: torch.dtype | None,
    keep: int = 0,
) -> dict[str, Any]:
    """Loss, IoU of the foreground classes and pixel accuracy over a validation split;
    with ``keep`` (segmentation), also the classes predicted for its first ``keep``
    images, under key ``predicted`` (a NumPy array: no metric)."""
    model.eval()
    compute, task = make_loss(stage.loss), loss_task(stage.loss)
    loss = torch.zeros((), device=images.device, dtype=torch.float64)
    sums: dict[str, torch.Tensor] = {}
    kept = []
    for start in range(0, len(images), config.val_batch_size):
        end = start + config.val_batch_size
        x = images[start:end].float()
        y = masks[start:end].long() if task == "segmentation" else masks[start:end]
        with torch.autocast(images.device.type, amp, enabled=amp is not None):
            output = apply_head(model(x), config.model.head)
        loss += compute(output, y).double() * len(x)
        for name, value in batch_totals(task, output.float(), y).items():
            sums[name] = sums[name] + value if name in sums else value
        if task == "segmentation" and start < keep:
            kept.append(output[: keep - start].argmax(dim=1).cpu())
    metrics = {"loss": (loss / len(images)).item(), **finish(task, sums, len(images))}
    return {**metrics, "predicted": torch.cat(kept).numpy()} if kept else metrics


def train_stage(
    config: RunConfig,
    index: int,
    data: dict[str, DeviceData],
    folder: Path,
    previous: StageResult | None,
    fetch_run: Callable[[str], Path],
    on_epoch: EpochCallback,
    shard: ShardFactory | None = None,
) -> StageResult:
    """Train stage ``index`` into ``folder``, resuming from its checkpoint if one exists.

    A finished stage (``result.json`` present) is not trained again: its saved
    history is replayed through ``on_epoch`` and returned. ``shard`` makes this
    process's part in training (default: all of it, zoo.train.Shard).
    """
    files = StagePaths(folder)
    finished = finished_result(files.result, config, index)
    if finished is not None:
        return replay(finished, folder, on_epoch)
    record = stage_record(config, index)
    atomic_write_text(files.record, json.dumps(record, indent=1))  # what is trained here
    device = data[config.stages[index].train].train_images.device
    model, optimizer, progress = resume(
        config, index, previous, fetch_run, device, files.checkpoint
    )
    for epoch, metrics in enumerate(progress["history"], start=1):
        on_epoch(epoch, metrics, True)
    training = _StageTraining(config, index, data, (model, optimizer), progress, shard)
    with GpuMeter(gpu_index(device), config.power_cap_w) as meter, BackgroundWrites() as writes:
        for epoch in range(progress["epoch"] + 1, config.stages[index].epochs + 1):
            on_epoch(epoch, training.epoch(epoch, files, record, writes), False)
    result = finish_stage(
        config, index, training.model, training.progress, files, record, meter.reading.metrics("")
    )
    return replace(result, predicted=training.best_predicted)


def gpu_index(device: torch.device) -> int | None:
    """The CUDA device index whose power GpuMeter measures and caps while training on
    ``device``; None off CUDA. (Tests replace it to meter a CPU run with a fake NVML.)"""
    return (device.index or 0) if device.type == "cuda" else None


class _StageTraining:
    """A stage's model, optimizer, step and data between its epochs, and its progress
    (what every checkpoint saves)."""

    def __init__(
        self,
        config: RunConfig,
        index: int,
        data: dict[str, DeviceData],
        state: tuple[torch.nn.Module, torch.optim.Optimizer],
        progress: dict[str, Any],
        shard: ShardFactory | None,
    ):
        stage = config.stages[index]
        self.config, self.index, self.stage, self.data = config, index, stage, data
        (self.model, self.optimizer), self.progress = state, progress
        self.source = data[stage.train]
        stored = len(self.source.train_images)
        available = self.source.stream.spec.train_count if self.source.stream else stored
        self.count = min(stage.size or available, available)
        self.device = self.source.train_images.device
        self.amp = _amp_dtype(config, self.device)
        self.floor = loss_floor(stage.loss, config.model.head, config.model.classes)
        self.part = shard(config, index, self.model, self.optimizer) if shard else Shard(self.model)
        network = torch.compile(self.part.network) if config.compile else self.part.network
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        # fp16 in one process resumes at its saved scale (DDP followers start theirs afresh,
        # so a run on several devices keeps every rank's scale equal instead)
        if scaler.is_enabled() and "scaler" in progress and config.devices == 1:
            scaler.load_state_dict(progress["scaler"])
        loss = make_loss(stage.loss)
        self.step = Step(network, self.optimizer, loss, config.model.head, self.amp, scaler)
        self.compiled = not config.compile  # the first step in this process compiles the model
        self.best_predicted: np.ndarray | None = None  # see StageResult.predicted

    def epoch(
        self, epoch: int, files: StagePaths, record: dict[str, Any], writes: BackgroundWrites
    ) -> dict[str, Any]:
        """Train and validate epoch ``epoch`` (the rest of it, when a checkpoint stopped
        in it); its files go to ``writes``; returns its metrics. Raises Preempted once STOP
        is set, Stopped once a signal came (zoo._signals), each after a mid-epoch checkpoint."""
        started = time.perf_counter()
        lr = stage_lr(self.stage, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        set_train_mode(self.model, self.stage.freeze)
        first, before = self.config.stream(self.index)  # a carried stage continues the shuffles
        augment, key = self.stage.augment == "dihedral", (self.config.seed, first, before + epoch)
        order = epoch_order(*key, self.count, augment)
        partial = self.progress.pop("partial", {"step": 0, "total": 0.0, "seconds": 0.0})
        started -= partial["seconds"]
        total = torch.tensor(partial["total"], device=self.device)
        batches: Any = Batcher(self.source, order)
        if self.source.stream is not None:  # streamed: samples in index order, made meanwhile
            order, batches = self.source.stream.epoch(key, self.count, augment, partial["step"])
        self.part.epoch(epoch)
        with checkpointable() as stopping:  # a SIGTERM waits for the step to end
            for start in range(partial["step"], len(order), self.stage.batch_size):
                loss, compiling = self._step(batches, start)
                total, started = total + loss, started + compiling
                if STOP.is_set() or stopping():  # preempted or stopped: checkpoint mid-epoch
                    self.progress["partial"] = {
                        "step": start + self.stage.batch_size,
                        "total": self.part.total(total).item(),
                        "seconds": time.perf_counter() - started,
                    }
                    self._checkpoint(files, record, writes)
                    if stopping():
                        raise Stopped(stopping())
                    raise Preempted(f"stopped in epoch {epoch} of {self.stage.name}; checkpointed")
        total = self.part.total(total).item() / len(order)
        metrics = self._validate(epoch, lr, total, len(order), time.perf_counter() - started)
        if self.source.stream is not None:  # its waits and producers' speed, logged and kept
            self.progress["history"][-1].update(batches.metrics())
            metrics.update(self.progress["history"][-1])
        if self.stage.selection_set in metrics.pop("bests"):
            writes.weights(self.model, files.weights("best"))
        if self.stage.keep_epochs:
            writes.weights(self.model, files.epoch(epoch))
        self._checkpoint(files, record, writes)
        return metrics

    def _checkpoint(self, files: StagePaths, record: dict[str, Any], writes: BackgroundWrites):
        """Checkpoint the stage; its progress carries fp16's gradient scaler (scale and
        growth count), so a resumed stage scales and skips steps as an unbroken one."""
        if self.step.scaler.is_enabled():
            self.progress["scaler"] = self.step.scaler.state_dict()
        writes.checkpoint(files.checkpoint, self.model, self.optimizer, self.progress, record)

    def _step(self, batches: Batcher, start: int) -> tuple[torch.Tensor, float]:
        """The summed loss of one batch, and the seconds spent compiling in it."""
        if self.compiled:
            return self.part.step(self.step, batches, start, self.stage.batch_size), 0.0
        began = _clock(self.device)
        loss = self.part.step(self.step, batches, start, self.stage.batch_size)
        compiling = _clock(self.device) - began
        self.progress["compile_seconds"] = self.progress.get("compile_seconds", 0) + compiling
        self.compiled = True
        return loss, compiling

    def _validate(
        self, epoch: int, lr: float, train_loss: float, images: int, trained_s: float
    ) -> dict[str, Any]:
        """The epoch's metrics after validation, recorded in the progress; under key
        ``bests`` the validation sets whose best this epoch is."""
        started = time.perf_counter()
        last = self.index == len(self.config.stages) - 1  # the run's figure shows its best
        validation = {
            n: evaluate(
                self.model,
                self.data[n].val_images,
                self.data[n].val_masks,
                self.config,
                self.stage,
                self.amp,
                SAMPLE_IMAGES if last and n == self.stage.train else 0,
            )
            for n in self.config.validation_sets
        }
        predicted = validation.get(self.stage.train, {}).pop("predicted", None)
        seconds = trained_s + time.perf_counter() - started
        metrics = epoch_metrics(train_loss, lr, seconds, images, validation, self.floor)
        progress = self.progress
        bests = update_best(
            progress["best"], epoch, validation, self.floor, self.stage.select_metric
        )
        if self.stage.selection_set in bests:  # the weights saved as best predicted these
            self.best_predicted = predicted
        progress.update(
            epoch=epoch,
            seconds=progress["seconds"] + seconds,
            images=progress.get("images", 0) + images,
        )
        progress["history"].append(metrics)
        return {**metrics, "bests": bests}
