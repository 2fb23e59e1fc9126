"""Rehearsal: every planned run and stage of a sweep, with its real axes, seeds, sharing
and dependencies, at toy size, so a user learns in minutes that the whole pipeline works
on their cluster before spending GPU-hours on it.

``rehearsal(spec)`` is the spec's rehearsal: experiment ``<name>-rehearsal``, every run
tagged ``zoo.rehearsal``. Each run config is made as the real one, then shrunk by
``toy_document``: simulated datasets at TOY_SIDE px (coarser simulation sampling), image
counts and stage ``size`` on a logarithmic scale (``toy_count``: 512 images become 19;
sizes more than about 40 % apart stay apart, so runs that differ in them stay
different), one epoch per stage, a small model. Its identities therefore never equal
a real run's or stage's wherever toy size changes the config (any sweep larger than
toy size): nothing is shared between a rehearsal and the real sweep. Datasets read
from files are used as they are, mixtures take toy counts of their parts, and a stage
starting from a file, run or model starts from random weights (real-size weights do
not fit the toy model). Axes over epochs, the model or image sizes change nothing in
a rehearsal: its plan refuses them as runs that are the same.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

__all__ = ["SUFFIX", "TOY_SIDE", "check_resubmit", "rehearsal", "toy_count", "toy_document"]

SUFFIX = "-rehearsal"  # of a rehearsal's name and experiment
TOY_SIDE = 16  # pixels per side of a rehearsal's simulated images
TOY_STEPS = 2  # toy image counts per doubling of the real count (see toy_count)
TOY_SAMPLING_A = 0.8  # simulation sampling of the toy images (Å; 4× their pixel size)
# a small model for TOY_SIDE px: a timm test ResNet, 3 levels (8× down-sampling); 32
# decoder channels, which every architecture accepts (FPN wants a multiple of 32)
TOY_MODEL = {"encoder": "tu-test_resnet", "encoder_depth": 3, "decoder_channels": [32] * 3}


def rehearsal(spec: Any) -> Any:
    """The rehearsal of sweep spec ``spec`` (zoo.sweep.SweepSpec): the same spec named
    ``<name>-rehearsal``, with its runs made at toy size (``toy_document``)."""
    return replace(spec, name=spec.name + SUFFIX, rehearse=True)


def check_resubmit(spec: Any, resubmit_failed: bool, paths: Any) -> None:
    """Refuse ``--resubmit-failed`` of a rehearsal never submitted in project ``paths``
    (zoo.paths.ProjectPaths): a ConfigError saying what to run first."""
    from zoo.errors import ConfigError

    if spec.rehearse and resubmit_failed and not paths.submissions(spec.name):
        raise ConfigError(
            f"--resubmit-failed: sweep {spec.name} was never submitted; expected a first "
            "`zoo sweep submit SPEC --rehearse` without it"
        )


def toy_document(document: dict[str, Any]) -> dict[str, Any]:
    """Run config ``document`` (a mapping before resolution) at toy size; a new mapping
    that shares no changed container with ``document``. Runs of a sweep that share
    their ``datasets`` mapping share its toy version too (so it is parsed once)."""
    toy = dict(document)
    if isinstance(toy.get("datasets"), dict):
        toy["datasets"] = _toy_datasets(toy["datasets"])
    if isinstance(toy.get("stages"), list):
        toy["stages"] = [_toy_stage(dict(s)) if isinstance(s, dict) else s for s in toy["stages"]]
    model = toy.get("model", {})
    if isinstance(model, dict):
        toy["model"] = {**model, **copy.deepcopy(TOY_MODEL)}
    return toy


_TOY_DATASETS: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}  # id -> (real, toy)


def _toy_datasets(datasets: dict[str, Any]) -> dict[str, Any]:
    """The toy version of a ``datasets`` mapping, made once per mapping object."""
    known = _TOY_DATASETS.get(id(datasets))
    if known is not None and known[0] is datasets:
        return known[1]
    if len(_TOY_DATASETS) > 1024:
        _TOY_DATASETS.clear()
    toy = copy.deepcopy(datasets)
    for entry in toy.values():
        if isinstance(entry, dict) and isinstance(entry.get("mix"), dict):
            entry["mix"] = {k: toy_count(v) if _number(v) else v for k, v in entry["mix"].items()}
        if isinstance(entry, dict) and not {"path", "mix"} & entry.keys():
            count, held_out = entry.get("count", 640), entry.get("val_fraction", 0.2)
            if _number(count) and _number(held_out) and 0 <= held_out < 1:
                count = math.ceil(toy_count(count) / (1 - held_out)) + 1
            entry.update(image_size=TOY_SIDE, count=count)
            if entry.get("fidelity", "full") != "cheap":  # cheap sets its own sampling
                entry["sim_sampling_a"] = TOY_SAMPLING_A
    _TOY_DATASETS[id(datasets)] = (datasets, toy)
    return toy


def _toy_stage(stage: dict[str, Any]) -> dict[str, Any]:
    """A stage mapping (a copy, changed in place) at toy size."""
    stage["epochs"] = 1
    if str(stage.get("init", "")).partition(":")[0] in ("file", "run", "model"):
        stage["init"] = "random"  # real-size weights do not fit the toy model
    if _number(stage.get("size")):
        stage["size"] = toy_count(stage["size"])
    return stage


def toy_count(images: float) -> int:
    """A rehearsal's number of images for ``images``: TOY_STEPS per doubling, growing
    with it (1 → 2, 64 → 13, 512 → 19); values below 1 as they are (validation names
    them)."""
    if images < 1:
        return images
    return math.ceil(TOY_STEPS * math.log2(1 + images))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
