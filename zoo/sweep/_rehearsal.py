"""Rehearsal: every planned run and stage of a sweep, with its real axes, seeds, sharing
and dependencies, at toy size, so a user learns in minutes that the whole pipeline works
on their cluster before spending GPU-hours on it.

``rehearsal(spec)`` is the spec's rehearsal: experiment ``<name>-rehearsal``, every run
tagged ``zoo.rehearsal``. Each run config is made as the real one, then shrunk by
``toy_document``: simulated datasets at TOY_SIDE px (coarser simulation sampling), image
counts and stage ``size`` on a logarithmic scale (``toy_count``: 512 images become 19;
sizes more than about 40 % apart stay apart, so runs that differ in them stay
different), one epoch per stage, a small model. Its identities therefore never equal
a real run's or stage's: nothing is shared between a rehearsal and the real sweep.
Datasets read from files are used as they are.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

__all__ = ["SUFFIX", "TOY_SIDE", "rehearsal", "toy_count", "toy_document"]

SUFFIX = "-rehearsal"  # of a rehearsal's name and experiment
TOY_SIDE = 16  # pixels per side of a rehearsal's simulated images
TOY_STEPS = 2  # toy image counts per doubling of the real count (see toy_count)
TOY_SAMPLING_A = 0.8  # simulation sampling of the toy images (Å; 4× their pixel size)
# a small model for TOY_SIDE px: a timm test ResNet, 3 levels (8× down-sampling)
TOY_MODEL = {"encoder": "tu-test_resnet", "encoder_depth": 3, "decoder_channels": [16] * 3}


def rehearsal(spec: Any) -> Any:
    """The rehearsal of sweep spec ``spec`` (zoo.sweep.SweepSpec): the same spec named
    ``<name>-rehearsal``, with its runs made at toy size (``toy_document``)."""
    return replace(spec, name=spec.name + SUFFIX, rehearse=True)


def toy_document(document: dict[str, Any]) -> dict[str, Any]:
    """Run config ``document`` (a mapping before resolution) at toy size; a new mapping."""
    toy = copy.deepcopy(document)
    for entry in toy.get("datasets", {}).values():
        if isinstance(entry, dict) and not {"path", "mix"} & entry.keys():
            count, held_out = entry.get("count", 640), entry.get("val_fraction", 0.2)
            if _number(count) and _number(held_out) and 0 <= held_out < 1:
                count = math.ceil(toy_count(count) / (1 - held_out)) + 1
            entry.update(image_size=TOY_SIDE, count=count)
            if entry.get("fidelity", "full") == "full":  # cheap sets its own sampling
                entry["sim_sampling_a"] = TOY_SAMPLING_A
    for stage in toy.get("stages", []):
        if isinstance(stage, dict):
            stage["epochs"] = 1
            if _number(stage.get("size")):
                stage["size"] = toy_count(stage["size"])
    model = toy.setdefault("model", {})
    if isinstance(model, dict):
        model.update(copy.deepcopy(TOY_MODEL))
    return toy


def toy_count(images: float) -> int:
    """A rehearsal's number of images for ``images``: TOY_STEPS per doubling, growing
    with it (1 → 2, 64 → 13, 512 → 19); values below 1 as they are (validation names
    them)."""
    if images < 1:
        return images
    return math.ceil(TOY_STEPS * math.log2(1 + images))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
