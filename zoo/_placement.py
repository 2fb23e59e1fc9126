"""Placement and input scaling: the device a run trains on, its precision there, and
its datasets uploaded to it as the model's scaled input channels (DeviceData).

Training, validation and prediction see the same numbers: ``model_inputs`` scales
images on the CPU exactly as ``to_device`` stores them on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zoo.config import ModelConfig, RunConfig
from zoo.data import Dataset
from zoo.errors import ConfigError

__all__ = [
    "CHUNK",
    "DEFAULT_MODEL",
    "STORAGE",
    "DeviceData",
    "amp_dtype",
    "check_data",
    "dataset_stats",
    "model_inputs",
    "pick_device",
    "precision",
    "scaling",
    "standardise",
    "to_device",
]

DEFAULT_MODEL = ModelConfig()  # one grey image, standardised per image
STORAGE = torch.float16  # standardised images on the device: half the memory
CHUNK = 64  # images uploaded and scaled at a time


@dataclass(frozen=True)
class DeviceData:
    """One dataset's splits as tensors on the training device."""

    train_images: torch.Tensor  # (N, C, H, W) the model's input channels, scaled
    train_masks: torch.Tensor  # (N, H, W) uint8 masks, or (N, K, H, W) float32 targets
    val_images: torch.Tensor
    val_masks: torch.Tensor
    stream: Any = None  # a streamed set's zoo._streaming.StreamFeed (no stored train split)


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


def amp_dtype(config: RunConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the run's precision on ``device``; None without AMP."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[precision(config, device)]
