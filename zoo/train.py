"""Training of one stage: in-memory data on the device, dihedral augmentation, validation
on every domain each epoch, a checkpoint after every epoch, resume from the last one.

Same config and seed on CPU give bit-identical metrics, interrupted or not: the
shuffle of each epoch is derived from (seed, stage, epoch), the learning rate
from the epoch, and everything else is restored from the checkpoint.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo._signals import Stopped, checkpointable
from zoo.checkpoint import (
    BackgroundWrites,
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
from zoo.config import STAGE_VERSION, ModelConfig, RunConfig, StageConfig, init_file
from zoo.data import Dataset
from zoo.errors import ConfigError, DataError
from zoo.losses import LOSSES, apply_head, loss_floor, loss_task, make_loss
from zoo.metrics import HEADLINE, batch_totals, better, finish
from zoo.models import create_model, freeze, meta_model, parameter_counts, set_train_mode
from zoo.paths import StagePaths
from zoo.telemetry import GpuMeter

__all__ = [
    "STOP",
    "Batcher",
    "DeviceData",
    "Preempted",
    "Shard",
    "ShardFactory",
    "StageResult",
    "Step",
    "check_data",
    "dataset_stats",
    "dihedral",
    "epoch_order",
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

log = logging.getLogger(__name__)

DIHEDRAL = 8  # the 4 rotations, each with and without a flip
STOP = threading.Event()  # set (e.g. by a SIGUSR1 handler) to checkpoint and stop after a step


class Preempted(Exception):
    """Training stopped on request after checkpointing; running it again resumes."""


EpochCallback = Callable[[int, dict[str, float], bool], None]  # (epoch, metrics, replayed)
DEFAULT_MODEL = ModelConfig()  # one grey image, standardised per image


STORAGE = torch.float16  # standardised images on the device: half the memory
CHUNK = 64  # images uploaded and scaled at a time
SAMPLE_IMAGES = 4  # validation images a run's last stage keeps predictions of (its figure)


@dataclass(frozen=True)
class DeviceData:
    """One dataset's splits as tensors on the training device."""

    train_images: torch.Tensor  # (N, C, H, W) the model's input channels, scaled
    train_masks: torch.Tensor  # (N, H, W) uint8 masks, or (N, K, H, W) float32 targets
    val_images: torch.Tensor
    val_masks: torch.Tensor
    stream: Any = None  # a streamed set's zoo._streaming.StreamFeed (no stored train split)


@dataclass(frozen=True)
class StageResult:
    folder: Path  # holds best.safetensors, final.safetensors, result.json
    history: list[dict[str, float]]  # metrics of each epoch, in order
    best: dict[str, dict[str, float]]  # validation set -> best adjusted loss, its epoch, IoU
    seconds: float
    telemetry: dict[str, float]
    trainable: int
    total: int  # parameters of the model
    images: int  # training images processed (augmented copies counted)
    compile_seconds: float  # torch.compile's first steps, left out of the epoch times
    # the classes the best weights predicted for the first SAMPLE_IMAGES validation images
    # of the training set (segmentation), when this process trained the best epoch
    predicted: np.ndarray | None = None


def _clock(device: torch.device) -> float:
    """Wall time after the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def pick_device(config: RunConfig) -> torch.device:
    """The device to train on (rank 0's with ``devices`` > 1); a CUDA device this machine
    lacks, or fewer GPUs than ``devices``, is a ConfigError."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if config.device == "auto" else config.device)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if config.devices > max(count, 1):
            raise ConfigError(
                f"config.devices: {config.devices} is not available here ({count} CUDA "
                f"devices); expected at most {count} with device {config.device!r}, or "
                "device: cpu"
            )
        if (device.index or 0) >= count:
            raise ConfigError(
                f"config.device: {config.device!r} is not available here "
                f"({count} CUDA devices); expected auto or cpu"
                + (f" or cuda:0..cuda:{count - 1}" if count else "")
            )
    return device


def standardise(images: torch.Tensor) -> torch.Tensor:
    """Each image (the last two axes) shifted and scaled to mean 0 and std 1, in float32."""
    x = images.float()
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True, correction=0)
    return (x - mean) / std.clamp_min(1e-8)


