"""Host memory of one sweep worker at the scale of a spec, without making its data.

Every dataset of the spec's first run is put in a fresh cache as a sparse file
of its real shape (reads return zeros; nothing is simulated or written), then a
child process loads them as a run does and uploads them to the ``meta`` device,
which runs zoo's whole upload path on the host but keeps no device copy; every
page is then read, as a real upload reads it: what remains is what a GPU worker
holds in host memory. Printed for the memory-mapped
loading of today and for the old full read: anonymous (private) resident memory
and file-backed resident pages (page cache, shared by the node's workers).
Target (issue 16): at most 2 GB of private host memory per worker for the
defocus spec. Run: ``.venv/bin/python benchmarks/bench_memory.py [--spec FILE]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SPEC = Path(__file__).parent.parent / "sweeps" / "defocus.yaml"

CHILD = """
import json, sys
from pathlib import Path
import numpy as np
import torch
from zoo.data import _store
from zoo.paths import ProjectPaths
from zoo.resident import device_datasets
from zoo.run import load_datasets
from zoo.sweep import load_spec, make_plan

if sys.argv[3] == "full":  # the old loading: every array read into memory as float32
    mapped = _store.load
    def full(name, folder):
        d = mapped(name, folder)
        return _store.Dataset(name, np.array(d.images, np.float32), np.array(d.masks),
                              d.train_count, d.pixel_size_a, d.digest)
    _store.load = full
    import zoo.run
    zoo.run.load = full
config = make_plan(load_spec(Path(sys.argv[1]))).runs[0].config
datasets = load_datasets(config, ProjectPaths(Path(sys.argv[2])))
device_datasets(datasets, torch.device("meta"), echo=lambda _: None)
for d in datasets.values():  # a real upload reads every page; meta tensors read none
    d.images.sum(), d.masks.sum()
status = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines())
kb = lambda k: int(status[k].split()[0]) * 1024
print(json.dumps({"anon": kb("RssAnon"), "file": kb("RssFile"), "peak": kb("VmHWM"),
                  "datasets": len(datasets)}))
"""


def fake_cache(spec: Path, root: Path) -> None:
    """Sparse cached arrays of the real shapes for every dataset of the spec's first run."""
    from zoo.data import GeneratorSpec
    from zoo.paths import ProjectPaths
    from zoo.sweep import load_spec, make_plan

    paths = ProjectPaths(root)
    config = make_plan(load_spec(spec)).runs[0].config
    for name in config.used_datasets:
        source = config.sources[name]
        assert isinstance(source, GeneratorSpec), f"{name}: only generated datasets"
        folder = paths.dataset(source.digest())
        folder.mkdir(parents=True)
        shape = (source.count, source.image_size, source.image_size)
        np.lib.format.open_memmap(folder / "images.npy", "w+", np.float32, shape).flush()
        np.lib.format.open_memmap(folder / "masks.npy", "w+", np.uint8, shape).flush()
        meta = {"train_count": source.train_count, "pixel_size_a": 1.0, "source": {}}
        (folder / "meta.json").write_text(json.dumps(meta))


def measure(spec: Path, root: Path, mode: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(spec), str(root), mode],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--full", action="store_true", help="also measure the old full read")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fake_cache(args.spec, Path(tmp))
        for mode in ("mapped", "full") if args.full else ("mapped",):
            m = measure(args.spec, Path(tmp), mode)
            print(
                f"{mode:>6}: {m['datasets']} datasets; private {m['anon'] / 1e9:.2f} GB, "
                f"page cache {m['file'] / 1e9:.2f} GB, peak resident {m['peak'] / 1e9:.2f} GB"
            )


if __name__ == "__main__":
    main()
