"""``make gpu-check``: one command that proves zoo on a CUDA device, in under 8 minutes on
one H100.

Without CUDA it prints one line and exits 0. With CUDA it runs three steps, each under
its own timeout (TIMEOUT_S; a step that fails or times out is recorded and the next runs):

1. ``pytest -m gpu``: passed, failed, skipped, seconds;
2. benchmarks/bench_gpu.py at 512 px with short windows: one run in fp32, with AMP and
   zoo's best (again under a power cap when NVML may set one), then N = 1, 2, 4, 8, 16
   runs packed by processes, fused and, where nvidia-cuda-mps-control exists, MPS;
3. a small sweep (SWEEP: 2 shared pretrainings, each reused by 4 transfers) trained by
   ``zoo sweep run --workers 2 --runs-per-gpu 4`` (plus ``--gpu-power W`` when NVML may
   set a cap) in a temporary project root, then checked in its MLflow store
   (check_sweep): every planned run FINISHED, each shared stage trained once and reused
   by its transfers, energy logged per stage.

Every GPU's power limit is set back to what it was, and an MPS daemon the benchmark
left running is stopped. It writes gpu-check.json in the current directory and prints
one markdown table: the figures, the issue's targets beside them (pass, miss by how
much, or unmeasured) and the checks (pass or FAIL). Exit status 1 when a check failed;
a missed target is reported, not failed. Run: ``make gpu-check``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
# Seconds per step; with start-up, kill grace and clean-up they add up to under 8 minutes.
TIMEOUT_S = {"pytest": 90, "bench": 240, "sweep": 120}
KILL_GRACE_S = 5  # between SIGTERM and SIGKILL to a timed-out step's process group
BENCH_SECONDS = 3  # each benchmark row's measurement window
COUNTS = (1, 2, 4, 8, 16)
MPS_CONTROL = "nvidia-cuda-mps-control"
CAP_W, CAP_MARGIN_W = 250, 25  # the cap tried: 250 W, or the device's minimum + margin
SINGLE_TARGET, PACKED_TARGET = 1000, 2700  # images/s: one run with AMP; packed, in all
CAP_TIME, CAP_ENERGY = 0.10, 0.15  # a cap may cost 10 % more time, must save 15 % energy

SOURCES, TRANSFERS_PER_STAGE = ("a", "b"), 4
SWEEP = {
    "name": "gpu-check",
    "description": "make gpu-check: 2 shared pretrainings, each reused by 4 transfers",
    "base": {
        "datasets": {
            name: {"preset": "defocus", "defocus_nm": defocus, "image_size": 64, "count": 80}
            for name, defocus in (("a", -10), ("b", 10), ("c", 0))
        },
        "stages": [
            {"name": "pretrain", "train": "a", "epochs": 3, "batch_size": 16},
            {"name": "transfer", "train": "c", "epochs": 3, "batch_size": 16},
        ],
        "validate_on": ["a", "b", "c"],
    },
    # per source: 2 freezes x 2 learning rates, TRANSFERS_PER_STAGE transfers
    "axes": [
        {"product": {"source": list(SOURCES), "freeze": ["none", "encoder"], "lr": [1e-3, 1e-4]}}
    ],
    "set": {"stages.0.train": "$source", "stages.1.freeze": "$freeze", "stages.1.lr": "$lr"},
    "seeds": [0],
}


def run_step(
    command: list[str], timeout: float, log: Path, cwd: Path = ROOT, env: dict | None = None
) -> dict[str, Any]:
    """Run ``command`` in its own process group (output to ``log``, ``env`` added) for
    at most ``timeout`` s, then kill the group; Ctrl-C kills it too. Returns ok (exit
    status 0), returncode (None after a timeout), timed_out, seconds and, unless ok, the
    output's last 2000 characters as ``tail``."""
    started, env = time.monotonic(), {**os.environ, **(env or {})}
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout)
        except BaseException as error:  # the timeout, or Ctrl-C
            _kill_group(process)
            if not isinstance(error, subprocess.TimeoutExpired):
                raise
            code = None
    step = {"ok": code == 0, "returncode": code, "timed_out": code is None}
    step.update(seconds=round(time.monotonic() - started, 1), timeout_s=timeout)
    if code != 0:
        step["tail"] = log.read_text(errors="replace")[-2000:]
    return step


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM to ``process``'s group; SIGKILL to what is left of it KILL_GRACE_S later."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(KILL_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def junit_counts(text: str) -> dict[str, int]:
    """passed, failed, errors and skipped test cases of a pytest JUnit XML report."""
    counts = dict.fromkeys(("passed", "failed", "errors", "skipped"), 0)
    outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}
    for case in ElementTree.fromstring(text).iter("testcase"):
        found = [outcome[child.tag] for child in case if child.tag in outcome]
        counts[found[0] if found else "passed"] += 1
    return counts


