"""Run configs: typed, strict, resolved, hashed.

A run is a pure function of its resolved config (datasets expanded to every
generator parameter). Its identity is the hash of that config, leaving out the
fields that name where or how it runs but not what it computes.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from zoo._typed import CONTROL_CHARACTERS, build, check, check_name, to_dict
from zoo._yaml import load_yaml, parse_scalar
from zoo.errors import ConfigError

__all__ = [
    "STAGE_VERSION",
    "ModelConfig",
    "RunConfig",
    "StageConfig",
    "apply_overrides",
    "flatten",
    "init_file",
    "load_config",
    "resolve",
    "set_path",
    "store_in_use",
    "use_store",
]

# Stage identity version: raise it whenever a change to zoo alters the numbers a stage
# computes (training loop, data pipeline, model construction), so checkpoints made by older
# code are never reused. Version 1 is left out of the hash (hashes made before it existed).
STAGE_VERSION = 1
# Fields that change how a run executes; each enters the identity only when set to a
# non-default value, so hashes made before that stay valid. `device` (where a run is
# placed: cpu, cuda, cuda:N) never enters it: a sweep worker places runs on its own device.
EXECUTION_FIELDS = ("devices", "power_cap_w", "log_weights", "share_stages")
# Fields that enter a stage's identity too: the stage's numbers depend on how many devices
# train it (not bit for bit those of one process), its energy on the power cap.
STAGE_EXECUTION_FIELDS = ("devices", "power_cap_w")
# Fields left out of the identity document (execution fields return through execution()
# when not default); `figures` never enters it: switching it on a finished sweep changes nothing
NOT_IDENTITY = ("experiment", "figures", "device", *EXECUTION_FIELDS)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "unet"  # one of zoo.models.ARCHITECTURES
    encoder: str = "resnet18"  # a segmentation-models-pytorch encoder, or "tu-<timm model>"
    in_channels: int = 1
    classes: int = 2
    head: Literal["softmax", "logits"] = "softmax"  # softmax: the paper's softmax-then-CE
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    # residual: the network's output plus input channel `residual_input` (an additive
    # correction to a baseline given as input); direct: the network's output
    output: Literal["direct", "residual"] = "direct"
    residual_input: int | str = 0  # a name from `inputs`, or its position
    # segmentation: mask targets, `classes` >= 2; regression: image targets, `classes`
    # output channels (any number >= 1)
    task: Literal["segmentation", "regression"] = "segmentation"
    # dataset channels stacked as the input, in order; in_channels follows from them
    inputs: tuple[str, ...] = ("image",)
    # per_image: each channel of each image to mean 0, std 1; per_dataset: each channel by
    # its dataset's training split; none; or a factor (number) multiplying the values.
    # Image targets get the scaling of the reference input channel (residual_input)
    input_scaling: Literal["per_image", "per_dataset", "none"] | float = "per_image"

    def identity(self) -> dict[str, Any]:
        """The model's fields for identities; fields added later leave it at defaults."""
        return {k: v for k, v in to_dict(self).items() if k not in _ADDED or v != _ADDED[k]}

    @property
    def reference_channel(self) -> int:
        """Position in ``inputs`` of the residual channel (targets share its scaling)."""
        if isinstance(self.residual_input, str):
            return self.inputs.index(self.residual_input)
        return self.residual_input

    def validate(self, where: str) -> None:
        from zoo.models import ARCHITECTURES

        check(
            self.arch in ARCHITECTURES,
            f"{where}.arch",
            self.arch,
            "one of " + ", ".join(ARCHITECTURES),
        )
        segmentation = self.task == "segmentation"
        check(
            self.classes >= (2 if segmentation else 1),
            f"{where}.classes",
            self.classes,
            f"an integer >= {2 if segmentation else 1} for task {self.task}",
        )
        check(
            self.output == "direct" or self.head == "logits",
            f"{where}.output",
            self.output,
            "direct with head softmax (residual needs head: logits)",
        )
        self._validate_inputs(where)
        check(
            self.encoder_depth in range(1, 6),
            f"{where}.encoder_depth",
            self.encoder_depth,
            "an integer from 1 to 5",
        )
        check(
            all(c >= 1 for c in self.decoder_channels),
            f"{where}.decoder_channels",
            list(self.decoder_channels),
            "channel counts >= 1",
        )
        check(
            len(self.decoder_channels) == self.encoder_depth,
            f"{where}.decoder_channels",
            list(self.decoder_channels),
            f"{self.encoder_depth} values (one per encoder_depth)",
        )
        if self.arch == "fpn":  # smp's FPN: GroupNorm(32) on its last channels, depth >= 3
            check(
                self.decoder_channels[-1] % 32 == 0,
                f"{where}.decoder_channels",
                list(self.decoder_channels),
                "a last value that is a multiple of 32 for arch fpn",
            )
            check(
                self.encoder_depth >= 3,
                f"{where}.encoder_depth",
                self.encoder_depth,
                "an integer from 3 to 5 for arch fpn",
            )

    def _validate_inputs(self, where: str) -> None:
        names = ", ".join(self.inputs)
        check(
            len(self.inputs) >= 1 and len(set(self.inputs)) == len(self.inputs),
            f"{where}.inputs",
            list(self.inputs),
            "distinct channel names (at least one)",
        )
        check(
            self.in_channels == len(self.inputs),
            f"{where}.in_channels",
            self.in_channels,
            f"{len(self.inputs)} (one per model.inputs: {names}); leave it out to follow them",
        )
        residual = self.residual_input
        check(
            residual in self.inputs
            if isinstance(residual, str)
            else 0 <= residual < len(self.inputs),
            f"{where}.residual_input",
            residual,
            f"a channel of model.inputs ({names}) or its position below {len(self.inputs)}",
        )
        scaling = self.input_scaling
        check(
            isinstance(scaling, str) or scaling > 0,
            f"{where}.input_scaling",
            scaling,
            "per_image, per_dataset, none or a factor > 0",
        )


