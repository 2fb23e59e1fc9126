"""Validation of run configs: each dataclass's own fields (called from its ``validate``)
and, at resolution, the checks that read the data a config names (targets of the model's
task, its input channels, mixture parts, training-set sizes). Configs are zoo.config's
ModelConfig, StageConfig and RunConfig (typed Any here: zoo.config imports this module)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from zoo._typed import CONTROL_CHARACTERS, check

__all__ = ["check_model", "check_resolved", "check_run", "check_stage"]

# after run:ID@ in an init: a stage name (its best weights), epoch:N (the weights after
# the run's N-th epoch, counted across its stages) or iter:K (its refinement's K-th round)
_INIT_POINT = re.compile(r"epoch:[1-9]\d*|iter:\d+|[^:@]+")


def check_model(model: Any, where: str) -> None:
    from zoo.models import ARCHITECTURES

    check(
        model.arch in ARCHITECTURES,
        f"{where}.arch",
        model.arch,
        "one of " + ", ".join(ARCHITECTURES),
    )
    segmentation = model.task == "segmentation"
    check(
        model.classes >= (2 if segmentation else 1),
        f"{where}.classes",
        model.classes,
        f"an integer >= {2 if segmentation else 1} for task {model.task}",
    )
    check(
        model.output == "direct" or model.head == "logits",
        f"{where}.output",
        model.output,
        "direct with head softmax (residual needs head: logits)",
    )
    _check_inputs(model, where)
    check(
        model.encoder_depth in range(1, 6),
        f"{where}.encoder_depth",
        model.encoder_depth,
        "an integer from 1 to 5",
    )
    check(
        all(c >= 1 for c in model.decoder_channels),
        f"{where}.decoder_channels",
        list(model.decoder_channels),
        "channel counts >= 1",
    )
    check(
        len(model.decoder_channels) == model.encoder_depth,
        f"{where}.decoder_channels",
        list(model.decoder_channels),
        f"{model.encoder_depth} values (one per encoder_depth)",
    )
    if model.arch == "fpn":  # smp's FPN: GroupNorm(32) on its last channels, depth >= 3
        check(
            model.decoder_channels[-1] % 32 == 0,
            f"{where}.decoder_channels",
            list(model.decoder_channels),
            "a last value that is a multiple of 32 for arch fpn",
        )
        check(
            model.encoder_depth >= 3,
            f"{where}.encoder_depth",
            model.encoder_depth,
            "an integer from 3 to 5 for arch fpn",
        )


def _check_inputs(model: Any, where: str) -> None:
    names = ", ".join(model.inputs)
    check(
        len(model.inputs) >= 1 and len(set(model.inputs)) == len(model.inputs),
        f"{where}.inputs",
        list(model.inputs),
        "distinct channel names (at least one)",
    )
    check(
        model.in_channels == len(model.inputs),
        f"{where}.in_channels",
        model.in_channels,
        f"{len(model.inputs)} (one per model.inputs: {names}); leave it out to follow them",
    )
    residual = model.residual_input
    check(
        residual in model.inputs
        if isinstance(residual, str)
        else 0 <= residual < len(model.inputs),
        f"{where}.residual_input",
        residual,
        f"a channel of model.inputs ({names}) or its position below {len(model.inputs)}",
    )
    scaling = model.input_scaling
    check(
        isinstance(scaling, str) or scaling > 0,
        f"{where}.input_scaling",
        scaling,
        "per_image, per_dataset, none or a factor > 0",
    )


def check_stage(stage: Any, where: str) -> None:
    from zoo.losses import check_loss

    check(
        re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", stage.name) is not None,
        f"{where}.name",
        stage.name,
        "letters, digits, '.', '_' or '-' (it names folders and run:ID@STAGE)",
    )
    check(stage.lr > 0, f"{where}.lr", stage.lr, "a learning rate > 0")
    check(0 < stage.lr_decay <= 1, f"{where}.lr_decay", stage.lr_decay, "0 < decay <= 1")
    check(stage.epochs >= 1, f"{where}.epochs", stage.epochs, "an integer >= 1")
    check(stage.batch_size >= 1, f"{where}.batch_size", stage.batch_size, "an integer >= 1")
    check(
        stage.size is None or stage.size >= 1,
        f"{where}.size",
        stage.size,
        "an integer >= 1 or null",
    )
    check(stage.weight_decay >= 0, f"{where}.weight_decay", stage.weight_decay, "a value >= 0")
    check_loss(stage.loss, f"{where}.loss")
    _check_schedule(stage, where)
    kind, _, target = stage.init.partition(":")
    run_id, at, point = target.partition("@") if kind == "run" else (target, "", "")
    check(
        kind in ("auto", "random", "best", "last", "file", "run", "model")
        and bool(target) == (kind in ("file", "run", "model"))
        and (not at or (bool(run_id) and _INIT_POINT.fullmatch(point) is not None))
        and not CONTROL_CHARACTERS.search(stage.init),
        f"{where}.init",
        stage.init,
        "auto, random, best, last, file:PATH, run:RUN_ID, run:RUN_ID@STAGE, "
        "run:RUN_ID@epoch:N, run:RUN_ID@iter:K or model:NAME@ALIAS",
    )
    if stage.refine is not None:
        from zoo._refine_config import parse_refine

        parse_refine(stage.refine, f"{where}.refine")
    check(
        not point.startswith("iter:")
        or (stage.refine is not None and int(point[5:]) < stage.refinement.iterations),
        f"{where}.init",
        stage.init,
        "run:RUN_ID@iter:K only for a stage with refine: and K below its iterations",
    )


def _check_schedule(stage: Any, where: str) -> None:
    """The learning-rate schedule's fields (scheduler, gamma, steps, milestones, warm-up)."""
    check(stage.gamma > 0, f"{where}.gamma", stage.gamma, "a factor > 0")
    check(stage.step_size >= 1, f"{where}.step_size", stage.step_size, "an integer >= 1")
    check(stage.warmup_epochs >= 0, f"{where}.warmup_epochs", stage.warmup_epochs, ">= 0")
    check(
        list(stage.milestones) == sorted(set(stage.milestones))
        and all(m >= 1 for m in stage.milestones),
        f"{where}.milestones",
        list(stage.milestones),
        "increasing epochs >= 1",
    )
    check(
        stage.scheduler != "milestones" or bool(stage.milestones),
        f"{where}.milestones",
        [],
        "at least one epoch with scheduler: milestones",
    )
    check(
        stage.warmup_epochs < stage.epochs or not stage.warmup_epochs,
        f"{where}.warmup_epochs",
        stage.warmup_epochs,
        f"fewer than the stage's epochs ({stage.epochs})",
    )


