"""make gpu-check on a CPU: one line without CUDA; its steps' process handling, its
readings (JUnit, MLflow, bench_gpu.py's JSON) and its verdicts (sweep checks, targets,
table, power limits) from made-up figures; the gpu marker."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

ROOT = Path(__file__).parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # for its dataclasses
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check")
CUDA_HIDDEN = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def test_without_cuda_it_prints_one_line_imports_only_torch_and_exits_0(tmp_path):
    script = ROOT / "benchmarks" / "gpu_check.py"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(script)],
        cwd=tmp_path,
        env=CUDA_HIDDEN,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0
    assert len(done.stdout.splitlines()) == 1 and "no CUDA device" in done.stdout
    imported = {
        line.rpartition("|")[2].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "torch" in imported
    assert not {m for m in imported if m.split(".")[0] in ("zoo", "mlflow")}
    assert list(tmp_path.iterdir()) == []  # no gpu-check.json


def test_gpu_tests_are_selected_by_the_marker_and_skipped_without_cuda(tmp_path):
    report = tmp_path / "gpu.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    done = subprocess.run(
        [*command, f"--junitxml={report}"],
        cwd=ROOT,
        env=CUDA_HIDDEN,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    cases = list(ElementTree.parse(report).getroot().iter("testcase"))
    names = {c.get("name") for c in cases if c.get("classname") == "tests.test_gpu"}
    assert names == {
        "test_step_loop_never_synchronises_with_the_host",
        "test_cuda_run_logs_energy_and_packed_runs_match_runs_alone",
    }
    assert all([s.get("message") for s in c] == ["needs a CUDA device"] for c in cases)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_a_step_past_its_timeout_is_killed_with_everything_it_started(tmp_path):
    sleeper = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    script = (
        "import subprocess, sys, time\n"
        f"print(subprocess.Popen([sys.executable, '-c', {sleeper!r}]).pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    step = gpu_check.run_step([sys.executable, "-c", script], 3, tmp_path / "log")
    assert time.monotonic() - started < 30
    assert step["timed_out"] and not step["ok"] and step["returncode"] is None
    grandchild = int(step["tail"].split()[0])
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)


def test_a_step_reports_its_exit_and_the_tail_of_a_failure(tmp_path):
    passed = gpu_check.run_step([sys.executable, "-c", "print('fine')"], 60, tmp_path / "a")
    assert passed["ok"] and passed["returncode"] == 0 and "tail" not in passed
    failed = gpu_check.run_step(
        [sys.executable, "-c", "import sys; print('broken'); sys.exit(3)"], 60, tmp_path / "b"
    )
    assert not failed["ok"] and failed["returncode"] == 3 and failed["tail"] == "broken\n"
    text = gpu_check._step_text(failed)
    assert text.startswith("exit 3 in ") and text.endswith(" s: broken")


def test_junit_counts_classify_every_outcome(tmp_path):
    (tmp_path / "test_outcomes.py").write_text(
        "import pytest\n"
        "@pytest.fixture\n"
        "def broken():\n"
        "    raise RuntimeError\n"
        "def test_pass(): pass\n"
        "def test_fail(): assert False\n"
        "def test_skip(): pytest.skip('no')\n"
        "def test_error(broken): pass\n"
    )
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--junitxml=r.xml"]
    subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=120)
    counts = gpu_check.junit_counts((tmp_path / "r.xml").read_text())
    assert counts == {"passed": 1, "failed": 1, "errors": 1, "skipped": 1}


def test_read_runs_gives_status_tags_and_metrics(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("gpu-check"), tags={"zoo.kind": "stage"})
    client.log_metric(run.info.run_id, "energy_wh_per_1000_images/pretrain", 0.5)
    client.set_terminated(run.info.run_id)
    assert gpu_check.read_runs(uri) == [
        {
            "id": run.info.run_id,
            "status": "FINISHED",
            "tags": {**run.data.tags, "zoo.kind": "stage"},
            "metrics": {"energy_wh_per_1000_images/pretrain": 0.5},
        }
    ]


def _sweep_runs() -> list[dict]:
    """The gpu-check sweep as read_runs reads it when all went well."""
    energy = {"energy_wh_per_1000_images/pretrain": 0.5}
    stages = [
        {
            "id": f"s{i}",
            "status": "FINISHED",
            "tags": {"zoo.kind": "stage", "zoo.config_hash": f"h{i}"},
            "metrics": {"train_seconds/pretrain": 5.0 + i, **energy},
        }
        for i in range(2)
    ]
    transfers = [
        {
            "id": f"r{i}{j}",
            "status": "FINISHED",
            "tags": {"zoo.kind": "run", "zoo.config_hash": f"t{i}{j}", "zoo.stage_run": f"s{i}"},
            "metrics": {
                "train_seconds/pretrain": 5.0 + i,
                "energy_wh_per_1000_images/transfer": 0.4,
                **energy,
            },
        }
        for i in range(2)
        for j in range(4)
    ]
    return stages + transfers


def _failing(runs: list[dict], folders: int = 10) -> set[str]:
    return {c["name"] for c in gpu_check.check_sweep(runs, folders) if not c["ok"]}


FINISHED, ONCE = "every planned run FINISHED", "each shared stage trained once"
REUSED, ENERGY = "each shared stage reused by 4 transfers", "energy logged per stage"


def test_the_sweep_checks_pass_on_a_good_sweep_and_each_fails_on_its_fault():
    assert _failing(_sweep_runs()) == set()
    runs = _sweep_runs()
    runs[5]["status"] = "FAILED"
    assert _failing(runs) == {FINISHED}
    assert FINISHED in _failing(_sweep_runs()[:-1])
    runs = _sweep_runs()
    runs[4]["metrics"]["train_seconds/pretrain"] = 9.0  # trained its stage again
    assert _failing(runs) == {ONCE}
    assert _failing(_sweep_runs(), folders=11) == {ONCE}
    twice = [*_sweep_runs(), {**_sweep_runs()[0], "id": "s9"}]  # a stage trained twice
    assert ONCE in _failing(twice)
    runs = _sweep_runs()
    runs[2]["tags"]["zoo.stage_run"] = "s1"  # s1 the parent of 5 transfers, s0 of 3
    runs[2]["metrics"]["train_seconds/pretrain"] = 6.0
    assert _failing(runs) == {REUSED}
    runs = _sweep_runs()
    del runs[3]["metrics"]["energy_wh_per_1000_images/transfer"]
    assert _failing(runs) == {ENERGY}
    runs = _sweep_runs()
    runs[0]["metrics"]["energy_wh_per_1000_images/pretrain"] = 0.0
    assert _failing(runs) == {ENERGY}


def _row(label: str, mode: str, rate: float | None, wh: float | None = 0.1, **extra) -> dict:
    amp, fast = "fp32" not in label, label.startswith(("(c)", "(d)"))
    row = {"label": label, "mode": mode, "count": 1, "amp": amp, "fast": fast}
    figures = {"images_per_s": rate, "wh_per_1000_images": wh} if rate else {}
    return {**row, **figures, **extra}


def _bench(single=1200.0, capped=1100.0, capped_wh=0.08, limit=250.0, packed=2900.0) -> dict:
    """bench_gpu.py's JSON: (c) 1200 images/s at 0.1 Wh/1000 images unless told; its last
    planned row never reached."""
    rows = [
        _row("(a) one run, fp32", "single", 1500.0),  # never counts: not AMP
        _row("(b) one run, AMP", "single", 900.0),
        _row("(c) zoo best single run", "single", single),
        _row("(c) capped at 250 W", "single", capped, capped_wh, power_cap_w=250)
        | {"power_limit_w": limit},  # the limit in force
        _row("(d) 16 x processes", "processes", packed),
        _row("(d) 16 x fused", "fused", None, error="CUDA out of memory | 2 GiB"),
    ]
    planned = [*(r["label"] for r in rows), "(d) 16 x mps"]
    return {"bf16_peak_tflops": 989.0, "gflop_per_image": 126.9, "planned": planned, "rows": rows}


def _results(bench: dict, cap_w: int | None = 250, why: str = "") -> list[str]:
    return [t["result"] for t in gpu_check.targets(bench, cap_w, why)]


def test_targets_pass_miss_by_how_much_or_are_unmeasured():
    assert _results(_bench()) == ["pass", "pass", "pass"]  # cap: time +9.1 %, energy -20 %
    assert _results(_bench(single=800.0, packed=2000.0))[:2] == [
        "miss: 10.0% short",  # the AMP run (b), 900 images/s; never the fp32 one
        "miss: 25.9% short",
    ]
    assert _results(_bench(capped=1000.0, capped_wh=0.09))[2] == (
        "miss: time 10.0% over, energy 5.0% short"
    )
    assert _results(_bench(capped_wh=0.09))[2] == "miss: energy 5.0% short"
    assert _results(_bench(limit=700.0))[2] == "unmeasured"  # the cap was never in force
    assert _results(_bench(capped_wh=None))[2] == "unmeasured"
    assert _results({"rows": []}) == ["unmeasured"] * 3
    no_cap = gpu_check.targets(_bench(), None, "NVML cannot set a power limit (no root)")[2]
    assert no_cap["measured"] == "unmeasured: NVML cannot set a power limit (no root)"
    measured = gpu_check.targets(_bench(), 250, "")[2]["measured"]
    assert measured == "time +9.1%, energy -20.0% (0.100 -> 0.080 Wh/1000 images)"


def _report(bench: dict) -> dict:
    step = {"ok": True, "returncode": 0, "timed_out": False, "seconds": 41.2, "timeout_s": 100}
    counts = {"passed": 2, "failed": 0, "errors": 0, "skipped": 0}
    checks = gpu_check.check_sweep(_sweep_runs(), 9)
    return {
        "device": "NVIDIA H100 80GB HBM3",
        "torch": "2.9.0",
        "pytest": {**step, **counts},
        "bench": {**bench, **step, "ok": False, "returncode": None, "timed_out": True},
        "sweep": {**step, "power_cap_w": 250, "checks": checks, "ok": False},
        "restored": gpu_check._check("GPU power limits as found", True, "1 GPU(s) unchanged"),
        "targets": gpu_check.targets(bench, 250, ""),
    }


def test_the_table_shows_every_planned_row_the_targets_and_the_checks():
    lines = gpu_check.table(_report(_bench())).splitlines()
    assert lines[0] == "gpu-check: NVIDIA H100 80GB HBM3, torch 2.9.0"
    rows = {}
    for line in lines[2:]:  # each a markdown table line of 4 cells, "|" in a cell escaped
        cells = [c.strip() for c in line.replace("\\|", "/").split("|")]
        assert cells[0] == cells[-1] == "" and len(cells) == 6
        rows[cells[1]] = cells[2:5]
    assert rows["(c) zoo best single run"][0] == (
        "1,200 images/s, 15.4% of bf16 peak, 0.100 Wh/1000 images"
    )
    assert rows["(c) capped at 250 W"][0].endswith("0.080 Wh/1000 images, limit in force 250.0 W")
    assert rows["(d) 16 x fused"][0] == "unmeasured: CUDA out of memory / 2 GiB"
    assert rows["(d) 16 x mps"][0] == "unmeasured (the benchmark stopped first)"
    assert rows["one run with AMP"] == [
        "1,200 images/s ((c) zoo best single run)",
        ">= 1,000 images/s",
        "pass",
    ]
    assert rows["pytest -m gpu"] == [
        "2 passed, 0 failed, 0 errors, 0 skipped, exit 0 in 41 s",
        "all pass",
        "pass",
    ]
    assert rows["bench_gpu.py"][0::2] == ["timed out after 100 s", "FAIL"]
    assert rows["zoo sweep run --gpu-power 250"][2] == "FAIL"
    assert rows[f"sweep: {ONCE}"][2] == "FAIL" and rows[f"sweep: {FINISHED}"][2] == "pass"
    assert rows["GPU power limits as found"] == ["1 GPU(s) unchanged", "", "pass"]


def test_main_goes_on_past_a_failed_step_and_exits_1(tmp_path, monkeypatch, capsys):
    import torch

    class Settings:
        cap_w, why = 250, ""
        restored = gpu_check._check("GPU power limits as found", True, "1 GPU(s) unchanged")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    calls = []

    def pytest_step(tmp):
        raise RuntimeError("no pytest")

    def bench_step(tmp, cap_w):
        calls.append(("bench", cap_w))
        return {**_bench(), "ok": True, "returncode": 0, "timed_out": False, "seconds": 9}

    def sweep_step(tmp, cap_w):
        calls.append(("sweep", cap_w))
        return {"ok": True, "returncode": 0, "timed_out": False, "seconds": 9, "checks": []}

    monkeypatch.setattr(gpu_check, "GpuSettings", Settings)
    for step in (pytest_step, bench_step, sweep_step):
        monkeypatch.setattr(gpu_check, step.__name__, step)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "Fake H100")
    monkeypatch.chdir(tmp_path)
    assert gpu_check.main() == 1
    assert calls == [("bench", 250), ("sweep", 250)]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["pytest"] == {"ok": False, "error": "RuntimeError: no pytest"}
    assert [t["result"] for t in report["targets"]] == ["pass", "pass", "pass"]
    assert "| pytest -m gpu | error: RuntimeError: no pytest | all pass | FAIL |" in (
        capsys.readouterr().out
    )


class FakeNvml:
    """pynvml's power-limit calls on devices by index; ``settable``: whether setting works."""

    class NVMLError(Exception):
        pass

    def __init__(self, limits: dict[int, int], settable: bool = True):
        self.limits, self.settable, self.sets = dict(limits), settable, []

    def nvmlDeviceGetCount(self):
        return len(self.limits)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetPowerManagementLimit(self, handle):
        return self.limits[handle]

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle):
        return 200_000, 700_000

    def nvmlDeviceSetPowerManagementLimit(self, handle, milliwatts):
        if not self.settable:
            raise self.NVMLError("Insufficient Permissions")
        self.sets.append((handle, milliwatts))
        self.limits[handle] = milliwatts


