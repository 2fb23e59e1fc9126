"""Every bad input is answered in one line naming the field or file, with exit status 2,
and nothing is written: no store rows, nothing new under the project root (a dataset
that was valid may be cached under .zoo/datasets)."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from zoo.cli import main

MODEL = {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5}
H5 = {"path": "data.h5", "val_fraction": 0.25}
STREAMED = {"preset": "defocus", "defocus_nm": -10, "image_size": 32}


def _h5(path: Path, shape=(8, 16, 16), masks=True, mask_shape=None, values=1) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as handle:
        handle["images"] = rng.random(shape).astype(np.float32)
        if masks:
            handle["masks"] = (rng.random(mask_shape or shape) > 0.5).astype(np.uint8) * values


def _folder(root: Path, count=3, masks=True, broken=None) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    for i in range(count):
        image = (rng.random((16, 16)) * 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        if masks:
            mask = (rng.random((16, 16)) > 0.5).astype(np.uint8)
            np.save(root / "masks" / f"im{i}.npy", mask * (7 if broken == "mask" else 1))
    if broken == "image":
        (root / "images" / "im1.png").write_bytes(b"not a png")


def _mrc(path: Path, shape: tuple[int, ...]) -> None:
    import mrcfile

    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros(shape, np.float32))


def _colour_png(path: Path) -> None:
    """An RGB preview grid, as a figure or a screenshot is: its channels differ."""
    from PIL import Image

    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:8, :, 0], rgb[8:, :, 2] = 255, 255
    Image.fromarray(rgb).save(path)


def _mrc_volume_folder(root: Path) -> None:
    """images/ holding an .mrc volume (3, 16, 16) where one image is expected."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    _mrc(root / "images" / "im0.mrc", (3, 16, 16))
    np.save(root / "masks" / "im0.npy", np.zeros((16, 16), np.uint8))