def pytest_step(tmp: Path) -> dict[str, Any]:
    """Step 1: ``pytest -m gpu``; ok when it exits 0 having passed at least one test."""
    report = tmp / "pytest.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    step = run_step([*command, f"--junitxml={report}"], TIMEOUT_S["pytest"], tmp / "pytest.log")
    counts = junit_counts(report.read_text()) if report.exists() else {}
    return {**step, **counts, "ok": step["ok"] and counts.get("passed", 0) > 0}


def bench_step(tmp: Path, cap_w: int | None) -> dict[str, Any]:
    """Step 2: bench_gpu.py at 512 px (its header and rows, from its JSON, however far it
    got), in a temporary directory of its own; an MPS daemon it left there is stopped."""
    results, scratch, log = tmp / "bench.json", tmp / "bench-tmp", tmp / "bench.log"
    scratch.mkdir()
    modes = ["processes", "fused", *(["mps"] if shutil.which(MPS_CONTROL) else [])]
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--size", "512"]
    command += ["--seconds", str(BENCH_SECONDS), "--modes", ",".join(modes)]
    command += ["--counts", ",".join(map(str, COUNTS)), "--json", str(results)]
    if cap_w is not None:
        command += ["--power-cap", str(cap_w)]
    try:
        step = run_step(command, TIMEOUT_S["bench"], log, env={"TMPDIR": str(scratch)})
    finally:
        stopped = stop_mps(scratch)
    bench = json.loads(results.read_text()) if results.exists() else {}
    return {**bench, **step, "mps_stopped": stopped}


def stop_mps(folder: Path) -> list[str]:
    """Send ``quit`` to the MPS control daemon of every pipe directory left in ``folder``
    (the benchmark's TMPDIR: bench_gpu.mps_daemon makes one ``tmp*`` directory per daemon
    and removes it once the daemon quit, unless it was killed); those directories."""
    control = shutil.which(MPS_CONTROL)
    left = sorted(str(p) for p in folder.glob("tmp*") if p.is_dir())
    for pipes in left if control else []:
        env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": pipes, "CUDA_MPS_LOG_DIRECTORY": pipes}
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([control], input="quit\n", text=True, env=env, timeout=10, check=False)
    return left if control else []


def sweep_step(tmp: Path, cap_w: int | None) -> dict[str, Any]:
    """Step 3: SWEEP trained by ``zoo sweep run`` in project root ``tmp``/sweep, then its
    store checked (check_sweep); ok when it exits 0 and every check passes."""
    from zoo.paths import ProjectPaths

    paths = ProjectPaths(tmp / "sweep")
    paths.root.mkdir()
    (paths.root / "gpu-check.yaml").write_text(json.dumps(SWEEP, indent=1))  # JSON is YAML
    command = [sys.executable, "-m", "zoo.cli", "sweep", "run", "gpu-check.yaml"]
    command += ["--workers", "2", "--runs-per-gpu", "4", "--tracking-uri", paths.tracking_uri]
    if cap_w is not None:
        command += ["--gpu-power", str(cap_w)]
    env = {"ZOO_ROOT": str(paths.root)}
    step = run_step(command, TIMEOUT_S["sweep"], tmp / "sweep.log", paths.root, env)
    folders = sum(p.is_dir() for p in paths.stages.iterdir()) if paths.stages.is_dir() else 0
    checks = check_sweep(read_runs(paths.tracking_uri), folders)
    return {
        **step,
        "power_cap_w": cap_w,
        "checks": checks,
        "ok": step["ok"] and all(c["ok"] for c in checks),
    }


