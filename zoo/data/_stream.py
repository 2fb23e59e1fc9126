"""Streamed datasets: generator samples made by producer processes while a run trains.

Sample ``i`` of an epoch is a pure function of (the generator's digest, the epoch's key
(run seed, stage, epoch), ``i``): any number of producers, a resumed epoch and every
device see the same numbers. Producers write into a ring of ``queue`` slots in shared
memory (an anonymous mapping inherited by ``fork``: no names, no pickled arrays, freed
when the last process holding it ends). Started once, they make a plan of epochs one
after the other, numbering samples on across epochs: the ``n``-th sample since their
start lives in slot ``n % queue`` and the consumer takes samples in that order, whatever
producer made them; so the next epoch's first samples are made while an epoch ends.

A mixture with streamed parts (MixedStream) is streamed too: its epoch's order of parts
is drawn from (its counts, the epoch's key); the ring carries its streamed samples only.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import itertools
import json
import mmap
import multiprocessing
import os
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from zoo._typed import build, check, to_dict
from zoo.data._spec import GeneratorSpec, generator_spec
from zoo.errors import DataError

__all__ = [
    "MixedStream",
    "Producers",
    "Ring",
    "StreamSettings",
    "StreamedSpec",
    "check_streams",
    "mix_plan",
    "mixed_stream",
    "sample_index",
    "streamed_source",
]

GENERATOR_VERSION = "simulate-1"  # bump when zoo.data._simulate makes other images
_POLL_S = 0.0005  # the training loop, waiting for a sample
_AHEAD_S = 0.005  # a producer a full queue ahead, waiting for a free slot


@dataclass(frozen=True)
class StreamSettings:
    """How a streamed dataset is made while training; every field is part of its identity."""

    samples_per_epoch: int = 4096  # training samples each epoch, each new
    producers: int = 2  # processes generating samples beside the training loop
    queue: int = 64  # samples held in shared memory at once (bounds the memory)

    def validate(self, where: str) -> None:
        for name in ("samples_per_epoch", "producers", "queue"):
            value = getattr(self, name)
            check(value >= 1, f"{where}.{name}", value, "an integer >= 1")


@dataclass(frozen=True)
class StreamedSpec:
    """A generator dataset that is never stored: its training samples are made while a
    run trains; it has no validation split (validate on stored sets). A
    zoo.data.DatasetSource: streamed, identified by its parameters and stream settings."""

    stored: ClassVar[bool] = False
    streamed: ClassVar[bool] = True

    generator: GeneratorSpec
    stream: StreamSettings

    @property
    def channels(self) -> tuple[str, ...]:
        return self.generator.channels

    @property
    def target(self) -> str:
        return self.generator.target

    @property
    def train_count(self) -> int:
        return self.stream.samples_per_epoch

    @property
    def image_size(self) -> int:
        return self.generator.image_size

    @property
    def pixel_size_a(self) -> float:
        return self.generator.pixel_size_a

    def parts(self) -> tuple[str, ...]:
        return ()

    def files(self) -> tuple[str, ...]:
        return ()

    def resolved(self) -> dict[str, Any]:
        """The generator's parameters and the stream settings: the dataset's identity."""
        return {**self.generator.resolved(), "stream": to_dict(self.stream)}

    def digest(self) -> str:
        """Content hash of the parameters and stream settings."""
        text = json.dumps(self.resolved(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def draw(self, key: tuple[int, ...], i: int) -> tuple[GeneratorSpec, int]:
        """The generator and index that make sample ``i`` of epoch ``key``."""
        return self.generator, sample_index(self.generator.digest(), key, i)

    def carried(self, key: tuple[int, ...], count: int) -> int:
        """Samples the ring carries for an epoch of ``count`` samples: all of them."""
        return count

    def lineage(self, key: tuple[int, ...], start: int, stop: int) -> dict[str, Any]:
        """What a run saw of this dataset: generator version, parameters, sample range."""
        return {
            "generator": GENERATOR_VERSION,
            "digest": self.generator.digest(),
            "parameters": self.resolved(),
            "epoch_key": list(key),
            "samples": [start, stop],
        }


def streamed_source(mapping: dict[str, Any], where: str) -> StreamedSpec:
    """A StreamedSpec from a generator mapping with a ``stream:`` sub-mapping."""
    rest = {k: v for k, v in mapping.items() if k != "stream"}
    stream = build(StreamSettings, mapping["stream"], f"{where}.stream")
    return StreamedSpec(generator_spec(rest, where), stream)


def sample_index(digest: str, key: tuple[int, ...], i: int) -> int:
    """The generator index of sample ``i`` of the epoch ``key`` of dataset ``digest``."""
    text = ":".join([digest, *map(str, key), str(i)])
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16)


@dataclass(frozen=True)
class MixedStream:
    """A mixture (zoo.data.MixSpec) with streamed parts, itself streamed: each epoch takes
    ``counts[c]`` samples of part ``c`` in the order mix_plan draws from (counts, epoch
    key); a streamed part's ``r``-th is its sample ``r`` of the epoch (the one it gives
    when trained alone), a stored part's its training image ``r``. Sample ``i`` of an
    epoch is so a pure function of (the parts, the counts, the epoch's key, ``i``)."""

    names: tuple[str, ...]  # the parts, in the mixture's order
    counts: tuple[int, ...]  # samples of each part per epoch
    parts: tuple[StreamedSpec | None, ...]  # each streamed part's spec; None: stored

    @property
    def streamed(self) -> tuple[bool, ...]:
        return tuple(p is not None for p in self.parts)

    @property
    def stream(self) -> StreamSettings:
        """Producers and queue: the most any streamed part asks for."""
        settings = [p.stream for p in self.parts if p is not None]
        producers, queue = (max(getattr(s, f) for s in settings) for f in ("producers", "queue"))
        return StreamSettings(self.train_count, producers, queue)

    @property
    def train_count(self) -> int:
        return sum(self.counts)

    @property
    def image_size(self) -> int:
        return next(p for p in self.parts if p is not None).image_size

    @property
    def target(self) -> str:
        return next(p for p in self.parts if p is not None).target

    def draw(self, key: tuple[int, ...], j: int) -> tuple[GeneratorSpec, int]:
        """The generator and index that make streamed sample ``j`` (the ring's ``j``-th)
        of epoch ``key``."""
        part, rank, _, positions = mix_plan(self.counts, self.streamed, key)
        spec = self.parts[part[positions[j]]]  # a streamed part: the ring carries no other
        return spec.draw(key, int(rank[positions[j]]))  # type: ignore[union-attr]

    def carried(self, key: tuple[int, ...], count: int) -> int:
        """Samples the ring carries for epoch ``key`` cut to its first ``count``: the
        streamed ones."""
        return int(np.count_nonzero(mix_plan(self.counts, self.streamed, key)[2][:count] >= 0))


def mixed_stream(mix: dict[str, int], sources: dict[str, Any]) -> MixedStream | None:
    """The MixedStream of mixture ``mix`` (part name -> count) of ``sources``; None when
    no part is streamed."""
    parts = tuple(s if s is not None and s.streamed else None for s in map(sources.get, mix))
    if all(p is None for p in parts):
        return None
    return MixedStream(tuple(mix), tuple(mix.values()), parts)


@functools.lru_cache(maxsize=4)
def mix_plan(
    counts: tuple[int, ...], streamed: tuple[bool, ...], key: tuple[int, ...]
) -> tuple[np.ndarray, ...]:
    """Epoch ``key`` of a mixture taking ``counts[c]`` samples of part ``c``: each
    sample's part and rank within it (every part's ranks 0..count-1, shuffled together),
    each sample's index in the ring (-1 for a stored part's), and the samples the ring
    carries, in order."""
    offsets = np.cumsum([0, *counts])
    drawn = np.random.default_rng([*key, 9, *counts]).permutation(int(offsets[-1]))
    part = np.searchsorted(offsets, drawn, side="right") - 1
    carried = np.asarray(streamed, bool)[part]
    ring = np.where(carried, np.cumsum(carried) - 1, -1)
    return part, drawn - offsets[part], ring, np.flatnonzero(carried)


class Ring:
    """``queue`` sample slots in an anonymous shared mapping, with their sequence numbers;
    producers (forked) fill them, the parent takes samples in order."""

    def __init__(self, spec: Any, settings: StreamSettings):  # spec: anything with image_size
        q, size, p = settings.queue, spec.image_size, settings.producers
        pixels = q * size * size
        self.memory = mmap.mmap(-1, 8 * (q + 1 + 2 * p) + 8 * pixels)
        words = np.frombuffer(self.memory, np.int64, q + 1 + 2 * p)
        self.ready, self.taken, self.made = words[:q], words[q : q + 1], words[q + 1 : q + 1 + p]
        self.busy = np.frombuffer(self.memory, np.float64, p, 8 * (q + 1 + p))
        data = np.frombuffer(self.memory, np.float32, 2 * pixels, 8 * (q + 1 + 2 * p))
        self.images = data[:pixels].reshape(q, size, size)
        self.targets = data[pixels:].reshape(q, size, size)
        self.queue = q

    @property
    def nbytes(self) -> int:
        return len(self.memory)

    def reset(self) -> None:
        """Empty every slot; the next sample taken is sample 0."""
        self.ready[:] = -1
        self.taken[0] = 0
        self.made[:], self.busy[:] = 0, 0.0

    def put(self, i: int, image: np.ndarray, target: np.ndarray, parent: int) -> None:
        """Write sample ``i`` once its slot is free (sample ``i - queue`` taken)."""
        while self.taken[0] <= i - self.queue:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(_AHEAD_S)
        slot = i % self.queue
        self.images[slot], self.targets[slot] = image, target
        self.ready[slot] = i

    def take(self, i: int, alive: Any, image: np.ndarray, target: np.ndarray) -> float:
        """Copy sample ``i`` into ``image`` and ``target``; the seconds waited for it.
        ``alive()`` is asked while waiting and raises when a producer failed."""
        slot, began = i % self.queue, time.perf_counter()
        while self.ready[slot] != i:
            alive()
            time.sleep(_POLL_S)
        waited = time.perf_counter() - began
        image[...], target[...] = self.images[slot], self.targets[slot]
        self.taken[0] = i + 1
        return waited


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent ends (PR_SET_PDEATHSIG) and
    to name it ``zoo-stream`` (in ps); elsewhere getppid is watched."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)
        libc.prctl(15, b"zoo-stream")


def _sequence(spec: Any, plan: Iterable[tuple[tuple, int]], first: int) -> Iterator[tuple]:
    """(epoch key, ring index in it) of each sample the producers make, in order: the
    epochs (key, sample count) of ``plan``, the first from its ring index ``first``."""
    for key, count in plan:
        for j in range(first, spec.carried(key, count)):
            yield key, j
        first = 0


def _produce(spec: Any, ring: Ring, plan: Iterable, first: int, worker: int) -> None:
    """Make this producer's share (every ``producers``-th sample) of the samples of
    ``plan`` (see _sequence) of ``spec`` (a StreamedSpec or MixedStream) into ``ring``."""
    from zoo.data._simulate import simulate

    parent = os.getppid()
    _die_with_parent()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_DFL)
    share = itertools.islice(
        enumerate(_sequence(spec, plan, first)), worker, None, spec.stream.producers
    )
    for n, (key, j) in share:
        if os.getppid() != parent:
            os._exit(0)
        began = time.perf_counter()
        generator, index = spec.draw(key, j)
        micrograph = simulate(generator, index)
        ring.busy[worker] += time.perf_counter() - began
        ring.made[worker] += 1
        ring.put(n, micrograph.image, getattr(micrograph, generator.target), parent)


