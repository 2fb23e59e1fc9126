"""Streamed datasets: generator samples made by producer processes while a run trains.

Sample ``i`` of an epoch is a pure function of (the generator's digest, the epoch's key
(run seed, stage, epoch), ``i``): any number of producers, a resumed epoch and every
device see the same numbers. Producers write into a ring of ``queue`` slots in shared
memory (an anonymous mapping inherited by ``fork``: no names, no pickled arrays, freed
when the last process holding it ends); sample ``i`` lives in slot ``i % queue`` and the
consumer takes samples in index order, whatever producer made them.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import mmap
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo._typed import build, check, to_dict
from zoo.data._spec import GeneratorSpec, generator_spec
from zoo.errors import DataError

__all__ = [
    "Producers",
    "Ring",
    "StreamSettings",
    "StreamedSpec",
    "check_streams",
    "sample_index",
    "streamed_source",
]

GENERATOR_VERSION = "simulate-1"  # bump when zoo.data._simulate makes other images
_POLL_S = 0.0005


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
    run trains; it has no validation split (validate on stored sets)."""

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
        return self.generator.field_nm * 10 / self.generator.image_size

    def resolved(self) -> dict[str, Any]:
        """The generator's parameters and the stream settings: the dataset's identity."""
        return {**self.generator.resolved(), "stream": to_dict(self.stream)}

    def digest(self) -> str:
        """Content hash of the parameters and stream settings."""
        text = json.dumps(self.resolved(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

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


class Ring:
    """``queue`` sample slots in an anonymous shared mapping, with their sequence numbers;
    producers (forked) fill them, the parent takes samples in order."""

    def __init__(self, spec: GeneratorSpec, settings: StreamSettings):
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

    def reset(self, start: int) -> None:
        """Empty every slot; the next sample taken is ``start``."""
        self.ready[:] = -1
        self.taken[0] = start
        self.made[:], self.busy[:] = 0, 0.0

    def put(self, i: int, image: np.ndarray, target: np.ndarray, parent: int) -> None:
        """Write sample ``i`` once its slot is free (sample ``i - queue`` taken)."""
        while self.taken[0] <= i - self.queue:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(_POLL_S)
        slot = i % self.queue
        self.images[slot], self.targets[slot] = image, target
        self.ready[slot] = i

    def take(self, i: int, alive: Any) -> tuple[np.ndarray, np.ndarray, float]:
        """Sample ``i`` (copies) and the seconds waited for it; ``alive()`` is asked while
        waiting and raises when a producer failed."""
        slot, began = i % self.queue, time.perf_counter()
        while self.ready[slot] != i:
            alive()
            time.sleep(_POLL_S)
        waited = time.perf_counter() - began
        image, target = self.images[slot].copy(), self.targets[slot].copy()
        self.taken[0] = i + 1
        return image, target, waited


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent ends (PR_SET_PDEATHSIG) and
    to name it ``zoo-stream`` (in ps); elsewhere getppid is watched."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)
        libc.prctl(15, b"zoo-stream")


def _produce(spec: StreamedSpec, ring: Ring, key: tuple, worker: int, span: range) -> None:
    """Make this producer's share (every ``producers``-th sample) of ``span`` into ``ring``."""
    from zoo.data._simulate import simulate

    parent = os.getppid()
    _die_with_parent()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_DFL)
    digest = spec.generator.digest()
    for i in span[worker :: spec.stream.producers]:
        if os.getppid() != parent:
            os._exit(0)
        began = time.perf_counter()
        micrograph = simulate(spec.generator, sample_index(digest, key, i))
        ring.busy[worker] += time.perf_counter() - began
        ring.made[worker] += 1
        target = getattr(micrograph, spec.generator.target)
        ring.put(i, micrograph.image, target, parent)


class Producers:
    """The producer processes of one epoch (samples ``start`` to ``stop``): forked at
    once, ended by ``close`` (or with this process: they watch it)."""

    def __init__(self, spec: StreamedSpec, ring: Ring, key: tuple, start: int, stop: int):
        ring.reset(start)
        context = multiprocessing.get_context("fork")
        self.processes = [
            context.Process(
                target=_produce,
                args=(spec, ring, key, w, range(start, stop)),
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
    """Refuse a streamed dataset of run ``config`` (a zoo.config.RunConfig) where stored
    data is needed: in ``validate_on`` (it has no validation split), as a mixture
    component, as the validation set a stage's training set is when ``validate_on`` is
    empty; and a stage training on one with per_dataset scaling or several devices."""
    datasets, validate_on = config.datasets, config.validate_on
    streamed = {n for n, d in datasets.items() if isinstance(d, dict) and "stream" in d}
    for i, name in enumerate(validate_on):
        check(
            name not in streamed,
            f"config.validate_on.{i}",
            name,
            "a stored dataset (a stream: dataset has no validation split)",
        )
    for name, document in datasets.items():
        for part in document.get("mix", {}) if isinstance(document, dict) else {}:
            check(
                part not in streamed,
                f"datasets.{name}.mix.{part}",
                part,
                "a stored dataset (a stream: dataset cannot be mixed yet)",
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