def read_runs(uri: str) -> list[dict[str, Any]]:
    """The runs of SWEEP in the MLflow store at ``uri`` as dicts: id, status, tags, metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(SWEEP["name"])
    found = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    return [
        dict(id=r.info.run_id, status=r.info.status, tags=r.data.tags, metrics=r.data.metrics)
        for r in found
    ]


def check_sweep(runs: list[dict[str, Any]], stage_folders: int) -> list[dict[str, Any]]:
    """SWEEP's checks (name, ok, detail) from its runs (read_runs) and the number of
    folders under .zoo/stages: every planned run FINISHED; each shared stage trained once
    (one stage run per config hash; each transfer's pretrain figures those of its stage
    run, replayed rather than trained again; one folder per pretraining and per
    transfer); each stage run the parent of its transfers; energy per 1000 images
    logged for every stage of every run."""
    stages = {r["id"]: r for r in runs if r["tags"].get("zoo.kind") == "stage"}
    transfers = [r for r in runs if r["tags"].get("zoo.kind") == "run"]
    planned = (len(SOURCES), len(SOURCES) * TRANSFERS_PER_STAGE)
    finished = sum(r["status"] == "FINISHED" for r in runs)
    hashes = Counter(r["tags"].get("zoo.config_hash") for r in stages.values())
    parents = Counter(r["tags"].get("zoo.stage_run") for r in transfers)
    replayed = [_replayed(r, stages) for r in transfers]
    energy = [
        r["metrics"].get(f"energy_wh_per_1000_images/{stage}", 0) > 0
        for stage, group in (("pretrain", stages.values()), ("transfer", transfers))
        for r in group
    ]
    once = len(hashes) == planned[0] and set(hashes.values()) == {1}
    folders = sum(planned)
    return [
        _check(
            "every planned run FINISHED",
            (len(stages), len(transfers)) == planned and finished == len(runs),
            f"{finished}/{len(runs)} FINISHED: {len(stages)} stage runs, {len(transfers)} "
            f"transfers (planned {planned[0]} and {planned[1]})",
        ),
        _check(
            "each shared stage trained once",
            once and all(replayed) and stage_folders == folders,
            f"{len(hashes)} stage config hashes, most runs of one {max(hashes.values(), default=0)}"
            f"; {sum(replayed)}/{len(transfers)} transfers replayed their stage; "
            f"{stage_folders} stage folders (expected {folders})",
        ),
        _check(
            f"each shared stage reused by {TRANSFERS_PER_STAGE} transfers",
            bool(stages) and parents == dict.fromkeys(stages, TRANSFERS_PER_STAGE),
            f"transfers per stage run: {sorted(parents.values())}",
        ),
        _check(
            "energy logged per stage",
            bool(energy) and all(energy),
            f"{sum(energy)}/{len(energy)} stages with energy_wh_per_1000_images/<stage> > 0",
        ),
    ]


def _replayed(run: dict[str, Any], stages: dict[str, dict[str, Any]]) -> bool:
    """Whether ``run``'s pretrain training time is exactly its stage run's (replayed)."""
    stage = stages.get(run["tags"].get("zoo.stage_run"))
    seconds = run["metrics"].get("train_seconds/pretrain")
    return stage is not None and seconds == stage["metrics"].get("train_seconds/pretrain")


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail}


def cap_watts(min_w: float, max_w: float) -> int:
    """The power cap to try: CAP_W, or the device's minimum + CAP_MARGIN_W where CAP_W is
    below its minimum; never above its maximum."""
    return int(min(CAP_W if min_w <= CAP_W else min_w + CAP_MARGIN_W, max_w))


def settable_cap(nvml: Any, handle: Any) -> tuple[int | None, str]:
    """(the cap to try, "") when NVML may set ``handle``'s power limit (probed by setting
    the limit in force again), else (None, why not)."""
    try:
        low, high = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
        limit = nvml.nvmlDeviceGetPowerManagementLimit(handle)
        nvml.nvmlDeviceSetPowerManagementLimit(handle, limit)
    except nvml.NVMLError as error:
        return None, f"NVML cannot set a power limit ({error})"
    return cap_watts(low / 1000, high / 1000), ""


def power_limits(nvml: Any) -> dict[int, int]:
    """Every NVML device's power limit in milliwatts, by NVML index (those that have one)."""
    limits = {}
    for index in range(nvml.nvmlDeviceGetCount()):
        with contextlib.suppress(nvml.NVMLError):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            limits[index] = nvml.nvmlDeviceGetPowerManagementLimit(handle)
    return limits


def restore_limits(nvml: Any, before: dict[int, int]) -> dict[str, Any]:
    """Each NVML device's power limit set back to ``before`` (power_limits) where it
    differs now; the check "GPU power limits as found", failed if zoo left one changed
    (its runs restore what they cap) or it could not be set back."""
    changed, errors = [], []
    for index, limit in before.items():
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            now = nvml.nvmlDeviceGetPowerManagementLimit(handle)
            if now != limit:
                nvml.nvmlDeviceSetPowerManagementLimit(handle, limit)
                changed.append(f"GPU {index}: {now / 1000:g} W back to {limit / 1000:g} W")
        except nvml.NVMLError as error:
            errors.append(f"GPU {index}: {error}")
    detail = "; ".join(errors + changed) or f"{len(before)} GPU(s) unchanged"
    return _check("GPU power limits as found", not errors and not changed, detail)