def check_run(config: Any, where: str) -> None:
    check(  # stored configs keep loading; new names: check_name (load_config, sweeps)
        bool(config.experiment.strip()) and not CONTROL_CHARACTERS.search(config.experiment),
        f"{where}.experiment",
        config.experiment,
        "a non-empty name without control characters",
    )
    check(0 <= config.seed < 2**32, f"{where}.seed", config.seed, "an integer 0 <= seed < 2**32")
    check(config.val_batch_size >= 1, f"{where}.val_batch_size", config.val_batch_size, ">= 1")
    check(len(config.stages) >= 1, f"{where}.stages", [], "at least one stage")
    names = [s.name for s in config.stages]
    check(len(set(names)) == len(names), f"{where}.stages", names, "distinct stage names")
    _check_stage_links(config, where)
    refining = [s.name for s in config.stages if s.refine is not None]
    check(len(refining) <= 1, f"{where}.stages", refining, "at most one stage with refine:")
    check(
        not refining or config.devices == 1,
        f"{where}.devices",
        config.devices,
        "1 for a run with refine: (self-training runs in one process)",
    )
    weights = {"best", "final"} | {f"{n}/{k}" for n in names for k in ("best", "final")}
    for i, entry in enumerate(config.log_weights):
        check(
            entry in weights,
            f"{where}.log_weights.{i}",
            entry,
            "best, final or STAGE/best, STAGE/final for a stage: " + ", ".join(names),
        )
    known = "a dataset name from datasets: " + ", ".join(config.datasets)
    for i, name in enumerate(config.validate_on):
        check(name in config.datasets, f"{where}.validate_on.{i}", name, known)
    from zoo.data import check_streams

    check_streams(config)


def _check_stage_links(config: Any, where: str) -> None:
    """Each stage against the run: its datasets, its selection set, and what it takes
    from the stage before (optimizer state, init)."""
    known = "a dataset name from datasets: " + ", ".join(config.datasets)
    for i, stage in enumerate(config.stages):
        at = f"{where}.stages.{i}"
        check(stage.train in config.datasets, f"{at}.train", stage.train, known)
        check(
            stage.selection_set in config.validation_sets,
            f"{at}.select_on",
            stage.selection_set,
            "a dataset in validate_on",
        )
        previous = config.stages[i - 1] if i else None
        check(
            stage.optimizer_state == "reset"
            or (
                previous is not None
                and stage.init in ("auto", "last")
                and (stage.optimizer, stage.freeze) == (previous.optimizer, previous.freeze)
            ),
            f"{at}.optimizer_state",
            stage.optimizer_state,
            "reset, or carry after a stage with the same optimizer and freeze (init auto or last)",
        )
        check(
            i > 0 or stage.init not in ("best", "last"),
            f"{at}.init",
            stage.init,
            "random, file:PATH, run:RUN_ID or model:NAME@ALIAS for the first stage",
        )
    check(
        re.fullmatch(r"auto|cpu|cuda(:\d+)?", config.device) is not None,
        f"{where}.device",
        config.device,
        "auto, cpu, cuda or cuda:N",
    )
    _check_devices(config, where)
    check(
        config.power_cap_w is None or config.power_cap_w > 0,
        f"{where}.power_cap_w",
        config.power_cap_w,
        "watts > 0 or null",
    )


