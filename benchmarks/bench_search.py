"""TPE with pruning against the full grid on a small defocus-shaped problem.

The problem: pretrain at -10 nm defocus, transfer to +10 nm (32 px images, a
tiny U-Net); the transfer recipe (learning rate × freezing × training-set size,
4 × 3 × 4 = 48 configs) is searched. The grid runs once, every config to the
end, giving the known optimum; then TPE with pruning (Hyperband by default,
``--pruner median``) searches the same space in a fresh project root. Printed:
the search's best-so-far curve against the training image passes it spent, the
gap to the grid's best adjusted loss and the ratio of image passes (the shared
pretraining counted once in both).
Target (issue 13): within 2 % of the grid's best using at most 40 % of its passes.
Run: ``.venv/bin/python benchmarks/bench_search.py [--workers 2] [--budget 24] [--grid-json F]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from zoo.paths import ProjectPaths
from zoo.store import Tracker
from zoo.sweep._search import load_search, open_study, run_search

DATA = {"preset": "defocus", "image_size": 32, "count": 48, "sim_sampling_a": 0.4}
EPOCHS = 4
SPACE = {
    "lr": {"type": "categorical", "choices": [1e-4, 3e-4, 1e-3, 3e-3]},
    "freeze": {"type": "categorical", "choices": ["none", "encoder", "decoder"]},
    "size": {"type": "categorical", "choices": [4, 8, 16, 32]},
}


def spec(search: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "bench-search",
        "base": {
            "model": {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5},
            "datasets": {n: {**DATA, "defocus_nm": d} for n, d in (("a", -10), ("b", 10))},
            "stages": [
                {"name": "pretrain", "train": "a", "size": 32, "epochs": 2},
                {"name": "transfer", "train": "b", "size": 8, "epochs": EPOCHS},
            ],
            "validate_on": ["a", "b"],
            "log_weights": ["best"],
        },
        "set": {"stages.1.lr": "$lr", "stages.1.freeze": "$freeze", "stages.1.size": "$size"},
        "search": {"parameters": SPACE, **search},
    }


def run(search: dict[str, Any], workers: int) -> tuple[list[tuple[int, float]], float]:
    """(image passes spent so far, best value so far) after each finished trial, in
    trial order, and the wall seconds; in a fresh project root."""
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "search.yaml"
        path.write_text(yaml.safe_dump(spec(search)))
        parsed, block = load_search(path)
        paths = ProjectPaths(Path(root))
        start = time.perf_counter()
        run_search(parsed, block, Tracker(None, paths), workers, echo=lambda _: None)
        wall = time.perf_counter() - start
        trials = sorted(open_study(parsed, block, paths).trials, key=lambda t: t.number)
    curve, spent, best = [], 0, float("inf")
    for trial in trials:
        # transfer passes: each epoch reported is size × 8 dihedral transforms
        spent += len(trial.intermediate_values) * trial.params["size"] * 8
        if trial.state.name == "COMPLETE":
            best = min(best, trial.value)
        curve.append((spent, best))
    return curve, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget", type=int, default=24, help="TPE trials")
    parser.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    parser.add_argument("--pruner", choices=["median", "hyperband"], default="hyperband")
    parser.add_argument("--warmup", type=int, default=1, help="epochs before median pruning")
    parser.add_argument(
        "--grid-json", type=Path, help="reuse the grid's result from this file (written if new)"
    )
    args = parser.parse_args()
    pretrain = 32 * 8 * 2  # the shared pretraining's passes, counted once in both
    if args.grid_json and args.grid_json.exists():
        grid_passes, grid_best, grid_wall = json.loads(args.grid_json.read_text())
    else:
        grid, grid_wall = run({"budget": 48, "sampler": "grid", "pruner": "none"}, args.workers)
        grid_passes, grid_best = grid[-1][0] + pretrain, grid[-1][1]
        if args.grid_json:
            args.grid_json.write_text(json.dumps([grid_passes, grid_best, grid_wall]))
    search = {
        "budget": args.budget,
        "sampler": "tpe",
        "pruner": args.pruner,
        "startup_trials": 4,
        "warmup_epochs": args.warmup,
        "seed": args.seed,
    }
    curve, search_wall = run(search, args.workers)
    print(f"grid: 48 configs, best adjusted loss {grid_best:.5f}, {grid_passes:,} image passes")
    print(f"      {grid_wall:.0f} s wall with {args.workers} workers")
    print(
        f"TPE + {args.pruner} pruning: trial, image passes, share of the grid's, best so far, gap"
    )
    for number, (spent, best) in enumerate(curve):
        share = (spent + pretrain) / grid_passes
        print(
            f"  {number:3d} {spent + pretrain:8,d} {share:6.1%} {best:.5f} "
            f"{(best - grid_best) / grid_best:+7.2%}"
        )
    spent, best = curve[-1]
    ratio, gap = (spent + pretrain) / grid_passes, (best - grid_best) / grid_best
    verdict = "PASS" if ratio <= 0.40 and gap <= 0.02 else "FAIL"
    print(
        f"search: best {best:.5f} ({gap:+.2%} from the grid's best) with {ratio:.1%} of the "
        f"grid's image passes in {search_wall:.0f} s; target within 2 % using at most 40 %: "
        f"{verdict}"
    )


if __name__ == "__main__":
    main()
