"""Training throughput of U-Net/ResNet-18: one run per device versus N runs packed on it.

One table per machine: images/s, fraction of bf16 peak (126.9 GFLOP per image
at 512², scaled by pixel count) and, where NVML reads it, energy per 1000
images, for (a) one run in fp32 (paper-like), (b) one run with AMP, (c) zoo's
best single run (AMP, channels_last, fused Adam, cudnn.benchmark), (d) N runs
packed as N processes for N in 1, 2, 4, 8, 16. On a CPU it uses small images
and N in 1, 2 and reports the packed-versus-single ratio.
Target (issue 7) on one H100/H200: >= 1600 images/s in aggregate at 512 px.
Run: ``.venv/bin/python benchmarks/bench_gpu.py [--size 512] [--seconds 20]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

GFLOP_PER_IMAGE_512 = 126.9
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _train(size: int, batch: int, amp: bool, fast: bool, seconds: float, barrier) -> float:
    """Images/s of one process training for ``seconds`` after a warm-up."""
    import torch

    from zoo.config import ModelConfig
    from zoo.models import create_model

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = fast and cuda
    model = create_model(ModelConfig()).to(device)
    if fast and cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=fast and cuda)
    x = torch.randn(batch, 1, size, size, device=device)
    y = torch.randint(0, 2, (batch, size, size), device=device)

    def step():
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x).float().softmax(1), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
    barrier.wait()
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
        if cuda and steps % 10 == 0:
            torch.cuda.synchronize()
    if cuda:
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def _worker(args):
    return _train(*args[:-1], _BARRIER)


def _init(barrier):
    global _BARRIER
    _BARRIER = barrier


def measure(
    processes: int, size: int, batch: int, amp: bool, fast: bool, seconds: float
) -> tuple[float, float | None]:
    """(aggregate images/s, Wh per 1000 images or None) of ``processes`` packed runs."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    meter = _EnergyMeter()
    with context.Pool(processes, initializer=_init, initargs=(barrier,)) as pool:
        meter.start()
        rates = pool.map(_worker, [(size, batch, amp, fast, seconds, None)] * processes)
        joules = meter.stop()
    rate = sum(rates)
    energy = joules / 3600 / (rate * seconds / 1000) if joules else None
    return rate, energy


class _EnergyMeter:
    def __init__(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML: energy not measured
            self.handle = None

    def start(self):
        if self.handle is not None:
            self.begin = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    def stop(self) -> float | None:
        if self.handle is None:
            return None
        return (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self.begin) / 1000


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--size", type=int, default=512 if cuda else 64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20 if cuda else 8)
    args = parser.parse_args()
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    flop = GFLOP_PER_IMAGE_512 * (args.size / 512) ** 2 * 1e9
    rows = [
        ("(a) one run, fp32", 1, False, False),
        ("(b) one run, AMP", 1, cuda, False),
        ("(c) zoo best single run", 1, cuda, True),
    ]
    packs = (1, 2, 4, 8, 16) if cuda else (1, 2)
    rows += [(f"(d) {n} packed runs", n, cuda, True) for n in packs]
    print(f"{name}, U-Net/ResNet-18, {args.size} px, batch {args.batch}")
    print(f"{'configuration':28} {'images/s':>9} {'of bf16 peak':>13} {'Wh/1000 img':>12}")
    results = {}
    for label, processes, amp, fast in rows:
        rate, energy = measure(processes, args.size, args.batch, amp, fast, args.seconds)
        results[label] = rate
        fraction = f"{rate * flop / (peak * 1e12):13.1%}" if peak else f"{'n/a':>13}"
        energy_text = f"{energy:12.3f}" if energy else f"{'n/a':>12}"
        print(f"{label:28} {rate:9.1f} {fraction} {energy_text}")
    single = results["(c) zoo best single run"]
    best = max(v for k, v in results.items() if k.startswith("(d)"))
    print(f"packed / single: {best / single:.2f}×")


if __name__ == "__main__":
    main()
