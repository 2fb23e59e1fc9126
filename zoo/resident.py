"""Device-resident datasets a worker process keeps between its runs.

A worker that trains many runs from the same datasets uploads each once: the
device copies (zoo.train.DeviceData) stay in a per-process cache keyed by the
dataset's content hash, device and the model's input channels and scaling,
bounded by ``ZOO_DEVICE_CACHE_BYTES`` (default 4 GiB), least recently used
evicted first. The datasets of the run being set up are never evicted for each
other, so a run larger than the bound still gets all of its data. Training only
reads these tensors, so a cached copy is the same as a fresh upload.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from zoo.config import ModelConfig
from zoo.data import Dataset
from zoo.train import DEFAULT_MODEL, DeviceData, to_device

__all__ = ["cache_limit", "clear", "device_datasets"]

_CACHE: OrderedDict[tuple, DeviceData] = OrderedDict()  # (digest, device, input view)


def cache_limit() -> int:
    """Bytes of device copies a worker keeps: ``$ZOO_DEVICE_CACHE_BYTES`` or 4 GiB."""
    return int(os.environ.get("ZOO_DEVICE_CACHE_BYTES") or 4 << 30)


def _nbytes(data: DeviceData) -> int:
    tensors = (data.train_images, data.train_masks, data.val_images, data.val_masks)
    return sum(t.numel() * t.element_size() for t in tensors)


def device_datasets(
    datasets: dict[str, Dataset],
    device: torch.device,
    echo: Callable[[str], Any] = print,
    model: ModelConfig = DEFAULT_MODEL,
) -> dict[str, DeviceData]:
    """Name -> device copy of each dataset (the ``model``'s input channels under its input
    scaling), uploaded only when this process holds none."""
    view = (model.inputs, model.input_scaling, model.reference_channel)
    wanted = {name: (dataset.digest, str(device), *view) for name, dataset in datasets.items()}
    data = {}
    for name, dataset in datasets.items():
        key = wanted[name]
        if key in _CACHE:
            _CACHE.move_to_end(key)
            echo(f"dataset {name}: on {device} since an earlier run")
        else:
            _CACHE[key] = to_device(dataset, device, model)
            echo(f"dataset {name}: uploaded to {device} ({_nbytes(_CACHE[key]) / 1e6:.1f} MB)")
        data[name] = _CACHE[key]
    _evict(set(wanted.values()))
    return data


def _evict(keep: set[tuple]) -> None:
    """Drop the least recently used copies not in ``keep`` until the cache fits its bound."""
    total = sum(_nbytes(d) for d in _CACHE.values())
    for key in list(_CACHE):
        if total <= cache_limit():
            break
        if key not in keep:
            total -= _nbytes(_CACHE.pop(key))


def clear() -> None:
    """Forget every device copy (they are freed once no run holds them)."""
    _CACHE.clear()