# ModelConfig fields added after identities existed: left out of them at these defaults
_ADDED = {
    "output": "direct",
    "residual_input": 0,
    "task": "segmentation",
    "inputs": ["image"],
    "input_scaling": "per_image",
}


@dataclass(frozen=True)
class StageConfig:
    name: str  # e.g. pretrain, transfer
    train: str  # name of the dataset this stage trains on
    size: int | None = None  # training images used (the first `size` of the split); null = all
    epochs: int = 10
    lr: float = 1e-3
    lr_decay: float = 0.99  # per-epoch exponential decay: lr × decay^epoch
    batch_size: int = 16
    freeze: Literal["none", "encoder", "decoder"] = "none"
    # random | best | last (of the previous stage) | file:PATH.safetensors | run:MLFLOW_RUN_ID
    # (its best weights; run:ID@STAGE a stage's best, run:ID@epoch:N after its N-th epoch,
    # run:ID@iter:K its refinement's iteration K, for a stage with refine:)
    # | model:NAME@ALIAS or model:NAME/VERSION (registered); auto = random first, then best
    init: str = "auto"
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    # one of zoo.losses.LOSSES, or a weighted sum of losses of one task: {mse: 1.0, ssim: 0.1}
    loss: str | dict[str, float] = "cross_entropy"
    augment: Literal["dihedral", "none"] = "dihedral"  # dihedral: all 8 flips/rotations per epoch
    select_on: str | None = None  # validation set that defines "best"; null = `train`
    # learning rate per epoch e (1-based): exponential lr × lr_decay^(e-1); step lr × gamma^
    # ⌊(e-1)/step_size⌋; milestones lr × gamma^(milestones below e); cosine to 0 at the end
    scheduler: Literal["exponential", "step", "milestones", "cosine", "constant"] = "exponential"
    milestones: tuple[int, ...] = ()  # milestones: epochs after which lr is multiplied by gamma
    step_size: int = 1  # step: epochs between multiplications by gamma
    gamma: float = 0.1  # step and milestones: the factor
    warmup_epochs: int = 0  # the first epochs scaled by e/(warmup_epochs + 1) (linear warm-up)
    # the validation metric that picks a stage's best epoch, in its direction (lower loss,
    # higher iou/acc/psnr/ssim, lower mae): loss, loss_adj or one of zoo.metrics.METRICS
    select_metric: str = "loss_adj"
    # carry: continue the previous stage's optimizer (its state, last weights and shuffle
    # stream), so stages at lr, lr·g, lr·g² equal one stage with milestones; reset: fresh
    optimizer_state: Literal["reset", "carry"] = "reset"
    # keep the weights after every epoch (epoch-N.safetensors), so a later run may start
    # from any of them: init: run:ID@epoch:N
    keep_epochs: bool = False
    # self-training after the stage's own epochs (zoo._refine_config.RefineConfig): e.g.
    # {unlabeled: NAME, iterations: 10, epochs: 2, targets: hard, confidence: 0.9}
    refine: dict[str, Any] | None = None

    def validate(self, where: str) -> None:
        from zoo.losses import check_loss

        check(
            re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.name) is not None,
            f"{where}.name",
            self.name,
            "letters, digits, '.', '_' or '-' (it names folders and run:ID@STAGE)",
        )
        check(self.lr > 0, f"{where}.lr", self.lr, "a learning rate > 0")
        check(0 < self.lr_decay <= 1, f"{where}.lr_decay", self.lr_decay, "0 < decay <= 1")
        check(self.epochs >= 1, f"{where}.epochs", self.epochs, "an integer >= 1")
        check(self.batch_size >= 1, f"{where}.batch_size", self.batch_size, "an integer >= 1")
        check(
            self.size is None or self.size >= 1,
            f"{where}.size",
            self.size,
            "an integer >= 1 or null",
        )
        check(self.weight_decay >= 0, f"{where}.weight_decay", self.weight_decay, "a value >= 0")
        check_loss(self.loss, f"{where}.loss")
        self._validate_schedule(where)
        kind, _, target = self.init.partition(":")
        run_id, at, point = target.partition("@") if kind == "run" else (target, "", "")
        check(
            kind in ("auto", "random", "best", "last", "file", "run", "model")
            and bool(target) == (kind in ("file", "run", "model"))
            and (not at or (bool(run_id) and _INIT_POINT.fullmatch(point) is not None))
            and not CONTROL_CHARACTERS.search(self.init),
            f"{where}.init",
            self.init,
            "auto, random, best, last, file:PATH, run:RUN_ID, run:RUN_ID@STAGE, "
            "run:RUN_ID@epoch:N, run:RUN_ID@iter:K or model:NAME@ALIAS",
        )
        if self.refine is not None:
            from zoo._refine_config import parse_refine

            parse_refine(self.refine, f"{where}.refine")
        check(
            not point.startswith("iter:")
            or (self.refine is not None and int(point[5:]) < self.refinement.iterations),
            f"{where}.init",
            self.init,
            "run:RUN_ID@iter:K only for a stage with refine: and K below its iterations",
        )

    def _validate_schedule(self, where: str) -> None:
        """The learning-rate schedule's fields (scheduler, gamma, steps, milestones, warm-up)."""
        check(self.gamma > 0, f"{where}.gamma", self.gamma, "a factor > 0")
        check(self.step_size >= 1, f"{where}.step_size", self.step_size, "an integer >= 1")
        check(self.warmup_epochs >= 0, f"{where}.warmup_epochs", self.warmup_epochs, ">= 0")
        check(
            list(self.milestones) == sorted(set(self.milestones))
            and all(m >= 1 for m in self.milestones),
            f"{where}.milestones",
            list(self.milestones),
            "increasing epochs >= 1",
        )
        check(
            self.scheduler != "milestones" or bool(self.milestones),
            f"{where}.milestones",
            [],
            "at least one epoch with scheduler: milestones",
        )
        check(
            self.warmup_epochs < self.epochs or not self.warmup_epochs,
            f"{where}.warmup_epochs",
            self.warmup_epochs,
            f"fewer than the stage's epochs ({self.epochs})",
        )

    @property
    def selection_set(self) -> str:
        return self.select_on or self.train

    def identity(self) -> dict[str, Any]:
        """The stage's fields for its identity: fields added later leave it while at their
        defaults, so hashes made before they existed stay valid."""
        document = to_dict(self)
        if self.refine is not None:  # every setting, defaults filled in
            document = {**document, "refine": self.refinement.identity()}
        return {
            k: v
            for k, v in document.items()
            if k not in _ADDED_STAGE_FIELDS or v != _ADDED_STAGE_FIELDS[k]
        }

    @property
    def refinement(self) -> Any:
        """The parsed ``refine`` (a zoo._refine_config.RefineConfig), None without one."""
        from zoo._refine_config import parse_refine

        return None if self.refine is None else parse_refine(self.refine)