class GpuSettings:
    """The GPU settings this check may change. On entry every NVML device's power limit
    is read and ``cap_w`` chosen (None, ``why`` saying why, unless NVML may set the limit
    of CUDA device 0); on exit the limits that changed are set back, ``restored`` (a
    check) saying how that went."""

    def __init__(self):
        self.cap_w: int | None = None
        self.why = "no NVML device"
        self.restored = _check("GPU power limits as found", True, "no NVML: nothing changed")
        self._nvml, self._before = None, {}

    def __enter__(self) -> GpuSettings:
        from zoo.telemetry import nvml_device

        found = nvml_device(0)
        if found is not None:
            self._nvml, handle = found
            self._before = power_limits(self._nvml)
            self.cap_w, self.why = settable_cap(self._nvml, handle)
        return self

    def __exit__(self, *exc: object) -> None:
        from zoo.telemetry import nvml_release

        if self._nvml is not None:
            self.restored = restore_limits(self._nvml, self._before)
            nvml_release(self._nvml)


def targets(bench: dict[str, Any], cap_w: int | None, why: str) -> list[dict[str, str]]:
    """The issue's targets beside the benchmark's rows (cap_w: the cap it ran under, or
    None and ``why``), each: item, measured, target, result (pass, miss: by how much, or
    unmeasured)."""
    rows = [r for r in bench.get("rows", []) if "error" not in r]
    uncapped = [r for r in rows if "power_cap_w" not in r]
    singles = [r for r in uncapped if r["mode"] == "single" and r["amp"]]
    packed = [r for r in rows if r["mode"] != "single"]
    best = next((r for r in uncapped if r["mode"] == "single" and r["fast"]), None)
    capped = next((r for r in rows if "power_cap_w" in r), None)
    return [
        _at_least("one run with AMP", singles, SINGLE_TARGET),
        _at_least("packed runs, aggregate", packed, PACKED_TARGET),
        _cap_target(best, capped, cap_w, why),
    ]


def _at_least(item: str, rows: list[dict[str, Any]], target: float) -> dict[str, str]:
    goal = f">= {target:,} images/s"
    if not rows:
        return {"item": item, "measured": "unmeasured", "target": goal, "result": "unmeasured"}
    row = max(rows, key=lambda r: r["images_per_s"])
    rate = row["images_per_s"]
    result = "pass" if rate >= target else f"miss: {1 - rate / target:.1%} short"
    measured = f"{rate:,.0f} images/s ({row['label']})"
    return {"item": item, "measured": measured, "target": goal, "result": result}


def _cap_target(best: dict | None, capped: dict | None, cap_w: int | None, why: str) -> dict:
    """The power-cap target: uncapped ``best`` against ``capped`` (cap_w, or None and why)."""
    item = f"{cap_w} W power cap vs none" if cap_w else "power cap vs none"
    goal = f"time <= +{CAP_TIME:.0%}, energy per 1000 images <= -{CAP_ENERGY:.0%}"
    limit = capped and capped["power_limit_w"]
    if cap_w is None:
        why = f"unmeasured: {why}"
    elif not (best and capped):
        why = "unmeasured: a row is missing"
    elif limit is None or abs(limit - cap_w) > 1:
        why = f"unmeasured: the cap was not in force (limit {limit} W)"
    elif not (best["wh_per_1000_images"] and capped["wh_per_1000_images"]):
        why = "unmeasured: no energy reading"
    else:
        why = ""
    if why:
        return {"item": item, "measured": why, "target": goal, "result": "unmeasured"}
    time_more = best["images_per_s"] / capped["images_per_s"] - 1
    energy_less = 1 - capped["wh_per_1000_images"] / best["wh_per_1000_images"]
    misses = [f"time {time_more - CAP_TIME:.1%} over"] if time_more > CAP_TIME else []
    if energy_less < CAP_ENERGY:
        misses.append(f"energy {CAP_ENERGY - energy_less:.1%} short")
    measured = (
        f"time {time_more:+.1%}, energy {-energy_less:+.1%} ("
        f"{best['wh_per_1000_images']:.3f} -> {capped['wh_per_1000_images']:.3f} Wh/1000 images)"
    )
    result = f"miss: {', '.join(misses)}" if misses else "pass"
    return {"item": item, "measured": measured, "target": goal, "result": result}


