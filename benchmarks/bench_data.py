"""Generator throughput: images per second at 128 px and 512 px on this machine.

Target (issue 2): at least 10 images/s at 512 px on 2 CPU cores, so a 512-image
paper dataset takes under a minute. Run: ``.venv/bin/python benchmarks/bench_data.py``.
"""

from __future__ import annotations

import argparse
import time

from zoo.data import generator_spec, simulate


def images_per_second(image_size: int, count: int) -> float:
    spec = generator_spec({"preset": "defocus", "defocus_nm": -10, "image_size": image_size}, "b")
    simulate(spec, 0)  # warm caches (frequency grids, FFT plans)
    start = time.perf_counter()
    for index in range(1, count + 1):
        simulate(spec, index)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40, help="images timed per size")
    count = parser.parse_args().count
    print(f"{'image_size':>10} {'images/s':>9} {'512-image set (s)':>18}")
    for size in (128, 512):
        rate = images_per_second(size, count)
        print(f"{size:>10} {rate:>9.1f} {512 / rate:>18.1f}")
    print("target: >= 10 images/s at 512 px")


if __name__ == "__main__":
    main()
