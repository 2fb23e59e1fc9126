"""The training side of a streamed dataset (zoo.data._stream): each epoch's samples, in
index order, batched on the device as stored data is (zoo.train.to_device, Batcher).

Each epoch reports ``data_wait_fraction`` (time the step loop waited for samples /
the epoch's time) and ``producer_images_per_s``; when producers held training up, the
run log says so once, with the producer count that would have sufficed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from zoo.config import ModelConfig, RunConfig
from zoo.data import Dataset
from zoo.data._stream import Producers, Ring, StreamedSpec
from zoo.train import DIHEDRAL, Batcher, DeviceData, to_device

__all__ = ["StreamFeed", "log_lineage", "streams"]

log = logging.getLogger(__name__)
SLOW = 0.1  # a wait fraction above this is reported


class StreamFeed:
    """Makes the batches of a streamed training set's epochs (one ring, reused)."""

    def __init__(self, name: str, spec: StreamedSpec, model: ModelConfig, device: torch.device):
        self.name, self.spec, self.model, self.device = name, spec, model, device
        self.ring = Ring(spec.generator, spec.stream)
        self.warned = False
        self.current: _EpochBatches | None = None

    def close(self) -> None:
        """End the producers still making samples (a stopped epoch's)."""
        if self.current is not None:
            self.current.producers.close()

    def epoch(
        self, key: tuple[int, ...], count: int, augment: bool, start: int
    ) -> tuple[np.ndarray, _EpochBatches]:
        """(the epoch's (sample, transform) order, its batches from sample ``start``)."""
        transforms = np.random.default_rng([*key, 8]).integers(0, DIHEDRAL if augment else 1, count)
        order = np.stack([np.arange(count), transforms], axis=1)
        self.close()
        self.current = _EpochBatches(self, key, order, start)
        return order, self.current


class _EpochBatches:
    """Batches ``(start, size)`` of one epoch's order, taken from the producers' ring."""

    def __init__(self, feed: StreamFeed, key: tuple[int, ...], order: np.ndarray, start: int):
        self.feed, self.order, self.start = feed, order, start
        self.producers = Producers(feed.spec, feed.ring, key, start, len(order))
        self.waited, self.began = 0.0, time.perf_counter()

    def __call__(self, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        feed, rows = self.feed, range(start, min(start + size, len(self.order)))
        taken = [feed.ring.take(i, self.producers.alive) for i in rows]
        self.waited += sum(w for *_, w in taken)
        images = np.stack([x for x, _, _ in taken])
        targets = np.stack([y for _, y, _ in taken])
        if feed.spec.target == "mask":
            targets = targets.astype(np.uint8)
        batch = Dataset(feed.name, images, targets, len(rows), None, feed.name)
        data = to_device(batch, feed.device, feed.model)
        local = np.stack([np.arange(len(rows)), self.order[rows.start : rows.stop, 1]], axis=1)
        return Batcher(data, local)(0, len(rows))

    def metrics(self) -> dict[str, float]:
        """This epoch's ``data_wait_fraction`` and ``producer_images_per_s``; warns once
        per run when producers were too slow, naming the count that would suffice."""
        seconds = max(time.perf_counter() - self.began, 1e-9)
        ring, settings = self.feed.ring, self.feed.spec.stream
        made, busy = int(ring.made.sum()), float(ring.busy.sum())
        per_producer = made / busy if busy > 0 else math.inf
        fraction = self.waited / seconds
        if fraction > SLOW and not self.feed.warned and per_producer < math.inf:
            wanted = (len(self.order) - self.start) / max(seconds - self.waited, 1e-9)
            log.warning(
                "zoo: stream %s: training waited %.0f%% of the epoch for samples; "
                "producers: %d would suffice (now %d)",
                self.feed.name,
                100 * fraction,
                max(settings.producers + 1, math.ceil(wanted / per_producer)),
                settings.producers,
            )
            self.feed.warned = True
        return {
            "data_wait_fraction": fraction,
            "producer_images_per_s": made / seconds,
        }


@contextmanager
def streams(data: dict[str, DeviceData], config: RunConfig) -> Iterator[dict[str, DeviceData]]:
    """``data`` with a StreamFeed on the device copy of each streamed dataset; on leaving
    (however: an error, a stop) every producer still running is ended."""
    feeds = {
        name: StreamFeed(name, spec, config.model, data[name].train_images.device)
        for name, spec in config.sources.items()
        if isinstance(spec, StreamedSpec) and name in data
    }
    try:
        yield {n: replace(d, stream=feeds[n]) if n in feeds else d for n, d in data.items()}
    finally:
        for feed in feeds.values():
            feed.close()


def log_lineage(config: RunConfig, tracker: Any, run_id: str) -> None:
    """Record each streamed training set as an MLflow dataset input of the run: the
    generator's version and parameters and, per stage, the epochs' keys and samples."""
    from mlflow.entities import Dataset as Entity
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for name, spec in config.sources.items():
        if not isinstance(spec, StreamedSpec):
            continue
        seen = []
        for i, stage in enumerate(config.stages):
            if stage.train == name:
                first, before = config.stream(i)
                count = min(stage.size or spec.train_count, spec.train_count)
                keys = [config.seed, first, before + 1, before + stage.epochs]
                seen.append({"stage": stage.name, **spec.lineage(tuple(keys), 0, count)})
        source = json.dumps({"generator": seen[0]["generator"], "parameters": spec.resolved()})
        profile = json.dumps([{k: v for k, v in s.items() if k != "parameters"} for s in seen])
        entity = Entity(name, spec.digest(), "zoo-stream", source, None, profile)
        inputs.append(DatasetInput(entity, [InputTag("mlflow.data.context", "training")]))
    if inputs:
        tracker.client.log_inputs(run_id, inputs)
