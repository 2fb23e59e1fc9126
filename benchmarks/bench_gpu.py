"""Training throughput of U-Net/ResNet-18: one run per device versus N runs packed on it.

One table per machine: images/s, fraction of bf16 peak (126.9 GFLOP per image
at 512², scaled by pixel count) and, where NVML reads it, energy per 1000
images, for (a) one run in fp32 (paper-like), (b) one run with AMP, (c) zoo's
best single run (zoo's training step: AMP, channels_last, fused Adam,
cudnn.benchmark, data on the device), then (d) N runs packed on the device for
N in 1, 2, 4, 8, 16, by each way of packing:

- ``processes``: N processes (what ``--runs-per-gpu N`` does);
- ``mps``: the same under CUDA MPS, when ``nvidia-cuda-mps-control`` exists;
- ``streams``: N models in one process, each stepping on its own CUDA stream;
- ``fused``: N same-architecture models fused horizontally into one
  (``torch.func.stack_module_state`` + ``vmap``; convolutions become grouped).

On a CPU it uses small images, N in 1, 2, one thread per process (as zoo's
sweep workers do; ``fused`` gets N threads), and reports packed-versus-single.
``--power-cap W`` repeats (c) under an NVML power cap (needs root), right after
(c). ``--modes`` and ``--counts`` choose the packed rows (default: all of them);
``--json PATH`` also writes the rows measured so far there after each row
(benchmarks/gpu_check.py reads it).
Targets (issue 26) on one H100 at 512 px: one run >= 1,000 images/s with AMP; packed runs
>= 2,700 images/s in aggregate; a 250 W cap <= 10 % more time for >= 15 % less energy.
Run: ``.venv/bin/python benchmarks/bench_gpu.py [--size 512] [--seconds 20]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.config import ModelConfig
from zoo.losses import LOSSES
from zoo.models import create_model
from zoo.telemetry import GpuMeter, nvml_device
from zoo.train import STORAGE, Batcher, DeviceData, Step, epoch_order, train_step

GFLOP_PER_IMAGE_512 = 126.9
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
DATA_IMAGES = 64  # random training images on the device per run
MODES = ("processes", "mps", "streams", "fused")


@dataclass(frozen=True)
class Setup:
    size: int
    batch: int
    seconds: float
    amp: bool = False
    fast: bool = False  # channels_last, fused Adam, cudnn.benchmark
    threads: int = 1  # CPU intra-op threads


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _data(setup: Setup, device: torch.device) -> DeviceData:
    rng = np.random.default_rng(0)
    shape = (DATA_IMAGES, setup.size, setup.size)
    images = torch.from_numpy(rng.normal(size=shape)[:, None]).to(device, STORAGE)
    masks = torch.from_numpy((rng.random(shape) > 0.5).astype(np.uint8)).to(device)
    return DeviceData(images, masks, images[:1], masks[:1])


def _zoo_step(setup: Setup, device: torch.device) -> Callable[[], None]:
    """One training step of one run through zoo's Step, train_step and Batcher."""
    torch.backends.cudnn.benchmark = setup.fast and device.type == "cuda"
    model = create_model(ModelConfig()).to(device).train()
    if setup.fast and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    fused = setup.fast and device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=fused or None)
    step = Step(model, optimizer, amp=torch.bfloat16 if setup.amp else None)
    data = _data(setup, device)
    order = epoch_order(0, 0, 1, DATA_IMAGES, augment=True)
    batches, position = Batcher(data, order), [0]

    def run() -> None:
        start = position[0] % (len(order) - setup.batch)
        position[0] += setup.batch
        train_step(step, *batches(start, setup.batch))

    return run


def _streams_step(setup: Setup, device: torch.device, count: int) -> Callable[[], None]:
    """``count`` runs in this process, each stepping on its own CUDA stream."""
    steps = [_zoo_step(setup, device) for _ in range(count)]
    streams = [torch.cuda.Stream(device) for _ in range(count)]

    def run() -> None:
        for step, stream in zip(steps, streams, strict=True):
            with torch.cuda.stream(stream):
                step()

    return run


def _fused_step(setup: Setup, device: torch.device, count: int) -> Callable[[], None]:
    """``count`` models fused into one vmapped model; each sees its own batch."""
    from torch.func import functional_call, stack_module_state, vmap

    torch.backends.cudnn.benchmark = setup.fast and device.type == "cuda"
    models = [create_model(ModelConfig()).to(device).train() for _ in range(count)]
    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")
    compute = LOSSES["cross_entropy"].compute

    def loss(p, b, x, y):
        return compute(functional_call(skeleton, (p, b), (x,)).float().softmax(1), y)

    losses = vmap(loss)
    fused = setup.fast and device.type == "cuda"
    optimizer = torch.optim.Adam(list(params.values()), lr=1e-4, fused=fused or None)
    data = [_data(setup, device) for _ in range(count)]
    order = epoch_order(0, 0, 1, DATA_IMAGES, augment=True)
    batchers = [Batcher(d, order) for d in data]
    position = [0]

    def run() -> None:
        start = position[0] % (len(order) - setup.batch)
        position[0] += setup.batch
        x, y = zip(*(b(start, setup.batch) for b in batchers), strict=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=setup.amp):
            total = losses(params, buffers, torch.stack(x), torch.stack(y)).sum()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return run


