"""Run configs: typed, strict, resolved, hashed.

A run is a pure function of its resolved config (datasets expanded to every
generator parameter). Its identity is the hash of that config, leaving out the
fields that name where or how it runs but not what it computes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from zoo._config_checks import check_model, check_resolved, check_run, check_stage
from zoo._config_identity import (
    STAGE_VERSION,
    DatasetTable,
    Identity,
    config_identity,
    content_hash,
    execution,
    table_of,
)
from zoo._resolver import Resolver
from zoo._typed import build, check, check_name, to_dict
from zoo._yaml import load_yaml, parse_scalar
from zoo.errors import ConfigError
from zoo.optim import OPTIMIZER_NAMES, SCHEDULER_NAMES

__all__ = [
    "STAGE_VERSION",
    "ModelConfig",
    "Resolver",
    "RunConfig",
    "StageConfig",
    "apply_overrides",
    "flatten",
    "load_config",
    "resolve",
    "set_path",
]


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
        return dict(self._identity)

    @cached_property
    def _identity(self) -> dict[str, Any]:  # once per instance: equal configs share one
        return {k: v for k, v in to_dict(self).items() if k not in _ADDED or v != _ADDED[k]}

    @property
    def reference_channel(self) -> int:
        """Position in ``inputs`` of the residual channel (targets share its scaling)."""
        if isinstance(self.residual_input, str):
            return self.inputs.index(self.residual_input)
        return self.residual_input

    def validate(self, where: str) -> None:
        check_model(self, where)


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
    optimizer: Literal[OPTIMIZER_NAMES] = "adam"  # one of zoo.optim.OPTIMIZERS
    weight_decay: float = 0.0
    # one of zoo.losses.LOSSES, or a weighted sum of losses of one task: {mse: 1.0, ssim: 0.1}
    loss: str | dict[str, float] = "cross_entropy"
    augment: Literal["dihedral", "none"] = "dihedral"  # dihedral: all 8 flips/rotations per epoch
    select_on: str | None = None  # validation set that defines "best"; null = `train`
    # learning rate per epoch e (1-based): exponential lr × lr_decay^(e-1); step lr × gamma^
    # ⌊(e-1)/step_size⌋; milestones lr × gamma^(milestones below e); cosine to 0 at the end
    scheduler: Literal[SCHEDULER_NAMES] = "exponential"  # one of zoo.optim.SCHEDULERS
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
        check_stage(self, where)

    @property
    def selection_set(self) -> str:
        return self.select_on or self.train

    def identity(self) -> dict[str, Any]:
        """The stage's fields for its identity: fields added later leave it while at their
        defaults, so hashes made before they existed stay valid."""
        return dict(self._identity)

    @cached_property
    def _identity(self) -> dict[str, Any]:  # once per instance: equal configs share one
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
    # what resolved it (project root, store): not part of the config, never in a file;
    # replace() keeps it, so a changed copy is identified as the original was
    resolver: Resolver | None = field(
        default=None, compare=False, repr=False, metadata={"internal": True}
    )

    def validate(self, where: str) -> None:
        check_run(self, where)

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
    def _table(self) -> DatasetTable:
        return table_of(self.datasets, self.resolver)

    @property
    def sources(self) -> dict[str, Any]:
        """Dataset name -> parsed zoo.data source."""
        return self._table.sources

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def init_file(self, init: str) -> Path | None:
        """The weights file of an ``init: file:PATH`` under the project root the config was
        resolved against, else None."""
        if self.resolver is None:
            raise ValueError("init_file() of a config that was not resolved")
        return self.resolver.init_file(init)

    def digest(self) -> str:
        """Content hash of what the run computes: its identity."""
        return self._digests[-1]

    def stage_digest(self, index: int) -> str:
        """Identity of stage ``index``: its own config, the model, seed, the data it sees,
        and the identity of the stage it starts from."""
        return self._digests[index]

    def execution(self) -> dict[str, Any]:
        """The execution fields set to non-default values (part of the identity)."""
        return execution(self)

    def identity_fields(self, index: int | None = None) -> dict[str, str]:
        """Field -> short hash of each top-level field of stage ``index``'s identity
        document (the run's when None): a job carries its planned ones, so a worker that
        computes another identity can name the field that differs."""
        document = self._documents[-1 if index is None else index]
        return {name: content_hash(value)[:8] for name, value in document.items()}

    def stage_identity(self, index: int) -> dict[str, Any]:
        """The document stage ``index``'s identity hashes (recorded beside its checkpoints)."""
        return self._documents[index]

    @property
    def _digests(self) -> tuple[str, ...]:
        """(stage 0, stage 1, ..., run) identities."""
        return self._identity.digests

    @property
    def _documents(self) -> tuple[dict[str, Any], ...]:
        """(stage 0, stage 1, ..., run) identity documents."""
        return self._identity.documents

    @cached_property
    def _identity(self) -> Identity:
        """The identity documents and their hashes, computed once."""
        return config_identity(self)

    def reseeded(self, seed: int) -> RunConfig:
        """This resolved config with ``seed``, its datasets and identity carried over rather
        than parsed, checked and hashed again: what resolving its document with that seed
        gives where nothing else in the document depends on the seed (a sweep's seeds;
        the caller knows that, and checks the seed as check_run would)."""
        config = replace(self, seed=seed)
        config.__dict__["_table"] = self._table
        config.__dict__["_identity"] = self._identity.reseeded(seed)
        return config


def resolve(mapping: Any, where: str = "config", resolver: Resolver | None = None) -> RunConfig:
    """A validated RunConfig with every dataset expanded to its full parameters, its
    files and ``init:`` references read through ``resolver`` (None: Resolver.here(),
    without a store) and identified now: a missing one is refused here."""
    resolver = resolver or Resolver.here()
    config = build(RunConfig, _with_in_channels(mapping), where)
    object.__setattr__(config, "resolver", resolver)  # built frozen, before any identity
    table = config.__dict__["_table"] = table_of(mapping["datasets"], resolver)
    check_resolved(config, where, resolver.root)
    resolved = replace(config, datasets=table.resolved)
    resolved.__dict__["_table"] = table  # the same datasets, already parsed
    resolved.digest()
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
            node[part] = child = child.copy() if isinstance(child, dict | list) else child
        elif isinstance(node, list):
            index = _index(node, part, where)
            child = node[index]
            node[index] = child = child.copy() if isinstance(child, dict | list) else child
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


def load_config(
    path: str | Path, overrides: list[str] = (), resolver: Resolver | None = None
) -> RunConfig:
    """The resolved RunConfig in ``path`` with ``overrides`` applied (see resolve); its
    experiment's name must be a safe one (check_name), as a new run makes it."""
    document = load_yaml(path)
    check(isinstance(document, dict), str(path), type(document).__name__, "a mapping")
    config = resolve(apply_overrides(document, list(overrides)), resolver=resolver)
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
