"""Generator throughput per producer, and training on a stream against training in memory.

``--producers``: images/s of one producer (one process running the generator) for
``fidelity: cheap``, ``full`` and ``multislice`` at 64, 128 and 512 px, with the images
timed per cell (multislice: 3, seconds each) and images per CPU second (what a producer
makes on a free core, whatever else loads the machine).
``--trainer``: the demo's pretraining stage (sweeps/demo.yaml: its image size, model,
samples per epoch and batch size; ``cheap`` fidelity) trained for ``--epochs`` epochs on
an in-memory set and on a stream of the same samples (bit-identical; 1 and 2 producers),
alternating ``--repeats`` times. Rows: mean epoch seconds (a streamed epoch timed as the
trainer times it, from taking it up to its last step; validation, the same for
both, left out), images/s, the ratio to the in-memory epochs of the same repeat, the CPU
seconds per epoch of the training process and of the producers, ``data_wait_fraction``
and images/s per producer. The CPU columns tell the machine's load from the design: a
busy machine gives the run's processes one share, so there the producers' CPU lengthens
the epoch; on a free core they run beside training. Training uses ``--threads`` threads
(1, as sweep workers train).

Targets (issues 2, 31): ``full`` at 512 px >= 10 images/s per producer; a streamed epoch
(cheap, 1 producer) <= 1.15 x an in-memory one on the 2-core machine.
Run: ``nice .venv/bin/python benchmarks/bench_data.py [--producers | --trainer]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from zoo.data import generator_spec, simulate

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "sweeps" / "demo.yaml"
FIDELITIES = ("cheap", "full", "multislice")
SIZES = (64, 128, 512)
# images timed per fidelity at each of SIZES (multislice: seconds each)
COUNTS = {"cheap": (40, 40, 20), "full": (20, 20, 10), "multislice": (3, 3, 3)}
TARGET_STREAM, TARGET_FULL_512 = 1.15, 10.0


def images_per_second(image_size: int, count: int, fidelity: str = "full") -> tuple[float, float]:
    """(images per wall second, images per CPU second) of one process generating ``count``
    images after one warm-up image; the second is what a producer makes on a free core."""
    declared = {"preset": "defocus", "defocus_nm": -10, "image_size": image_size}
    spec = generator_spec({**declared, "fidelity": fidelity}, "b")
    simulate(spec, 0)  # warm caches (frequency grids, FFT plans, abTEM's imports)
    start, cpu = time.perf_counter(), time.process_time()
    for index in range(1, count + 1):
        simulate(spec, index)
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


def load() -> str:
    """The 1-minute load average, as printed beside every figure."""
    return f"{os.getloadavg()[0]:.2f}"


def header(title: str) -> None:
    """The table's title, command, machine and git commit."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")),
        platform.processor() or "unknown CPU",
    )
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    print(f"\n### {title}\n")
    print(f"command: `{' '.join(['python', *sys.argv])}`  ")
    print(f"machine: {os.cpu_count()} CPUs ({cpu}); git commit: {commit or 'unknown'}\n")


def _cpuinfo() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.exists() else []


