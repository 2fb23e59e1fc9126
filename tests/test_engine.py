"""The sweep engine at scale: datasets made once, uploaded once per worker, disk reclaimed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import TINY_DATA

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
