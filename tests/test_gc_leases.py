"""``zoo gc`` never hurts running or queued work: makers, runs and sweeps hold leases
(zoo._leases) on what they use, and gc keeps it, whichever spec it is given; a lease
whose holder died (its process gone, or its heartbeat too old) stops holding."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import TINY_DATA, tiny_spec_document

from zoo import gc
from zoo.cli import main
from zoo.store import CONFIG_HASH_TAG, Tracker
from zoo.sweep import load_spec, make_plan

# `zoo data make` that pauses after each array it saves into its staging folder
MAKER = """
import sys, time
from pathlib import Path
import numpy as np
from zoo.cli import main

paused, go = Path(sys.argv[1]), Path(sys.argv[2])
save = np.save

def save_then_wait(file, array):
    save(file, array)
    paused.write_text(str(file))
    while not go.exists():
        time.sleep(0.05)

np.save = save_then_wait
sys.exit(main(["data", "make", sys.argv[3]]))
"""

# `zoo sweep run` that stops as its executor starts (the sweep holds its lease by then),
# with no worker server (only for speed: this sweep trains nothing)
SWEEP = """
import sys, time
from pathlib import Path
import zoo.sweep
from zoo.cli import main

def stop(*args, **kwargs):
    Path(sys.argv[1]).touch()
    time.sleep(600)

zoo.sweep.LocalExecutor.submit = stop
zoo.sweep.start_worker_server = lambda: None
sys.exit(main(["sweep", "run", sys.argv[2]]))
"""


def _start(script: str, root: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-c", script, *args]
    return subprocess.Popen(
        command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _other_spec(root: Path) -> Path:
    """Another sweep of the project: the same shape, other datasets."""
    document = tiny_spec_document()
    document["name"] = "other"
    for name, defocus in zip("abc", (30, 40, 50), strict=True):
        document["base"]["datasets"][name] = {**TINY_DATA, "defocus_nm": defocus}
    path = root / "other.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _tiny_folders(spec: Path, project) -> tuple[list[Path], Path]:
    """The cached datasets of the tiny sweep (made now), and the folder of its first
    stage, finished with a leftover checkpoint that gc removes unless the stage is held."""
    assert main(["data", "make", str(spec)]) == 0
    index = json.loads(project.dataset_index.read_text())
    datasets = [project.dataset(index[name]["digest"]) for name in "abc"]
    stage = project.stage(make_plan(load_spec(spec)).jobs[0].key)
    stage.mkdir(parents=True)
    (stage / "result.json").write_text("{}")
    (stage / "last.safetensors").write_bytes(b"\0" * 5000)
    return datasets, stage / "last.safetensors"


def test_gc_during_a_live_data_make_removes_nothing_it_holds(project, tiny_spec, capsys):
    datasets = project.root / "d.yaml"
    datasets.write_text(
        yaml.safe_dump({"datasets": {"d": {**TINY_DATA, "count": 4, "defocus_nm": 30}}})
    )
    paused, go = project.root / "paused", project.root / "go"
    maker = _start(MAKER, project.root, str(paused), str(go), str(datasets))
    try:
        _wait_for(paused, maker)
        staging = Path(paused.read_text()).parent
        assert staging.parent == project.datasets and staging.name.startswith(".")
        assert main(["gc"]) == 0
        assert main(["gc", str(tiny_spec())]) == 0  # a spec that does not declare d
        out = capsys.readouterr().out
        assert (staging / "images.npy").exists()
        assert out.count("kept 1 leased (in use by making dataset d)") == 2
    finally:
        go.touch()
        output = maker.communicate(timeout=120)[0]
    assert maker.returncode == 0, output  # it was not cut short
    digest = json.loads(project.dataset_index.read_text())["d"]["digest"]
    assert (project.dataset(digest) / "meta.json").exists()
    assert not project.leases.exists()  # let go once made, nothing left behind


def test_gc_of_another_spec_keeps_a_running_sweeps_datasets_and_stages_until_it_dies(
    project, tiny_spec, capsys
):
    spec, other = tiny_spec(), _other_spec(project.root)
    datasets, leftover = _tiny_folders(spec, project)
    running = project.root / "running"
    sweep = _start(SWEEP, project.root, str(running), str(spec))
    try:
        _wait_for(running, sweep)
        capsys.readouterr()
        assert main(["gc", str(other)]) == 0
        out = capsys.readouterr().out
        assert all(d.exists() for d in datasets) and leftover.exists()
        assert "kept 4 leased (in use by sweep tiny (zoo sweep run))" in out
    finally:
        sweep.kill()  # the holder dies: its process is gone from this host
        sweep.communicate(timeout=60)
    assert main(["gc", str(other)]) == 0
    out = capsys.readouterr().out
    assert not any(d.exists() for d in datasets) and not leftover.exists()
    assert "lease of work that ended" in out and not list(project.leases.glob("*.json"))


def test_gc_of_another_spec_keeps_a_queued_slurm_sweeps_datasets_until_its_jobs_end(
    project, tiny_spec, capsys, monkeypatch
):
    """No SLURM here: sbatch and scontrol answer as a cluster would."""
    import zoo.sweep._slurm as slurm

    monkeypatch.setattr(slurm, "_slurm", lambda *args: "4242" if args[0] == "sbatch" else "")
    spec, other = tiny_spec(), _other_spec(project.root)
    datasets, leftover = _tiny_folders(spec, project)
    assert main(["sweep", "submit", str(spec)]) == 0
    capsys.readouterr()
    assert main(["gc", str(other)]) == 0
    out = capsys.readouterr().out
    assert all(d.exists() for d in datasets) and leftover.exists()
    assert "kept 4 leased (in use by sweep tiny (SLURM " in out

    tracker = Tracker(project.tracking_uri, project)
    experiment = tracker.experiment("tiny")
    for job in make_plan(load_spec(spec)).jobs:  # every task ended
        tracker.finish(tracker.create(experiment, {CONFIG_HASH_TAG: job.key}))
    assert main(["gc", str(other)]) == 0
    out = capsys.readouterr().out
    assert not any(d.exists() for d in datasets) and not leftover.exists()
    assert "lease of work that ended" in out


def test_a_lease_holds_while_its_heartbeat_is_fresh_and_not_after(project):
    from zoo._leases import Lease, leased, queue_lease

    folder = project.dataset("x")
    folder.mkdir(parents=True)
    with Lease(project, [folder], "a maker", interval=0.05) as lease:
        first = json.loads(lease.file.read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads(lease.file.read_text())["heartbeat"] > first
        assert leased(project, folder / "images.npy") == "a maker"
    assert leased(project, folder) is None and not lease.file.exists()

    file = queue_lease(project, [folder], "a sweep on a lost cluster", {}, timeout=0.2)
    assert leased(project, folder) == "a sweep on a lost cluster"
    time.sleep(0.3)  # its heartbeat is now older than its timeout
    assert leased(project, folder) is None
    found = gc.collect(project)
    assert [(g.path, g.why) for g in found] == [(file, "lease of work that ended")]
    gc.remove(found, project)
    assert not file.exists()