def scaling(
    x: torch.Tensor, method: str | float, stats: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) of input batch ``x`` (B, C, H, W) under ``method``, each broadcastable
    to it: the scaled input is (x - shift) / scale. per_image: each channel of each image;
    per_dataset: ``stats`` (channel means and stds); none: (0, 1); a factor f: (0, 1/f)."""
    x = x.float()
    if method == "per_image":
        mean = x.mean(dim=(-2, -1), keepdim=True)
        return mean, x.std(dim=(-2, -1), keepdim=True, correction=0).clamp_min(1e-8)
    if method == "per_dataset":
        assert stats is not None
        return stats[0].view(1, -1, 1, 1), stats[1].view(1, -1, 1, 1)
    factor = 1.0 if method == "none" else float(method)
    return torch.zeros((), device=x.device), torch.full((), 1 / factor, device=x.device)


def dataset_stats(
    dataset: Dataset, model: ModelConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (float64 sums, clamped at 1e-8) of each of the model's input channels
    over the dataset's training split: ``per_dataset`` scaling."""
    count = dataset.train_count
    total = torch.zeros(len(model.inputs), dtype=torch.float64, device=device)
    squares = torch.zeros_like(total)
    for start in range(0, count, CHUNK):
        rows = slice(start, min(start + CHUNK, count))
        x = torch.from_numpy(dataset.inputs(model.inputs, rows)).to(device).double()
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    pixels = max(count, 1) * dataset.images.shape[-1] * dataset.images.shape[-2]
    mean = total / pixels
    std = (squares / pixels - mean * mean).clamp_min(0).sqrt().clamp_min(1e-8)
    return mean.float(), std.float()


def to_device(
    dataset: Dataset, device: torch.device, model: ModelConfig = DEFAULT_MODEL
) -> DeviceData:
    """Upload ``dataset`` in chunks: the model's input channels under its input scaling
    (standardised ones stored in STORAGE), image targets under the scaling of the reference
    input channel, so a residual output adds that channel in the targets' units."""
    method = model.input_scaling
    stats = dataset_stats(dataset, model, device) if method == "per_dataset" else None
    storage = _storage(model)
    reference = model.reference_channel

    def upload(rows: range) -> tuple[torch.Tensor, torch.Tensor]:
        masks = dataset.masks[rows.start : rows.stop]
        images = torch.empty(
            (len(rows), len(model.inputs), *dataset.images.shape[-2:]), dtype=storage, device=device
        )
        targets = None
        if masks.dtype != np.uint8:
            shape = (len(rows), *(masks.shape[1:] if masks.ndim == 4 else (1, *masks.shape[1:])))
            targets = torch.empty(shape, dtype=torch.float32, device=device)
        for start in range(rows.start, rows.stop, CHUNK):
            part = slice(start, min(start + CHUNK, rows.stop))
            x = torch.from_numpy(dataset.inputs(model.inputs, part)).to(device).float()
            shift, scale = scaling(x, method, stats)
            at = slice(part.start - rows.start, part.stop - rows.start)
            images[at] = (x - shift) / scale
            if targets is not None:
                y = torch.from_numpy(np.ascontiguousarray(dataset.masks[part])).to(device)
                y = y.float()[:, None] if y.ndim == 3 else y.float()
                shift, scale = (v.expand(len(x), len(model.inputs), 1, 1) for v in (shift, scale))
                targets[at] = (y - shift[:, reference, None]) / scale[:, reference, None]
        if targets is None:
            return images, torch.from_numpy(np.ascontiguousarray(masks)).to(device)
        return images, targets

    count = len(dataset.images)
    train_x, train_y = upload(range(0, dataset.train_count))
    val_x, val_y = upload(range(dataset.train_count, count))
    return DeviceData(train_x, train_y, val_x, val_y)


def model_inputs(dataset: Dataset, model: ModelConfig, rows: slice) -> torch.Tensor:
    """Images ``rows`` of ``dataset`` as the model's float32 input on the CPU: its input
    channels under its input scaling, stored as training stores them (to_device), so
    the model predicts on them what it predicted in validation."""
    stats = None
    if model.input_scaling == "per_dataset":
        stats = dataset_stats(dataset, model, torch.device("cpu"))
    x = torch.from_numpy(dataset.inputs(model.inputs, rows)).float()
    shift, scale = scaling(x, model.input_scaling, stats)
    return ((x - shift) / scale).to(_storage(model)).float()


