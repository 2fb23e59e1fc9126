"""GPU power caps and energy through a fake NVML, on CPU: the cap is set for a block and
the previous limit restored however it ends, energy is the counter's difference per
stage, and a cap that cannot be applied is reported once and recorded as unknown."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from contextlib import nullcontext

import h5py
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

import zoo.telemetry as telemetry
import zoo.train
from zoo.cli import main

FAKE_NVML = '''
"""A fake pynvml: one GPU, found by any UUID, recording the calls that change it (also
as JSON lines to the file $FAKE_NVML_CALLS names, when set)."""
import json
import os
from types import SimpleNamespace

calls = []
limit_mw = 300_000  # the power management limit
refuse = False  # setting a limit fails, as it does without root
energy_mj = [5_000_000_000]  # the energy counter's readings in turn (the last one stays)


class NVMLError(Exception):
    pass


def _record(*call):
    calls.append(list(call))
    if os.environ.get("FAKE_NVML_CALLS"):
        with open(os.environ["FAKE_NVML_CALLS"], "a") as out:
            out.write(json.dumps(call) + "\\n")


def nvmlInit():
    _record("init")


def nvmlShutdown():
    _record("shutdown")


def nvmlDeviceGetHandleByUUID(uuid):
    return "handle of " + uuid


def nvmlDeviceGetHandleByIndex(index):
    raise AssertionError("looked up by NVML index")


def nvmlDeviceGetPowerManagementLimit(handle):
    return limit_mw


def nvmlDeviceGetEnforcedPowerLimit(handle):
    return limit_mw


def nvmlDeviceSetPowerManagementLimit(handle, milliwatts):
    global limit_mw
    _record("set", handle, milliwatts)
    if refuse:
        raise NVMLError("Insufficient Permissions")
    limit_mw = milliwatts


def nvmlDeviceGetTotalEnergyConsumption(handle):
    return energy_mj.pop(0) if len(energy_mj) > 1 else energy_mj[0]


def nvmlDeviceGetPowerUsage(handle):
    return 200_000


def nvmlDeviceGetUtilizationRates(handle):
    return SimpleNamespace(gpu=50)


def nvmlDeviceGetMemoryInfo(handle):
    return SimpleNamespace(used=2e9)
'''

SIGTERM_SCRIPT = """
import os, signal, time
import zoo.telemetry as telemetry
from zoo._signals import stop_on_signals

telemetry.device_uuid = lambda index: f"GPU-{index}"
with stop_on_signals(), telemetry.GpuMeter(0, power_cap_w=250, interval_s=60):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # never finishes: the signal interrupts it
"""

CAPPED = [["init"], ["set", "handle of GPU-0", 250_000], ["set", "handle of GPU-0", 300_000]]


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch, tmp_path):
    """Each test sees a process that has warned about no unapplied cap yet, and GPU cap
    leases of its own."""
    monkeypatch.setattr(telemetry, "_UNAPPLIED", set())
    monkeypatch.setattr(telemetry, "LEASES", tmp_path)


@pytest.fixture
def nvml(monkeypatch):
    """FAKE_NVML as ``pynvml``; CUDA device i has the UUID ``GPU-i``."""
    fake = types.ModuleType("pynvml")
    exec(FAKE_NVML, fake.__dict__)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(telemetry, "device_uuid", lambda index: f"GPU-{index}")
    return fake


def _warnings(caplog):
    """The warnings zoo.telemetry logged."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "zoo.telemetry" and r.levelno >= logging.WARNING
    ]


def test_nvml_handle_is_found_by_the_devices_uuid_and_released(nvml, monkeypatch):
    """Power caps land on the GPU the run trains on: CUDA device 0 of a process that sees
    only physical GPU 3 is looked up by UUID, never as NVML's index 0."""
    monkeypatch.setattr(telemetry, "device_uuid", lambda index: f"GPU-physical-3-as-{index}")
    with telemetry.GpuMeter(0, power_cap_w=250, interval_s=60):
        pass
    handle = "handle of GPU-physical-3-as-0"
    sets = [["set", handle, 250_000], ["set", handle, 300_000]]
    assert nvml.calls == [["init"], *sets, ["shutdown"]]


@pytest.mark.parametrize("ending", ["success", "exception"])
def test_a_cap_holds_for_the_block_and_the_previous_limit_is_restored(nvml, ending):
    """The cap is in force inside the block and reported as the limit; however the block
    ends, the previous limit is set again and NVML released."""
    nvml.energy_mj[:] = [5_000_000_000, 5_001_800_000]  # 1.8e6 mJ = 0.5 Wh
    meter = telemetry.GpuMeter(0, power_cap_w=250, interval_s=60)
    failing = pytest.raises(RuntimeError) if ending == "exception" else nullcontext()
    with failing, meter:
        assert nvml.limit_mw == 250_000
        if ending == "exception":
            raise RuntimeError("training failed")
    assert nvml.limit_mw == 300_000
    assert nvml.calls == [*CAPPED, ["shutdown"]]
    assert meter.reading.power_limit_w == 250
    assert meter.reading.energy_wh == pytest.approx(0.5)