def _timed(step: Callable[[], None], images_per_step: int, seconds: float, barrier=None):
    """(images, start, end) of stepping for ``seconds`` after a warm-up; the clock is
    the system-wide monotonic one, so windows of different processes compare."""
    device = _device()
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    if barrier is not None:
        barrier.wait()
    start, steps = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        step()
        steps += 1
        if device.type == "cuda" and steps % 10 == 0:
            torch.cuda.synchronize()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * images_per_step, start, time.monotonic()


def _process(args) -> tuple[int, float, float]:
    setup, barrier = args[0], _BARRIER
    torch.set_num_threads(setup.threads)
    return _timed(_zoo_step(setup, _device()), setup.batch, setup.seconds, barrier)


def _init(barrier) -> None:
    global _BARRIER
    _BARRIER = barrier


class EnergyTrace:
    """The GPU's total-energy counter sampled in a background thread, so the energy of
    any window can be read afterwards; empty without NVML."""

    def __init__(self):
        self.samples, self._stop = [], threading.Event()
        device = 0 if torch.cuda.is_available() else None
        self.nvml, self.handle = nvml_device(device) or (None, None)

    def __enter__(self) -> EnergyTrace:
        if self.handle is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            energy = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000
            self.samples.append((time.monotonic(), energy))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.handle is not None:
            self._thread.join()

    def joules(self, start: float, end: float) -> float | None:
        if len(self.samples) < 2:
            return None
        times, energy = np.array(self.samples).T
        return float(np.interp(end, times, energy) - np.interp(start, times, energy))


def measure(mode: str, count: int, setup: Setup) -> tuple[float, float | None]:
    """(aggregate images/s, Wh per 1000 images or None) of ``count`` runs packed by ``mode``."""
    with EnergyTrace() as trace:
        if mode in ("processes", "mps"):
            context = multiprocessing.get_context("spawn")
            barrier = context.Barrier(count)
            with context.Pool(count, initializer=_init, initargs=(barrier,)) as pool:
                windows = pool.map(_process, [(setup,)] * count)
        else:
            device = _device()
            torch.set_num_threads(setup.threads)
            build = {"single": lambda: _zoo_step(setup, device)}
            build["streams"] = lambda: _streams_step(setup, device, count)
            build["fused"] = lambda: _fused_step(setup, device, count)
            windows = [_timed(build[mode](), setup.batch * count, setup.seconds)]
    rate = sum(images / (end - start) for images, start, end in windows)
    start, end = max(w[1] for w in windows), min(w[2] for w in windows)
    joules = trace.joules(start, end)
    energy = joules / 3600 / (rate * (end - start) / 1000) if joules else None
    return rate, energy