class Producers:
    """The producer processes of a plan of epochs (see _sequence) of ``spec``, a
    StreamedSpec or MixedStream: forked at once, ended by ``close`` (or with this process:
    they watch it) or when the plan is made."""

    def __init__(self, spec: Any, ring: Ring, plan: Iterable[tuple[tuple, int]], first: int):
        ring.reset()
        context = multiprocessing.get_context("fork")
        self.processes = [
            context.Process(
                target=_produce,
                args=(spec, ring, plan, first, w),
                daemon=True,
                name=f"zoo-stream-{w}",
            )
            for w in range(spec.stream.producers)
        ]
        for process in self.processes:
            process.start()

    def alive(self) -> None:
        """Raise DataError when a producer ended in failure."""
        for process in self.processes:
            if process.exitcode not in (None, 0):
                raise DataError(
                    f"stream producer {process.name} failed (exit code {process.exitcode})"
                )

    def close(self) -> None:
        """End every producer still running and wait for it."""
        for process in self.processes:
            if process.is_alive():
                process.kill()
        for process in self.processes:
            process.join()


def check_streams(config: Any) -> None:
    """Refuse a streamed dataset of run ``config`` (a zoo.config.RunConfig), or a mixture
    with a streamed part, where stored data is needed: in ``validate_on`` (it has no
    validation split), as the validation set a stage's training set is when
    ``validate_on`` is empty; and a stage training on one with per_dataset scaling or
    several devices."""
    datasets, validate_on = config.datasets, config.validate_on
    streamed = {n for n, d in datasets.items() if isinstance(d, dict) and "stream" in d}
    streamed |= {
        n
        for n, d in datasets.items()
        if isinstance(d, dict) and isinstance(d.get("mix"), dict) and streamed & set(d["mix"])
    }
    for i, name in enumerate(validate_on):
        check(
            name not in streamed,
            f"config.validate_on.{i}",
            name,
            "a stored dataset (a stream: dataset, or a mixture with one, has no validation split)",
        )
    used = [s.train for s in config.stages if s.train in streamed]
    if not used:
        return
    check(bool(validate_on), "config.validate_on", [], f"stored datasets ({used[0]!r} is streamed)")
    check(config.devices == 1, "config.devices", config.devices, f"1 ({used[0]!r} is streamed)")
    scaling = config.model.input_scaling
    check(
        scaling != "per_dataset",
        "config.model.input_scaling",
        scaling,
        f"per_image, none or a factor ({used[0]!r} is streamed)",
    )
