"""Tests generated from the optimizer and scheduler registries (zoo.optim): every entry
builds, steps and schedules as documented, and config allows exactly the registered names."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import TINY_DATA

from zoo.config import StageConfig, resolve
from zoo.errors import ConfigError
from zoo.optim import OPTIMIZERS, SCHEDULERS, make_optimizer, stage_lr

# what each registered optimizer promises: its torch class and the settings it adds
DOCUMENTED_OPTIMIZERS = {
    "adam": (torch.optim.Adam, {}),
    "adamw": (torch.optim.AdamW, {}),
    "sgd": (torch.optim.SGD, {"momentum": 0.9}),
}
# a stage of 4 epochs at lr 1 and each scheduler's learning rates in epochs 1-4
SCHEDULE = {"epochs": 4, "lr": 1.0, "lr_decay": 0.5, "gamma": 0.1, "step_size": 2}
DOCUMENTED_SCHEDULES = {
    "exponential": [1.0, 0.5, 0.25, 0.125],  # lr × lr_decay^(e-1)
    "step": [1.0, 1.0, 0.1, 0.1],  # lr × gamma^⌊(e-1)/step_size⌋
    "milestones": [1.0, 1.0, 0.1, 0.01],  # lr × gamma^(milestones 1 and 3 below e)
    "cosine": [1.0, 0.5 * (1 + 0.5**0.5), 0.5, 0.5 * (1 - 0.5**0.5)],  # to 0 at the end
    "constant": [1.0, 1.0, 1.0, 1.0],
}


def _stage(**fields) -> StageConfig:
    return StageConfig("s", "a", **{**SCHEDULE, "milestones": (2, 3), **fields})


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_steps_the_trainable_weights_with_the_stage_settings(name):
    """Guards each optimizer entry: its documented class and settings, the stage's lr and
    weight decay, frozen weights left out, and one step moving the trainable ones."""
    assert name in DOCUMENTED_OPTIMIZERS, f"document optimizer {name!r} in this test"
    kind, settings = DOCUMENTED_OPTIMIZERS[name]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    model[0].requires_grad_(False)
    optimizer = make_optimizer(_stage(optimizer=name, lr=0.1, weight_decay=0.01), model)
    (group,) = optimizer.param_groups
    assert type(optimizer) is kind
    assert {"lr": 0.1, "weight_decay": 0.01, **settings}.items() <= group.items()
    assert [id(p) for p in group["params"]] == [id(p) for p in model[1].parameters()]
    frozen, before = model[0].weight.clone(), model[1].weight.clone()
    model(torch.randn(8, 3)).pow(2).mean().backward()
    optimizer.step()
    assert torch.equal(model[0].weight, frozen) and not torch.equal(model[1].weight, before)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_gives_its_documented_learning_rates(name):
    """Guards each scheduler entry: the stage's lr in epoch 1, then its documented
    values; a warm-up scales the first epochs by e/(warmup_epochs + 1) on top."""
    assert name in DOCUMENTED_SCHEDULES, f"document scheduler {name!r} in this test"
    expected = DOCUMENTED_SCHEDULES[name]
    assert [stage_lr(_stage(scheduler=name), e) for e in range(1, 5)] == pytest.approx(expected)
    warm = _stage(scheduler=name, warmup_epochs=2)
    scaled = [v * f for v, f in zip(expected, (1 / 3, 2 / 3, 1, 1), strict=True)]
    assert [stage_lr(warm, e) for e in range(1, 5)] == pytest.approx(scaled)


def _resolved(**stage) -> StageConfig:
    """The only stage of a resolved one-stage run on a tiny generated set."""
    document = {
        "experiment": "x",
        "datasets": {"a": {**TINY_DATA, "defocus_nm": -10}},
        "stages": [{"name": "s", "train": "a", "milestones": [1], **stage}],
    }
    return resolve(document).stages[0]


@pytest.mark.parametrize("field", ["optimizer", "scheduler"])
def test_config_allows_exactly_the_registered_names(field):
    """Guards config against drifting from the registries: every registered name
    resolves, any other is one line naming the field, the value and every allowed name."""
    registry = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULERS}[field]
    for name in registry:
        assert getattr(_resolved(**{field: name}), field) == name
    with pytest.raises(ConfigError) as error:
        _resolved(**{field: "nadam"})
    allowed = ", ".join(repr(name) for name in registry)
    assert str(error.value).startswith(
        f"config.stages.0.{field}: 'nadam' is not allowed; expected one of {allowed}"
    )
    assert "\n" not in str(error.value)


def test_the_registry_names_load_without_torch():
    """Guards config's import staying light: config reads the names from zoo.optim
    without importing torch."""
    code = "import sys, zoo.config, zoo.optim; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
