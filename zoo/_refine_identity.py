"""Identities and folders of a refining stage's iterations (see zoo.refine): pure config,
no torch and no data, so the dataset store can lease the folders a run trains into.
Configs are zoo.config.RunConfig (typed Any: zoo.config reaches this module through
zoo.data)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from zoo.paths import ProjectPaths

__all__ = ["PSEUDO", "continued_iteration", "iteration_config", "plain_config", "refine_folders"]

PSEUDO = "refine:pseudo"  # the name an iteration's training set has in its stage config


def _digest(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def plain_config(config: Any, index: int) -> Any:
    """``config`` with stage ``index`` without ``refine``: iteration 0's identity."""
    stages = list(config.stages)
    stages[index] = replace(stages[index], refine=None)
    plain = replace(config, stages=tuple(stages))
    plain.__dict__["_table"] = config._table
    return plain


def iteration_config(config: Any, index: int, iteration: int, parent: str) -> Any:
    """The config that trains ``iteration`` as stage ``index``: the stage's settings for
    ``refine.epochs`` epochs on dataset PSEUDO from the previous iteration's best weights,
    validated and selected as the stage is. PSEUDO's identity holds the unlabeled data's
    content hash, the settings that shape this iteration and ``parent`` (the previous
    iteration's identity)."""
    stage = config.stages[index]
    refine = stage.refinement  # a zoo._refine_config.RefineConfig
    table = config._table
    settings = {k: v for k, v in refine.identity().items() if k not in ("iterations", "noise")}
    pseudo = _digest(
        {
            "unlabeled": table.digests[refine.unlabeled],
            "refine": settings,
            "noise": refine.noise.level if refine.noisy(iteration) else 0.0,
            "iteration": iteration,
            "parent": parent,
        }
    )
    step = replace(
        stage,
        train=PSEUDO,
        epochs=refine.epochs,
        size=None,
        init="best",
        select_on=stage.selection_set,
        optimizer_state="reset",
        keep_epochs=False,
        refine=None,
    )
    made = replace(
        config,
        stages=(*config.stages[:index], step),
        datasets={**config.datasets, PSEUDO: {}},
        validate_on=config.validation_sets,
    )
    made.__dict__["_table"] = replace(
        table,
        resolved={**table.resolved, PSEUDO: {}},
        digests={**table.digests, PSEUDO: pseudo},
    )
    return made


def continued_iteration(init: str) -> int | None:
    """K of an ``init: run:ID@iter:K``, else None."""
    point = init.partition("@")[2] if init.startswith("run:") else ""
    return int(point.removeprefix("iter:")) if point.startswith("iter:") else None


def refine_folders(config: Any, index: int, paths: ProjectPaths) -> list[Path]:
    """The stage folders refining stage ``index`` trains into: iteration 0's (or the
    folder an ``init: run:ID@iter:K`` start is linked into), then each iteration's."""
    stage = config.stages[index]
    first = continued_iteration(stage.init)
    if first is not None:
        parent = config.stage_digest(index)
    else:
        first, parent = 0, plain_config(config, index).stage_digest(index)
    folders = [paths.stage(parent)]
    for k in range(first + 1, stage.refinement.iterations + 1):
        parent = iteration_config(config, index, k, parent).stage_digest(index)
        folders.append(paths.stage(parent))
    return folders