@contextlib.contextmanager
def mps_daemon() -> Iterator[None]:
    """CUDA MPS for the processes started inside; raises OSError when it cannot start."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        raise OSError("nvidia-cuda-mps-control not found")
    with tempfile.TemporaryDirectory() as folder:
        env = {"CUDA_MPS_PIPE_DIRECTORY": folder, "CUDA_MPS_LOG_DIRECTORY": folder}
        subprocess.run([control, "-d"], env={**os.environ, **env}, check=True)
        previous = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield
        finally:
            subprocess.run([control], input="quit\n", text=True, env={**os.environ, **env})
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key)
                else:
                    os.environ[key] = value


def _rows(
    cuda: bool, setup: Setup, modes: tuple[str, ...], counts: tuple[int, ...]
) -> list[tuple[str, str, int, Setup]]:
    fp32 = replace(setup, amp=False, fast=False)
    best = replace(setup, amp=cuda, fast=True)
    rows = [
        ("(a) one run, fp32", "single", 1, fp32),
        ("(b) one run, AMP", "single", 1, replace(fp32, amp=cuda)),
        ("(c) zoo best single run", "single", 1, best),
    ]
    for mode in modes:
        for count in counts:
            threads = count if mode == "fused" and not cuda else 1
            rows.append((f"(d) {count} x {mode}", mode, count, replace(best, threads=threads)))
    return rows


def _measure(mode: str, count: int, setup: Setup, cap: float | None = None) -> dict[str, Any]:
    """One row's figures: images_per_s, wh_per_1000_images (None without NVML) and, under
    NVML power cap ``cap``, power_cap_w and power_limit_w (the limit in force); or its
    ``error`` when it could not be measured."""
    meter = GpuMeter(0, cap) if cap else contextlib.nullcontext()
    try:
        with mps_daemon() if mode == "mps" else contextlib.nullcontext(), meter:
            rate, energy = measure(mode, count, setup)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
        return {"error": (str(error).splitlines() or [type(error).__name__])[0]}
    row = {"images_per_s": rate, "wh_per_1000_images": energy}
    if cap:
        row.update(power_cap_w=cap, power_limit_w=meter.reading.power_limit_w)
    return row


class Results:
    """The table: each row printed as it is measured and kept; with ``path``, the header
    and every row so far written there as JSON at the start and after each row
    (replacing the file), so a run stopped midway leaves what it planned and measured."""

    def __init__(self, path: Path | None, header: dict[str, Any]):
        self.path, self.header, self.rows = path, header, []
        self._write()

    def add(self, label: str, mode: str, count: int, setup: Setup, figures: dict) -> None:
        row = {"label": label, "mode": mode, "count": count, "amp": setup.amp, "fast": setup.fast}
        row.update(figures)
        self.rows.append(row)
        if "error" in row:
            print(f"{label:28} not measured: {row['error']}", flush=True)
        else:
            rate, energy = row["images_per_s"], row["wh_per_1000_images"]
            peak, flop = self.header["bf16_peak_tflops"], self.header["gflop_per_image"] * 1e9
            fraction = f"{rate * flop / (peak * 1e12):13.1%}" if peak else f"{'n/a':>13}"
            energy_text = f"{energy:12.3f}" if energy else f"{'n/a':>12}"
            limit = f"  (limit in force {row['power_limit_w']} W)" if "power_cap_w" in row else ""
            print(f"{label:28} {rate:9.1f} {fraction} {energy_text}{limit}", flush=True)
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(json.dumps({**self.header, "rows": self.rows}, indent=1))
            partial.replace(self.path)

    def rate(self, label: str) -> float | None:
        """The images/s of row ``label``, None unless it was measured."""
        found = [r for r in self.rows if r["label"] == label and "error" not in r]
        return found[0]["images_per_s"] if found else None


def _modes(text: str) -> tuple[str, ...]:
    """Comma-separated packing modes (an argparse type)."""
    modes = tuple(m for m in text.split(",") if m)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"{text!r}: expected some of {', '.join(MODES)}")
    return modes


def _counts(text: str) -> tuple[int, ...]:
    """Comma-separated run counts, each >= 1 (an argparse type)."""
    try:
        counts = tuple(int(n) for n in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers, comma-separated")
    return counts


def _arguments(cuda: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512 if cuda else 64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20 if cuda else 6)
    parser.add_argument("--power-cap", type=float, metavar="W", help="repeat (c) under this cap")
    parser.add_argument(
        "--modes",
        type=_modes,
        default=MODES if cuda else ("processes", "fused"),
        help=f"packing modes, comma-separated (default: {','.join(MODES)}; CPU: processes,fused)",
    )
    parser.add_argument(
        "--counts",
        type=_counts,
        default=(1, 2, 4, 8, 16) if cuda else (1, 2),
        help="runs packed, comma-separated (default: 1,2,4,8,16; CPU: 1,2)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")
    return parser.parse_args()


def main() -> None:
    cuda = torch.cuda.is_available()
    args = _arguments(cuda)
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    setup = Setup(args.size, args.batch, args.seconds)
    rows = _rows(cuda, setup, args.modes, args.counts)
    cap = args.power_cap if cuda else None
    capped = f"(c) capped at {cap:g} W" if cap else None
    planned = [row[0] for row in rows]
    if capped:
        planned.insert(3, capped)  # right after (c)
    header = {
        "device": name,
        "torch": torch.__version__,
        "size": args.size,
        "batch": args.batch,
        "seconds": args.seconds,
        "gflop_per_image": GFLOP_PER_IMAGE_512 * (args.size / 512) ** 2,
        "bf16_peak_tflops": next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None),
        "planned": planned,
    }
    results = Results(args.json, header)
    print(f"{name}, U-Net/ResNet-18, {args.size} px, batch {args.batch}, torch {torch.__version__}")
    print(f"{'configuration':28} {'images/s':>9} {'of bf16 peak':>13} {'Wh/1000 img':>12}")
    for label, mode, count, row_setup in rows:
        results.add(label, mode, count, row_setup, _measure(mode, count, row_setup))
        if capped and label.startswith("(c)"):  # zoo's best again, under the cap
            results.add(capped, mode, count, row_setup, _measure(mode, count, row_setup, cap))
    single = results.rate("(c) zoo best single run")
    for mode in args.modes:
        packed = [r["images_per_s"] for r in results.rows if r["mode"] == mode and "error" not in r]
        if packed and single:
            print(f"best {mode} / single: {max(packed) / single:.2f}x")


if __name__ == "__main__":
    main()
