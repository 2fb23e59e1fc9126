"""``python -m zoo.cli``: the ``zoo`` command (as SLURM array tasks run it)."""

import sys

from zoo.cli import main

if __name__ == "__main__":  # not again in the processes multiprocessing starts
    sys.exit(main())
