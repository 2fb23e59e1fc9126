"""The training side of a streamed dataset (zoo.data._stream): each epoch's samples, in
index order, batched on the device as stored data is (zoo.train.to_device, Batcher).

A mixture with streamed parts (zoo.data._stream.MixedStream) is fed the same way: its
stored parts' samples are taken from their device copies, its streamed ones from the ring.

A feed's producers start once, when the run enters ``streams``, and make the run's
epochs on the set one after the other: each epoch's first samples are made while the
one before ends (its last steps, validation, checkpoint), and no epoch forks the
training process. An epoch they do not make next (a resumed one) starts them again.

Each epoch reports ``data_wait_fraction`` (time the step loop waited for samples /
the epoch's time, from the epoch's start: a wait for producers to start counts) and
``producer_images_per_s``; when producers held training up beyond their start-up, the
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
from zoo.data._stream import MixedStream, Producers, Ring, StreamedSpec, mix_plan, mixed_stream
from zoo.train import DIHEDRAL, Batcher, DeviceData, to_device

__all__ = ["StreamFeed", "log_lineage", "streams"]

log = logging.getLogger(__name__)
SLOW = 0.1  # a wait fraction above this is reported


Epoch = tuple[tuple[int, ...], int]  # an epoch's key and its sample count


class StreamFeed:
    """Makes the batches of a streamed training set's epochs from one ring and one set of
    producers, started once for the epochs of ``schedule`` (the run's epochs on this set,
    in order; None: each epoch followed by the next of its stream, of the same count).
    They make each epoch's samples while the one before ends; an epoch they do not make
    next (a resumed one, one off the schedule) starts them again."""

    def __init__(
        self,
        name: str,
        spec: StreamedSpec,
        model: ModelConfig,
        device: torch.device,
        schedule: list[Epoch] | None = None,
    ):
        self.name, self.spec, self.model, self.device = name, spec, model, device
        self.ring = Ring(spec, spec.stream)
        self.schedule, self.warned = schedule, False
        self.producers: Producers | None = None
        self.next: tuple[Epoch | None, int] | None = None  # producers' next epoch, its 1st number
        self.gather: Batcher | None = None  # see transformed

    def close(self) -> None:
        """End the producers still making samples."""
        if self.producers is not None:
            self.producers.close()
        self.producers, self.next = None, None

    def start(self, epoch: Epoch, first: int) -> None:
        """(Re)start the producers at ring sample ``first`` of ``epoch``."""
        self.close()
        self.producers = Producers(self.spec, self.ring, self.plan(epoch), first)
        self.next = (epoch, 0)

    def plan(self, epoch: Epoch | None) -> Iterator[Epoch]:
        """``epoch`` and the epochs that follow it."""
        while epoch is not None:
            yield epoch
            epoch = self.following(epoch)

    def following(self, epoch: Epoch) -> Epoch | None:
        """The epoch after ``epoch``; None when the schedule ends there or lacks it."""
        key, count = epoch
        if self.schedule is None:
            return (*key[:-1], key[-1] + 1), count
        at = self.schedule.index(epoch) + 1 if epoch in self.schedule else len(self.schedule)
        return self.schedule[at] if at < len(self.schedule) else None

    def epoch(
        self, key: tuple[int, ...], count: int, augment: bool, start: int
    ) -> tuple[np.ndarray, _EpochBatches]:
        """(the epoch's (sample, transform) order, its batches from sample ``start``); its
        clock starts here, so waiting for producers to start counts as waiting."""
        began = time.perf_counter()
        transforms = np.random.default_rng([*key, 8]).integers(0, DIHEDRAL if augment else 1, count)
        order = np.stack([np.arange(count), transforms], axis=1)
        batches = self.batches(key, order, start)
        if batches.first or self.next != ((key, count), int(self.ring.taken[0])):
            self.start((key, count), batches.first)
        assert self.next is not None and self.producers is not None
        batches.begin(self.next[1], began)
        self.next = (self.following((key, count)), self.next[1] + batches.made)
        return order, batches

    def batches(self, key: tuple[int, ...], order: np.ndarray, start: int) -> _EpochBatches:
        return _EpochBatches(self, key, order, start)

    def transformed(
        self, data: DeviceData, transforms: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``data`` under its dihedral ``transforms``, gathered as a Batcher does
        (one Batcher per feed: its pixel permutations are made once)."""
        local = np.stack([np.arange(len(transforms)), transforms], axis=1)
        if self.gather is None:
            self.gather = Batcher(data, local)
        else:
            self.gather.images, self.gather.masks = data.train_images, data.train_masks
            self.gather.order = torch.from_numpy(local).to(data.train_images.device)
        return self.gather(0, len(transforms))


class MixFeed(StreamFeed):
    """A StreamFeed of a mixture with streamed parts; ``stored`` holds the device copies
    of its stored parts (by name)."""

    def __init__(
        self,
        name: str,
        spec: MixedStream,
        model: ModelConfig,
        device: torch.device,
        stored: dict[str, DeviceData],
        schedule: list[Epoch] | None = None,
    ):
        super().__init__(name, spec, model, device, schedule)  # type: ignore[arg-type]
        self.stored = [stored.get(n) for n in spec.names]  # None: a streamed part

    def batches(self, key: tuple[int, ...], order: np.ndarray, start: int) -> _EpochBatches:
        return _MixedBatches(self, key, order, start)


class _EpochBatches:
    """Batches ``(start, size)`` of one epoch's order, taken from the producers' ring
    (``ring[i]``: the epoch's ring index of its sample ``i``; ring index ``first``, the
    first this epoch takes, is the producers' sample ``number``)."""

    def __init__(self, feed: StreamFeed, key: tuple[int, ...], order: np.ndarray, start: int):
        self.feed, self.order, self.start = feed, order, start
        self.ring = self.ring_indices(key)[: len(order)]
        first, stop = (int(np.count_nonzero(self.ring[:at] >= 0)) for at in (start, len(order)))
        self.first, self.made = first, stop - first  # samples the producers make this epoch

    def begin(self, number: int, began: float) -> None:
        """Take ring index ``first`` as the producers' sample ``number``; the epoch's clock
        started at ``began``."""
        self.number, self.began, self.waited = number, began, 0.0
        self.startup = 0.0 if number else math.nan  # the first batch's wait, when they start
        self.made_before = int(self.feed.ring.made.sum())

    def ring_indices(self, key: tuple[int, ...]) -> np.ndarray:
        """The ring's index of each sample of epoch ``key`` (-1: not in the ring)."""
        return np.arange(len(self.order))

    def __call__(self, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(start, min(start + size, len(self.order)))
        return self.feed.transformed(self.taken(self.ring[rows]), self.order[rows, 1])

    def taken(self, indices: np.ndarray) -> DeviceData:
        """Ring samples ``indices`` (of this epoch) on the device, scaled as stored data is."""
        feed, alive = self.feed, self.feed.producers.alive  # type: ignore[union-attr]
        size = feed.spec.image_size
        images = np.empty((len(indices), size, size), np.float32)
        targets = np.empty_like(images)
        for k, n in enumerate(indices - self.first + self.number):
            self.waited += feed.ring.take(int(n), alive, images[k], targets[k])
        if math.isnan(self.startup):  # the first batch after their start
            self.startup = self.waited
        if feed.spec.target == "mask":
            targets = targets.astype(np.uint8)
        batch = Dataset(feed.name, images, targets, len(indices), None, feed.name)
        return to_device(batch, feed.device, feed.model)

    def metrics(self) -> dict[str, float]:
        """This epoch's ``data_wait_fraction`` and ``producer_images_per_s``; warns once
        per run when producers were too slow, naming the count that would suffice (the
        wait for their start-up left out: more producers would not shorten it)."""
        seconds = max(time.perf_counter() - self.began, 1e-9)
        ring, settings = self.feed.ring, self.feed.spec.stream
        made, busy = int(ring.made.sum()), float(ring.busy.sum())
        per_producer = made / busy if busy > 0 else math.inf
        fraction = self.waited / seconds
        slow = (self.waited - np.nan_to_num(self.startup)) / seconds
        if slow > SLOW and not self.feed.warned and per_producer < math.inf:
            wanted = self.made / max(seconds - self.waited, 1e-9)
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
            "producer_images_per_s": (made - self.made_before) / seconds,
        }


class _MixedBatches(_EpochBatches):
    """A mixture's batches: its streamed samples from the ring, its stored parts' from
    their device copies, in the order zoo.data._stream.mix_plan draws."""

    def ring_indices(self, key: tuple[int, ...]) -> np.ndarray:
        spec = self.feed.spec
        self.part, self.rank, ring, _ = mix_plan(spec.counts, spec.streamed, key)
        return ring

    def __call__(self, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(start, min(start + size, len(self.order)))
        ring, part, rank = self.ring[rows], self.part[rows], self.rank[rows]
        carried = np.flatnonzero(ring >= 0)
        pieces = []
        if len(carried):
            made = self.taken(ring[carried])
            pieces.append((carried, made.train_images, made.train_masks))
        for c, data in enumerate(self.feed.stored):  # type: ignore[attr-defined]
            at = np.flatnonzero((part == c) & (ring < 0))
            if data is not None and len(at):
                index = torch.from_numpy(rank[at]).to(data.train_images.device)
                pieces.append((at, data.train_images[index], data.train_masks[index]))
        count, (_, x, y) = rows.stop - rows.start, pieces[0]
        images, masks = x.new_empty((count, *x.shape[1:])), y.new_empty((count, *y.shape[1:]))
        for at, x, y in pieces:
            where = torch.from_numpy(at).to(images.device)
            images[where], masks[where] = x, y
        return self.feed.transformed(
            DeviceData(images, masks, images[:0], masks[:0]), self.order[rows, 1]
        )


@contextmanager
def streams(data: dict[str, DeviceData], config: RunConfig) -> Iterator[dict[str, DeviceData]]:
    """``data`` with a StreamFeed on the device copy of each streamed training set (a
    MixFeed on a mixture with streamed parts), its producers started at once on the run's
    first epoch on it; on leaving (however: an error, a stop) every producer is ended."""
    feeds: dict[str, StreamFeed] = {}
    try:
        for name in dict.fromkeys(s.train for s in config.stages):
            spec, device = config.sources[name], data[name].train_images.device
            mix = getattr(spec, "mix", None)
            mixed = mixed_stream(mix, config.sources) if mix else None
            if not spec.streamed and mixed is None:  # stored: nothing to feed
                continue
            schedule = _schedule(config, name, (mixed or spec).train_count)
            if spec.streamed:
                feeds[name] = StreamFeed(name, spec, config.model, device, schedule)
            else:
                stored = {
                    n: data[n] for n, p in zip(mixed.names, mixed.parts, strict=True) if not p
                }
                feeds[name] = MixFeed(name, mixed, config.model, device, stored, schedule)
            feeds[name].start(schedule[0], 0)
        yield {n: replace(d, stream=feeds[n]) if n in feeds else d for n, d in data.items()}
    finally:
        for feed in feeds.values():
            feed.close()


def _schedule(config: RunConfig, name: str, available: int) -> list[Epoch]:
    """The epochs (key, sample count) that the stages of ``config`` train on set ``name``,
    in order, as zoo.train keys and sizes them."""
    schedule = []
    for index, stage in enumerate(config.stages):
        first, before = config.stream(index)
        count = min(stage.size or available, available)
        if stage.train == name:
            schedule += [
                ((config.seed, first, before + e), count) for e in range(1, stage.epochs + 1)
            ]
    return schedule


def log_lineage(config: RunConfig, tracker: Any, run_id: str) -> None:
    """Record each streamed set a stage trains on, alone or as a mixture's part, as an
    MLflow dataset input of the run: the generator's version and parameters and, per
    stage, the epochs' keys and the range its samples are drawn from."""
    from zoo.store import DatasetInput

    inputs = []
    for name, spec in config.sources.items():
        if not spec.streamed:
            continue
        seen = []
        for i, stage in enumerate(config.stages):
            mix = getattr(config.sources[stage.train], "mix", None) or {}
            if stage.train == name or name in mix:
                first, before = config.stream(i)
                whole = min(stage.size or spec.train_count, spec.train_count)
                count = mix.get(name, whole)
                keys = [config.seed, first, before + 1, before + stage.epochs]
                seen.append({"stage": stage.name, **spec.lineage(tuple(keys), 0, count)})
        if not seen:  # declared, not trained on
            continue
        source = json.dumps({"generator": seen[0]["generator"], "parameters": spec.resolved()})
        profile = json.dumps([{k: v for k, v in s.items() if k != "parameters"} for s in seen])
        inputs.append(DatasetInput(name, spec.digest(), "zoo-stream", source, profile))
    tracker.log_inputs(run_id, inputs)