# after run:ID@ in an init: a stage name (its best weights), epoch:N (the weights after
# the run's N-th epoch, counted across its stages) or iter:K (its refinement's K-th round)
_INIT_POINT = re.compile(r"epoch:[1-9]\d*|iter:\d+|[^:@]+")

_ADDED_STAGE_FIELDS = {
    "scheduler": "exponential",
    "milestones": [],
    "step_size": 1,
    "gamma": 0.1,
    "warmup_epochs": 0,
    "optimizer_state": "reset",
    "select_metric": "loss_adj",
    "keep_epochs": False,
    "refine": None,
}


@dataclass(frozen=True)
class RunConfig:
    experiment: str  # MLflow experiment the run is logged to
    stages: tuple[StageConfig, ...]
    datasets: dict[str, Any]  # name -> generator parameters or {path: ...}; see zoo.data
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    validate_on: tuple[str, ...] = ()  # validation sets each epoch; empty = every stage's train set
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on CUDA, off on CPU
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    # processes training this run together (DistributedDataParallel, zoo.distributed): each
    # GPU 0..N-1 of this machine, or N CPU processes; the batch sizes stay global
    devices: int = 1
    power_cap_w: float | None = None  # NVML power limit to set while training (needs root)
    compile: bool = False  # torch.compile the model; compile time logged as compile_seconds
    val_batch_size: int = 64
    # weight artifacts: best, final (the last stage's) or STAGE/best, STAGE/final (any stage's)
    log_weights: tuple[str, ...] = ("best", "final")
    share_stages: bool = True  # false: every stage checkpoint belongs to this run alone
    figures: bool = True  # false: no figures/*.png artifacts (the MLflow UI plots the metrics)

    def validate(self, where: str) -> None:
        check(  # stored configs keep loading; new names: check_name (load_config, sweeps)
            bool(self.experiment.strip()) and not CONTROL_CHARACTERS.search(self.experiment),
            f"{where}.experiment",
            self.experiment,
            "a non-empty name without control characters",
        )
        check(0 <= self.seed < 2**32, f"{where}.seed", self.seed, "an integer 0 <= seed < 2**32")
        check(self.val_batch_size >= 1, f"{where}.val_batch_size", self.val_batch_size, ">= 1")
        check(len(self.stages) >= 1, f"{where}.stages", [], "at least one stage")
        names = [s.name for s in self.stages]
        check(len(set(names)) == len(names), f"{where}.stages", names, "distinct stage names")
        self._validate_stage_links(where)
        refining = [s.name for s in self.stages if s.refine is not None]
        check(len(refining) <= 1, f"{where}.stages", refining, "at most one stage with refine:")
        check(
            not refining or self.devices == 1,
            f"{where}.devices",
            self.devices,
            "1 for a run with refine: (self-training runs in one process)",
        )
        weights = {"best", "final"} | {f"{n}/{k}" for n in names for k in ("best", "final")}
        for i, entry in enumerate(self.log_weights):
            check(
                entry in weights,
                f"{where}.log_weights.{i}",
                entry,
                "best, final or STAGE/best, STAGE/final for a stage: " + ", ".join(names),
            )
        for i, name in enumerate(self.validate_on):
            check(
                name in self.datasets,
                f"{where}.validate_on.{i}",
                name,
                "a dataset name from datasets: " + ", ".join(self.datasets),
            )
        from zoo.data import check_streams

        check_streams(self)

    def _validate_stage_links(self, where: str) -> None:
        """Each stage against the run: its datasets, its selection set, and what it takes
        from the stage before (optimizer state, init)."""
        for i, stage in enumerate(self.stages):
            at = f"{where}.stages.{i}"
            check(
                stage.train in self.datasets,
                f"{at}.train",
                stage.train,
                "a dataset name from datasets: " + ", ".join(self.datasets),
            )
            check(
                stage.selection_set in self.validation_sets,
                f"{at}.select_on",
                stage.selection_set,
                "a dataset in validate_on",
            )
            previous = self.stages[i - 1] if i else None
            check(
                stage.optimizer_state == "reset"
                or (
                    previous is not None
                    and stage.init in ("auto", "last")
                    and (stage.optimizer, stage.freeze) == (previous.optimizer, previous.freeze)
                ),
                f"{at}.optimizer_state",
                stage.optimizer_state,
                "reset, or carry after a stage with the same optimizer and freeze "
                "(init auto or last)",
            )
            check(
                i > 0 or stage.init not in ("best", "last"),
                f"{at}.init",
                stage.init,
                "random, file:PATH, run:RUN_ID or model:NAME@ALIAS for the first stage",
            )
        check(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            f"{where}.device",
            self.device,
            "auto, cpu, cuda or cuda:N",
        )
        self._validate_devices(where)
        check(
            self.power_cap_w is None or self.power_cap_w > 0,
            f"{where}.power_cap_w",
            self.power_cap_w,
            "watts > 0 or null",
        )

    def _validate_devices(self, where: str) -> None:
        check(self.devices >= 1, f"{where}.devices", self.devices, "an integer >= 1")
        check(
            self.devices == 1 or ":" not in self.device,
            f"{where}.device",
            self.device,
            f"auto, cpu or cuda with devices: {self.devices} (the run uses cuda:0 to "
            f"cuda:{self.devices - 1})",
        )
        for i, stage in enumerate(self.stages):
            check(
                stage.batch_size >= self.devices,
                f"{where}.stages.{i}.batch_size",
                stage.batch_size,
                f"at least devices ({self.devices}): the batch is split across them",
            )

    @property
    def validation_sets(self) -> tuple[str, ...]:
        return self.validate_on or tuple(dict.fromkeys(s.train for s in self.stages))

    def keeps_optimizer(self, index: int) -> bool:
        """Whether stage ``index`` saves its final optimizer for the next stage to carry."""
        following = self.stages[index + 1 : index + 2]
        return bool(following) and following[0].optimizer_state == "carry"

    def stream(self, index: int) -> tuple[int, int]:
        """(first stage, epochs before this one) of the training stream stage ``index``
        continues: itself and 0 unless it carries the previous stage's optimizer."""
        start, offset = index, 0
        while start > 0 and self.stages[start].optimizer_state == "carry":
            start -= 1
            offset += self.stages[start].epochs
        return start, offset

    @property
    def used_datasets(self) -> tuple[str, ...]:
        """Datasets a run loads: stage training sets, validation sets and mixture parts."""
        names = [*(s.train for s in self.stages), *self.validation_sets]
        parts = [p for n in names for p in self.datasets[n].get("mix", {})]
        unlabeled = [s.refinement.unlabeled for s in self.stages if s.refine is not None]
        return tuple(dict.fromkeys(parts + names + unlabeled))

    @cached_property
    def _table(self) -> _DatasetTable:
        return _with_contents(_dataset_table(json.dumps(self.datasets, sort_keys=True)))

    @property
    def sources(self) -> dict[str, Any]:
        """Dataset name -> parsed zoo.data source."""
        return self._table.sources

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def digest(self) -> str:
        """Content hash of what the run computes: its identity."""
        return self._digests[-1]

    def stage_digest(self, index: int) -> str:
        """Identity of stage ``index``: its own config, the model, seed, the data it sees,
        and the identity of the stage it starts from."""
        return self._digests[index]

    def execution(self) -> dict[str, Any]:
        """The execution fields set to non-default values (part of the identity)."""
        defaults = {f.name: f.default for f in fields(self) if f.name in EXECUTION_FIELDS}
        defaults["log_weights"] = ("best", "final")
        return {
            name: to_dict(getattr(self, name))
            for name in EXECUTION_FIELDS
            if getattr(self, name) != defaults[name]
        }

    def identity_fields(self, index: int | None = None) -> dict[str, str]:
        """Field -> short hash of each top-level field of stage ``index``'s identity
        document (the run's when None): a job carries its planned ones, so a worker that
        computes another identity can name the field that differs."""
        document = self._documents[-1 if index is None else index]
        return {name: _hash(value)[:8] for name, value in document.items()}

    def stage_identity(self, index: int) -> dict[str, Any]:
        """The document stage ``index``'s identity hashes (recorded beside its checkpoints)."""
        return self._documents[index]

    @cached_property
    def _digests(self) -> tuple[str, ...]:
        """(stage 0, stage 1, ..., run) identities, computed once."""
        return tuple(_hash(d) for d in self._documents)

    @cached_property
    def _documents(self) -> tuple[dict[str, Any], ...]:
        """(stage 0, stage 1, ..., run) identity documents."""
        data = self._table.digests
        document = {
            f.name: to_dict(getattr(self, f.name))
            for f in fields(self)
            if f.name not in (*NOT_IDENTITY, "datasets")
        }
        # an init run or model by what it is (its identity), not by its id
        document["stages"] = [{**s.identity(), **_init_kind(s.init)} for s in self.stages]
        document["model"] = self.model.identity()
        execution = self.execution()
        inits = {
            str(i): _init_content(s.init, f"config.stages.{i}.init")
            for i, s in enumerate(self.stages)
            if s.init.partition(":")[0] in ("file", "run", "model")
        }
        run_document = {**document, "datasets": data, **execution}
        if inits:  # the contents of init files and the identities of init runs
            run_document["init_files"] = inits
        run = _hash(run_document)
        placement = {k: v for k, v in execution.items() if k in STAGE_EXECUTION_FIELDS}
        digests: list[str] = []
        documents: list[dict[str, Any]] = []
        for index, stage in enumerate(self.stages):
            parts = [
                p
                for n in (stage.train, *self.validation_sets)
                for p in self.datasets[n].get("mix", {})
            ]
            unlabeled = [stage.refinement.unlabeled] if stage.refine is not None else []
            used = sorted({stage.train, *self.validation_sets, *parts, *unlabeled})
            continues = digests and stage.init in ("auto", "best", "last")
            stage_document = {**document["stages"][index], "name": ""}  # not its name
            if self.keeps_optimizer(index):
                stage_document["keep_optimizer"] = True
            documents.append(
                {
                    "stage": stage_document,
                    "model": document["model"],
                    "seed": self.seed,
                    "amp": self.amp,
                    "val": list(self.validation_sets),
                    "datasets": {n: data[n] for n in used},
                    "parent": digests[-1] if continues else None,
                    "val_batch_size": self.val_batch_size,
                    "owner": None if self.share_stages else run,
                    **({"compile": True} if self.compile else {}),  # older hashes kept
                    **placement,
                    **_init_content(stage.init, f"config.stages.{index}.init"),
                    **({"version": STAGE_VERSION} if STAGE_VERSION > 1 else {}),
                }
            )
            digests.append(_hash(documents[-1]))
        return (*documents, run_document)