def test_a_cap_is_chosen_only_where_nvml_may_set_one():
    nvml = FakeNvml({0: 700_000})
    assert gpu_check.settable_cap(nvml, 0) == (250, "")
    assert nvml.limits == {0: 700_000}
    refused = gpu_check.settable_cap(FakeNvml({0: 700_000}, settable=False), 0)
    assert refused == (None, "NVML cannot set a power limit (Insufficient Permissions)")
    assert gpu_check.cap_watts(200, 700) == 250
    assert gpu_check.cap_watts(300, 700) == 325  # 250 W is below this device's minimum
    assert gpu_check.cap_watts(100, 240) == 240


def test_power_limits_changed_are_set_back_and_a_failure_is_reported():
    nvml = FakeNvml({0: 700_000, 1: 700_000})
    before = gpu_check.power_limits(nvml)
    nvml.limits[1] = 250_000  # as concurrent runs' caps can leave it
    nvml.sets.clear()
    restored = gpu_check.restore_limits(nvml, before)
    assert nvml.sets == [(1, 700_000)] and nvml.limits == before
    assert restored == {  # set back, but zoo should not have left it changed
        "name": "GPU power limits as found",
        "ok": False,
        "detail": "GPU 1: 250 W back to 700 W",
    }
    assert gpu_check.restore_limits(nvml, before)["ok"]  # as found now
    stuck = FakeNvml({0: 250_000}, settable=False)
    assert not gpu_check.restore_limits(stuck, {0: 700_000})["ok"]