def table(report: dict[str, Any]) -> str:
    """The report as a title line and one markdown table: item, measured, target, result;
    the benchmark's planned rows ('unmeasured' where it never got to one), the targets,
    then the checks."""
    lines = [
        f"gpu-check: {report['device']}, torch {report['torch']}",
        "",
        "| item | measured | target | result |",
        "|---|---|---|---|",
    ]
    rows = _bench_rows(report["bench"])
    rows += [(t["item"], t["measured"], t["target"], t["result"]) for t in report["targets"]]
    rows += _check_rows(report)
    for cells in rows:
        lines.append(
            "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
        )
    return "\n".join(lines)


def _bench_rows(bench: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    measured = {r["label"]: r for r in bench.get("rows", [])}
    peak, gflop = bench.get("bf16_peak_tflops"), bench.get("gflop_per_image")
    rows = []
    for label in bench.get("planned", []):
        row = measured.get(label)
        if row is None:
            text = "unmeasured (the benchmark stopped first)"
        elif "error" in row:
            text = f"unmeasured: {row['error']}"
        else:
            parts = [f"{row['images_per_s']:,.0f} images/s"]
            if peak:
                parts.append(f"{row['images_per_s'] * gflop / (peak * 1e3):.1%} of bf16 peak")
            if row["wh_per_1000_images"]:
                parts.append(f"{row['wh_per_1000_images']:.3f} Wh/1000 images")
            if "power_cap_w" in row:
                parts.append(f"limit in force {row['power_limit_w']} W")
            text = ", ".join(parts)
        rows.append((label, text, "", ""))
    return rows


def _check_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    pytest, bench, sweep = report["pytest"], report["bench"], report["sweep"]
    counts = [f"{pytest[k]} {k}" for k in ("passed", "failed", "errors", "skipped") if k in pytest]
    cap = f" --gpu-power {sweep['power_cap_w']}" if sweep.get("power_cap_w") else ""
    left = len(bench.get("mps_stopped", []))
    mps = f"; sent quit to the MPS pipe folder(s) it left: {left}" if left else ""
    rows = [
        ("pytest -m gpu", ", ".join([*counts, _step_text(pytest)]), "all pass", _verdict(pytest)),
        ("bench_gpu.py", _step_text(bench) + mps, "completes", _verdict(bench)),
        (f"zoo sweep run{cap}", _step_text(sweep), "exit 0", _verdict(sweep)),
    ]
    rows += [(f"sweep: {c['name']}", c["detail"], "", _verdict(c)) for c in sweep.get("checks", [])]
    restored = report["restored"]
    return [*rows, (restored["name"], restored["detail"], "", _verdict(restored))]


def _step_text(step: dict[str, Any]) -> str:
    if "error" in step:
        return f"error: {step['error']}"
    if step["timed_out"]:
        return f"timed out after {step['timeout_s']} s"
    last = [line for line in step.get("tail", "").splitlines() if line.strip()][-1:]
    return f"exit {step['returncode']} in {step['seconds']:.0f} s" + "".join(f": {t}" for t in last)


def _verdict(check: dict[str, Any]) -> str:
    return "pass" if check["ok"] else "FAIL"


def _guarded(step: Any, *args: Any) -> dict[str, Any]:
    """``step(*args)`` announced on stderr; {ok: False, error} when it raised."""
    name = step.__name__.removesuffix("_step")
    print(f"gpu-check: {name} ...", file=sys.stderr, flush=True)
    try:
        result = step(*args)
    except Exception as error:
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    print(f"gpu-check: {name} {_verdict(result)}", file=sys.stderr, flush=True)
    return result


def main() -> int:
    """The check (see the module docstring); its exit status."""
    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device (torch {torch.__version__}); nothing checked")
        return 0
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder, GpuSettings() as gpu:
        tmp = Path(folder)
        report["power_cap"] = {"cap_w": gpu.cap_w, "why": gpu.why}
        report["pytest"] = _guarded(pytest_step, tmp)
        report["bench"] = _guarded(bench_step, tmp, gpu.cap_w)
        report["sweep"] = _guarded(sweep_step, tmp, gpu.cap_w)
    report["restored"] = gpu.restored
    report["targets"] = targets(report["bench"], gpu.cap_w, gpu.why)
    report["ok"] = all(report[k]["ok"] for k in ("pytest", "bench", "sweep", "restored"))
    Path("gpu-check.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