def project_root() -> Path:
    """The project root that relative ``path:`` and ``init: file:`` names start from."""
    from zoo.paths import ProjectPaths

    return ProjectPaths.default().root


def init_file(init: str) -> Path | None:
    """The weights file of an ``init: file:PATH`` (relative to the project root), else None."""
    kind, _, target = init.partition(":")
    return project_root() / target if kind == "file" else None


_STORE: dict[str, str | None] = {"uri": None}


def use_store(uri: str | None) -> None:
    """Identify ``init: run:``/``model:`` references in the store at ``uri`` (None: the
    default, ``$MLFLOW_TRACKING_URI`` or the project's mlflow.db)."""
    _STORE["uri"] = uri


def store_in_use() -> str | None:
    """The store set by :func:`use_store` (handed to processes that resolve configs)."""
    return _STORE["uri"]


def _init_kind(init: str) -> dict[str, str]:
    """The ``init`` entry of a stage's identity: ``run`` for a run or a registered model
    (identified by ``init_run``), else the stage's own value."""
    return {"init": "run"} if init.partition(":")[0] in ("run", "model") else {}


def _init_content(init: str, where: str) -> dict[str, str]:
    """{"init_file": content hash} for an ``init: file:``, {"init_run": the referenced
    run's identity} for a run or registered model; a missing target is a ConfigError."""
    kind, _, target = init.partition(":")
    if kind in ("run", "model"):
        from zoo.paths import ProjectPaths
        from zoo.tracking import tracking_uri

        uri = tracking_uri(_STORE["uri"], ProjectPaths.default())
        return {"init_run": _run_identity(uri, kind, target, where)}
    path = init_file(init)
    if path is None:
        return {}
    from zoo.data import file_hash
    from zoo.errors import DataError

    if not path.is_file():
        raise ConfigError(f"{where}: {init!r} is not allowed; {path} is not a file")
    try:
        return {"init_file": file_hash(path)[:16]}
    except DataError as error:
        raise ConfigError(f"{where}: {error}") from None