def test_an_mps_daemon_the_benchmark_left_is_told_to_quit(tmp_path, monkeypatch):
    log = tmp_path / "quit.log"
    control = tmp_path / "bin" / "nvidia-cuda-mps-control"
    control.parent.mkdir()
    control.write_text(f'#!/bin/sh\necho "$CUDA_MPS_PIPE_DIRECTORY $(cat)" >> {log}\n')
    control.chmod(0o755)
    monkeypatch.setenv("PATH", f"{control.parent}{os.pathsep}{os.environ['PATH']}")
    scratch = tmp_path / "scratch"
    (scratch / "tmpab12").mkdir(parents=True)  # bench_gpu.mps_daemon's, left by a kill
    (scratch / "pymp-x").mkdir()  # multiprocessing's: no MPS daemon
    assert gpu_check.stop_mps(scratch) == [str(scratch / "tmpab12")]
    assert log.read_text() == f"{scratch / 'tmpab12'} quit\n"


def test_bench_gpu_rows_follow_modes_and_counts_and_reach_its_json_row_by_row(
    tmp_path, monkeypatch
):
    bench = _load("bench_gpu")
    setup = bench.Setup(64, 16, 1.0)
    labels = [row[0] for row in bench._rows(False, setup, ("fused",), (1, 3))]
    assert labels[3:] == ["(d) 1 x fused", "(d) 3 x fused"]
    path = tmp_path / "bench.json"
    results = bench.Results(path, {"bf16_peak_tflops": None, "gflop_per_image": 1.0})
    assert json.loads(path.read_text())["rows"] == []  # the header, before any row
    results.add("(a)", "single", 1, setup, {"images_per_s": 10.0, "wh_per_1000_images": None})
    assert [r["label"] for r in json.loads(path.read_text())["rows"]] == ["(a)"]
    results.add("(d) 2 x mps", "mps", 2, setup, {"error": "no MPS"})
    assert json.loads(path.read_text())["rows"][1]["error"] == "no MPS"
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py", "--counts", "0"])
    with pytest.raises(SystemExit):
        bench._arguments(False)