def _storage(model: ModelConfig) -> torch.dtype:
    """The dtype ``model``'s scaled inputs are kept in on the device."""
    return STORAGE if model.input_scaling in ("per_image", "per_dataset") else torch.float32


def check_data(config: RunConfig, datasets: dict[str, Dataset]) -> None:
    """Refuse datasets whose targets do not have ``model.classes`` channels (regression)
    or lack the model's input channels, in one line naming the field."""
    model = config.model
    for name, dataset in datasets.items():
        missing = [c for c in model.inputs if c not in dataset.channels]
        if missing:
            raise ConfigError(
                f"config.model.inputs: {missing[0]!r} is not allowed; expected channels of "
                f"dataset {name!r} ({', '.join(dataset.channels)})"
            )
        if dataset.masks.dtype == np.uint8:
            continue
        channels = dataset.masks.shape[1] if dataset.masks.ndim == 4 else 1
        if model.classes != channels:
            raise ConfigError(
                f"config.model.classes: {model.classes} is not allowed; expected {channels} "
                f"(the target channels of dataset {name!r})"
            )


def precision(config: RunConfig, device: torch.device) -> str:
    """The precision a run trains in on ``device``: its ``amp``, with ``auto`` decided
    here (bf16 on CUDA, off elsewhere), since ``auto`` is one identity on every device."""
    if config.amp != "auto":
        return config.amp
    return "bf16" if device.type == "cuda" else "off"