@functools.lru_cache(maxsize=256)
def _run_identity(uri: str, kind: str, target: str, where: str) -> str:
    """The identity of the run ``target`` names in the store at ``uri`` (its
    ``zoo.config_hash`` tag, else the sha256 of its weights), with its ``@STAGE`` or
    ``@epoch:N`` suffix; a run that does not exist is a ConfigError naming ``where``."""
    from mlflow.exceptions import MlflowException

    from zoo.tracking import CONFIG_HASH_TAG, Tracker

    run_id, _, at = target.partition("@") if kind == "run" else (target, "", "")
    init = f"{kind}:{target}"
    try:
        tracker = Tracker(uri, create=False)
        if kind == "model":
            from zoo.modelzoo._ref import resolve_ref

            run_id = resolve_ref(target, uri).run_id
        run = tracker.client.get_run(run_id)
    except (ConfigError, MlflowException) as error:
        reason = str(error).splitlines()[0] if kind == "model" else f"no run {run_id!r}"
        raise ConfigError(f"{where}: {init!r} is not allowed; {reason} in {uri}") from None
    if at:
        _check_point(run.data.params, at, f"{where}: {init!r} is not allowed;")
    identity = run.data.tags.get(CONFIG_HASH_TAG)
    if identity is None:  # not made by zoo: the weights it gives
        from zoo.data import file_hash
        from zoo.modelzoo import fetch_weights

        identity = file_hash(fetch_weights(run_id if kind == "run" else target, tracker))[:16]
    return f"{identity}@{at}" if at else identity


