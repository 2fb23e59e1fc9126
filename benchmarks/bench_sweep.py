"""The demo sweep with shared stages against ``share_stages: false``, and sweep overhead.

Both variants run in fresh project roots in this process's machine, one after
the other. Printed: wall-clock of each, their ratio beside the ratio of
training image passes the plan predicts, and the overhead per run (wall time
not spent in training epochs), the efficiency (training seconds ÷ worker wall
seconds) and, with ``--profile``, the plan's predicted wall time beside the
measured one. Targets (issue 16): efficiency ≥ 95 %, overhead ≤ 0.2 s per run,
the sharing speed-up ≥ 0.97× the predicted image-pass ratio.
Run: ``.venv/bin/python benchmarks/bench_sweep.py [--seeds 1] [--workers 1]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from zoo.paths import ProjectPaths
from zoo.sweep import load_spec, make_plan, run_sweep
from zoo.tracking import Tracker

SPEC = Path(__file__).parent.parent / "sweeps" / "demo.yaml"


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its ended children (the workers)."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def timed_sweep(spec, workers: int) -> tuple[float, float, int, float]:
    """(wall seconds, seconds inside training epochs, runs, CPU seconds) of ``spec`` in a
    fresh root."""
    with tempfile.TemporaryDirectory() as root:
        paths = ProjectPaths(Path(root))
        tracker = Tracker(None, paths)
        plan = make_plan(spec)
        from zoo.run import load_datasets

        for config in {r.config.digest(): r.config for r in plan.runs}.values():
            load_datasets(config, paths)  # data generation is not sweep overhead
        start, cpu = time.perf_counter(), _cpu_seconds()
        report = run_sweep(plan, tracker, workers, echo=lambda _: None)
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
        assert not report.failed, report.failed
        client = MlflowClient(paths.tracking_uri)
        experiment = client.get_experiment_by_name(spec.name).experiment_id
        training = 0.0
        for run in client.search_runs([experiment], max_results=50000):
            stages = run.data.tags["zoo.stages"].split(",")
            trained_here = stages[-1:] if run.data.tags.get("zoo.stage_run") else stages
            training += sum(run.data.metrics.get(f"train_seconds/{s}", 0.0) for s in trained_here)
        return wall, training, len(plan.runs), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--seeds", type=int, help="keep only the first N seeds (quicker)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--shared-only", action="store_true", help="skip the unshared sweep")
    parser.add_argument("--profile", help="also print the plan's prediction on this profile")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    if args.seeds:
        spec = dataclasses.replace(spec, seeds=spec.seeds[: args.seeds])
    counts = make_plan(spec).counts()
    predicted = counts["image_passes_unshared"] / counts["image_passes"]
    shared = timed_sweep(spec, args.workers)
    variants = [("shared", shared)]
    if not args.shared_only:
        variants.append(
            ("unshared", timed_sweep(dataclasses.replace(spec, share_stages=False), args.workers))
        )
    print(f"sweep {spec.name}: {shared[2]} runs, {args.workers} worker(s)")
    for label, (wall, training, runs, cpu) in variants:
        print(
            f"  {label:9} wall {wall:7.1f} s, training {training:7.1f} s, "
            f"overhead {(wall * args.workers - training) / runs:5.2f} s/run, "
            f"efficiency {training / (wall * args.workers):.0%}, "
            f"CPU {cpu / runs:5.2f} s/run ({(cpu - training) / runs:5.2f} s/run outside epochs)"
        )
    if not args.shared_only:
        print(
            f"  speed-up from sharing {variants[1][1][0] / shared[0]:.2f}× "
            f"(image passes predict {predicted:.2f}×)"
        )
    if args.profile:
        from zoo.calibrate import load_profile
        from zoo.sweep._cost import predict

        profile = load_profile(args.profile, ProjectPaths.default())
        seconds = predict(make_plan(spec), profile, args.workers)["predicted_seconds"]
        print(
            f"  plan on profile {args.profile}: {seconds:.1f} s predicted, "
            f"{shared[0]:.1f} s measured ({shared[0] / seconds - 1:+.0%})"
        )
    print("  targets: efficiency ≥ 95 %, overhead ≤ 0.2 s/run, speed-up ≥ 0.97× the predicted")


if __name__ == "__main__":
    main()