def _amp_dtype(config: RunConfig, device: torch.device) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[precision(config, device)]


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` (0-7) of the dihedral group on the last two axes."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def epoch_order(seed: int, stage: int, epoch: int, count: int, augment: bool) -> np.ndarray:
    """(image index, transform) pairs of one epoch, shuffled reproducibly."""
    transforms = DIHEDRAL if augment else 1
    rng = np.random.default_rng([seed, stage, epoch])
    order = rng.permutation(count * transforms)
    return np.stack([order % count, order // count], axis=1)


class Batcher:
    """Batches of one epoch gathered on the device: one upload of the epoch's order,
    then per batch one gather of the images and one of the pixels (the dihedral
    transforms as precomputed pixel permutations); no host synchronisation."""

    def __init__(self, data: DeviceData, order: np.ndarray):
        self.images, self.masks = data.train_images, data.train_masks
        device, (height, width) = self.images.device, self.images.shape[-2:]
        self.order = torch.from_numpy(order).to(device)
        pixels = torch.arange(height * width, device=device).view(height, width)
        transforms = range(DIHEDRAL) if height == width else range(1)
        self.permutations = torch.stack([dihedral(pixels, k).flatten() for k in transforms])

    def __call__(self, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled float32 images (B, C, H, W) and masks (B, H, W) or targets (B, K, H, W) of
        a slice of the order, each under its transform."""
        index, transform = self.order[start : start + size].unbind(1)
        pixels = self.permutations[transform]
        images, masks = self.images[index], self.masks[index]
        x = images.flatten(-2).gather(-1, _along(pixels, images)).view_as(images)
        y = masks.flatten(-2).gather(-1, _along(pixels, masks)).view_as(masks)
        return x.float(), y


def _along(pixels: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Pixel permutations (B, H·W) shaped to gather from ``batch`` flattened: repeated over
    its channels when it has some."""
    if batch.dim() == 3:
        return pixels
    return pixels[:, None].expand(-1, batch.shape[1], -1)


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


def make_optimizer(stage: StageConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The stage's optimizer over the trainable parameters (fused Adam on CUDA)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    on_cuda = bool(trainable) and trainable[0].is_cuda
    extra = {"momentum": 0.9} if stage.optimizer == "sgd" else {"fused": True} if on_cuda else {}
    return kinds[stage.optimizer](trainable, lr=stage.lr, weight_decay=stage.weight_decay, **extra)


def stage_lr(stage: StageConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based) of ``stage`` under its scheduler."""
    if stage.scheduler == "exponential":
        lr = stage.lr * stage.lr_decay ** (epoch - 1)
    elif stage.scheduler == "step":
        lr = stage.lr * stage.gamma ** ((epoch - 1) // stage.step_size)
    elif stage.scheduler == "milestones":
        lr = stage.lr * stage.gamma ** sum(m < epoch for m in stage.milestones)
    elif stage.scheduler == "cosine":
        lr = stage.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / stage.epochs))
    else:
        lr = stage.lr
    if epoch <= stage.warmup_epochs:
        lr *= epoch / (stage.warmup_epochs + 1)
    return lr


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
    path = init_file(init) if kind == "file" else fetch_run(init)
    try:
        return load_weights(path)
    except Exception as error:  # not a weights file: name it, one line
        raise DataError(f"{path}: unreadable weights ({type(error).__name__}: {error})") from None


def headline(values: dict[str, float]) -> tuple[str, ...]:
    """The headline metrics among a validation set's ``values`` (its task's)."""
    return HEADLINE["segmentation" if "iou" in values else "regression"]


def _update_best(
    best: dict[str, dict[str, float]],
    epoch: int,
    metrics: dict[str, dict[str, float]],
    floor: float,
    select: str = "loss_adj",
) -> set[str]:
    """Record new bests per validation set, judged by metric ``select`` in its direction;
    returns the sets that improved."""
    improved = set()
    for name, values in metrics.items():
        scored = {**values, "loss_adj": values["loss"] - floor}
        if name not in best or better(select, scored[select], best[name][select]):
            best[name] = {
                "loss": values["loss"],
                "loss_adj": scored["loss_adj"],
                "epoch": epoch,
                **{k: values[k] for k in (*headline(values), select) if k in values},
            }
            improved.add(name)
    return improved


def _epoch_metrics(
    train_loss: float,
    lr: float,
    seconds: float,
    images: int,
    validation: dict[str, dict[str, float]],
    floor: float,
) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "train_loss": train_loss,
        "lr": lr,
        "epoch_seconds": seconds,
        "images_per_s": images / seconds,
    }
    metrics["val"] = {n: {**v, "loss_adj": v["loss"] - floor} for n, v in validation.items()}
    return metrics


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
    finished = _finished(files.result, config, index)
    if finished is not None:
        return _replay(finished, folder, on_epoch)
    record = stage_record(config, index)
    atomic_write_text(files.record, json.dumps(record, indent=1))  # what is trained here
    device = data[config.stages[index].train].train_images.device
    model, optimizer, progress = _resume(
        config, index, previous, fetch_run, device, files.checkpoint
    )
    for epoch, metrics in enumerate(progress["history"], start=1):
        on_epoch(epoch, metrics, True)
    training = _StageTraining(config, index, data, (model, optimizer), progress, shard)
    with GpuMeter(gpu_index(device), config.power_cap_w) as meter, BackgroundWrites() as writes:
        for epoch in range(progress["epoch"] + 1, config.stages[index].epochs + 1):
            on_epoch(epoch, training.epoch(epoch, files, record, writes), False)
    return _finish_stage(training, files, record, meter.reading.metrics(""))


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
        metrics = _epoch_metrics(train_loss, lr, seconds, images, validation, self.floor)
        progress = self.progress
        bests = _update_best(
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


def _finish_stage(
    training: _StageTraining, files: StagePaths, record: dict[str, Any], telemetry: dict[str, float]
) -> StageResult:
    """Once every epoch's files are written: the final weights, the carried state when
    kept, then ``result.json`` (the stage is finished); returns the stage's result."""
    config, index, stage = training.config, training.index, training.stage
    model, progress, checkpoint = training.model, training.progress, files.checkpoint
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
    finished = _replay(result, files.folder, lambda *_: None)
    return replace(finished, predicted=training.best_predicted)


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
    from zoo import __version__

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


def _resume(
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


def _finished(done: Path, config: RunConfig, index: int) -> dict[str, Any] | None:
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


def _replay(result: dict[str, Any], folder: Path, on_epoch: EpochCallback) -> StageResult:
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
