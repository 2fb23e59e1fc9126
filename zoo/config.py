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

from zoo._typed import CONTROL_CHARACTERS, build, check, to_dict
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
]

# Stage identity version: raise it whenever a change to zoo alters the numbers a stage
# computes (training loop, data pipeline, model construction), so checkpoints made by older
# code are never reused. Version 1 is left out of the hash (hashes made before it existed).
STAGE_VERSION = 1
# Fields that change where or how a run executes, not what it computes; each enters the
# identity only when set to a non-default value, so hashes made before that stay valid.
EXECUTION_FIELDS = ("device", "devices", "power_cap_w", "log_weights", "share_stages")
NOT_IDENTITY = ("experiment", *EXECUTION_FIELDS)


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
    residual_input: int = 0

    def identity(self) -> dict[str, Any]:
        """The model's fields for identities; fields added later leave it at defaults."""
        added = {"output": "direct", "residual_input": 0}
        return {k: v for k, v in to_dict(self).items() if k not in added or v != added[k]}

    def validate(self, where: str) -> None:
        from zoo.models import ARCHITECTURES

        check(
            self.arch in ARCHITECTURES,
            f"{where}.arch",
            self.arch,
            "one of " + ", ".join(ARCHITECTURES),
        )
        check(self.classes >= 1, f"{where}.classes", self.classes, "an integer >= 1")
        check(
            self.output == "direct" or self.head == "logits",
            f"{where}.output",
            self.output,
            "direct with head softmax (residual needs head: logits)",
        )
        check(
            0 <= self.residual_input < self.in_channels,
            f"{where}.residual_input",
            self.residual_input,
            f"an input channel index below in_channels ({self.in_channels})",
        )
        check(
            self.in_channels == 1,
            f"{where}.in_channels",
            self.in_channels,
            "1 (zoo's datasets are single-channel grey images)",
        )
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

    def validate(self, where: str) -> None:
        from zoo.losses import check_loss

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
        kind, _, target = self.init.partition(":")
        check(
            kind in ("auto", "random", "best", "last", "file", "run", "model")
            and bool(target) == (kind in ("file", "run", "model"))
            and not CONTROL_CHARACTERS.search(self.init),
            f"{where}.init",
            self.init,
            "auto, random, best, last, file:PATH, run:RUN_ID or model:NAME@ALIAS",
        )

    @property
    def selection_set(self) -> str:
        return self.select_on or self.train

    def identity(self) -> dict[str, Any]:
        """The stage's fields for its identity: fields added later leave it while at their
        defaults, so hashes made before they existed stay valid."""
        document = to_dict(self)
        return {
            k: v
            for k, v in document.items()
            if k not in _ADDED_STAGE_FIELDS or v != _ADDED_STAGE_FIELDS[k]
        }


_ADDED_STAGE_FIELDS = {
    "scheduler": "exponential",
    "milestones": [],
    "step_size": 1,
    "gamma": 0.1,
    "warmup_epochs": 0,
    "optimizer_state": "reset",
    "select_metric": "loss_adj",
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
    log_weights: tuple[Literal["best", "final"], ...] = ("best", "final")  # weight artifacts
    share_stages: bool = True  # false: every stage checkpoint belongs to this run alone

    def validate(self, where: str) -> None:
        check(
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
        for i, name in enumerate(self.validate_on):
            check(
                name in self.datasets,
                f"{where}.validate_on.{i}",
                name,
                "a dataset name from datasets: " + ", ".join(self.datasets),
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
        return tuple(dict.fromkeys(parts + names))

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
        document["stages"] = [s.identity() for s in self.stages]
        document["model"] = self.model.identity()
        execution = self.execution()
        inits = {
            str(i): _init_content(s.init, f"config.stages.{i}.init")
            for i, s in enumerate(self.stages)
            if init_file(s.init) is not None
        }
        run_document = {**document, "datasets": data, **execution}
        if inits:  # the contents of init files, not only their names
            run_document["init_files"] = inits
        run = _hash(run_document)
        # a stage's numbers depend on where and on how many devices it trains (not bit for
        # bit the same as one process); its energy on the power cap
        placement = {
            k: v for k, v in execution.items() if k in ("device", "devices", "power_cap_w")
        }
        digests: list[str] = []
        documents: list[dict[str, Any]] = []
        for index, stage in enumerate(self.stages):
            parts = [
                p
                for n in (stage.train, *self.validation_sets)
                for p in self.datasets[n].get("mix", {})
            ]
            used = sorted({stage.train, *self.validation_sets, *parts})
            continues = digests and stage.init in ("auto", "best", "last")
            stage_document = {**stage.identity(), "name": ""}  # its name is not its identity
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


def _init_content(init: str, where: str) -> dict[str, str]:
    """{"init_file": content hash} for an ``init: file:``; a missing file is a ConfigError."""
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
    config = build(RunConfig, mapping, where)
    config.__dict__["_table"] = _table_of(mapping["datasets"])
    for name, source in config.sources.items():
        for part in getattr(source, "mix", {}):
            check(
                part in config.datasets and "mix" not in config.datasets[part],
                f"{where}.datasets.{name}.mix",
                part,
                "names of non-mixture datasets",
            )
    for i, stage in enumerate(config.stages):
        _check_targets(config, i, where)
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


def _check_targets(config: RunConfig, index: int, where: str) -> None:
    """Refuse a stage whose loss does not fit the targets of the datasets it uses: a
    segmentation loss needs masks, a regression loss image targets (``target: clean``)."""
    from zoo.losses import loss_task

    stage = config.stages[index]
    wanted = "mask" if loss_task(stage.loss) == "segmentation" else "clean"
    for name in (stage.train, *config.validation_sets):
        parts = getattr(config.sources[name], "mix", None) or {name: None}
        for part in parts:
            found = getattr(config.sources[part], "target", "mask")
            check(
                found == wanted,
                f"{where}.stages.{index}.loss",
                stage.loss,
                f"a loss for the {found} targets of dataset {part!r}"
                + (" (cross_entropy)" if found == "mask" else " (mse, l1, smooth_l1, ssim, ...)"),
            )
    from zoo.metrics import task_metrics

    allowed = ("loss", "loss_adj", *task_metrics(loss_task(stage.loss)))
    check(
        stage.select_metric in allowed,
        f"{where}.stages.{index}.select_metric",
        stage.select_metric,
        "one of " + ", ".join(allowed),
    )
    segmentation, classes = wanted == "mask", config.model.classes
    check(
        classes >= 2 if segmentation else classes == 1,
        f"{where}.model.classes",
        classes,
        ">= 2 for a segmentation loss" if segmentation else "1 for a regression loss",
    )


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
    """The resolved RunConfig in ``path`` with ``overrides`` applied."""
    document = load_yaml(path)
    check(isinstance(document, dict), str(path), type(document).__name__, "a mapping")
    return resolve(apply_overrides(document, list(overrides)))


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
