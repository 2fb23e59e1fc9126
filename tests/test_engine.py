"""The sweep engine at scale: datasets made once, uploaded once per worker, disk reclaimed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import TINY_DATA, zoo_process
from zoo.cli import main

MAKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from zoo.data import _store, generator_spec, materialise
    from zoo.paths import ProjectPaths

    counter = Path(sys.argv[1])
    generate = _store._generate

    def counted(spec):
        with counter.open("a") as handle:
            handle.write("simulated\\n")
        time.sleep(1.0)  # long enough that unlocked makers would all simulate
        return generate(spec)

    _store._generate = counted
    spec = generator_spec({**json.loads(sys.argv[3]), "defocus_nm": 5}, "datasets.a")
    print(materialise(sys.argv[2], spec, ProjectPaths(Path.cwd())).name)
    """
)


def test_concurrent_makers_of_one_dataset_simulate_it_once(project, tmp_path):
    counter = tmp_path / "simulations.txt"
    makers = [
        subprocess.Popen(
            [sys.executable, "-c", MAKER, str(counter), f"name{i}", json.dumps(TINY_DATA)],
            cwd=project.root,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    digests = {maker.communicate(timeout=120)[0].strip() for maker in makers}
    assert all(maker.returncode == 0 for maker in makers)
    assert counter.read_text().splitlines() == ["simulated"]
    assert len(digests) == 1
    index = json.loads(project.dataset_index.read_text())
    assert sorted(index) == [f"name{i}" for i in range(4)]  # no index update was lost


def _bytes(line: str) -> int:
    return int(re.search(r"\((\d+) bytes\)", line).group(1))


def test_sweep_uploads_each_dataset_once_per_worker_and_gc_frees_what_it_listed(
    tiny_spec, project, capsys
):
    spec = tiny_spec(sources=("a",))
    assert main(["sweep", "run", str(spec), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "making 3 dataset(s): a, b, c" in out
    assert out.index("making 3 dataset(s)") < out.index("[1/3] done 1")
    logs = "".join(p.read_text() for p in (project.logs / "tiny").glob("*.log"))
    for name in "abc":  # one worker, three jobs: each dataset uploaded by the first only
        assert logs.count(f"dataset {name}: uploaded to cpu") == 1
        assert logs.count(f"dataset {name}: on cpu since an earlier run") == 2

    weights = list(project.artifacts.rglob("weights/best.safetensors"))
    assert len(weights) == 3 and all(w.stat().st_nlink >= 2 for w in weights)  # stored once

    stage = next(f for f in project.stages.iterdir() if (f / "result.json").exists())
    leftover = stage / "last.safetensors"
    leftover.write_bytes(b"\0" * 5000)  # as a worker killed before removing it leaves it
    datasets = project.root / "other.yaml"
    datasets.write_text(yaml.safe_dump({"datasets": {"d": {**TINY_DATA, "defocus_nm": 30}}}))
    assert main(["data", "make", str(datasets)]) == 0
    unused = project.dataset(json.loads(project.dataset_index.read_text())["d"]["digest"])
    capsys.readouterr()

    assert main(["gc", str(spec), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert str(leftover) in listed and str(unused) in listed
    assert leftover.exists() and unused.exists()
    assert main(["gc", str(spec)]) == 0
    freed = capsys.readouterr().out
    assert _bytes(freed.splitlines()[-1]) == _bytes(listed.splitlines()[-1]) > 5000
    assert not leftover.exists() and not unused.exists()
    assert "d" not in json.loads(project.dataset_index.read_text())
    entries = [p for p in project.datasets.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 4  # a, b, c and the index (dot-entries hold locks)

    assert main(["sweep", "run", str(spec)]) == 0
    assert "nothing to do" in capsys.readouterr().out


PROFILE = {
    "name": "fake",
    "device": "cpu (test)",
    "model": {},
    "image_size": 64,
    "train_images_per_s": 400.0,  # 1600 images/s at 32 px
    "val_images_per_s": 1600.0,  # 6400 images/s at 32 px
    "job_overhead_s": 1.0,
    "worker_host_bytes": 10**9,
    "measured": "never",
}


def test_calibrate_saves_a_profile_the_plan_prices_a_sweep_with(tiny_spec, project, capsys):
    """zoo calibrate measures the rates here and a job's overhead in a sweep worker."""
    assert main(["calibrate", "here"]) == 0
    profile = json.loads(project.profile("here").read_text())
    assert profile["train_images_per_s"] > 0 and profile["val_images_per_s"] > 0
    assert 0 < profile["job_overhead_s"] < 5  # seconds, not the runs' whole wall time
    assert profile["worker_host_bytes"] > 100 * 2**20  # a worker holds torch at least
    capsys.readouterr()
    assert main(["sweep", "plan", str(tiny_spec()), "--profile", "here", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predicted_seconds"] > 4 * profile["job_overhead_s"]


def test_plan_on_a_profile_predicts_time_disk_and_memory(tiny_spec, project, capsys):
    spec = tiny_spec(sources=("a",))  # 1 shared pretrain, 2 transfers, 3 jobs
    project.profile("fake").parent.mkdir(parents=True)
    project.profile("fake").write_text(json.dumps(PROFILE))
    plans = {}
    for workers in (1, 2):
        args = ["sweep", "plan", str(spec), "--profile", "fake", "--workers", str(workers)]
        assert main([*args, "--json"]) == 0
        plans[workers] = json.loads(capsys.readouterr().out)
    one = plans[1]
    # pretrain: 8 images, transfers: 4 images each, 1 epoch, 8 dihedral transforms;
    # validation: 4 images of a, b and c after every epoch of the 3 stages trained
    assert one["image_passes"] == (8 + 2 * 4) * 8
    assert one["validation_image_passes"] == 3 * 3 * 4
    # the transfer with a frozen encoder makes its 32 passes at 2/3 of a full pass's cost
    expected = 3 * 1.0 + (96 + 32 * 2 / 3) / 1600 + 36 / 6400
    assert abs(one["predicted_seconds"] - expected) < 1e-6
    chain = 2 * 1.0 + 96 / 1600 + 24 / 6400  # the pretrain, then one transfer
    assert abs(plans[2]["predicted_seconds"] - chain) < 1e-6
    assert one["disk_bytes"] > one["dataset_bytes"] == 3 * 20 * 32 * 32 * 5
    assert one["host_bytes_per_worker"] == 10**9 + one["device_bytes_per_worker"]
    assert main(["sweep", "plan", str(spec), "--profile", "fake"]) == 0
    assert "predicted wall time on profile fake with 1 worker(s)" in capsys.readouterr().out
    assert main(["sweep", "plan", str(spec), "--profile", "cpu-2core-loaded", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["profile"] == "cpu-2core-loaded"  # committed
    assert main(["sweep", "plan", str(spec), "--profile", "nope"]) == 2
    assert "--profile: no profile 'nope'; known:" in capsys.readouterr().err


def _pool_worker(parent: int) -> int:
    """The pid of the one worker process of the local executor started by ``parent``: a
    child of its worker server."""
    for server in _children(parent):
        if b"forkserver" in Path(f"/proc/{server}/cmdline").read_bytes():
            (worker,) = _children(server)
            return worker
    raise AssertionError(f"no worker server among {_children(parent)}")


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _epoch_lines(log: Path) -> int:
    return len(re.findall(r"^  \w+ epoch \d+/", log.read_text(), re.M))


def test_sigterm_to_a_worker_loses_no_metric_rows_and_no_figures(tiny_spec, project):
    """A worker killed with SIGTERM mid-run: every epoch it reported has its metric rows,
    the runs it finished have their figures (the background drawer was drained), the
    killed run ends KILLED and a re-run completes it with each step logged once."""
    spec = tiny_spec(sources=("a",), epochs=12)  # a shared stage, then 2 runs of 12 epochs
    sweep = zoo_process(project.root, "sweep", "run", str(spec), "--workers", "1")
    logs = project.logs / "tiny"
    deadline = time.time() + 600
    while time.time() < deadline:
        counts = sorted(_epoch_lines(log) for log in logs.glob("*.log"))
        if len(counts) == 3 and counts[-1] == 13 and 1 < counts[1] < 13:
            break  # the first run finished, the second trains its transfer stage
        assert sweep.poll() is None, sweep.stdout.read().decode()
        time.sleep(0.05)
    else:
        raise AssertionError(f"the sweep never reached the second run: {counts}")
    os.kill(_pool_worker(sweep.pid), signal.SIGTERM)
    sweep.communicate(timeout=120)

    client = MlflowClient(project.tracking_uri)
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs = {r.data.tags["zoo.config_hash"]: r for r in client.search_runs([experiment])}
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED", "FINISHED", "KILLED"]
    for key, run in runs.items():
        rows = client.get_metric_history(run.info.run_id, "train_loss")
        reported = _epoch_lines(logs / f"{key}.log")  # logged, then written to the log
        assert reported <= len(rows) <= reported + 1
        if run.info.status == "FINISHED":
            figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
            assert figures == {"figures/loss_curves.png", "figures/predictions.png"}

    assert main(["sweep", "run", str(spec), "--workers", "1"]) == 0
    (killed,) = [r for r in runs.values() if r.info.status == "KILLED"]
    steps = [m.step for m in client.get_metric_history(killed.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, 14))  # resumed: no step lost or logged twice
