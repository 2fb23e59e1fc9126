"""Training epochs on a CPU with glibc's default malloc against zoo._malloc's thresholds.

Each measurement is a fresh process training the demo's U-Net (64 px, one thread, as
a sweep worker trains) for ``--epochs`` epochs shaped like the demo's (two batches of
16 fresh images, then validation on three sets of 8) after one of warm-up; the two
settings alternate, so drift hits both. Printed: the median epoch of each, their
ratio (kept ÷ default; below 1 is faster), and each one's peak resident memory. Run:
``.venv/bin/python benchmarks/bench_malloc.py [--epochs 20] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CHILD = """
import resource, sys, time
import torch
import torch.nn.functional as F
from zoo._malloc import keep_freed_memory
from zoo.calibrate import DEMO_MODEL, _config
from zoo.models import create_model

torch.set_num_threads(1)
if sys.argv[1] == "kept":
    assert keep_freed_memory()
torch.manual_seed(0)
model = create_model(_config(DEMO_MODEL, 64, count=40).model)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
images = torch.randn(64, 1, 64, 64, dtype=torch.float16)
masks = torch.randint(0, 2, (64, 64, 64), dtype=torch.uint8)


def epoch():  # as an epoch of the demo: 2 batches of 16 fresh images, then validation
    model.train()
    for _ in range(2):
        index = torch.randint(0, 64, (16,))
        x, y = images[index].float(), masks[index].long()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    with torch.inference_mode():
        for start in range(0, 24, 8):  # 3 validation sets of 8 images
            model(images[start : start + 8].float()).argmax(dim=1)


epoch()
epochs = int(sys.argv[2])
start = time.perf_counter()
for _ in range(epochs):
    epoch()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((time.perf_counter() - start) / epochs, peak)
"""


def measure(setting: str, epochs: int) -> tuple[float, int]:
    """(seconds per epoch, peak resident KiB) of a fresh process with ``setting``."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, setting, str(epochs)], capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    seconds, peak = done.stdout.split()[-2:]
    return float(seconds), int(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    found: dict[str, list[tuple[float, int]]] = {"default": [], "kept": []}
    for _ in range(args.repeats):
        for setting, measured in found.items():
            measured.append(measure(setting, args.epochs))
    print("demo U-Net, 64 px, 1 thread")
    epoch = {}
    for setting, label in (("default", "default malloc"), ("kept", "zoo._malloc")):
        epoch[setting] = statistics.median(s for s, _ in found[setting])
        peak = max(p for _, p in found[setting]) / 1024
        print(f"{label:18s} {epoch[setting] * 1e3:7.1f} ms/epoch, peak {peak:6.0f} MiB")
    print(f"ratio kept/default {epoch['kept'] / epoch['default']:7.3f}")


if __name__ == "__main__":
    main()
