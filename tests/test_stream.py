"""Streamed datasets: samples made by producer processes while a run trains, the same
numbers whatever the producer count or an interruption, bounded memory, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import zoo_process
from zoo import train
from zoo.cli import main
from zoo.paths import ProjectPaths

DATA = {"preset": "defocus", "defocus_nm": -10, "image_size": 32, "sim_sampling_a": 0.4}
TIMING = {"epoch_seconds", "images_per_s", "data_wait_fraction", "producer_images_per_s"}


def _project(root: Path, monkeypatch, samples=8, producers=2, queue=4, epochs=2) -> Path:
    """A run training 2 epochs on a streamed set ``s``, validating on stored set ``v``."""
    root.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("ZOO_ROOT", str(root))
    monkeypatch.chdir(root)
    stream = {"samples_per_epoch": samples, "producers": producers, "queue": queue}
    document = {
        "experiment": "stream",
        "model": {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5},
        "device": "cpu",
        "datasets": {
            "s": {**DATA, "stream": stream},
            "v": {**DATA, "count": 4, "val_fraction": 0.5},
        },
        "stages": [
            {"name": "s", "train": "s", "epochs": epochs, "batch_size": 4, "select_on": "v"}
        ],
        "validate_on": ["v"],
    }
    (root / "run.yaml").write_text(yaml.safe_dump(document))
    return root


def _run(root: Path):
    client = MlflowClient(ProjectPaths(root).tracking_uri)
    experiment = client.get_experiment_by_name("stream")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def _metrics(client, run) -> dict[str, list[tuple[int, float]]]:
    """Every metric's history but the timings."""
    keys = sorted(
        k for k in run.data.metrics if k.split("/")[0] not in TIMING and "seconds" not in k
    )
    history = {k: client.get_metric_history(run.info.run_id, k) for k in keys}
    return {k: sorted((m.step, m.value) for m in v) for k, v in history.items()}


def test_one_and_two_producers_log_identical_metrics(tmp_path, monkeypatch):
    results = []
    for producers in (1, 2):
        root = _project(tmp_path / str(producers), monkeypatch, producers=producers)
        assert main(["train", "run.yaml"]) == 0
        client, run = _run(root)
        results.append(_metrics(client, run))
        assert len(client.get_metric_history(run.info.run_id, "data_wait_fraction")) == 2
        assert run.data.metrics["producer_images_per_s"] > 0
        (seen,) = run.inputs.dataset_inputs  # lineage: the generator and the samples seen
        assert seen.dataset.name == "s" and '"samples": [0, 8]' in seen.dataset.profile
        assert '"generator"' in seen.dataset.source and '"defocus_nm": -10' in seen.dataset.source
    assert "train_loss" in results[0] and "val_loss/v" in results[0]
    assert results[0] == results[1]


def test_a_stream_stopped_mid_epoch_resumes_to_the_uninterrupted_metrics(tmp_path, monkeypatch):
    from zoo import _streaming

    reference = _project(tmp_path / "reference", monkeypatch)
    assert main(["train", "run.yaml"]) == 0
    expected = _metrics(*_run(reference))

    root = _project(tmp_path / "stopped", monkeypatch)
    client, run = _stopped_at_first_batch_then_resumed(root, _streaming._EpochBatches, monkeypatch)
    assert run.info.status == "FINISHED"
    assert _metrics(client, run) == expected


def _stopped_at_first_batch_then_resumed(root: Path, batches: type, monkeypatch):
    """``zoo train run.yaml`` in ``root`` stopped (as a preemption signal stops it) after
    the first batch ``batches`` hands out, left RUNNING, then run again: (client, run)."""
    take = batches.__call__

    def stop_after_first_batch(feed, start, size):
        if start == 0:
            train.STOP.set()  # as a preemption signal does: checkpoint after this step
        return take(feed, start, size)

    monkeypatch.setattr(batches, "__call__", stop_after_first_batch)
    try:
        assert main(["train", "run.yaml"]) != 0
    finally:
        train.STOP.clear()
    assert _run(root)[1].info.status == "RUNNING"
    monkeypatch.setattr(batches, "__call__", take)
    assert main(["train", "run.yaml"]) == 0
    return _run(root)


def test_the_queue_bounds_memory_whatever_the_epoch(tmp_path, monkeypatch):
    from zoo import _streaming

    _project(tmp_path, monkeypatch, samples=100_000, queue=8, epochs=1)
    take, seen = _streaming._EpochBatches.__call__, {}

    def stop_after_three_batches(batches, start, size):
        out = take(batches, start, size)
        if start == 8:
            time.sleep(1.0)  # producers as far ahead as they can get
            ring = batches.feed.ring
            seen.update(made=int(ring.made.sum()), taken=int(ring.taken[0]), nbytes=ring.nbytes)
            train.STOP.set()
        return out

    monkeypatch.setattr(_streaming._EpochBatches, "__call__", stop_after_three_batches)
    try:
        assert main(["train", "run.yaml"]) != 0
    finally:
        train.STOP.clear()
    assert seen["taken"] == 12
    # at most a full queue made ahead, plus the one each producer holds while it waits
    assert seen["made"] <= seen["taken"] + 8 + 2
    assert seen["nbytes"] < 8 * 2 * 32 * 32 * 4 + 4096


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return stat[0] != "Z"


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads /proc")
def test_no_producer_outlives_a_killed_worker(tmp_path, monkeypatch):
    root = _project(tmp_path, monkeypatch, samples=100_000, epochs=1)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}  # orphans hold no pipe
    worker = zoo_process(root, "train", "run.yaml", **quiet)
    try:
        producers: list[int] = []
        deadline = time.monotonic() + 60
        while len(producers) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            producers = [
                p
                for p in _children(worker.pid)
                if "zoo-stream" in Path(f"/proc/{p}/comm").read_text()
            ]
        assert len(producers) == 2, worker.poll()
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in producers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in producers)


def test_producers_start_once_a_run_and_make_the_numbers_of_producers_started_per_epoch(
    tmp_path, monkeypatch
):
    from zoo import _streaming
    from zoo.data import _stream

    started = []
    start = _stream.Producers.__init__

    def counted(producers, *args):
        started.append(args)
        start(producers, *args)

    monkeypatch.setattr(_streaming.Producers, "__init__", counted)
    results = []
    for per_epoch in (False, True):  # True: each epoch's producers start at its beginning
        if per_epoch:
            monkeypatch.setattr(_streaming.StreamFeed, "following", lambda feed, epoch: None)
        root = _project(tmp_path / str(per_epoch), monkeypatch, samples=6, queue=4, epochs=1)
        document = yaml.safe_load((root / "run.yaml").read_text())
        second = {**document["stages"][0], "name": "t", "size": 4, "optimizer_state": "carry"}
        document["stages"].append(second)  # 2 stages on s, the second continuing its stream
        (root / "run.yaml").write_text(yaml.safe_dump(document))
        started.clear()
        assert main(["train", "run.yaml"]) == 0
        results.append(_metrics(*_run(root)))
        assert len(started) == (2 if per_epoch else 1)
    assert "train_loss" in results[0] and results[0] == results[1]
