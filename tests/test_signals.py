"""Stopping by signal: SIGTERM to a command ends its runs KILLED (resumable), leaves no
process of its session behind and exits 128 + 15 with one line; workers whose sweep
process was killed outright stop by themselves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import zoo_process
from zoo._signals import process_runs
from zoo.cli import main

GRACE_S = 30.0  # zoo._signals.GRACE_S: what a stopped command waits for its processes
ORPHAN_S = GRACE_S + 15  # a worker whose sweep died outright: the grace, then its exit


STOPPER = """
import multiprocessing, os, signal, sys, time
from zoo._signals import Stopped, stop_on_signals

with stop_on_signals():
    try:
        os.kill(os.getpid(), signal.{name})
        time.sleep(30)
    except Stopped as stopped:
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        child.start()
        print(stopped.signum, child.pid, flush=True)
        os.kill(os.getpid(), signal.{name})  # the second: at once, the child killed first
        time.sleep(30)
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_each_stopping_signal_stops_alike_and_a_second_one_at_once(name):
    """The first signal raises Stopped naming it; a second exits 128 + signum at once,
    after killing the processes the command started."""
    number = int(getattr(signal, name))
    script = STOPPER.format(name=name)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=20)
    signum, child = map(int, done.stdout.split())
    assert (signum, done.returncode) == (number, 128 + number), done.stderr
    assert f"second {name}" in done.stderr.decode()
    time.sleep(0.2)
    assert not process_runs(child)


def _session(leader: int) -> list[int]:
    """The processes of the session ``leader`` started (zombies left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == leader:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == leader and fields[0] != "Z":  # fields: state, ppid, pgrp, session
            found.append(int(entry.name))
    return found


def _none_left(leader: int, within: float) -> list[int]:
    """The processes of ``leader``'s session still running after ``within`` seconds."""
    deadline = time.monotonic() + max(0.0, within)
    while _session(leader) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _session(leader)


def _epochs(log: Path) -> int:
    return len(re.findall(r"^  \w+ epoch \d+/", log.read_text(), re.M)) if log.exists() else 0


def _wait_for(condition, process, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.05)


def _runs(root: Path, experiment: str) -> list:
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def _sweep(spec: Path, root: Path, workers: int):
    return zoo_process(
        root, "sweep", "run", str(spec), "--workers", str(workers), start_new_session=True
    )


def test_sigterm_to_sweep_run_stops_everything_and_the_rerun_finishes_each_run_once(
    tiny_spec, project
):
    """Two workers training, SIGTERM to the sweep's process only: it exits 143 with one
    line of true counts, nothing of its session (worker server, workers, resource
    tracker) outlives the grace, the runs under way end KILLED, and the re-run finishes
    every run exactly once."""
    spec = tiny_spec(sources=("a",), epochs=12)  # a shared stage, then 2 runs side by side
    sweep = _sweep(spec, project.root, workers=2)
    logs = project.logs / "tiny"

    def two_runs_train() -> bool:
        counts = sorted(_epochs(log) for log in logs.glob("*.log"))
        return len(counts) == 3 and counts[-2] > 2  # the stage done, both runs under way

    _wait_for(two_runs_train, sweep, "trained two runs at once")
    os.kill(sweep.pid, signal.SIGTERM)
    bound = time.monotonic() + GRACE_S + 5  # the grace, and a moment for the last exits
    output = sweep.communicate(timeout=GRACE_S + 30)[0].decode()
    assert sweep.returncode == 128 + signal.SIGTERM, output
    assert not _none_left(sweep.pid, bound - time.monotonic()), "processes outlived the sweep"

    runs = _runs(project.root, "tiny")
    states = Counter(r.info.status for r in runs)
    (last,) = [line for line in output.splitlines() if line.startswith("stopped by")]
    finished = int(re.search(r"\bfinished (\d+)", last)[1])
    killed = int(re.search(r"killed (\d+)", last)[1])
    assert (finished, killed) == (states["FINISHED"], states["KILLED"]), (last, states)
    assert killed >= 1 and states["RUNNING"] == 0, states

    assert main(["sweep", "run", str(spec), "--workers", "2"]) == 0
    runs = _runs(project.root, "tiny")
    assert Counter(r.data.tags["zoo.config_hash"] for r in runs).most_common(1)[0][1] == 1
    assert [r.info.status for r in runs] == ["FINISHED"] * 3


def test_sigusr1_to_the_sweeps_process_group_preempts_its_run_and_the_sweep_finishes(
    tiny_spec, project
):
    """SIGUSR1 to the whole process group of `zoo sweep run` (`kill -USR1 -PGID`, or a
    scheduler signalling every process of a job): the command and its worker server
    ignore it, the worker's run checkpoints and its job is requeued, and the sweep
    exits 0 with the run FINISHED once, its preemption counted."""
    spec = tiny_spec(sources=("a",), freezes=("none",), epochs=30)  # one run, two stages
    sweep = _sweep(spec, project.root, workers=1)
    logs = project.logs / "tiny"
    _wait_for(lambda: any(_epochs(log) > 3 for log in logs.glob("*.log")), sweep, "trained")
    os.killpg(sweep.pid, signal.SIGUSR1)
    output = sweep.communicate(timeout=180)[0].decode()
    assert sweep.returncode == 0, output
    assert "requeued 1 after preemption" in output
    (run,) = _runs(project.root, "tiny")
    assert run.info.status == "FINISHED" and run.data.tags["zoo.preemptions"] == "1"