def producer_table(fidelities: tuple[str, ...], count: int | None) -> None:
    """Print images/s per producer for each fidelity and size."""
    header("Images/s per producer (one process generating, defocus -10 nm)")
    print("| fidelity | px | images timed | images/s | s/image | images/CPU-s | load (1 min) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for fidelity in fidelities:
        for size, default in zip(SIZES, COUNTS[fidelity], strict=True):
            n = count or default
            rate, cpu = images_per_second(size, n, fidelity)
            row = f"| {fidelity} | {size} | {n} | {rate:.2f} | {1 / rate:.3f} | {cpu:.2f}"
            print(f"{row} | {load()} |", flush=True)
    if "full" in fidelities:
        print(f"\ntarget: full at 512 px >= {TARGET_FULL_512:g} images/s per producer")


@dataclass(frozen=True)
class Demo:
    """The demo's pretraining stage, as the trainer comparison trains it."""

    model: Any  # zoo.config.ModelConfig
    declared: dict[str, Any]  # its training set's generator parameters (no count)
    samples: int  # training samples per epoch
    batch_size: int


def demo_stage(samples: int | None) -> Demo:
    """sweeps/demo.yaml's first stage, on ``cheap`` samples; ``samples`` overrides its size."""
    from zoo._typed import build
    from zoo.config import ModelConfig

    base = yaml.safe_load(DEMO.read_text())["base"]
    stage = base["stages"][0]
    dataset = base["datasets"][stage["train"]]
    declared = {k: v for k, v in dataset.items() if k != "count"}
    model = build(ModelConfig, base["model"], "model")
    size, batch = samples or stage["size"], stage["batch_size"]
    return Demo(model, {**declared, "fidelity": "cheap"}, size, batch)


def stream_spec(demo: Demo, producers: int) -> Any:
    """The demo's training set as a stream of ``demo.samples`` per epoch."""
    from zoo.data._stream import streamed_source

    stream = {"samples_per_epoch": demo.samples, "producers": producers}
    return streamed_source({**demo.declared, "stream": stream}, "bench")


def fresh_step(demo: Demo) -> Any:
    """A new model (seed 0) and optimizer, as a stage starting from random weights."""
    import torch

    from zoo.config import StageConfig
    from zoo.models import create_model
    from zoo.train import Step, make_optimizer

    torch.manual_seed(0)
    model = create_model(demo.model).train()
    return Step(model, make_optimizer(StageConfig(name="bench", train="x", lr=1e-3), model))


def train_batches(step: Any, batches: Any, count: int, batch_size: int) -> None:
    """The trainer's loop over one epoch's batches (loss summed on the device, read once)."""
    import torch

    from zoo.train import train_step

    total = torch.zeros(())
    for start in range(0, count, batch_size):
        x, y = batches(start, batch_size)
        total = total + train_step(step, x, y) * len(x)
    total.item()


def in_memory_sets(demo: Demo, keys: list[tuple[int, ...]]) -> list[tuple[Any, np.ndarray]]:
    """Per epoch key: the stream's samples of that epoch on the CPU as a stored set is,
    and the stream's order (sample i under its drawn dihedral transform)."""
    import torch

    from zoo.data import Dataset
    from zoo.data._stream import sample_index
    from zoo.train import DIHEDRAL, to_device

    spec = stream_spec(demo, 1).generator
    digest, sets = spec.digest(), []
    for key in keys:
        made = [simulate(spec, sample_index(digest, key, i)) for i in range(demo.samples)]
        images = np.stack([m.image for m in made])
        targets = np.stack([getattr(m, spec.target) for m in made])
        targets = targets.astype(np.uint8) if spec.target == "mask" else targets
        dataset = Dataset("bench", images, targets, demo.samples, None, "bench")
        data = to_device(dataset, torch.device("cpu"), demo.model)
        transforms = np.random.default_rng([*key, 8]).integers(0, DIHEDRAL, demo.samples)
        sets.append((data, np.stack([np.arange(demo.samples), transforms], axis=1)))
    return sets


def memory_epochs(demo: Demo, sets: list[tuple[Any, np.ndarray]]) -> dict[str, float]:
    """Mean seconds and CPU seconds of one epoch per set, trained from memory."""
    from zoo.train import Batcher

    step, seconds, cpu = fresh_step(demo), [], time.process_time()
    for data, order in sets:
        began = time.perf_counter()
        train_batches(step, Batcher(data, order), len(order), demo.batch_size)
        seconds.append(time.perf_counter() - began)
    return {"seconds": np.mean(seconds), "cpu": (time.process_time() - cpu) / len(sets)}


def stream_epochs(demo: Demo, producers: int, keys: list[tuple[int, ...]]) -> dict[str, float]:
    """Mean seconds, CPU seconds (trainer, producers), data_wait_fraction and images/s per
    producer of the epochs ``keys`` trained on a stream (its producers started once, for
    all of them, before the model is made, as a run's are: zoo._streaming.streams)."""
    import torch

    from zoo._streaming import StreamFeed

    schedule = [(key, demo.samples) for key in keys]
    spec = stream_spec(demo, producers)
    feed = StreamFeed("bench", spec, demo.model, torch.device("cpu"), schedule)
    feed.start(schedule[0], 0)
    step, seconds, waits, rates = fresh_step(demo), [], [], []
    cpu, children = time.process_time(), _children_cpu()
    try:
        for key in keys:
            began = time.perf_counter()
            order, batches = feed.epoch(key, demo.samples, True, 0)
            train_batches(step, batches, len(order), demo.batch_size)
            seconds.append(time.perf_counter() - began)
            waits.append(batches.metrics()["data_wait_fraction"])
            rates.append(feed.ring.made.sum() / max(feed.ring.busy.sum(), 1e-9))
    finally:
        feed.close()
    return {
        "seconds": np.mean(seconds),
        "cpu": (time.process_time() - cpu) / len(keys),
        "producers_cpu": (_children_cpu() - children) / len(keys),  # ended and reaped
        "wait": np.mean(waits),
        "rate": np.mean(rates),
    }


def _children_cpu() -> float:
    """CPU seconds of this process's ended and reaped children (the producers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def trainer_table(demo: Demo, epochs: int, repeats: int) -> None:
    """Print in-memory and streamed epochs (1 and 2 producers), alternating per repeat."""
    keys = [(0, 0, epoch) for epoch in range(1, epochs + 1)]
    header(
        f"Trainer: {demo.declared['image_size']} px cheap, {demo.samples} samples/epoch, "
        f"batch {demo.batch_size}, {epochs} epochs per row, {_threads()} training thread(s)"
    )
    sets = in_memory_sets(demo, keys)
    columns = ["repeat", "training data", "epoch (s)", "images/s", "streamed / in-memory"]
    columns += ["trainer CPU (s)", "producers CPU (s)", "data_wait_fraction"]
    columns += ["images/s per producer", "load (1 min)"]
    print("| " + " | ".join(columns) + " |")
    print("|---:|---|" + "---:|" * (len(columns) - 2))
    ratios = []
    for repeat in range(1, repeats + 1):
        rows = {}
        for kind in [0, 1, 2] if repeat % 2 else [2, 1, 0]:  # 0: in memory, else producers
            rows[kind] = stream_epochs(demo, kind, keys) if kind else memory_epochs(demo, sets)
            rows[kind]["load"] = load()
        for kind in (0, 1, 2):
            ratio = rows[kind]["seconds"] / rows[0]["seconds"]
            print(_trainer_row(repeat, kind, demo.samples, rows[kind], ratio), flush=True)
            ratios += [f"{ratio:.3f}"] if kind == 1 else []
    print(f"\ntarget: streamed / in-memory <= {TARGET_STREAM} with 1 producer; ", end="")
    print(f"measured {', '.join(ratios)}")


def _trainer_row(repeat: int, producers: int, samples: int, row: dict, ratio: float) -> str:
    """One markdown row: ``row`` of memory_epochs (producers 0) or stream_epochs."""
    name = f"stream, {producers} producer{'s' * (producers > 1)}" if producers else "in memory"
    streamed = [f"{row[k]:.3f}" if producers else "-" for k in ("producers_cpu", "wait")]
    rate = f"{row['rate']:.1f}" if producers else "-"
    seconds = row["seconds"]
    cells = [repeat, name, f"{seconds:.3f}", f"{samples / seconds:.1f}", f"{ratio:.3f}"]
    cells += [f"{row['cpu']:.3f}", *streamed, rate, row["load"]]
    return "| " + " | ".join(map(str, cells)) + " |"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    part = parser.add_mutually_exclusive_group()
    part.add_argument("--producers", action="store_true", help="only the images/s per producer")
    part.add_argument("--trainer", action="store_true", help="only in memory vs streamed")
    parser.add_argument("--fidelity", choices=FIDELITIES, action="append", help="(repeatable)")
    parser.add_argument("--count", type=int, help="images timed per producer cell")
    parser.add_argument("--samples", type=int, help="samples per epoch (default: the demo's)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trainer row")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the trainer rows")
    parser.add_argument("--threads", type=int, default=1, help="training's intra-op threads")
    args = parser.parse_args()
    if not args.trainer:
        producer_table(tuple(args.fidelity or FIDELITIES), args.count)
    if not args.producers:
        import torch

        torch.set_num_threads(args.threads)
        logging.getLogger("zoo._streaming").setLevel(logging.ERROR)  # its waits are printed
        trainer_table(demo_stage(args.samples), args.epochs, args.repeats)


if __name__ == "__main__":
    main()