def _check_point(params: dict[str, str], point: str, refused: str) -> None:
    """Refuse a ``@STAGE``, ``@epoch:N`` or ``@iter:K`` the run (by its logged params) does
    not have."""
    if point.startswith("iter:"):
        from zoo._refine_config import check_iteration

        return check_iteration(params, int(point.removeprefix("iter:")), refused)
    stages = []
    while f"stages.{len(stages)}.name" in params:
        at = len(stages)
        stages.append((params[f"stages.{at}.name"], int(params[f"stages.{at}.epochs"])))
    if not stages:
        raise ConfigError(f"{refused} the run was not trained by zoo (it has no stages)")
    if point.startswith("epoch:"):
        epoch, first = int(point.removeprefix("epoch:")), 0
        for at, (_, epochs) in enumerate(stages):
            kept = params.get(f"stages.{at}.keep_epochs", "").lower() == "true"
            if epoch <= first + epochs:
                if epoch < first + epochs and not kept:
                    raise ConfigError(
                        f"{refused} its stage {at} kept only its last epoch "
                        f"({first + epochs}; keep_epochs: true keeps every one)"
                    )
                return
            first += epochs
        raise ConfigError(f"{refused} the run trained {first} epochs")
    elif point not in (name for name, _ in stages):
        raise ConfigError(
            f"{refused} no stage {point!r}; the run has " + ", ".join(n for n, _ in stages)
        )


