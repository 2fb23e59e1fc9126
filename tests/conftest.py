"""Shared fixtures: every test gets its own project root (datasets, runs, mlflow.db)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from zoo.paths import ProjectPaths


def pytest_collection_modifyitems(items):
    """Tests marked ``gpu`` are skipped, "needs a CUDA device", when torch sees none."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        import torch

        if not torch.cuda.is_available():
            for item in gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def zoo_process(root: Path, *args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """``zoo ARGS`` as a child process in project ``root`` (its working directory and
    ``$ZOO_ROOT``, ``env`` added); stdout and stderr share one pipe unless ``popen`` says."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, **popen}
    return subprocess.Popen(
        [sys.executable, "-m", "zoo.cli", *args],
        cwd=root,
        env={**os.environ, "ZOO_ROOT": str(root), **(env or {})},
        **popen,
    )


@pytest.fixture
def project(tmp_path, monkeypatch) -> ProjectPaths:
    """An empty project root; zoo commands run inside it see it as ``$ZOO_ROOT``."""
    monkeypatch.setenv("ZOO_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return ProjectPaths(tmp_path)


@pytest.fixture
def tiny_runs(project):
    """A function listing the MLflow runs of the project's "tiny" sweep (none yet: [])."""
    from mlflow.tracking import MlflowClient

    def runs():
        client = MlflowClient(project.tracking_uri)
        experiment = client.get_experiment_by_name("tiny")
        return client.search_runs([experiment.experiment_id]) if experiment else []

    return runs


TINY_DATA = {"preset": "defocus", "image_size": 32, "count": 20, "sim_sampling_a": 0.4}


def tiny_spec_document(sources=("a", "b"), freezes=("none", "encoder"), extra=None, epochs=1):
    """The "tiny" sweep spec: pretrain on `source`, transfer to b with `freeze`; a tiny timm
    test encoder, 32 px sets a, b, c."""
    return {
        "name": "tiny",
        "base": {
            "model": {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5},
            "datasets": {
                name: {**TINY_DATA, "defocus_nm": defocus}
                for name, defocus in (("a", -10), ("b", 10), ("c", 0))
            },
            "stages": [
                {"name": "pretrain", "train": "a", "size": 8, "epochs": 1},
                {"name": "transfer", "train": "b", "size": 4, "epochs": epochs},
            ],
            "validate_on": ["a", "b", "c"],
        },
        "axes": [{"product": {"source": list(sources), "freeze": list(freezes)}}],
        "set": {"stages.0.train": "$source", "stages.1.freeze": "$freeze"},
        "seeds": [0],
        **(extra or {}),
    }


@pytest.fixture
def tiny_spec(project):
    """A function writing the "tiny" sweep spec (see tiny_spec_document) and returning its
    path."""

    def write(sources=("a", "b"), freezes=("none", "encoder"), extra=None, epochs=1):
        path = project.root / "tiny.yaml"
        path.write_text(yaml.safe_dump(tiny_spec_document(sources, freezes, extra, epochs)))
        return path

    return write


@pytest.fixture
def search_spec(project):
    """A function writing the "tiny" search (learning rate and freezing of the transfer
    stage; the pretraining stage is the same in every trial) and returning its path."""

    def write(search=None, epochs=2, name="tiny"):
        spec = {
            "name": name,
            "base": {
                "model": {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5},
                "datasets": {n: {**TINY_DATA, "defocus_nm": d} for n, d in (("a", -10), ("b", 10))},
                "stages": [
                    {"name": "pretrain", "train": "a", "size": 8, "epochs": 1},
                    {"name": "transfer", "train": "b", "size": 4, "epochs": epochs},
                ],
                "validate_on": ["a", "b"],
            },
            "set": {"stages.1.lr": "$lr", "stages.1.freeze": "$freeze"},
            "search": {
                "parameters": {
                    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                    "freeze": {"type": "categorical", "choices": ["none", "encoder"]},
                },
                "budget": 12,
                **(search or {}),
            },
        }
        path = project.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory) -> ProjectPaths:
    """A finished "tiny" sweep (source a; freeze none and encoder: one shared pretrain stage,
    two runs) with a description, trained once per session in its own project root."""
    from zoo.cli import main

    root = tmp_path_factory.mktemp("trained")
    extra = {"description": "tiny sweep for the model zoo tests"}
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_spec_document(("a",), extra=extra)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_ROOT", str(root))
        patch.chdir(root)
        assert main(["sweep", "run", "tiny.yaml", "--workers", "2"]) == 0
    return ProjectPaths(root)


@pytest.fixture
def trained(trained_tiny, monkeypatch) -> ProjectPaths:
    """trained_tiny's project root as this test's ``$ZOO_ROOT`` and working directory."""
    monkeypatch.setenv("ZOO_ROOT", str(trained_tiny.root))
    monkeypatch.chdir(trained_tiny.root)
    return trained_tiny


SCRIPT = Path(__file__).parent.parent / "slurm" / "local-cluster.sh"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The real local SLURM cluster (slurm/local-cluster.sh), started once per session:
    MaxArraySize 3 (so arrays split), 4 CPUs declared (so throttles, not CPUs, bound)."""
    if os.geteuid() != 0 and not shutil.which("slurmctld"):
        pytest.skip("the local cluster needs root (or SLURM installed)")
    folder = tmp_path_factory.mktemp("slurm")
    env = {
        **os.environ,
        "ZOO_SLURM_DIR": str(folder),
        "ZOO_SLURM_MAX_ARRAY_SIZE": "3",
        "ZOO_SLURM_CPUS": "4",
    }
    started = subprocess.run(
        [str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600
    )
    assert started.returncode == 0, started.stderr
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = started.stdout.strip()
    yield folder
    subprocess.run([str(SCRIPT), "stop"], env=env, timeout=120, check=False)
    if previous is None:
        os.environ.pop("SLURM_CONF")
    else:
        os.environ["SLURM_CONF"] = previous


def squeue_empty(timeout=300):
    """Wait until the cluster's queue is empty (AssertionError after ``timeout`` s)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not subprocess.run(
            ["squeue", "-h", "-o", "%i"], capture_output=True, text=True
        ).stdout.strip():
            return
        time.sleep(1)
    raise AssertionError("jobs still queued after the timeout")


from stores import postgres, tracking_server  # noqa: E402, F401  (real stores, session-wide)


def unfit_weights(path: Path) -> None:
    """Weights zoo loads safely (so a run starting from them exists) that fit no model:
    the run fails when they are loaded into it, naming the file."""
    import torch
    from safetensors.torch import save_file

    save_file({"not.a.layer": torch.zeros(1)}, path)
