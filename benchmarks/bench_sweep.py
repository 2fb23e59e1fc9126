"""The demo sweep with shared stages against ``share_stages: false``, and sweep overhead.

Both variants run in fresh project roots in this process's machine, one after
the other. Printed for each: wall-clock; the efficiency (seconds inside training and
validation epochs ÷ worker wall seconds, worker start-up and idle tails included);
the overhead per run as the sweep sees it (worker wall not in epochs, ÷ runs) and the
median overhead of one run in its worker (job wall time minus its epochs); CPU
seconds. Then the speed-up from sharing beside the ratio of training image passes
and, with ``--profile``, beside the plan's predicted wall times (training, validation
and per-run overhead on that profile), and the plan's prediction of the shared sweep
against the measured time. Targets (issue 16): efficiency ≥ 95 %, overhead ≤ 0.2 s
per run, the sharing speed-up ≥ 0.97× the predicted ratio. Also printed: the seconds a
fresh process takes to import what a worker needs, which the workers' server
(zoo.sweep.start_worker_server) pays once, and a worker's start from it. The server
starts as the benchmark begins, as ``zoo sweep run`` starts it before making its plan
and opening its store; ``--cli`` checks that claim: it times the whole command
(interpreter, plan, store, datasets, workers) on the shared sweep, from its start to
its exit, and with ``--baseline DIR`` the same command with the zoo checked out in DIR.
Run: ``.venv/bin/python benchmarks/bench_sweep.py [--seeds 1] [--workers 1]
[--profile NAME] [--no-figures] [--cli [--baseline DIR]]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from zoo.paths import ProjectPaths
from zoo.store import Tracker
from zoo.sweep import load_spec, make_plan, run_sweep, start_worker_server
from zoo.sweep._local import WORKER_MODULES, worker_pool

SPEC = Path(__file__).parent.parent / "sweeps" / "demo.yaml"


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process, its ended children and the ended
    children of its workers' server (the workers)."""
    own = sum(
        usage.ru_utime + usage.ru_stime
        for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )
    return own + sum(_ended_children_cpu(pid) for pid in _children())