def test_kill_9_of_the_sweep_process_leaves_no_worker_behind(tiny_spec, project):
    """The sweep's process killed outright (SIGKILL, no handler runs): its worker
    notices, ends its run KILLED and exits, and the worker server and resource tracker
    follow."""
    spec = tiny_spec(sources=("a",), freezes=("none",), epochs=200)  # one run, two stages
    sweep = _sweep(spec, project.root, workers=1)
    logs = project.logs / "tiny"
    _wait_for(lambda: any(_epochs(log) > 3 for log in logs.glob("*.log")), sweep, "trained")
    os.kill(sweep.pid, signal.SIGKILL)
    sweep.wait(timeout=10)
    assert not _none_left(sweep.pid, ORPHAN_S), "the worker outlived its sweep"
    assert [r.info.status for r in _runs(project.root, "tiny")] == ["KILLED"]


def _train_config(root: Path, epochs: int) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(root / "data.h5", "w") as handle:
        handle["images"] = rng.random((8, 32, 32)).astype(np.float32)
        handle["masks"] = (rng.random((8, 32, 32)) > 0.5).astype(np.uint8)
    config = {
        "experiment": "stop",
        "model": {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5},
        "datasets": {"d": {"path": "data.h5", "val_fraction": 0.25}},
        "stages": [{"name": "fit", "train": "d", "batch_size": 4, "epochs": epochs}],
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    return root / "run.yaml"


def test_sigterm_to_zoo_train_exits_143_and_the_run_resumes(project):
    """``zoo train`` stopped by SIGTERM mid-run: exit 143, one line on stderr, the run
    KILLED; the same command resumes it into the same run, each epoch logged once."""
    config = _train_config(project.root, epochs=4)
    env = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # quick on a busy machine
    train = zoo_process(
        project.root, "train", str(config), env=env, stderr=subprocess.PIPE, start_new_session=True
    )
    lines: list[str] = []
    while not any(" epoch " in line for line in lines):
        line = train.stdout.readline().decode()
        assert line, "".join(lines)
        lines.append(line)
    os.kill(train.pid, signal.SIGTERM)
    _, err = train.communicate(timeout=GRACE_S + 30)
    assert train.returncode == 128 + signal.SIGTERM, err
    assert err.decode().count("\n") == 1 and "SIGTERM" in err.decode(), err
    assert not _none_left(train.pid, GRACE_S)
    (run,) = _runs(project.root, "stop")
    assert run.info.status == "KILLED"

    again = zoo_process(project.root, "train", str(config), env=env)
    assert again.wait(timeout=600) == 0, again.stdout.read().decode()
    (resumed,) = _runs(project.root, "stop")
    assert (resumed.info.run_id, resumed.info.status) == (run.info.run_id, "FINISHED")
    client = MlflowClient(f"sqlite:///{project.root / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, 5))


def test_sweep_cancel_stops_a_running_sweep_leaving_its_run_resumable(tiny_spec, project, capsys):
    """`zoo sweep cancel SPEC` from another shell: the sweep's process stops as SIGTERM
    stops it (exit 143; the test above shows such runs resume), its run under way ends
    KILLED; a second cancel finds nothing running."""
    spec = tiny_spec(sources=("a",), freezes=("none",), epochs=200)  # one run, two stages
    sweep = _sweep(spec, project.root, workers=1)
    logs = project.logs / "tiny"
    _wait_for(lambda: any(_epochs(log) > 2 for log in logs.glob("*.log")), sweep, "trained")
    capsys.readouterr()
    assert main(["sweep", "cancel", str(spec)]) == 0
    assert f"stopped zoo sweep run (pid {sweep.pid})" in capsys.readouterr().out
    assert sweep.wait(timeout=5) == 128 + signal.SIGTERM
    assert [r.info.status for r in _runs(project.root, "tiny")] == ["KILLED"]
    assert main(["sweep", "cancel", str(spec)]) == 0
    assert "nothing running here" in capsys.readouterr().out


def test_a_signal_mid_epoch_checkpoints_that_step_and_the_run_resumes_there(
    project, monkeypatch, tmp_path
):
    """SIGTERM during epoch 1's third step: the step ends, the stage checkpoints there and
    the run ends KILLED (exit 143); running it again trains only the steps left (21 of
    24) and logs the numbers of a run never stopped."""
    from zoo import train

    config = _train_config(project.root, epochs=2)  # 6 images x 8 flips / batch 4: 12 steps
    original, steps = train._StageTraining._step, []

    def step(self, batches, start):
        steps.append(start)
        if len(steps) == 3 and stop:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batches, start)

    monkeypatch.setattr(train._StageTraining, "_step", step)
    stop = True
    assert main(["train", str(config)]) == 128 + signal.SIGTERM
    (run,) = _runs(project.root, "stop")
    assert run.info.status == "KILLED" and len(steps) == 3
    steps.clear()
    stop = False
    assert main(["train", str(config)]) == 0
    assert len(steps) == 21 and steps[0] == 12  # epoch 1 went on at its fourth step
    (resumed,) = _runs(project.root, "stop")
    assert (resumed.info.run_id, resumed.info.status) == (run.info.run_id, "FINISHED")

    other = tmp_path / "unstopped"
    other.mkdir()
    monkeypatch.chdir(other)
    monkeypatch.setenv("ZOO_ROOT", str(other))
    assert main(["train", str(_train_config(other, epochs=2))]) == 0
    client, whole = (MlflowClient(f"sqlite:///{r / 'mlflow.db'}") for r in (project.root, other))
    (unstopped,) = _runs(other, "stop")
    for key in ("train_loss", "val_loss/d"):
        got = [m.value for m in client.get_metric_history(run.info.run_id, key)]
        want = [m.value for m in whole.get_metric_history(unstopped.info.run_id, key)]
        assert got == pytest.approx(want, rel=1e-6), key
