"""``zoo predict``'s input check (zoo._inputs): one check for the command and the API,
made without torch so bad input fails in a fraction of a second."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "mlflow", "pandas")


def test_inputs_are_checked_without_heavy_imports(tmp_path):
    for folder in ("images", "empty"):
        (tmp_path / folder).mkdir()
    for name in ("images/a.png", "images/notes.txt", "x.txt"):
        (tmp_path / name).write_bytes(b"")
    code = (
        "import sys\nfrom pathlib import Path\nfrom zoo._inputs import input_files\n"
        "for case in (['images'], ['empty'], ['x.txt'], ['empty', 'nosuch.mrc']):\n"
        "    try:\n"
        "        print([str(p) for p in input_files([Path(c) for c in case])])\n"
        "    except Exception as error:\n"
        "        print(type(error).__name__, error)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    folder, empty, other, missing, heavy = done.stdout.splitlines()
    assert folder == "['images/a.png']", done.stderr
    assert empty.startswith("DataError empty: no .png/") and empty.endswith("/.hdf5 files")
    assert other.startswith("DataError x.txt: unsupported type; allowed: .png, ")
    assert missing == "DataError nosuch.mrc: no such file or folder"  # named before the rest
    assert heavy == "[]"