def test_workers_sharing_a_gpu_restore_its_limit_once_the_last_leaves(nvml, tmp_path):
    """Two meters capping one GPU at once (workers sharing it): the first to leave keeps
    the cap for the other, the last restores the limit from before the first, and a
    lease left by a worker killed outright still restores the original limit."""
    first = telemetry.GpuMeter(0, power_cap_w=250, interval_s=60)
    second = telemetry.GpuMeter(0, power_cap_w=250, interval_s=60)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert nvml.limit_mw == 250_000  # the second still trains under the cap
    second.__exit__(None, None, None)
    assert nvml.limit_mw == 300_000 and not list(tmp_path.glob("*.json"))
    killed = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    lease = tmp_path / "zoo-power-GPU-0.json"
    lease.write_text(json.dumps({"before": 300_000, "holders": [int(killed.stdout)]}))
    nvml.limit_mw = 250_000  # the killed worker's cap is still in force
    with telemetry.GpuMeter(0, power_cap_w=250, interval_s=60):
        pass
    assert nvml.limit_mw == 300_000


def test_sigterm_inside_the_block_restores_the_previous_limit(tmp_path):
    """With zoo._signals.stop_on_signals installed, a SIGTERM while capped ends the
    process through the block's exit: the previous limit is set again."""
    (tmp_path / "pynvml.py").write_text(FAKE_NVML)
    calls = tmp_path / "calls.jsonl"
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "FAKE_NVML_CALLS": str(calls)}
    ended = subprocess.run(
        [sys.executable, "-c", SIGTERM_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ended.returncode != 0 and "Stopped: SIGTERM" in ended.stderr, ended
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert recorded == [*CAPPED, ["shutdown"]]


def test_a_refused_cap_warns_once_and_reports_the_limit_in_force(nvml, caplog):
    """Without root the cap cannot be set: one warning naming it, the old limit is the
    one reported, and nothing is 'restored'."""
    nvml.refuse = True
    with telemetry.GpuMeter(0, power_cap_w=250, interval_s=60) as meter:
        pass
    (warning,) = _warnings(caplog)
    assert "250" in warning and "Insufficient Permissions" in warning
    assert meter.reading.power_limit_w == 300
    assert nvml.calls == [["init"], ["set", "handle of GPU-0", 250_000], ["shutdown"]]


def _two_stage_run(project, **run):
    """A two-stage run of one epoch per stage on a tiny random set (tiny timm encoder,
    32 px), trained by ``zoo train``; returns its MLflow run."""
    rng = np.random.default_rng(0)
    with h5py.File(project.root / "data.h5", "w") as handle:
        handle["images"] = rng.random((12, 32, 32)).astype(np.float32)
        handle["masks"] = (rng.random((12, 32, 32)) > 0.5).astype(np.uint8)
    stage = {"train": "d", "epochs": 1, "augment": "none"}
    document = {
        "experiment": "telemetry",
        "model": {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5},
        "datasets": {"d": {"path": "data.h5", "val_fraction": 0.25}},
        "stages": [{"name": "pretrain", **stage}, {"name": "transfer", **stage, "lr": 1e-4}],
        "figures": False,
        **run,
    }
    path = project.root / "run.yaml"
    path.write_text(yaml.safe_dump(document))
    assert main(["train", str(path)]) == 0
    client = MlflowClient(project.tracking_uri)
    experiment = client.get_experiment_by_name("telemetry")
    (found,) = client.search_runs([experiment.experiment_id])
    return found


def test_each_stage_logs_the_energy_it_used(project, nvml, monkeypatch):
    """Through zoo's training path (on CPU, metered as GPU 0): each stage's energy is its
    own counter difference in Wh, and each stage runs capped, then restored."""
    monkeypatch.setattr(zoo.train, "gpu_index", lambda device: 0)
    start = 5_000_000_000
    # pretrain: 3.6e6 mJ (1 Wh); between the stages 1e5 mJ; transfer: 7.2e6 mJ (2 Wh)
    nvml.energy_mj[:] = [start, start + 3_600_000, start + 3_700_000, start + 10_900_000]
    found = _two_stage_run(project, power_cap_w=250)
    metrics = found.data.metrics
    assert metrics["energy_wh/pretrain"] == pytest.approx(1.0)
    assert metrics["energy_wh/transfer"] == pytest.approx(2.0)
    assert metrics["power_limit_w/pretrain"] == metrics["power_limit_w/transfer"] == 250
    assert found.info.status == "FINISHED" and "zoo.power_limit_w" not in found.data.tags
    assert nvml.calls == [*CAPPED, ["shutdown"]] * 2
    assert nvml.limit_mw == 300_000


@pytest.mark.parametrize("missing", ["CUDA device", "NVML"])
def test_a_cap_without_nvml_warns_once_and_the_limit_is_recorded_unknown(
    project, monkeypatch, caplog, missing
):
    """A cap that cannot be applied: one warning for the whole run (not one per stage)
    naming the watts and why; the run still trains and finishes, tagged
    ``zoo.power_limit_w: unknown``."""
    if missing == "NVML":  # a CUDA device, but no pynvml to reach it
        monkeypatch.setattr(zoo.train, "gpu_index", lambda device: 0)
        monkeypatch.setitem(sys.modules, "pynvml", None)
    else:  # the run trains on the CPU even where there is a GPU
        monkeypatch.setattr(zoo.train, "gpu_index", lambda device: None)
    found = _two_stage_run(project, power_cap_w=250)
    (warning,) = _warnings(caplog)
    assert "250 W" in warning
    assert ("no CUDA device" if missing == "CUDA device" else "NVML unavailable") in warning
    assert found.info.status == "FINISHED"
    assert found.data.tags["zoo.power_limit_w"] == "unknown"
    assert not [k for k in found.data.metrics if k.startswith("power_limit_w")]