@dataclass(frozen=True)
class _DatasetTable:
    resolved: dict[str, Any]  # name -> every parameter (JSON-ready)
    sources: dict[str, Any]  # name -> parsed zoo.data source
    digests: dict[str, str]  # name -> hash of its parameters and, for files, their contents


@functools.lru_cache(maxsize=256)
def _dataset_table(text: str) -> _DatasetTable:
    """Datasets parsed once per distinct declaration: a sweep's runs share a few."""
    from zoo.data import dataset_source

    sources = {n: dataset_source(v, f"datasets.{n}") for n, v in json.loads(text).items()}
    resolved = {
        n: getattr(s, "resolved", functools.partial(to_dict, s))() for n, s in sources.items()
    }
    return _DatasetTable(resolved, sources, {n: _hash(v) for n, v in resolved.items()})


_TABLES_BY_ID: dict[int, tuple[Any, _DatasetTable]] = {}


def _table_of(datasets: Any) -> _DatasetTable:
    """_dataset_table() of a datasets mapping; the same object (a sweep's shared base) is
    serialised only once."""
    entry = _TABLES_BY_ID.get(id(datasets))
    if entry is None or entry[0] is not datasets:
        if len(_TABLES_BY_ID) > 1024:
            _TABLES_BY_ID.clear()
        entry = _TABLES_BY_ID[id(datasets)] = (
            datasets,
            _with_contents(_dataset_table(json.dumps(datasets, sort_keys=True))),
        )
    return entry[1]


