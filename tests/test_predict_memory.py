"""zoo predict's memory follows its tiles, not the image: a test of its own, so the residual
project it predicts with is fresh (after other predictions in the same pytest process the
capped subprocess was seen to wait forever)."""

from __future__ import annotations

import numpy as np
from test_predict import CAPPED, _pair, in_residual, residual  # noqa: F401 (fixtures)


def test_memory_follows_the_tiles_not_the_image(in_residual, tmp_path):  # noqa: F811
    """A 2 x 1024 x 1536 float64 image (24 MiB; its output 6 MiB) is predicted under an
    RLIMIT_DATA 8 MiB above what a first prediction left in use: read and written
    memory-mapped (shared file mappings are not counted), tile by tile. RLIMIT_DATA,
    not RLIMIT_AS: the address space counts those mappings and torch's reservations,
    and torch's import alone is far above any image a fast test can predict. One thread
    and one malloc arena: glibc's per-thread arenas keep freed memory."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(1)
    np.save(tmp_path / "small.npy", _pair(rng, 112)[0][:, :64])  # two tiles
    big = np.lib.format.open_memmap(tmp_path / "big.npy", "w+", np.float64, (2, 1024, 1536))
    for top in range(0, 1024, 128):
        big[:, top : top + 128] = _pair(rng, 128)[0][:, :, :1] * np.ones(1536)
    big.flush()
    del big
    files = [str(tmp_path / n) for n in ("small.npy", "big.npy", "out")]
    done = subprocess.run(
        [sys.executable, "-c", CAPPED, *files, str(8 * 1024)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MALLOC_ARENA_MAX": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    output = np.load(tmp_path / "out" / "big_output.npy", mmap_mode="r")
    assert output.shape == (1024, 1536) and np.isfinite(output[::64, ::64]).all()
