"""Generator throughput: images per second at 128 px and 512 px on this machine.

Target (issue 2): at least 10 images/s at 512 px on 2 CPU cores, so a 512-image
paper dataset takes under a minute. Run: ``.venv/bin/python benchmarks/bench_data.py``.
``--multislice`` times ``fidelity: multislice`` (abTEM, the default scene with its
support, 0.2 Å sampling) at 64 and 128 px instead, on the GPU where abTEM has one.
"""

from __future__ import annotations

import argparse
import time

from zoo.data import generator_spec, simulate


def images_per_second(image_size: int, count: int, fidelity: str = "full") -> float:
    declared = {"preset": "defocus", "defocus_nm": -10, "image_size": image_size}
    spec = generator_spec({**declared, "fidelity": fidelity}, "b")
    simulate(spec, 0)  # warm caches (frequency grids, FFT plans)
    start = time.perf_counter()
    for index in range(1, count + 1):
        simulate(spec, index)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, help="images timed per size (default 40; 3)")
    parser.add_argument("--multislice", action="store_true", help="time fidelity: multislice")
    args = parser.parse_args()
    fidelity, sizes = ("multislice", (64, 128)) if args.multislice else ("full", (128, 512))
    count = args.count or (3 if args.multislice else 40)
    print(f"{'image_size':>10} {'images/s':>9} {'s/image':>8} {'512-image set (s)':>18}")
    for size in sizes:
        rate = images_per_second(size, count, fidelity)
        print(f"{size:>10} {rate:>9.2f} {1 / rate:>8.2f} {512 / rate:>18.1f}")
    if not args.multislice:
        print("target: >= 10 images/s at 512 px")


if __name__ == "__main__":
    main()