def _check_devices(config: Any, where: str) -> None:
    check(config.devices >= 1, f"{where}.devices", config.devices, "an integer >= 1")
    check(
        config.devices == 1 or ":" not in config.device,
        f"{where}.device",
        config.device,
        f"auto, cpu or cuda with devices: {config.devices} (the run uses cuda:0 to "
        f"cuda:{config.devices - 1})",
    )
    for i, stage in enumerate(config.stages):
        check(
            stage.batch_size >= config.devices,
            f"{where}.stages.{i}.batch_size",
            stage.batch_size,
            f"at least devices ({config.devices}): the batch is split across them",
        )


def _check_targets(config: Any, index: int, where: str, root: Path) -> None:
    """Refuse a stage whose loss is not of the model's task, or whose datasets lack the
    model's input channels or have targets of another task (masks for segmentation, image
    targets for regression). A stage found fit is remembered by what the checks read
    (a sweep's runs ask the same questions thousands of times)."""
    stage, task, table = config.stages[index], config.model.task, config._table
    inputs = tuple(config.model.inputs)
    key = (id(table), stage.train, config.validation_sets, repr(stage.loss), task, inputs, root)
    if _STAGES_FIT.get((key, stage.select_metric)) is table:
        return
    from zoo.losses import loss_task

    check(
        loss_task(stage.loss) == task,
        f"{where}.stages.{index}.loss",
        stage.loss,
        f"a {task} loss for model.task {task}"
        + (" (cross_entropy)" if task == "segmentation" else " (mse, l1, smooth_l1, ssim, ...)"),
    )
    for name in (stage.train, *config.validation_sets):
        for part in getattr(config.sources[name], "mix", None) or (name,):
            _check_data(config, part, where, root)
    from zoo.metrics import task_metrics

    allowed = ("loss", "loss_adj", *task_metrics(task))
    check(
        stage.select_metric in allowed,
        f"{where}.stages.{index}.select_metric",
        stage.select_metric,
        "one of " + ", ".join(allowed),
    )
    if len(_STAGES_FIT) > 4096:
        _STAGES_FIT.clear()
    _STAGES_FIT[key, stage.select_metric] = table  # held: its id names no other table


# (table id, train, validation sets, loss, task, inputs, root), select_metric -> the table
_STAGES_FIT: dict[tuple[Any, ...], Any] = {}
_FITTING: set[tuple[Any, ...]] = set()  # (dataset identity, task, inputs, root) found fit


def _check_data(config: Any, part: str, where: str, root: Path) -> None:
    """Refuse dataset ``part`` (not a mixture) when its targets are of another task than
    the model's or it lacks the model's input channels; a fit found once is remembered
    (a sweep's runs ask the same questions thousands of times)."""
    task, inputs = config.model.task, tuple(config.model.inputs)
    key = (config._table.digests[part], task, inputs, root)
    if key in _FITTING:
        return
    from zoo.data import dataset_channels, dataset_target

    source = config.sources[part]
    found = dataset_target(source, root)
    check(
        (found == "mask") == (task == "segmentation"),
        f"{where}.model.task",
        task,
        f"{'segmentation' if found == 'mask' else 'regression'} for the {found} "
        f"targets of dataset {part!r}",
    )
    channels = dataset_channels(source)
    check(
        set(inputs) <= set(channels),
        f"{where}.model.inputs",
        list(inputs),
        f"channels of dataset {part!r} ({', '.join(channels)})",
    )
    if len(_FITTING) > 4096:
        _FITTING.clear()
    _FITTING.add(key)


# (table id, stages' train and select_on, validate_on, root) -> the table
_LABELLED: dict[tuple[Any, ...], Any] = {}


def _check_labelled(config: Any, where: str, root: Path) -> None:
    """Mixture parts that are datasets of their own, and labels wherever they are needed."""
    for name, source in config.sources.items():
        for part in getattr(source, "mix", {}):
            check(
                part in config.datasets and "mix" not in config.datasets[part],
                f"{where}.datasets.{name}.mix",
                part,
                "names of non-mixture datasets",
            )
    from zoo._refine_config import check_labelled

    check_labelled(config, where, root)


def check_resolved(config: Any, where: str, root: Path) -> None:
    """The checks that read the data ``config`` names under ``root``: mixture parts,
    labelled and refinement data, targets and input channels, training-set sizes. Data
    found labelled is remembered by what the checks read (a sweep's runs share it)."""
    table = config._table
    uses = tuple((s.train, s.select_on) for s in config.stages)
    key = (id(table), uses, config.validate_on, root)
    if _LABELLED.get(key) is not table:
        _check_labelled(config, where, root)
        if len(_LABELLED) > 4096:
            _LABELLED.clear()
        _LABELLED[key] = table  # held: its id names no other table
    for i, stage in enumerate(config.stages):
        _check_targets(config, i, where, root)
        if stage.refine is not None:
            from zoo._refine_config import check_refine_data

            check_refine_data(config, i, where, root)
        available = getattr(config.sources[stage.train], "train_count", None)  # None for files
        check(
            stage.size is None or available is None or stage.size <= available,
            f"{where}.stages.{i}.size",
            stage.size,
            f"at most the training split of {stage.train!r} ({available} images)",
        )