def _with_contents(table: _DatasetTable) -> _DatasetTable:
    """``table`` with each folder or HDF5 dataset identified by its files' contents too
    (hashes cached by path, size and mtime), so rewriting the data changes the identity."""
    from zoo.data import FileSpec, content_digest

    files = {n: s for n, s in table.sources.items() if isinstance(s, FileSpec)}
    if not files:
        return table
    root = project_root()
    digests = dict(table.digests)
    for name, source in files.items():
        digests[name] = _hash({**table.resolved[name], "content": content_digest(source, root)})
    return replace(table, digests=digests)


def _hash(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def resolve(mapping: Any, where: str = "config") -> RunConfig:
    """A validated RunConfig with every dataset expanded to its full parameters."""
    config = build(RunConfig, _with_in_channels(mapping), where)
    config.__dict__["_table"] = _table_of(mapping["datasets"])
    for name, source in config.sources.items():
        for part in getattr(source, "mix", {}):
            check(
                part in config.datasets and "mix" not in config.datasets[part],
                f"{where}.datasets.{name}.mix",
                part,
                "names of non-mixture datasets",
            )
    root = project_root()
    from zoo._refine_config import check_labelled

    check_labelled(config, where, root)
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
    table = config._table
    resolved = replace(config, datasets=table.resolved)
    resolved.__dict__["_table"] = table  # the same datasets, already parsed
    resolved.digest()  # init files hashed now: a missing one is refused here
    return resolved


def _with_in_channels(mapping: Any) -> Any:
    """``mapping`` with ``model.in_channels`` set to the number of ``model.inputs`` when
    only the inputs are given."""
    model = mapping.get("model") if isinstance(mapping, dict) else None
    if not isinstance(model, dict) or "in_channels" in model:
        return mapping
    if not isinstance(model.get("inputs"), list):
        return mapping
    return {**mapping, "model": {**model, "in_channels": len(model["inputs"])}}


def _check_targets(config: RunConfig, index: int, where: str, root: Path) -> None:
    """Refuse a stage whose loss is not of the model's task, or whose datasets lack the
    model's input channels or have targets of another task (masks for segmentation, image
    targets for regression)."""
    from zoo.losses import loss_task

    stage, task = config.stages[index], config.model.task
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


_FITTING: set[tuple[Any, ...]] = set()  # (dataset identity, task, inputs, root) found fit


def _check_data(config: RunConfig, part: str, where: str, root: Path) -> None:
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


def set_path(document: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` (``stages.1.lr``) of ``document``; list parts are indices.

    Containers along the path are replaced by shallow copies first, so documents
    that share structure with ``document`` are never changed.
    """
    *parents, last = key.split(".")
    node: Any = document
    for depth, part in enumerate(parents):
        where = ".".join(parents[: depth + 1])
        if isinstance(node, dict):
            child = node.get(part, {})
            node[part] = child = copy.copy(child) if isinstance(child, dict | list) else child
        elif isinstance(node, list):
            index = _index(node, part, where)
            node[index] = child = copy.copy(node[index])
        else:
            raise ConfigError(f"{where}: not a mapping or list, cannot set {key}")
        node = child
    if isinstance(node, list):
        node[_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"{key}: {'.'.join(parents)} is not a mapping or list")


def _index(node: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"{where}: {part!r} is not an index below {len(node)}")
    return int(part)


def apply_overrides(mapping: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``mapping`` with ``key.sub.0=value`` overrides applied (values read as YAML)."""
    result = copy.deepcopy(mapping)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. stages.1.lr=1e-5")
        try:
            set_path(result, key, parse_scalar(text))
        except ConfigError as error:
            raise ConfigError(f"override {error}") from None
    return result


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """The resolved RunConfig in ``path`` with ``overrides`` applied; its experiment's
    name must be a safe one (check_name), as a new run makes it."""
    document = load_yaml(path)
    check(isinstance(document, dict), str(path), type(document).__name__, "a mapping")
    config = resolve(apply_overrides(document, list(overrides)))
    check_name(config.experiment, "config.experiment")
    return config


def flatten(document: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys (``stages.1.lr``) -> scalar values, for MLflow params."""
    if isinstance(document, dict):
        items = document.items()
    elif isinstance(document, list | tuple) and any(isinstance(v, dict | list) for v in document):
        items = ((str(i), v) for i, v in enumerate(document))
    else:
        return {prefix: document}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
