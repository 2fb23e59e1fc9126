"""zoo's training step against a bare PyTorch loop, and MLflow's share of a run's wall time.

Both loops train the same model (U-Net/resnet18 by default) on the same
in-memory batch source on the same device, measured in this process,
alternating so drift hits both. Targets (issue 3): step ratio <= 1.05 on CPU,
<= 1.03 on GPU; MLflow logging <= 2 % of a run's wall time.
Run: ``.venv/bin/python benchmarks/bench_train.py [--size 64] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zoo.config import ModelConfig, StageConfig, resolve
from zoo.models import create_model
from zoo.paths import ProjectPaths
from zoo.run import run
from zoo.store import Tracker
from zoo.train import STORAGE, Batcher, DeviceData, Step, epoch_order, make_optimizer, train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _data(size: int, count: int, device: torch.device) -> DeviceData:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.normal(size=(count, 1, size, size))).to(STORAGE)
    masks = torch.from_numpy((rng.random((count, size, size)) > 0.5).astype(np.uint8))
    return DeviceData(
        images.to(device), masks.to(device), images[:1].to(device), masks[:1].to(device)
    )


def zoo_loop(data: DeviceData, device: torch.device, steps: int, batch_size: int) -> float:
    torch.manual_seed(0)
    model = create_model(ModelConfig()).to(device).train()
    stage = StageConfig(name="bench", train="x", lr=1e-4)
    step = Step(model, make_optimizer(stage, model))
    order = epoch_order(0, 0, 1, len(data.train_images), augment=True)
    start = time.perf_counter()
    batches = Batcher(data, order)
    for i in range(steps):
        x, y = batches(i * batch_size, batch_size)
        train_step(step, x, y)
    _sync(device)
    return (time.perf_counter() - start) / steps


def bare_loop(data: DeviceData, device: torch.device, steps: int, batch_size: int) -> float:
    torch.manual_seed(0)
    model = create_model(ModelConfig()).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps):
        index = torch.from_numpy(generator.integers(0, len(data.train_images), batch_size))
        x = data.train_images[index.to(device)].float()
        y = data.train_masks[index.to(device)].long()
        loss = F.cross_entropy(model(x).softmax(dim=1), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return (time.perf_counter() - start) / steps


# every call that reaches the store (log_params and log_metrics go through log_batch)
_TIMED = {
    "log_batch",
    "log_artifact",
    "create",
    "finish",
    "set_tags",
    "find",
    "experiment",
    "experiment_id",
    "artifact_uri",
    "reopen",
}


class TimedTracker(Tracker):
    """A Tracker that adds up the seconds spent in its logging calls."""

    seconds = 0.0

    def __getattribute__(self, name):
        attribute = super().__getattribute__(name)
        if name in _TIMED:

            def timed(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return attribute(*args, **kwargs)
                finally:
                    TimedTracker.seconds += time.perf_counter() - start

            return timed
        return attribute


def logging_share(size: int) -> tuple[float, float]:
    """(MLflow seconds, run wall seconds) for a two-stage run at ``size`` px."""
    data = {"preset": "defocus", "image_size": size, "count": 40}
    config = resolve(
        {
            "experiment": "bench",
            "datasets": {"a": {**data, "defocus_nm": -10}, "b": {**data, "defocus_nm": 10}},
            "stages": [
                {"name": "pretrain", "train": "a", "size": 16, "epochs": 3},
                {"name": "transfer", "train": "b", "size": 16, "epochs": 3, "freeze": "encoder"},
            ],
        }
    )
    with tempfile.TemporaryDirectory() as root:
        paths = ProjectPaths(Path(root))
        tracker = TimedTracker(None, paths)
        from zoo.run import load_datasets

        load_datasets(config, paths)  # data generation is not part of the run's training time
        TimedTracker.seconds = 0.0
        start = time.perf_counter()
        run(config, tracker, paths, echo=lambda _: None)
        return TimedTracker.seconds, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = _data(args.size, 64, device)
    zoo_loop(data, device, 3, args.batch_size)  # warm-up
    bare_loop(data, device, 3, args.batch_size)
    zoo_times, bare_times = [], []
    for _ in range(args.repeats):
        zoo_times.append(zoo_loop(data, device, args.steps, args.batch_size))
        bare_times.append(bare_loop(data, device, args.steps, args.batch_size))
    zoo_s, bare_s = statistics.median(zoo_times), statistics.median(bare_times)
    print(f"device {device}, U-Net/resnet18, {args.size} px, batch {args.batch_size}")
    print(f"bare PyTorch step  {bare_s * 1e3:8.1f} ms")
    print(f"zoo step           {zoo_s * 1e3:8.1f} ms")
    print(f"ratio zoo/bare     {zoo_s / bare_s:8.3f}  (target <= 1.05 CPU, <= 1.03 GPU)")
    logging_s, wall_s = logging_share(args.size)
    print(
        f"MLflow logging     {logging_s:8.2f} s of a {wall_s:.1f} s run = "
        f"{100 * logging_s / wall_s:.1f} %  (target <= 2 %)"
    )


if __name__ == "__main__":
    main()
