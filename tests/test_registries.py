"""Tests generated from the registries (timm and smp style): every architecture, optimizer,
loss and AMP mode trains one tiny step on 32 px images with the tiny timm encoder."""

from __future__ import annotations

import typing

import pytest
import torch

from zoo.config import ModelConfig, RunConfig, StageConfig
from zoo.losses import LOSSES
from zoo.models import ARCHITECTURES, create_model
from zoo.train import Step, _amp_dtype, make_optimizer, train_step

OPTIMIZERS = typing.get_args(typing.get_type_hints(StageConfig)["optimizer"])
AMP_MODES = typing.get_args(typing.get_type_hints(RunConfig)["amp"])


def _cpu_supports(dtype: torch.dtype | None) -> bool:
    """Whether CPU autocast runs a convolution in ``dtype`` here."""
    if dtype is None:
        return True
    try:
        with torch.autocast("cpu", dtype):
            torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3))
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _one_step(arch="unet", optimizer="adam", loss="cross_entropy", amp="off", side=32):
    """Train one step from a seeded tiny model; returns (loss, largest weight change)."""
    task = LOSSES[loss].task
    model_config = ModelConfig(
        arch=arch,
        encoder="tu-test_resnet",
        decoder_channels=(16,) * 4 + ((32,) if arch == "fpn" else (16,)),  # GroupNorm(32)
        classes=2 if task == "segmentation" else 1,
        head="softmax" if task == "segmentation" else "logits",
    )
    torch.manual_seed(0)
    model = create_model(model_config).train()
    before = [p.detach().clone() for p in model.parameters()]
    stage = StageConfig(name="s", train="a", optimizer=optimizer, loss=loss, lr=1e-2)
    dtype = _amp_dtype(RunConfig("x", (stage,), {}, amp=amp), torch.device("cpu"))
    if not _cpu_supports(dtype):
        pytest.skip(f"CPU autocast in {dtype} is not supported by this torch build")
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    step = Step(
        model,
        make_optimizer(stage, model),
        LOSSES[loss].compute,
        model_config.head,
        dtype,
        scaler,
    )
    x = torch.randn(4, 1, side, side)
    y = (x[:, 0] > 0.5).long() if task == "segmentation" else x.clone()
    value = train_step(step, x, y)
    change = max(
        (p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before, strict=True)
    )
    return value.item(), change


def _assert_trained(value: float, change: float) -> None:
    assert torch.isfinite(torch.tensor(value))
    assert change > 0  # the step moved the weights


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_trains_one_step(arch):
    _assert_trained(*_one_step(arch=arch))


def test_fpn_with_too_few_channels_is_refused_naming_the_field():
    from zoo.config import resolve
    from zoo.errors import ConfigError

    model = {"arch": "fpn", "encoder": "tu-test_resnet", "decoder_channels": [16] * 5}
    document = {"experiment": "x", "model": model, "datasets": {}, "stages": []}
    with pytest.raises(ConfigError, match=r"config\.model\.decoder_channels: .*multiple of 32"):
        resolve(document)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_trains_one_step(optimizer):
    _assert_trained(*_one_step(optimizer=optimizer))


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains_one_step(loss):
    _assert_trained(*_one_step(loss=loss, side=max(32, LOSSES[loss].min_size + 31)))


@pytest.mark.parametrize("amp", AMP_MODES)
def test_every_amp_mode_trains_one_step(amp):
    _assert_trained(*_one_step(amp=amp))
