"""The sweep engine at scale: datasets made once, uploaded once per worker, disk reclaimed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import yaml

from tests.conftest import TINY_DATA
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
    assert out.index("making 3 dataset(s)") < out.index("finished run")
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
    assert len(list(project.datasets.iterdir())) == 4  # a, b, c and the index

    assert main(["sweep", "run", str(spec)]) == 0
    assert "nothing to do" in capsys.readouterr().out
