"""Training steps on a CPU with glibc's default malloc against zoo._malloc's thresholds.

Each measurement is a fresh process training the demo's U-Net (64 px, batch 16, one
thread, as a sweep worker trains) for ``--steps`` steps after 3 of warm-up; the two
settings alternate, so drift hits both. Printed: the median step of each and their
ratio (kept ÷ default; below 1 is faster). Run:
``.venv/bin/python benchmarks/bench_malloc.py [--steps 30] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CHILD = """
import sys, time
import torch
import torch.nn.functional as F
from zoo._malloc import keep_freed_memory
from zoo.calibrate import DEMO_MODEL, _config
from zoo.models import create_model

torch.set_num_threads(1)
if sys.argv[1] == "kept":
    assert keep_freed_memory()
torch.manual_seed(0)
model = create_model(_config(DEMO_MODEL, 64, count=40).model).train()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
x, y = torch.randn(16, 1, 64, 64), torch.randint(0, 2, (16, 64, 64))


def step():
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


for _ in range(3):
    step()
steps = int(sys.argv[2])
start = time.perf_counter()
for _ in range(steps):
    step()
print((time.perf_counter() - start) / steps)
"""


def step_seconds(setting: str, steps: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, setting, str(steps)], capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"default": [], "kept": []}
    for _ in range(args.repeats):
        for setting, measured in times.items():
            measured.append(step_seconds(setting, args.steps))
    default, kept = (statistics.median(times[s]) for s in ("default", "kept"))
    print("demo U-Net, 64 px, batch 16, 1 thread")
    print(f"default malloc      {default * 1e3:7.1f} ms/step")
    print(f"zoo._malloc         {kept * 1e3:7.1f} ms/step")
    print(f"ratio kept/default  {kept / default:7.3f}")


if __name__ == "__main__":
    main()