def _pairs_h5(path: Path, channels=2, targets=1) -> None:
    """Regression data: (8, channels, 16, 16) inputs and (8, targets, 16, 16) targets."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as handle:
        handle["inputs"] = rng.random((8, channels, 16, 16)).astype(np.float32)
        handle["targets"] = rng.random((8, targets, 16, 16)).astype(np.float32)


def _pairs_folder(root: Path) -> None:
    """inputs/ and targets/ whose names do not match (a0 has no target)."""
    for sub, name in (("inputs", "a0"), ("inputs", "a1"), ("targets", "a1")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        np.save(root / sub / f"{name}.npy", np.zeros((16, 16), np.float32))


def _masks_only(path: Path) -> None:
    """An HDF5 file of masks without images: targets only."""
    with h5py.File(path, "w") as handle:
        handle["masks"] = np.zeros((8, 16, 16), np.uint8)


def _unsafe_pickle(path: Path) -> None:
    """A torch file that only an unsafe load reads (an object, not tensors)."""
    import argparse

    torch.save(argparse.Namespace(weights=1), path)


def _non_empty(path: Path) -> None:
    path.mkdir()
    (path / "notes.txt").write_text("mine")


REGRESSION = {"task": "regression", "classes": 1, "head": "logits", "inputs": ["image", "base"]}
PAIRS = {**H5, "channels": ["image", "base"]}


def regression(model=None, datasets=None, data=_pairs_h5) -> dict:
    """A valid regression run on two-channel pairs in data.h5, with ``model`` changes."""
    document = _run(
        model={**REGRESSION, **(model or {})},
        datasets=datasets or {"d": PAIRS},
        stage={"loss": "mse"},
    )
    return {"run.yaml": yaml.safe_dump(document), "data.h5": data}


def _run(**changes) -> dict:
    """A valid one-stage run config on data.h5, with top-level ``changes``."""
    stage = {"name": "s", "train": "d", "epochs": 1, "augment": "none"}
    stage.update(changes.pop("stage", {}))
    document = {
        "experiment": "bad",
        "model": MODEL,
        "datasets": {"d": H5},
        "stages": [stage],
    }
    for key, value in changes.items():
        if key == "model":
            document["model"] = {**MODEL, **value}
        else:
            document[key] = value
    return document


SPEC = textwrap.dedent("""\
    name: t
    base:
      datasets: {a: {preset: defocus, defocus_nm: -10, image_size: 32, count: 20}}
      stages: [{name: s, train: a, epochs: 1}]
    """)


def _bomb(where: str) -> str:
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 8):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    body = textwrap.indent("\n".join(lines), "  ")
    if where == "derive":
        return SPEC + "derive:\n" + body + "\n"
    return SPEC + "axes: [{product: {x: [1]}}]\nbombs:\n" + body + "\nwhere: [{in: [$x, *a7]}]\n"


PLAN = ["sweep", "plan", "spec.yaml", "--images-per-s", "1"]
SEARCH = (
    "axes: []\nsearch: {parameters: {lr: {type: float, low: 0.001, high: 0.1}}, "
    "budget: 2}\nset: {stages.0.lr: $lr}\n"
)
TRAIN = ["train", "run.yaml"]
SUBMIT_DRY = ["sweep", "submit", "spec.yaml", "--dry-run"]
RUNS_PER_GPU_2 = ["--runs-per-task", "2", "--runs-per-gpu", "2"]


def spec(extra: str = "", text: str | None = None) -> dict:
    return {"spec.yaml": text if text is not None else SPEC + extra}


def run(**changes) -> dict:
    return {"run.yaml": yaml.safe_dump(_run(**changes)), "data.h5": _h5}


def search(parameters=None, set_=None, **block) -> dict:
    """A valid search spec (one float parameter lr used in set:) with ``block`` changes."""
    document = yaml.safe_load(SPEC)
    document["search"] = {
        "parameters": parameters or {"lr": {"type": "float", "low": 0.001, "high": 0.1}},
        "budget": 2,
        **block,
    }
    document["set"] = set_ or {"stages.0.lr": "$lr"}
    return {"spec.yaml": yaml.safe_dump(document)}


def _lr(**changes) -> dict:
    return {"lr": {"type": "float", "low": 0.001, "high": 0.1, **changes}}


def _schedule(**stage) -> dict:
    return run(stage={"epochs": 3, **stage})


# (id, files to write, argv, exit status, pattern the one-line message must match)
CASES = [
    # --- search blocks (issue 29 item 8) ---
    ("search-step-zero", search(_lr(step=0)), PLAN, 2, r"parameters\.lr\.step: 0.*> 0"),
    (
        "search-step-with-log",
        search(_lr(step=0.01, log=True)),
        PLAN,
        2,
        r"parameters\.lr\.step: 0\.01 .*no step with log: true",
    ),
    ("search-seed-negative", search(seed=-1), PLAN, 2, r"spec\.search\.seed: -1"),
    (
        "search-storage-unknown-scheme",
        search(storage="ftp://host/study"),
        PLAN,
        2,
        r"spec\.search\.storage: 'ftp://host/study' .*journal or a database URL",
    ),
    (
        "search-parameter-unused",
        search({**_lr(), "wd": {"type": "float", "low": 0.0, "high": 0.1}}),
        PLAN,
        2,
        r"spec\.search\.parameters\.wd: 'wd' .*uses as \$wd",
    ),
    (
        "search-objective-metric-unknown",
        search(objective={"metric": "target_los_adj"}),
        PLAN,
        2,
        r"objective\.metric: 'target_los_adj' is not logged .*did you mean 'target_loss_adj'",
    ),
    (
        "search-type-unknown",
        search(_lr(type="double")),
        PLAN,
        2,
        r"parameters\.lr\.type: 'double' .*'float', 'int', 'categorical'",
    ),
    (
        "search-low-above-high",
        search(_lr(low=1.0)),
        PLAN,
        2,
        r"parameters\.lr\.high: 0\.1 .*>= low",
    ),
    (
        "search-log-low-zero",
        search(_lr(low=0.0, log=True)),
        PLAN,
        2,
        r"lr\.low: 0\.0 .*> 0 with log",
    ),
    (
        "search-categorical-empty",
        search({"f": {"type": "categorical", "choices": []}}, {"stages.0.freeze": "$f"}),
        PLAN,
        2,
        r"parameters\.f\.choices: \[\]",
    ),
    (
        "search-direction-unknown",
        search(objective={"direction": "down"}),
        PLAN,
        2,
        r"objective\.direction: 'down' .*'minimize', 'maximize'",
    ),
    ("search-sampler-unknown", search(sampler="bayes"), PLAN, 2, r"search\.sampler: 'bayes'"),
    ("search-pruner-unknown", search(pruner="always"), PLAN, 2, r"search\.pruner: 'always'"),
    ("search-budget-zero", search(budget=0), PLAN, 2, r"search\.budget: 0"),
    (
        "search-grid-float-without-step",
        search(sampler="grid"),
        PLAN,
        2,
        r"parameters\.lr\.step: None .*sampler: grid",
    ),
    (
        "search-int-low-fraction",
        search({"n": {"type": "int", "low": 1.5, "high": 8}}, {"stages.0.batch_size": "$n"}),
        PLAN,
        2,
        r"parameters\.n\.low: 1\.5 .*an integer",
    ),
    # --- schedules (issue 29 item 8) ---
    (
        "milestones-empty",
        _schedule(scheduler="milestones"),
        TRAIN,
        2,
        r"stages\.0\.milestones: \[\] .*scheduler: milestones",
    ),
    (
        "warmup-not-below-epochs",
        _schedule(warmup_epochs=3),
        TRAIN,
        2,
        r"stages\.0\.warmup_epochs: 3 .*fewer than the stage's epochs \(3\)",
    ),
    (
        "scheduler-near-miss-suggested",
        _schedule(scheduler="cosin"),
        TRAIN,
        2,
        r"stages\.0\.scheduler: 'cosin' .*; did you mean 'cosine'\?$",
    ),
    (
        "scheduler-unknown",
        _schedule(scheduler="linear"),
        TRAIN,
        2,
        r"stages\.0\.scheduler: 'linear'",
    ),
    ("step-size-zero", _schedule(scheduler="step", step_size=0), TRAIN, 2, r"step_size: 0"),
    ("gamma-zero", _schedule(scheduler="step", gamma=0), TRAIN, 2, r"stages\.0\.gamma: 0"),
    (
        "milestones-decreasing",
        _schedule(scheduler="milestones", milestones=[2, 1]),
        TRAIN,
        2,
        r"stages\.0\.milestones: \[2, 1\] .*increasing",
    ),
    (
        "optimizer-state-unknown",
        _schedule(optimizer_state="keep"),
        TRAIN,
        2,
        r"optimizer_state: 'keep'",
    ),
    (
        "optimizer-state-carry-first-stage",
        _schedule(optimizer_state="carry"),
        TRAIN,
        2,
        r"stages\.0\.optimizer_state: 'carry'",
    ),
    ("optimizer-unknown", _schedule(optimizer="lion"), TRAIN, 2, r"stages\.0\.optimizer: 'lion'"),
    ("weight-decay-negative", _schedule(weight_decay=-0.1), TRAIN, 2, r"weight_decay: -0\.1"),
    ("select-metric-unknown", _schedule(select_metric="dice"), TRAIN, 2, r"select_metric: 'dice'"),
    (
        "select-metric-of-regression-on-segmentation",
        _schedule(select_metric="psnr"),
        TRAIN,
        2,
        r"stages\.0\.select_metric: 'psnr'",
    ),
    # --- heads, outputs and losses (issue 29 item 8) ---
    ("head-unknown", run(model={"head": "sigmoid"}), TRAIN, 2, r"model\.head: 'sigmoid'"),
    ("output-unknown", run(model={"output": "delta"}), TRAIN, 2, r"model\.output: 'delta'"),
    (
        "output-residual-segmentation",
        run(model={"output": "residual"}),
        TRAIN,
        2,
        r"model\.output: 'residual'",
    ),
    (
        "loss-weight-negative",
        run(stage={"loss": {"cross_entropy": -1.0}}),
        TRAIN,
        2,
        r"stages\.0\.loss\.cross_entropy: -1\.0",
    ),
    (
        "loss-term-unknown",
        run(stage={"loss": {"cross_entropy": 1.0, "focal": 1.0}}),
        TRAIN,
        2,
        r"stages\.0\.loss\.focal: 'focal'",
    ),
    ("loss-empty-mapping", run(stage={"loss": {}}), TRAIN, 2, r"stages\.0\.loss: \{\}"),
    # --- command values (issue 29 item 8) ---
    (
        "predict-pixel-size-negative",
        {},
        ["predict", "best", "x.png", "--out", "o", "--pixel-size", "-1"],
        2,
        r"--pixel-size: '-1' is not allowed; expected a number > 0",
    ),
    (
        "analyze-offset-nan",
        {},
        ["analyze", "t", "--out", "r", "--offset", "nan"],
        2,
        r"--offset: 'nan' is not allowed; expected a finite number",
    ),
    (
        "import-offset-infinite",
        {},
        ["import", "t.csv", "--experiment", "t", "--offset", "inf"],
        2,
        r"--offset: 'inf' is not allowed; expected a finite number",
    ),
    (
        "server-data-is-a-file",
        {"notes.txt": "mine"},
        ["server", "start", "--data", "notes.txt"],
        2,
        r"--data: 'notes\.txt' is not allowed; it is not a folder",
    ),
    (
        "register-name-unsafe",
        {},
        ["models", "register", "best", "--name", "../x"],
        2,
        r"--name: '\.\./x' is not allowed; expected letters, digits",
    ),
    (
        "register-alias-unsafe",
        {},
        ["models", "register", "best", "--name", "hrtem", "--alias", "a b"],
        2,
        r"--alias: 'a b' is not allowed; expected letters, digits",
    ),
    # --- sweep specs ---
    (
        "derive-divide-by-zero",
        spec("axes: [{product: {x: [0]}}]\nderive: {y: {divide: [1, $x]}}\n"),
        PLAN,
        2,
        r"spec\.derive\.y: ZeroDivisionError",
    ),
    (
        "template-on-string",
        spec("axes: [{product: {x: [a]}}]\nset: {description: 'v{x:+d}'}\n"),
        PLAN,
        2,
        r"spec\.set\.description: ValueError",
    ),
    (
        "lt-float-string",
        spec("axes: [{product: {x: [1.5]}}]\nwhere: [{lt: [$x, abc]}]\n"),
        PLAN,
        2,
        r"spec\.where\.0: TypeError",
    ),
    (
        "non-utf8-yaml",
        {"spec.yaml": b"name: t\nbase: {}\n\xff\xfe\n"},
        PLAN,
        2,
        r"spec\.yaml: not UTF-8",
    ),
    (
        "alias-bomb-derive",
        {"spec.yaml": _bomb("derive")},
        PLAN,
        2,
        r"spec\.yaml: expands to more than",
    ),
    (
        "alias-bomb-where",
        {"spec.yaml": _bomb("where")},
        PLAN,
        2,
        r"spec\.yaml: expands to more than",
    ),
    (
        "billion-candidates",
        spec(
            "axes: [{product: {"
            + ", ".join(f"{c}: [0,1,2,3,4,5,6,7,8,9]" for c in "abcdefghi")
            + "}}]\nwhere: [{lt: [$a, 0]}]\n"
        ),
        PLAN,
        2,
        r"spec\.axes: 1,000,000,000 candidate runs .*max_candidates",
    ),
    (
        "candidates-over-own-cap",
        spec("axes: [{product: {x: [1, 2, 3]}}]\nmax_candidates: 2\n"),
        PLAN,
        2,
        r"max_candidates \(2\)",
    ),
    ("max-candidates-zero", spec("max_candidates: 0\n"), PLAN, 2, r"spec\.max_candidates: 0"),
    ("recursive-alias", spec("derive: &r {x: *r}\n"), PLAN, 2, r"spec\.yaml: expands to more than"),
    ("spec-missing", {}, PLAN, 2, r"spec\.yaml: cannot read"),
    (
        "spec-invalid-yaml",
        spec(text="name: [unclosed\n"),
        PLAN,
        2,
        r"spec\.yaml:2:1: expected ',' or '\]', but got '<stream end>'$",
    ),
    (
        "config-invalid-yaml",
        {"run.yaml": "experiment: x\nmodel\n  arch: unet\n"},
        TRAIN,
        2,
        r"run\.yaml:3:7: could not find expected ':'$",
    ),
    ("spec-not-mapping", spec(text="- 1\n- 2\n"), PLAN, 2, r"spec: \[1, 2\] is not allowed"),
    (
        "axis-kind-unknown",
        spec("axes: [{grid: {lr: [1]}}]\n"),
        PLAN,
        2,
        r"spec\.axes\.0\.grid: unknown axis kind",
    ),
    (
        "spec-field-suggested",
        spec("seed: [1]\n"),
        PLAN,
        2,
        r"spec\.seed: unknown key; .*did you mean 'seeds'\?$",
    ),
    (
        "axis-name-suggested",
        spec("axes: [{product: {transfer_lr: [0.1]}}]\nset: {stages.0.lr: $transfer_rl}\n"),
        PLAN,
        2,
        r"spec\.set\.stages\.0\.lr: unknown name 'transfer_rl'; .*did you mean 'transfer_lr'\?$",
    ),
    (
        "axis-kind-suggested",
        spec("axes: [{prodcut: {lr: [0.1]}}]\n"),
        PLAN,
        2,
        r"spec\.axes\.0\.prodcut: unknown axis kind; .*did you mean 'product'\?$",
    ),
    (
        "axis-empty-list",
        spec("axes: [{product: {lr: []}}]\n"),
        PLAN,
        2,
        r"spec\.axes\.0\.product\.lr:",
    ),
    (
        "zip-unequal",
        spec("axes: [{zip: {a: [1, 2], b: [1]}}]\n"),
        PLAN,
        2,
        r"spec\.axes\.0\.zip: .*equal length",
    ),
    (
        "pairs-three-names",
        spec("axes: [{pairs: {of: [a, b, c], values: [1, 2]}}]\n"),
        PLAN,
        2,
        r"spec\.axes\.0\.pairs\.of",
    ),
    (
        "where-unknown-name",
        spec("axes: [{product: {x: [1]}}]\nwhere: [{ne: [$x, $y]}]\n"),
        PLAN,
        2,
        r"spec\.where\.0: unknown name 'y'",
    ),
    (
        "where-unknown-operator",
        spec("axes: [{product: {x: [1]}}]\nwhere: [{near: [$x, 1]}]\n"),
        PLAN,
        2,
        r"spec\.where\.0: unknown operator 'near'",
    ),
    (
        "lookup-missing-key",
        spec("axes: [{product: {x: [c]}}]\nderive: {y: {lookup: [$x, {a: 1}]}}\n"),
        PLAN,
        2,
        r"spec\.derive\.y\.lookup: 'c'",
    ),
    (
        "set-unknown-name",
        spec("set: {stages.0.lr: $nope}\n"),
        PLAN,
        2,
        r"spec\.set\.stages\.0\.lr: unknown name 'nope'",
    ),
    (
        "set-unknown-field",
        spec("axes: [{product: {x: [1]}}]\nset: {stages.0.lrr: $x}\n"),
        PLAN,
        2,
        r"config\.stages\.0\.lrr: unknown key",
    ),
    ("spec-unknown-key", spec("bogus: 1\n"), PLAN, 2, r"spec\.bogus: unknown key"),
    ("spec-negative-seed", spec("seeds: [0, -1]\n"), PLAN, 2, r"spec\.seeds\.1: -1"),
    ("spec-no-seeds", spec("seeds: []\n"), PLAN, 2, r"spec\.seeds: \[\]"),
    (
        "spec-bad-name",
        spec(text=SPEC.replace("name: t", "name: 'a b'")),
        PLAN,
        2,
        r"spec\.name: 'a b'",
    ),
    (
        "spec-name-dot-dot",
        spec(text=SPEC.replace("name: t", "name: '..'")),
        PLAN,
        2,
        r"spec\.name: '\.\.'",
    ),
    (
        "spec-name-dot",
        spec(text=SPEC.replace("name: t", "name: '.'")),
        PLAN,
        2,
        r"spec\.name: '\.'",
    ),
    (
        "spec-base-experiment",
        spec(text=SPEC.replace("base:\n", "base:\n  experiment: x\n")),
        PLAN,
        2,
        r"spec\.base\.experiment",
    ),
    (
        "include-unknown-name",
        spec("include: [{zz: 1}]\n"),
        PLAN,
        2,
        r"spec\.include\.0: unknown name 'zz'",
    ),
    (
        "colliding-identities",
        spec("axes: [{product: {unused: [1, 2]}}]\n"),
        PLAN,
        2,
        r"spec\.axes: .*axes unused change nothing",
    ),
    (
        "spec-data-path-missing",
        spec(
            text=SPEC.replace(
                "{preset: defocus, defocus_nm: -10, image_size: 32, count: 20}",
                "{path: nowhere.h5}",
            )
        ),
        PLAN,
        2,
        r"nowhere\.h5: no such folder or file",
    ),
    (
        "spec-seed-in-run",
        spec("axes: [{product: {s: [-3]}}]\nset: {model.classes: $s}\n"),
        PLAN,
        2,
        r"config\.model\.classes: -3",
    ),
    (
        "sweep-run-unknown-encoder",
        spec("axes: [{product: {e: [resnet18, resnet19]}}]\nset: {model.encoder: $e}\n"),
        ["sweep", "run", "spec.yaml"],
        2,
        r"spec run \{\"e\": \"resnet19\".*config\.model\.encoder: .resnet19. is not a known",
    ),
    (
        "sweep-run-device-missing",
        spec("  device: 'cuda:99'\n"),  # not an axis: runs differing only in it are one run
        ["sweep", "run", "spec.yaml"],
        2,
        r"config\.device: 'cuda:99' is not available",
    ),
    (
        "sweep-submit-unknown-encoder",
        spec("set: {model.encoder: resnet19}\n"),
        ["sweep", "submit", "spec.yaml", "--dry-run"],
        2,
        r"'resnet19' is not a known encoder",
    ),
    # --- command line ---
    (
        "workers-zero",
        spec(),
        ["sweep", "run", "spec.yaml", "--workers", "0"],
        2,
        r"--workers: '0' is not allowed",
    ),
    (
        "gpu-power-zero",
        spec(),
        ["sweep", "run", "spec.yaml", "--gpu-power", "0"],
        2,
        r"--gpu-power: '0' is not allowed; expected a number > 0",
    ),
    (
        "gpu-power-negative",
        spec(),
        ["sweep", "run", "spec.yaml", "--gpu-power", "-5"],
        2,
        r"--gpu-power: '-5' is not allowed",
    ),
    (
        "gpu-power-zero-submit",
        spec(),
        [*SUBMIT_DRY, "--gpu-power", "0"],
        2,
        r"--gpu-power: 0 is not allowed; expected an integer >= 1",
    ),
    (
        "gpu-power-negative-submit",
        spec(),
        [*SUBMIT_DRY, "--gpu-power", "-5"],
        2,
        r"--gpu-power: -5 is not allowed; expected an integer >= 1",
    ),
    (
        "gpu-power-on-a-search",
        spec(
            "axes: []\nsearch: {parameters: {lr: {type: float, low: 0.001, high: 0.1}}, "
            "budget: 2}\nset: {stages.0.lr: $lr}\n"
        ),
        ["sweep", "run", "spec.yaml", "--gpu-power", "250"],
        2,
        r"--gpu-power: not allowed for a search spec; expected power_cap_w in its base",
    ),
    (
        "gpus-per-task-below-devices-not-dry",
        spec("axes: [{product: {n: [1, 4]}}]\nset: {devices: $n}\n"),
        ["sweep", "submit", "spec.yaml", "--gpus-per-task", "2"],
        2,
        r"config\.devices: 4 is more than --gpus-per-task 2",
    ),
    (
        "rehearse-resubmit-never-rehearsed",
        spec(),
        ["sweep", "submit", "spec.yaml", "--rehearse", "--resubmit-failed"],
        2,
        r"--resubmit-failed: sweep t-rehearsal was never submitted; expected a first",
    ),
    (
        "rehearse-a-search",
        spec(
            "axes: []\nsearch: {parameters: {lr: {type: float, low: 0.001, high: 0.1}}, "
            "budget: 2}\nset: {stages.0.lr: $lr}\n"
        ),
        ["sweep", "plan", "spec.yaml", "--rehearse"],
        2,
        r"--rehearse: not allowed for a search spec; expected a grid sweep spec",
    ),
    (
        "rehearse-in-a-spec",
        spec("rehearse: true\n"),
        PLAN,
        2,
        r"spec\.rehearse: True is not allowed; expected false \(a rehearsal is made with",
    ),
    (
        "runs-per-task-zero",
        spec(),
        [*SUBMIT_DRY, "--runs-per-task", "0"],
        2,
        r"--runs-per-task: 0; expected >= 1",
    ),
    (
        "runs-per-task-word",
        spec(),
        [*SUBMIT_DRY, "--runs-per-task", "many"],
        2,
        r"--runs-per-task: 'many' is not allowed; expected an integer >= 1 or auto",
    ),
    (
        "runs-per-task-auto-without-profile",
        spec(),
        [*SUBMIT_DRY, "--rehearse", "--runs-per-task", "auto"],
        2,
        r"--runs-per-task: auto needs --profile NAME",
    ),
    (
        "runs-per-task-auto-unknown-profile",
        spec(),
        [*SUBMIT_DRY, "--runs-per-task", "auto", "--profile", "nowhere"],
        2,
        r"--profile: no profile 'nowhere'; known: cpu-2core",
    ),
    (
        "profile-without-auto",
        spec(),
        [*SUBMIT_DRY, "--profile", "cpu-2core"],
        2,
        r"--profile: 'cpu-2core' is only used with --runs-per-task auto",
    ),
    (
        "runs-per-gpu-zero-submit",
        spec(),
        [*SUBMIT_DRY, "--runs-per-gpu", "0"],
        2,
        r"--runs-per-gpu: 0 is not allowed",
    ),
    (
        "workers-sharing-devices",
        spec("  devices: 2\n"),
        ["sweep", "run", "spec.yaml", "--workers", "2"],
        2,
        r"--workers: 2 is not allowed with config\.devices: 2 \(spec run \{\"seed\": 0\}\)",
    ),
    (
        "images-per-s-negative",
        spec(),
        ["sweep", "plan", "spec.yaml", "--images-per-s", "-1"],
        2,
        r"--images-per-s: '-1'",
    ),
    (
        "images-per-s-nan",
        spec(),
        ["sweep", "plan", "spec.yaml", "--images-per-s", "nan"],
        2,
        r"--images-per-s: 'nan'",
    ),
    (
        "runs-per-gpu-zero",
        spec(),
        ["sweep", "run", "spec.yaml", "--runs-per-gpu", "0"],
        2,
        r"--runs-per-gpu: '0'",
    ),
    (
        "gpus-per-task-zero",
        spec(),
        ["sweep", "submit", "spec.yaml", "--dry-run", "--gpus-per-task", "0"],
        2,
        r"--gpus-per-task: 0 is not allowed; expected an integer >= 1",
    ),
    (
        "gpus-per-task-negative",
        spec(),
        ["sweep", "submit", "spec.yaml", "--dry-run", "--gpus-per-task", "-2"],
        2,
        r"--gpus-per-task: -2 is not allowed; expected an integer >= 1",
    ),
    (
        "gpus-per-task-with-runs-per-gpu",
        spec(),
        [*SUBMIT_DRY, "--gpus-per-task", "2", *RUNS_PER_GPU_2],
        2,
        r"--runs-per-gpu: 2 is not allowed with --gpus-per-task 2; expected 1",
    ),
    (
        "gpus-per-task-below-devices",
        spec("axes: [{product: {n: [1, 4]}}]\nset: {devices: $n}\n"),
        ["sweep", "submit", "spec.yaml", "--dry-run", "--gpus-per-task", "2"],
        2,
        r"spec run \{\"n\": 4, \"seed\": 0\}: config\.devices: 4 is more than --gpus-per-task 2",
    ),
    (
        "show-negative",
        spec(),
        ["sweep", "plan", "spec.yaml", "--show", "-2"],
        2,
        r"--show: -2 is not allowed; expected a run index 0-0 \(the plan has 1 runs\)",
    ),
    (
        "show-past-the-last-run",
        spec("axes: [{product: {lr: [0.1, 0.2]}}]\nset: {stages.0.lr: $lr}\n"),
        ["sweep", "plan", "spec.yaml", "--show", "2"],
        2,
        r"--show: 2 is not allowed; expected a run index 0-1 \(the plan has 2 runs\)",
    ),
    (
        "show-on-a-search",
        spec(SEARCH),
        ["sweep", "plan", "spec.yaml", "--show", "0"],
        2,
        r"--show: not allowed for a search spec; expected a grid sweep spec",
    ),
    (
        "profile-on-a-search",
        spec(SEARCH),
        ["sweep", "plan", "spec.yaml", "--profile", "cpu-2core"],
        2,
        r"--profile: not allowed for a search spec; expected --images-per-s",
    ),
    (
        "profile-and-images-per-s",
        spec(),
        [*PLAN, "--profile", "cpu-2core"],
        2,
        r"--images-per-s: not allowed with --profile; expected one price",
    ),
    (
        "override-unknown-key-plan",
        spec(),
        ["sweep", "plan", "spec.yaml", "stages.0.epochz=3"],
        2,
        r"override stages\.0\.epochz: unknown key 'epochz'; allowed keys: .*; "
        r"did you mean 'epochs'\?$",
    ),
    (
        "override-unknown-key-run",
        spec(),
        ["sweep", "run", "spec.yaml", "modle.encoder=resnet34"],
        2,
        r"override modle\.encoder: unknown key 'modle'; .*did you mean 'model'\?$",
    ),
    (
        "override-unknown-key-submit",
        spec(),
        ["sweep", "submit", "spec.yaml", "stages.0.lrr=0.1", "--dry-run"],
        2,
        r"override stages\.0\.lrr: unknown key 'lrr'; .*did you mean 'lr'",
    ),
    (
        "override-stage-out-of-range",
        spec(),
        ["sweep", "plan", "spec.yaml", "stages.3.epochs=2"],
        2,
        r"override stages\.3: '3' is not an index below 1",
    ),
    (
        "override-seed",
        spec(),
        ["sweep", "plan", "spec.yaml", "seed=3"],
        2,
        r"override seed: set by the sweep \(its name, its seeds:\); expected a key of spec\.base",
    ),
    (
        "override-a-key-set-writes",
        spec("axes: [{product: {lr: [0.1, 0.2]}}]\nset: {stages.0.lr: $lr}\n"),
        ["sweep", "plan", "spec.yaml", "stages.0.lr=0.5"],
        2,
        r"override stages\.0\.lr: spec\.set writes stages\.0\.lr in every run",
    ),
    (
        "override-a-key-a-search-samples",
        spec(SEARCH),
        ["sweep", "plan", "spec.yaml", "stages.0.lr=0.5"],
        2,
        r"override stages\.0\.lr: spec\.set writes stages\.0\.lr in every run",
    ),
    (
        "completion-unknown-shell",
        {},
        ["completion", "fish"],
        2,
        r"argument shell: invalid choice: 'fish' \(choose from 'bash', 'zsh'\)",
    ),
    ("command-suggested", {}, ["tarin"], 2, r"invalid choice: 'tarin' .*did you mean 'train'\?"),
    (
        "subcommand-suggested",
        {},
        ["sweep", "stauts", "spec.yaml"],
        2,
        r"invalid choice: 'stauts' .*did you mean 'status'\?",
    ),
    (
        "data-show-count-zero",
        {},
        ["data", "show", "x", "--out", "x.png", "--count", "0"],
        2,
        r"--count: '0'",
    ),
    ("unknown-command", {}, ["fly"], 2, r"invalid choice: 'fly'"),
    ("status-spec-missing", {}, ["sweep", "status", "spec.yaml"], 2, r"spec\.yaml: cannot read"),
    (
        "submit-dry-run-bad-spec",
        spec("bogus: 1\n"),
        ["sweep", "submit", "spec.yaml", "--dry-run"],
        2,
        r"spec\.bogus: unknown key",
    ),
    ("data-make-missing-file", {}, ["data", "make", "nope.yaml"], 2, r"nope\.yaml: cannot read"),
    (
        "data-make-unknown-name",
        spec(),
        ["data", "make", "spec.yaml", "zz"],
        2,
        r"spec\.yaml: no dataset 'zz'",
    ),
    (
        "data-make-no-datasets",
        {"d.yaml": "a: 1\n"},
        ["data", "make", "d.yaml"],
        2,
        r"d\.yaml: expected a 'datasets:' mapping",
    ),
    (
        "data-show-not-cached",
        {},
        ["data", "show", "x", "--out", "x.png"],
        2,
        r"dataset 'x' is not in the cache",
    ),
    (
        "override-without-equals",
        run(),
        [*TRAIN, "stages.0.lr"],
        2,
        r"override 'stages\.0\.lr': expected KEY=VALUE",
    ),
    (
        "override-index-out-of-range",
        run(),
        [*TRAIN, "stages.5.lr=1"],
        2,
        r"override stages\.5: '5' is not an index below 1",
    ),
    ("override-bad-yaml", run(), [*TRAIN, "seed=[1"], 2, r"override .*not a valid YAML value"),
    # --- run configs ---
    ("seed-negative", run(seed=-1), TRAIN, 2, r"config\.seed: -1"),
    ("experiment-empty", run(experiment=""), TRAIN, 2, r"config\.experiment: ''"),
    ("experiment-newline", run(experiment="a\nb"), TRAIN, 2, r"config\.experiment: 'a\\nb'"),
    ("experiment-dot-dot", run(experiment=".."), TRAIN, 2, r"config\.experiment: '\.\.'"),
    ("experiment-slash", run(experiment="a/b"), TRAIN, 2, r"config\.experiment: 'a/b'"),
    (
        "init-file-unsafe-pickle",
        {**run(stage={"init": "file:bad.pt"}), "bad.pt": _unsafe_pickle},
        TRAIN,
        2,
        r"config\.stages\.0\.init: 'file:bad\.pt' is not allowed; .*bad\.pt is not weights",
    ),
    (
        "init-file-not-safetensors",
        {**run(stage={"init": "file:bad.safetensors"}), "bad.safetensors": b"not weights"},
        TRAIN,
        2,
        r"config\.stages\.0\.init: 'file:bad\.safetensors' is not allowed; .*SafetensorError",
    ),
    ("device-unknown", run(device="tpu"), TRAIN, 2, r"config\.device: 'tpu'"),
    (
        "device-cuda-index",
        run(device="cuda:99"),
        TRAIN,
        2,
        r"config\.device: 'cuda:99' is not available",
    ),
    ("devices-zero", run(devices=0), TRAIN, 2, r"config\.devices: 0 is not allowed"),
    (
        "devices-more-than-gpus",
        run(devices=16, device="cuda"),
        TRAIN,
        2,
        r"config\.devices: 16 is not available here \(\d+ CUDA devices\)",
    ),
    (
        "devices-with-cuda-index",
        run(devices=2, device="cuda:1"),
        TRAIN,
        2,
        r"config\.device: 'cuda:1' is not allowed; expected auto, cpu or cuda with devices: 2",
    ),
    (
        "devices-above-batch-size",
        run(devices=4, stage={"batch_size": 2}),
        TRAIN,
        2,
        r"config\.stages\.0\.batch_size: 2 is not allowed; expected at least devices \(4\)",
    ),
    ("in-channels-3", run(model={"in_channels": 3}), TRAIN, 2, r"config\.model\.in_channels: 3"),
    (
        "encoder-unknown",
        run(model={"encoder": "resnet19"}),
        TRAIN,
        2,
        r"config\.model\.encoder: 'resnet19' is not a known encoder; closest: resnet1",
    ),
    (
        "encoder-unknown-timm",
        run(model={"encoder": "tu-test_resnett"}),
        TRAIN,
        2,
        r"config\.model\.encoder: 'tu-test_resnett' .*closest: tu-test_resnet",
    ),
    (
        "decoder-channels-negative",
        run(model={"decoder_channels": [16, 16, -1, 16, 16]}),
        TRAIN,
        2,
        r"config\.model\.decoder_channels: \[16, 16, -1",
    ),
    (
        "decoder-channels-length",
        run(model={"decoder_channels": [16, 16]}),
        TRAIN,
        2,
        r"config\.model\.decoder_channels: \[16, 16\]",
    ),
    (
        "encoder-depth-7",
        run(model={"encoder_depth": 7, "decoder_channels": [16] * 7}),
        TRAIN,
        2,
        r"config\.model\.encoder_depth: 7",
    ),
    ("arch-unknown", run(model={"arch": "vit"}), TRAIN, 2, r"config\.model\.arch: 'vit'"),
    ("classes-one", run(model={"classes": 1}), TRAIN, 2, r"config\.model\.classes: 1"),
    (
        "init-file-missing",
        run(stage={"init": "file:missing.safetensors"}),
        TRAIN,
        2,
        r"config\.stages\.0\.init: 'file:missing\.safetensors'.*missing\.safetensors is not a file",
    ),
    (
        "init-file-empty-target",
        run(stage={"init": "file:"}),
        TRAIN,
        2,
        r"config\.stages\.0\.init: 'file:'",
    ),
    (
        "refine-iterations-zero",
        run(stage={"refine": {"unlabeled": "d", "iterations": 0}}),
        TRAIN,
        2,
        r"config\.stages\.0\.refine\.iterations: 0 is not allowed; expected an integer >= 1",
    ),
    (
        "refine-confidence-above-one",
        run(stage={"refine": {"unlabeled": "d", "confidence": 1.5}}),
        TRAIN,
        2,
        r"config\.stages\.0\.refine\.confidence: 1\.5 is not allowed; expected a probability",
    ),
    (
        "refine-unlabeled-targets-only",
        {
            **run(
                datasets={"d": H5, "u": {"path": "masks.h5"}},
                stage={"refine": {"unlabeled": "u"}},
            ),
            "masks.h5": _masks_only,
        },
        TRAIN,
        2,
        r"config\.stages\.0\.refine\.unlabeled: 'masks\.h5' .*targets only",
    ),
    (
        "init-run-unknown",
        {**run(stage={"init": "run:0123456789abcdef"}), "mlflow.db": "store"},
        TRAIN,
        2,
        r"config\.stages\.0\.init: 'run:0123456789abcdef' .*no run",
    ),
    (
        "init-best-first-stage",
        run(stage={"init": "best"}),
        TRAIN,
        2,
        r"config\.stages\.0\.init: 'best'",
    ),
    ("lr-zero", run(stage={"lr": 0}), TRAIN, 2, r"config\.stages\.0\.lr: 0"),
    (
        "lr-decay-above-one",
        run(stage={"lr_decay": 1.5}),
        TRAIN,
        2,
        r"config\.stages\.0\.lr_decay: 1\.5",
    ),
    ("epochs-zero", run(stage={"epochs": 0}), TRAIN, 2, r"config\.stages\.0\.epochs: 0"),
    (
        "batch-size-zero",
        run(stage={"batch_size": 0}),
        TRAIN,
        2,
        r"config\.stages\.0\.batch_size: 0",
    ),
    ("loss-unknown", run(stage={"loss": "l7"}), TRAIN, 2, r"config\.stages\.0\.loss: 'l7'"),
    ("freeze-unknown", run(stage={"freeze": "all"}), TRAIN, 2, r"config\.stages\.0\.freeze: 'all'"),
    (
        "select-on-unknown",
        run(stage={"select_on": "zz"}),
        TRAIN,
        2,
        r"config\.stages\.0\.select_on: 'zz'",
    ),
    (
        "train-unknown-dataset",
        run(stage={"train": "zz"}),
        TRAIN,
        2,
        r"config\.stages\.0\.train: 'zz'",
    ),
    ("power-cap-negative", run(power_cap_w=-5), TRAIN, 2, r"config\.power_cap_w: -5"),
    ("stages-empty", run(stages=[]), TRAIN, 2, r"config\.stages: \[\]"),
    (
        "validate-on-unknown",
        run(validate_on=["d", "zz"]),
        TRAIN,
        2,
        r"config\.validate_on\.1: 'zz'",
    ),
    (
        "stream-producers-zero",
        run(datasets={"d": H5, "s": {**STREAMED, "stream": {"producers": 0}}}, validate_on=["d"]),
        TRAIN,
        2,
        r"datasets\.s\.stream\.producers: 0 .*>= 1",
    ),
    (
        "stream-samples-negative",
        run(
            datasets={"d": H5, "s": {**STREAMED, "stream": {"samples_per_epoch": -1}}},
            validate_on=["d"],
        ),
        TRAIN,
        2,
        r"datasets\.s\.stream\.samples_per_epoch: -1 .*>= 1",
    ),
    (
        "stream-validated-on",
        run(datasets={"d": H5, "s": {**STREAMED, "stream": {}}}, validate_on=["d", "s"]),
        TRAIN,
        2,
        r"config\.validate_on\.1: 's' .*stored dataset",
    ),
    (
        "stream-trained-without-validate-on",
        run(datasets={"d": H5, "s": {**STREAMED, "stream": {}}}, stage={"train": "s"}),
        TRAIN,
        2,
        r"config\.validate_on: \[\] .*stored datasets \('s' is streamed\)",
    ),
    ("val-batch-size-zero", run(val_batch_size=0), TRAIN, 2, r"config\.val_batch_size: 0"),
    ("amp-unknown", run(amp="fp8"), TRAIN, 2, r"config\.amp: 'fp8'"),
    (
        "log-weights-unknown",
        run(log_weights=["worst"]),
        TRAIN,
        2,
        r"config\.log_weights\.0: 'worst'",
    ),
    ("config-not-mapping", {"run.yaml": "- 1\n"}, TRAIN, 2, r"run\.yaml: 'list' is not allowed"),
    (
        "config-missing-experiment",
        {"run.yaml": "stages: []\ndatasets: {}\n"},
        TRAIN,
        2,
        r"config\.experiment: missing required key",
    ),
    (
        "config-field-suggested",
        run(stage={"epochz": 2}),
        TRAIN,
        2,
        r"config\.stages\.0\.epochz: unknown key; allowed keys: .*did you mean 'epochs'\?$",
    ),
    # --- data ---
    (
        "size-larger-than-folder",
        {**run(datasets={"d": {"path": "imgs"}}, stage={"size": 50}), "imgs": _folder},
        TRAIN,
        2,
        r"config\.stages\.0\.size: 50 is larger than the training split of 'd'",
    ),
    (
        "non-square-dihedral",
        {**run(stage={"augment": "dihedral"}), "data.h5": lambda p: _h5(p, (8, 16, 24))},
        TRAIN,
        2,
        r"config\.stages\.0\.augment: 'dihedral' needs square images",
    ),
    (
        "mixture-too-large",
        {**run(datasets={"d": {"mix": {"h": 50}}, "h": H5}), "data.h5": _h5},
        TRAIN,
        2,
        r"datasets\.d\.mix\.h: 50 is larger than the training split",
    ),
    (
        "mixture-of-mixture",
        run(datasets={"d": {"mix": {"m": 1}}, "m": {"mix": {"h": 1}}, "h": H5}),
        TRAIN,
        2,
        r"config\.datasets\.d\.mix: 'm'",
    ),
    (
        "mixture-negative",
        run(datasets={"d": {"mix": {"h": -1}}, "h": H5}),
        TRAIN,
        2,
        r"datasets\.d\.mix\.h: -1",
    ),
    (
        "data-path-missing",
        {"run.yaml": yaml.safe_dump(_run())},
        TRAIN,
        2,
        r"data\.h5: no such folder or file",
    ),
    (
        "data-path-symlink-loop",
        {"run.yaml": yaml.safe_dump(_run()), "data.h5": "loop"},
        TRAIN,
        2,
        r"data\.h5: .*([Ss]ymlink loop|[Ss]ymbolic links)",
    ),
    (
        "h5-no-masks",
        {**run(), "data.h5": lambda p: _h5(p, masks=False)},
        TRAIN,
        2,
        r"config\.stages\.0\.train: dataset 'd' has no labels: it can only be a refine: "
        r"unlabeled set$",
    ),
    (
        "h5-shape-mismatch",
        {**run(), "data.h5": lambda p: _h5(p, mask_shape=(8, 16, 8))},
        TRAIN,
        2,
        r"data\.h5: images \(8, 16, 16\) and masks",
    ),
    (
        "h5-masks-not-binary",
        {**run(), "data.h5": lambda p: _h5(p, values=7)},
        TRAIN,
        2,
        r"data\.h5: mask is not binary",
    ),
    (
        "h5-not-hdf5",
        {**run(), "data.h5": "plain text"},
        TRAIN,
        2,
        r"data\.h5: unreadable HDF5 file",
    ),
    (
        "data-wrong-suffix",
        {**run(datasets={"d": {"path": "data.txt"}}), "data.txt": "x"},
        TRAIN,
        2,
        r"data\.txt: expected a folder, an \.h5/\.hdf5 file or an image stack",
    ),
    (
        "folder-without-masks",
        {**run(datasets={"d": {"path": "imgs"}}), "imgs": lambda p: _folder(p, masks=False)},
        TRAIN,
        2,
        r"config\.stages\.0\.train: dataset 'd' has no labels: it can only be a refine: "
        r"unlabeled set$",
    ),
    (
        "unlabeled-stack-as-train",
        {**run(datasets={"d": {"path": "s.mrc"}}), "s.mrc": lambda p: _mrc(p, (3, 16, 16))},
        TRAIN,
        2,
        r"config\.stages\.0\.train: dataset 'd' has no labels",
    ),
    (
        "unlabeled-in-validate-on",
        {
            **run(datasets={"d": H5, "u": {"path": "imgs"}}, validate_on=["d", "u"]),
            "imgs": lambda p: _folder(p, masks=False),
        },
        TRAIN,
        2,
        r"config\.validate_on\.1: dataset 'u' has no labels: it can only be a refine: "
        r"unlabeled set$",
    ),
    (
        "unlabeled-select-on",
        {
            **run(
                datasets={"d": H5, "u": {"path": "imgs"}},
                validate_on=["d", "u"],
                stage={"select_on": "u"},
            ),
            "imgs": lambda p: _folder(p, masks=False),
        },
        TRAIN,
        2,
        r"config\.stages\.0\.select_on: dataset 'u' has no labels",
    ),
    (
        "unlabeled-mixture-part",
        {
            **run(
                datasets={"d": H5, "u": {"path": "imgs"}, "m": {"mix": {"d": 2, "u": 2}}},
                stage={"train": "m", "select_on": "d"},
                validate_on=["d"],
            ),
            "imgs": lambda p: _folder(p, masks=False),
        },
        TRAIN,
        2,
        r"config\.datasets\.m\.mix: dataset 'u' has no labels",
    ),
    (
        "folder-mask-not-binary",
        {**run(datasets={"d": {"path": "imgs"}}), "imgs": lambda p: _folder(p, broken="mask")},
        TRAIN,
        2,
        r"im0\.npy: mask is not binary",
    ),
    (
        "folder-image-unreadable",
        {**run(datasets={"d": {"path": "imgs"}}), "imgs": lambda p: _folder(p, broken="image")},
        TRAIN,
        2,
        r"im1\.png: unreadable image",
    ),
    (
        "folder-mrc-volume-as-image",
        {**run(datasets={"d": {"path": "imgs"}}), "imgs": _mrc_volume_folder},
        TRAIN,
        2,
        r"im0\.mrc: shape \(3, 16, 16\); expected one 2-D grey image \(H, W\) per file",
    ),
    ("task-unknown", run(model={"task": "detection"}), TRAIN, 2, r"config\.model\.task: 'detec"),
    (
        "task-loss-mismatch",
        run(stage={"loss": "mse"}),
        TRAIN,
        2,
        r"config\.stages\.0\.loss: 'mse' .*segmentation loss for model\.task segmentation",
    ),
    (
        "task-regression-on-masks",
        run(model={"task": "regression", "classes": 1}, stage={"loss": "mse"}),
        TRAIN,
        2,
        r"config\.model\.task: 'regression' .*segmentation for the mask targets of dataset 'd'",
    ),
    (
        "in-channels-not-inputs",
        regression(model={"in_channels": 3}),
        TRAIN,
        2,
        r"config\.model\.in_channels: 3 .*expected 2 \(one per model\.inputs: image, base\)",
    ),
    (
        "data-channel-count-mismatch",
        regression(data=lambda p: _pairs_h5(p, channels=3)),
        TRAIN,
        2,
        r"data\.h5: 3 input channels; the dataset's channels name 2",
    ),
    (
        "inputs-not-in-dataset",
        regression(datasets={"d": H5}),
        TRAIN,
        2,
        r"config\.model\.inputs: \['image', 'base'\] .*channels of dataset 'd' \(image\)",
    ),
    (
        "target-channels-not-classes",
        regression(data=lambda p: _pairs_h5(p, targets=3)),
        TRAIN,
        2,
        r"config\.model\.classes: 1 .*expected 3 \(the target channels of dataset 'd'\)",
    ),
    (
        "residual-input-missing-channel",
        regression(model={"output": "residual", "residual_input": "baseline"}),
        TRAIN,
        2,
        r"config\.model\.residual_input: 'baseline' .*model\.inputs \(image, base\)",
    ),
    (
        "input-scaling-unknown",
        regression(model={"input_scaling": "per_batch"}),
        TRAIN,
        2,
        r"config\.model\.input_scaling: 'per_batch' .*'per_dataset', 'none' or a finite number",
    ),
    (
        "input-scaling-zero",
        regression(model={"input_scaling": 0}),
        TRAIN,
        2,
        r"config\.model\.input_scaling: 0\.0 .*a factor > 0",
    ),
    (
        "pairs-unmatched-names",
        {
            **regression(datasets={"d": {"path": "pairs", "channels": ["image", "base"]}}),
            "pairs": _pairs_folder,
        },
        TRAIN,
        2,
        r"a0\.npy: no target named a0\.\* in .*targets",
    ),
    (
        "generator-fidelity-unknown",
        run(datasets={"d": {"preset": "noise", "dose": 10, "fidelity": "medium"}}),
        TRAIN,
        2,
        r"datasets\.d\.fidelity: 'medium' .*cheap, full or multislice",
    ),
    (
        "generator-fidelity-exact",
        run(datasets={"d": {"preset": "noise", "dose": 10, "fidelity": "exact"}}),
        TRAIN,
        2,
        r"datasets\.d\.fidelity: 'exact' .*cheap, full or multislice",
    ),
    (
        "generator-phonons-zero",
        run(
            datasets={"d": {"preset": "noise", "dose": 10, "fidelity": "multislice", "phonons": 0}}
        ),
        TRAIN,
        2,
        r"datasets\.d\.phonons: 0 .*an integer >= 1",
    ),
    (
        "generator-phonons-without-multislice",
        run(datasets={"d": {"preset": "noise", "dose": 10, "phonons": 4}}),
        TRAIN,
        2,
        r"datasets\.d\.phonons: 4 .*1 unless fidelity is multislice",
    ),
    (
        "log-weights-unknown-stage",
        run(log_weights=["pretrain/best"]),
        TRAIN,
        2,
        r"config\.log_weights\.0: 'pretrain/best' .*STAGE/final for a stage: s",
    ),
    (
        "val-fraction-one",
        run(datasets={"d": {**H5, "val_fraction": 1.0}}),
        TRAIN,
        2,
        r"datasets\.d\.val_fraction: 1\.0",
    ),
    (
        "generator-dose-negative",
        run(datasets={"d": {"preset": "noise", "dose": -1}}),
        TRAIN,
        2,
        r"datasets\.d\.dose: -1",
    ),
    (
        "generator-unknown-preset",
        run(datasets={"d": {"preset": "blur"}}),
        TRAIN,
        2,
        r"datasets\.d\.preset: 'blur'",
    ),
    (
        "generator-unknown-key",
        run(datasets={"d": {"dosage": 1}}),
        TRAIN,
        2,
        r"datasets\.d\.dosage: unknown key",
    ),
    # --- tracking store ---
    (
        "store-corrupt",
        {**run(), "mlflow.db": b"this is not a database" * 100},
        TRAIN,
        2,
        r"tracking store sqlite:///.*mlflow\.db: cannot be used",
    ),
    (
        "store-uri-unknown-scheme",
        run(),
        [*TRAIN, "--tracking-uri", "nope://x"],
        2,
        r"tracking store nope://x: cannot be used",
    ),
    # --- command-line values checked before anything runs ---
    ("calibrate-name-path", {}, ["calibrate", "../x"], 2, r"argument name: '\.\./x'"),
    ("calibrate-name-empty", {}, ["calibrate", ""], 2, r"argument name: ''"),
    ("server-port-too-large", {}, ["server", "start", "--port", "99999"], 2, r"--port: '99999'"),
    ("server-workers-0", {}, ["server", "start", "--workers", "0"], 2, r"--workers: '0'"),
    ("ui-port-negative", {}, ["ui", "--port", "-5"], 2, r"--port: '-5'"),
    (
        "server-every-address-without-insecure",
        {},
        ["server", "start", "--host", "0.0.0.0"],
        2,
        r"--host: '0\.0\.0\.0' is not allowed without --insecure: zoo's server has no auth",
    ),
    (
        "server-a-name-without-insecure",
        {},
        ["server", "start", "--host", "login1.example.org", "--backend", "sqlite"],
        2,
        r"--host: 'login1\.example\.org' is not allowed without --insecure",
    ),
    (
        "import-experiment-path",
        {"t.csv": "size,loss\n1,0.5\n"},
        ["import", "t.csv", "--experiment", "../x", "--axis", "size", "--metric", "loss=loss"],
        2,
        r"--experiment: '\.\./x' is not allowed",
    ),
    (
        "preview-under-a-file",
        spec(),
        ["data", "make", "spec.yaml", "--preview", "spec.yaml/x"],
        2,
        r"--preview: 'spec\.yaml/x'.*not a folder",
    ),
    (
        "export-out-is-a-folder",
        spec(),
        ["data", "export", "d", "--spec", "spec.yaml", "--out", "."],
        2,
        r"--out: '\.'.*not a file",
    ),
    (
        "analyze-out-is-a-file",
        spec(),
        ["analyze", "spec.yaml", "--out", "spec.yaml"],
        2,
        r"--out: 'spec\.yaml'.*not a folder",
    ),
    ("lr-infinite", run(stage={"lr": float("inf")}), TRAIN, 2, r"stages\.0\.lr: inf"),
    ("power-cap-infinite", run(power_cap_w=float("inf")), TRAIN, 2, r"power_cap_w: inf"),
    (
        "submit-grace-negative",
        spec(),
        ["sweep", "submit", "spec.yaml", "--dry-run", "--grace", "-1"],
        2,
        r"--grace: -1",
    ),
    ("stage-name-path", run(stage={"name": "../x"}), TRAIN, 2, r"stages\.0\.name: '\.\./x'"),
    (
        "h5-images-with-two-channels",
        run(datasets={"d": {**H5, "channels": ["image", "baseline"]}}),
        TRAIN,
        2,
        r"data\.h5: images/masks data has 1 channel",
    ),
    # --- model zoo: read-only, so never a store created ---
    ("models-list-no-store", {}, ["models", "list"], 2, r"mlflow\.db does not exist"),
    ("models-list-limit-0", {}, ["models", "list", "--limit", "0"], 2, r"--limit: '0'"),
    ("models-show-no-store", {}, ["models", "show", "demo"], 2, r"mlflow\.db does not exist"),
    (
        "models-export-out-not-empty",
        {"out": _non_empty},
        ["models", "export", "demo", "--out", "out"],
        2,
        r"--out: 'out' is a folder with files in it; expected a new or empty folder, or --force",
    ),
    (
        "predict-out-not-empty",
        {"mlflow.db": "store", "x.npy": lambda p: np.save(p, np.zeros((8, 8))), "out": _non_empty},
        ["predict", "demo", "x.npy", "--out", "out"],
        2,
        r"--out: 'out' is a folder with files in it",
    ),
    (
        "predict-mrc-of-rank-4",
        {"mlflow.db": "store", "v.mrc": lambda p: _mrc(p, (2, 3, 8, 8))},
        ["predict", "demo", "v.mrc", "--out", "out"],
        2,
        r"v\.mrc: shape \(2, 3, 8, 8\) of float32; expected a 2-D image \(H, W\) or a stack",
    ),
    (
        "predict-colour-png",
        {"mlflow.db": "store", "grid.png": _colour_png},
        ["predict", "demo", "grid.png", "--out", "out"],
        2,
        r"grid\.png: a colour image \(RGB, 3 channels that differ\); expected one grey channel",
    ),
    (
        "predict-no-store",
        {"x.png": "not read: the store is checked first"},
        ["predict", "demo", "x.png", "--out", "out"],
        2,
        r"mlflow\.db does not exist",
    ),
    (
        "sweep-run-profile-unknown",
        spec(),
        ["sweep", "run", "spec.yaml", "--profile", "nosuch"],
        2,
        r"--profile: no profile 'nosuch'",
    ),
    (
        "predict-missing-input",
        {},
        ["predict", "demo", "x.png", "--out", "out"],
        2,
        r"^zoo: error: x\.png: no such file or folder$",
    ),
]


if not torch.cuda.is_available():  # the same refusal on a machine without a GPU
    CASES.append(
        (
            "device-cuda-without-gpu",
            run(device="cuda"),
            TRAIN,
            2,
            r"config\.device: 'cuda' is not available here \(0 CUDA",
        )
    )


def _write(root: Path, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        if callable(content):
            content(path)
        elif content == "loop":
            os.symlink(root / f"{name}.b", path)
            os.symlink(path, root / f"{name}.b")
        elif content == "store":
            from zoo.paths import ProjectPaths
            from zoo.store import Tracker

            Tracker(None, ProjectPaths(root)).experiment("other")
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def _snapshot(root: Path) -> tuple[list[str], dict[str, int]]:
    """Every path under the root (new cached datasets left out) and the store's row counts."""
    listing = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if str(p.relative_to(root)) != ".zoo"
        and not str(p.relative_to(root)).startswith(".zoo/datasets")
        and p.name != "mlflow.db.lock"  # the store's creation lock: empty, owned by Tracker
    )
    rows: dict[str, int] = {}
    database = root / "mlflow.db"
    if database.is_file():
        try:
            with sqlite3.connect(database) as connection:
                for table in ("experiments", "runs", "metrics", "params", "tags"):
                    rows[table] = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        except sqlite3.DatabaseError:
            rows["unreadable"] = database.stat().st_size
    return listing, rows


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse
        return exit.code


