"""A full disk: one line naming the path (and the bytes when known), exit 1, the store
intact, and the same command resumes once space is freed. Filesystems are real tmpfs
mounts (root only; skipped otherwise)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_spec_document
from mlflow.tracking import MlflowClient

from zoo import store as tracking
from zoo.checkpoint import save_weights
from zoo.cli import main
from zoo.errors import OutOfSpace


@pytest.fixture
def small(tmp_path):
    """A fresh 16 MiB tmpfs folder."""
    folder = tmp_path / "small"
    folder.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)]
    if subprocess.run(command, capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder) -> None:
    """Fill ``folder``'s filesystem to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                continue
    finally:
        os.close(fd)


def _make_store(uri: str) -> None:
    """Make the store while there is room, in a process of its own: its ended
    connections leave no write-ahead log to reuse, so the next write needs new space."""
    code = f"from zoo.store import Tracker; Tracker({uri!r})"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def _project(root) -> str:
    """A one-stage, two-epoch run config on an 8-image HDF5 set in ``root``; its path."""
    rng = np.random.default_rng(0)
    with h5py.File(root / "data.h5", "w") as handle:
        handle["images"] = rng.random((8, 32, 32)).astype(np.float32)
        handle["masks"] = (rng.random((8, 32, 32)) > 0.5).astype(np.uint8)
    document = {
        "experiment": "full",
        "model": {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5},
        "datasets": {"d": {"path": "data.h5", "val_fraction": 0.25}},
        "stages": [{"name": "s", "train": "d", "augment": "none", "epochs": 2, "batch_size": 4}],
    }
    (root / "run.yaml").write_text(yaml.safe_dump(document))
    return str(root / "run.yaml")


def test_sqlite_store_filling_mid_run_is_one_line_and_the_same_command_resumes(
    project, small, monkeypatch, capfd
):
    config, store = _project(project.root), small / "mlflow.db"
    uri = f"sqlite:///{store}"
    _make_store(uri)
    created = tracking.Tracker.create

    def create_then_fill(self, *args, **kwargs):  # the disk fills once the run exists
        run_id = created(self, *args, **kwargs)
        _fill(small)
        return run_id

    monkeypatch.setattr(tracking.Tracker, "create", create_then_fill)
    assert main(["train", config, "--tracking-uri", uri]) == 1
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and err.count("\n") == 1, out + err
    assert err.startswith(f"zoo: error: out of space writing {store} (0 B free there); "), err
    with closing(sqlite3.connect(store)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    (small / "filler").unlink()
    monkeypatch.setattr(tracking.Tracker, "create", created)
    assert main(["train", config, "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("full").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]  # the same run, resumed
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")] == [1, 2]


def test_a_store_on_a_full_disk_is_one_line_not_a_store_problem(project, small, capfd):
    uri = f"sqlite:///{small / 'mlflow.db'}"
    _make_store(uri)
    _fill(small)
    assert main(["train", _project(project.root), "--tracking-uri", uri]) == 1
    err = capfd.readouterr().err
    assert err.startswith(f"zoo: error: out of space writing {small / 'mlflow.db'} "), err


def test_a_dataset_on_a_full_disk_is_one_line_and_made_once_there_is_room(
    small, monkeypatch, capfd
):
    monkeypatch.setenv("ZOO_ROOT", str(small))
    monkeypatch.chdir(small)
    document = tiny_spec_document(("a",), ("none",))
    document["base"]["datasets"]["a"].update(count=300, image_size=64)  # 5.9 MiB
    spec = small.parent / "tiny.yaml"
    spec.write_text(yaml.safe_dump(document))
    (small / "filler").write_bytes(b"\0" * (12 << 20))
    assert main(["data", "make", str(spec), "a"]) == 1
    err = capfd.readouterr().err
    assert err.startswith(f"zoo: error: out of space writing {small}/.zoo/datasets/"), err
    assert "(5.9 MiB needed, 0 B free there)" in err and err.count("\n") == 1, err
    assert [p.name for p in (small / ".zoo" / "datasets").iterdir()] == [".locks"]
    (small / "filler").unlink()
    assert main(["data", "make", str(spec), "a"]) == 0


def test_weights_on_a_full_disk_name_the_file_and_the_bytes_and_leave_no_partial_file(small):
    _fill(small)
    model = torch.nn.Linear(64, 64)
    with pytest.raises(OutOfSpace, match=r"writing .*w\.safetensors \(16\.2 KiB needed, 0 B free"):
        save_weights(model, small / "w.safetensors")
    assert sorted(p.name for p in small.iterdir()) == ["filler"]


def test_internal_errors_log_under_the_project_even_when_it_is_full(small, monkeypatch, capfd):
    """A log goes under .zoo/logs; on a full disk the line says why none was saved there,
    and nothing is written outside the project."""
    monkeypatch.setenv("ZOO_ROOT", str(small))
    monkeypatch.chdir(small)

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr("zoo.cli._analysis._gc", broken)
    assert main(["gc", "--dry-run"]) == 1
    err = capfd.readouterr().err
    logs = small / ".zoo" / "logs"
    assert f"(traceback in {logs}/internal-error-" in err, err
    (log,) = logs.iterdir()
    assert "RuntimeError: a bug" in log.read_text()
    log.unlink()
    _fill(small)
    assert main(["gc", "--dry-run"]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"(traceback not saved: {logs}/internal-error-" in err, err
    assert err.rstrip().endswith(": No space left on device)"), err