def _children() -> list[int]:
    mine = str(os.getpid())
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    return [int(p) for p in pids if _stat(int(p))[1:2] == [mine]]


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: state, ppid, … ([] once gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _ended_children_cpu(pid: int) -> float:
    fields = _stat(pid)  # cutime and cstime are fields 16 and 17 of stat
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


@dataclasses.dataclass(frozen=True)
class Timing:
    wall: float  # seconds for the whole sweep
    training: float  # seconds inside training and validation epochs, all runs
    runs: int
    cpu: float  # CPU seconds of this process and its workers
    job_overheads: list[float]  # per run job: its wall time in the worker minus its epochs
    busy: float  # seconds workers spent inside jobs (all jobs, stage jobs included)


def timed_sweep(spec, workers: int) -> Timing:
    """Run ``spec`` in a fresh root (its datasets made first: not sweep overhead)."""
    with tempfile.TemporaryDirectory() as root:
        paths = ProjectPaths(Path(root))
        tracker = Tracker(None, paths)
        plan = make_plan(spec)
        from zoo.run import load_datasets

        for config in {r.config.digest(): r.config for r in plan.runs}.values():
            load_datasets(config, paths)
        start, cpu = time.perf_counter(), _cpu_seconds()
        report = run_sweep(plan, tracker, workers, echo=lambda _: None)
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
        assert not report.failed, report.failed
        client = MlflowClient(paths.tracking_uri)
        experiment = client.get_experiment_by_name(spec.name).experiment_id
        training, overheads = 0.0, []
        for run in client.search_runs([experiment], max_results=50000):
            seconds = _epoch_seconds(run)
            training += seconds
            key = run.data.tags["zoo.config_hash"]
            if run.data.tags.get("zoo.kind") == "run" and key in report.seconds:
                overheads.append(report.seconds[key] - seconds)
        busy = sum(report.seconds.values())
        return Timing(wall, training, len(plan.runs), cpu, overheads, busy)


_WORKER_IMPORTS = (
    "import time; started = time.perf_counter(); "
    f"import {', '.join(WORKER_MODULES)}; print(time.perf_counter() - started)"
)


def worker_startup_seconds() -> float:
    """Wall seconds a fresh process takes to import WORKER_MODULES, what a sweep worker
    needs by the end of its first job; the workers' server pays it once."""
    done = subprocess.run(
        [sys.executable, "-c", _WORKER_IMPORTS], capture_output=True, text=True, check=True
    )
    return float(done.stdout.split()[-1])


def worker_fork_seconds() -> float:
    """Wall seconds from asking the running server for a worker to its first answer."""
    start = time.perf_counter()
    with worker_pool(1) as pool:
        pool.submit(os.getpid).result()
        return time.perf_counter() - start


def _predicted_seconds(spec, profile_name: str, workers: int) -> float:
    from zoo.calibrate import load_profile
    from zoo.sweep._cost import predict

    profile = load_profile(profile_name, ProjectPaths.default())
    return predict(make_plan(spec), profile, workers)["predicted_seconds"]


def cli_sweep(spec_path: Path, seeds: int | None, no_figures: bool, workers: int, zoo: Path):
    """``zoo sweep run`` of the zoo checked out in ``zoo`` on the spec, in a fresh root:
    (wall seconds, seconds until its first run started, seconds inside epochs)."""
    document = yaml.safe_load(spec_path.read_text())
    if seeds:
        document["seeds"] = document["seeds"][:seeds]
    if no_figures:
        document["base"]["figures"] = False
    with tempfile.TemporaryDirectory() as root:
        spec = Path(root) / spec_path.name
        spec.write_text(yaml.safe_dump(document))
        env = {**os.environ, "ZOO_ROOT": root, "PYTHONPATH": str(zoo)}
        command = [sys.executable, "-m", "zoo.cli", "sweep", "run", str(spec), "--workers"]
        started = time.time()
        subprocess.run([*command, str(workers)], cwd=root, env=env, check=True, capture_output=True)
        wall = time.time() - started
        client = MlflowClient(ProjectPaths(Path(root)).tracking_uri)
        runs = client.search_runs([client.get_experiment_by_name(document["name"]).experiment_id])
        first = min(r.info.start_time for r in runs) / 1000 - started
        return wall, first, sum(_epoch_seconds(r) for r in runs)


def _epoch_seconds(run) -> float:
    """Seconds inside the training and validation epochs ``run`` trained itself."""
    stages = run.data.tags["zoo.stages"].split(",")
    trained_here = stages[-1:] if run.data.tags.get("zoo.stage_run") else stages
    return sum(run.data.metrics.get(f"train_seconds/{s}", 0.0) for s in trained_here)


def _print_cli(label: str, timed: tuple[float, float, float], workers: int) -> None:
    wall, first, epochs = timed
    print(
        f"  {label:9} `zoo sweep run`: wall {wall:7.1f} s, first run started after "
        f"{first:5.1f} s, epochs {epochs:7.1f} s, efficiency {epochs / (wall * workers):.1%}"
    )


def _print_timing(label: str, timing: Timing, workers: int, startup: float) -> None:
    worker_wall = timing.wall * workers
    print(
        f"  {label:9} wall {timing.wall:7.1f} s, epochs {timing.training:7.1f} s, "
        f"efficiency {timing.training / worker_wall:.1%}, overhead "
        f"{(worker_wall - timing.training) / timing.runs:5.2f} s/run (sweep), "
        f"{statistics.median(timing.job_overheads):5.2f} s/run (median in its worker), "
        f"CPU {timing.cpu / timing.runs:5.2f} s/run "
        f"({(timing.cpu - timing.training) / timing.runs:5.2f} outside epochs)"
    )
    print(
        f"  {'':9} worker seconds outside epochs: {timing.busy - timing.training:6.1f} in jobs, "
        f"{worker_wall - timing.busy:6.1f} between jobs (start-up, waiting for a stage, tail)"
    )
    print(
        f"  {'':9} a worker's start from its server ({startup:.2f} s) alone caps the "
        f"efficiency of this sweep at {1 - startup / timing.wall:.0%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--seeds", type=int, help="keep only the first N seeds (quicker)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--shared-only", action="store_true", help="skip the unshared sweep")
    parser.add_argument("--profile", help="also print the plan's prediction on this profile")
    parser.add_argument("--no-figures", action="store_true", help="runs log no figures")
    parser.add_argument("--cli", action="store_true", help="also time `zoo sweep run`")
    parser.add_argument("--baseline", type=Path, help="with --cli: a zoo checkout to compare")
    args = parser.parse_args()
    if args.cli:  # first: this process's own server would compete with the commands
        for label, zoo in [("this", SPEC.parent.parent), ("baseline", args.baseline)]:
            if zoo:
                timed = cli_sweep(args.spec, args.seeds, args.no_figures, args.workers, zoo)
                _print_cli(label, timed, args.workers)
    start_worker_server()
    spec = load_spec(args.spec)
    if args.seeds:
        spec = dataclasses.replace(spec, seeds=spec.seeds[: args.seeds])
    if args.no_figures:
        spec = dataclasses.replace(spec, base={**spec.base, "figures": False})
    counts = make_plan(spec).counts()
    predicted = counts["image_passes_unshared"] / counts["image_passes"]
    shared = timed_sweep(spec, args.workers)
    variants = [("shared", shared)]
    unshared_spec = dataclasses.replace(spec, share_stages=False)
    if not args.shared_only:
        variants.append(("unshared", timed_sweep(unshared_spec, args.workers)))
    startup = worker_fork_seconds()
    print(
        f"sweep {spec.name}: {shared.runs} runs, {args.workers} worker(s); a fresh process "
        f"imports what a worker needs in {worker_startup_seconds():.1f} s (its server, once)"
    )
    for label, timing in variants:
        _print_timing(label, timing, args.workers, startup)
    if not args.shared_only:
        speedup = variants[1][1].wall / shared.wall
        print(
            f"  speed-up from sharing {speedup:.2f}× "
            f"(training image passes predict {predicted:.2f}×: {speedup / predicted:.2f} of it)"
        )
    if args.profile:
        seconds = _predicted_seconds(spec, args.profile, args.workers)
        if not args.shared_only:
            ratio = _predicted_seconds(unshared_spec, args.profile, args.workers) / seconds
            print(
                f"  plan on profile {args.profile} predicts a speed-up of {ratio:.2f}×: "
                f"measured {speedup / ratio:.2f} of it"
            )
        print(
            f"  plan on profile {args.profile}: {seconds:.1f} s predicted, "
            f"{shared.wall:.1f} s measured ({shared.wall / seconds - 1:+.0%})"
        )
    print("  targets: efficiency ≥ 95 %, overhead ≤ 0.2 s/run, speed-up ≥ 0.97× the predicted")


if __name__ == "__main__":
    main()