@pytest.mark.parametrize(
    ("files", "argv", "code", "pattern"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    project, capsys, files, argv, code, pattern
):
    _write(project.root, files)
    capsys.readouterr()
    before = _snapshot(project.root)
    assert _main(argv) == code
    error = capsys.readouterr().err.strip().splitlines()
    error = [line for line in error if "INFO mlflow" not in line]
    assert len(error) == 1, error
    assert re.search(pattern, error[0]), error[0]
    assert "Traceback" not in error[0]
    assert _snapshot(project.root) == before


@pytest.mark.parametrize(
    ("files", "argv"),
    [
        (run(devices=3, device="cuda"), TRAIN),
        (spec("  devices: 3\n  device: cuda\n"), ["sweep", "run", "spec.yaml"]),
    ],
    ids=["train", "sweep-run"],
)
def test_more_devices_than_gpus_is_one_line(project, capsys, monkeypatch, files, argv):
    """``devices: 3`` on a machine with 2 GPUs (CUDA's answers faked: there is no GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _write(project.root, files)
    capsys.readouterr()
    before = _snapshot(project.root)
    assert _main(argv) == 2
    (error,) = [x for x in capsys.readouterr().err.strip().splitlines() if "INFO" not in x]
    assert re.search(r"config\.devices: 3 is not available here \(2 CUDA devices\)", error)
    assert _snapshot(project.root) == before


def test_the_table_is_large_enough():
    assert len(CASES) >= 230 and len({c[0] for c in CASES}) == len(CASES)


def test_internal_error_is_one_line_with_a_log(project, capsys, monkeypatch):
    import zoo.sweep

    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(zoo.sweep, "load_spec", broken)
    (project.root / "x.yaml").write_text("name: x\n")
    assert main(["sweep", "plan", "x.yaml", "--images-per-s", "1"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    log = re.search(r"traceback in (\S+)\)", line).group(1)
    assert "RuntimeError: boom" in line and "Traceback" in Path(log).read_text()


def _as_unprivileged() -> list[str]:
    """A command prefix under which file permissions apply, also for root (which would
    otherwise write a read-only file): root's DAC-override capabilities are dropped."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions cannot be enforced")
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", "--bounding-set", drop, "--inh-caps", drop]


@pytest.mark.parametrize("read_only", ["file", "folder"])
def test_a_store_this_user_cannot_write_is_one_line_exit_2(project, read_only):
    from zoo.store import Tracker

    _write(project.root, run())
    uri = f"sqlite:///{project.root / 'store' / 'mlflow.db'}"
    Tracker(uri, project).experiment("other")
    locked = project.root / "store" / ("mlflow.db" if read_only == "file" else "")
    before = _snapshot(project.root)
    locked.chmod(0o555)
    try:
        done = subprocess.run(
            [*_as_unprivileged(), sys.executable, "-m", "zoo.cli", *TRAIN, "--tracking-uri", uri],
            cwd=project.root,
            env={**os.environ, "ZOO_ROOT": str(project.root)},
            capture_output=True,
            text=True,
        )
    finally:
        locked.chmod(0o755)
    lines = [line for line in done.stderr.strip().splitlines() if "INFO mlflow" not in line]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and re.search(rf"{locked}/? is not writable", lines[0]), lines
    assert _snapshot(project.root) == before
