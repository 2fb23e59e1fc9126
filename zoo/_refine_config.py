"""The ``refine:`` block of a stage: self-training on an unlabeled dataset after the stage.

A stage that declares ``refine:`` trains as usual (iteration 0), then runs
``iterations`` rounds: round k predicts the unlabeled set with round k-1's model,
turns the predictions into targets and trains from that model on them (see
zoo.refine). Parsing and checks live here; zoo.config calls them.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from zoo._typed import build, check, to_dict

__all__ = [
    "NoiseConfig",
    "RefineConfig",
    "check_iteration",
    "check_labelled",
    "check_refine_data",
    "parse_refine",
]


@dataclass(frozen=True)
class NoiseConfig:
    level: float = 0.0  # std of Gaussian noise added to the scaled training inputs (0 = none)
    start: int = 1  # the first iteration trained with noise
    pause: int = 0  # the last `pause` iterations train without noise (a clean finish)

    def validate(self, where: str) -> None:
        check(self.level >= 0, f"{where}.level", self.level, "a noise level >= 0")
        check(self.start >= 1, f"{where}.start", self.start, "an iteration >= 1")
        check(self.pause >= 0, f"{where}.pause", self.pause, "an integer >= 0")


@dataclass(frozen=True)
class RefineConfig:
    unlabeled: str  # dataset whose training-split images are predicted (labels never read)
    iterations: int = 1  # rounds of predict-then-train after the stage's own training
    epochs: int = 1  # epochs each round trains
    # hard: class masks, pixels whose class probability is below `confidence` left out of
    # the loss; soft: the class probabilities. Regression models always get image targets
    targets: Literal["hard", "soft"] = "hard"
    confidence: float = 0.0  # hard targets: least class probability a pixel needs
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    subset: int | None = None  # the first `subset` unlabeled images; null = all
    mix: bool = False  # also train each round on the stage's labelled `train` set

    def validate(self, where: str) -> None:
        check(self.iterations >= 1, f"{where}.iterations", self.iterations, "an integer >= 1")
        check(self.epochs >= 1, f"{where}.epochs", self.epochs, "an integer >= 1")
        check(
            0 <= self.confidence <= 1,
            f"{where}.confidence",
            self.confidence,
            "a probability 0 <= confidence <= 1",
        )
        check(
            self.subset is None or self.subset >= 1,
            f"{where}.subset",
            self.subset,
            "an integer >= 1 or null",
        )

    def noisy(self, iteration: int) -> bool:
        """Whether round ``iteration`` (1-based) trains on noisy inputs."""
        noise = self.noise
        last_noisy = self.iterations - noise.pause
        return noise.level > 0 and noise.start <= iteration <= last_noisy

    def identity(self) -> dict[str, Any]:
        """Every setting, defaults filled in (equal settings, equal identities)."""
        return to_dict(self)


def parse_refine(mapping: dict[str, Any], where: str = "refine") -> RefineConfig:
    """The RefineConfig of a stage's ``refine:`` mapping; bad values are a one-line
    ConfigError naming ``where.<field>``."""
    return _parsed(json.dumps(mapping, sort_keys=True), where)


@functools.lru_cache(maxsize=256)
def _parsed(text: str, where: str) -> RefineConfig:
    return build(RefineConfig, json.loads(text), where)


def check_refine_data(config: Any, index: int, where: str, root: Path) -> None:
    """Refuse stage ``index``'s ``refine.unlabeled`` unless it names a declared dataset
    (not a mixture) with images of the model's input channels and, for a subset, enough
    training images. A folder or HDF5 file of targets without images is refused too."""
    from zoo.data import dataset_channels

    refine = parse_refine(config.stages[index].refine, f"{where}.stages.{index}.refine")
    at, name = f"{where}.stages.{index}.refine.unlabeled", refine.unlabeled
    names = ", ".join(n for n, v in config.datasets.items() if "mix" not in v)
    check(
        name in config.datasets and "mix" not in config.datasets[name],
        at,
        name,
        "a dataset name (not a mixture) from datasets: " + names,
    )
    source = config.sources[name]
    if source.files():
        _check_has_images(source, root, at)
    channels = dataset_channels(source)
    check(
        set(config.model.inputs) <= set(channels),
        at,
        name,
        f"a dataset with the model's input channels ({', '.join(config.model.inputs)}); "
        f"{name!r} has {', '.join(channels)}",
    )
    available = getattr(source, "train_count", None)
    check(
        refine.subset is None or available is None or refine.subset <= available,
        f"{where}.stages.{index}.refine.subset",
        refine.subset,
        f"at most the training split of {name!r} ({available} images)",
    )


def check_labelled(config: Any, where: str, root: Path) -> None:
    """Refuse a dataset without labels (target ``none``: zoo.data._files) anywhere but a
    refinement's ``unlabeled:``: as a mixture part, a stage's ``train`` or ``select_on``,
    or in ``validate_on``; one line naming the field and the dataset."""
    from zoo.data import dataset_target
    from zoo.errors import ConfigError

    uses = [
        (f"{where}.datasets.{name}.mix", part)
        for name, spec in config.datasets.items()
        for part in spec.get("mix", {})
    ]
    for i, stage in enumerate(config.stages):
        uses.append((f"{where}.stages.{i}.train", stage.train))
        if stage.select_on is not None:
            uses.append((f"{where}.stages.{i}.select_on", stage.select_on))
    uses += [(f"{where}.validate_on.{i}", name) for i, name in enumerate(config.validate_on)]
    for field_name, name in uses:
        source = config.sources[name]
        if source.files() and dataset_target(source, root) == "none":
            raise ConfigError(
                f"{field_name}: dataset {name!r} has no labels: it can only be a refine: "
                "unlabeled set"
            )


def _check_has_images(source: Any, root: Path, where: str) -> None:
    """ConfigError unless the folder (or HDF5 file) ``source`` names holds images or
    inputs: one of masks or targets only has nothing to predict on."""
    path = (root / source.path).resolve()
    if path.is_dir():  # sub-folders of labels alone have nothing to predict on
        found = any((path / sub).is_dir() for sub in ("images", "inputs")) or not any(
            (path / sub).is_dir() for sub in ("masks", "targets")
        )
    elif path.is_file() and path.suffix.lower() in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as handle:
                found = "images" in handle or "inputs" in handle
        except OSError:
            return  # reading it names the problem
    else:
        return  # reading it names the problem
    check(found, where, source.path, "a dataset with images or inputs; it has targets only")


def check_iteration(params: dict[str, str], iteration: int, refused: str) -> None:
    """Refuse ``@iter:K`` (ConfigError starting with ``refused``) unless the run, by its
    logged params, refined a stage for at least K iterations."""
    from zoo.errors import ConfigError

    at = 0
    while f"stages.{at}.name" in params:
        if f"stages.{at}.refine.unlabeled" in params:
            iterations = int(params.get(f"stages.{at}.refine.iterations", 1))
            if iteration > iterations:
                raise ConfigError(f"{refused} its refinement ran {iterations} iterations")
            return
        at += 1
    raise ConfigError(f"{refused} the run has no stage with refine:")
