"""AMP on the CPU, through zoo's own training code: bf16 and fp16 autocast engage in the
training step, the weights stay float32, fp16 skips non-finite steps through its gradient
scaler, ``amp`` is part of the identity, and a tiny ``zoo train`` under each finishes."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

import zoo.train
from zoo.cli import main
from zoo.config import ModelConfig, RunConfig, StageConfig, resolve
from zoo.models import create_model
from zoo.train import DeviceData, _amp_dtype, _StageTraining, make_optimizer, train_step

MODEL = {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5}
TINY_DATA = {"preset": "defocus", "image_size": 32, "count": 20, "sim_sampling_a": 0.4}
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
FLOAT32_MODES = ("off", "auto")  # auto is off on the CPU
MODES = (*HALF, *FLOAT32_MODES)


def _training(amp: str, progress: dict | None = None) -> _StageTraining:
    """zoo's own training of stage 0 (its Step, optimizer and gradient scaler, as
    train_stage builds them) for a seeded tiny model on random 32 px images, on the CPU."""
    model_config = ModelConfig(encoder=MODEL["encoder"], decoder_channels=(16,) * 5)
    stage = StageConfig(name="s", train="a", lr=1e-2)
    config = RunConfig("amp", (stage,), {}, model=model_config, amp=amp)
    torch.manual_seed(0)
    model = create_model(model_config).train()
    images = torch.randn(8, 1, 32, 32)
    masks = (images[:, 0] > 0).to(torch.uint8)
    data = {"a": DeviceData(images, masks, images[:2], masks[:2])}
    progress = progress or {"epoch": 0, "history": [], "best": {}, "seconds": 0.0}
    state = (model, make_optimizer(config.stages[0], model))
    return _StageTraining(config, 0, data, state, progress, None)


def _batch(training: _StageTraining) -> tuple[torch.Tensor, torch.Tensor]:
    data = training.source
    return data.train_images[:4].float(), data.train_masks[:4]


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@contextlib.contextmanager
def _conv_dtypes(model: torch.nn.Module) -> Iterator[set[torch.dtype]]:
    """The dtypes of every convolution's output in forward passes while inside."""
    seen: set[torch.dtype] = set()
    hooks = [
        m.register_forward_hook(lambda _module, _input, output: seen.add(output.dtype))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("amp", MODES)
def test_autocast_runs_the_step_s_convolutions_in_the_configured_dtype(amp):
    """Guards that amp bf16/fp16 really engage autocast in zoo's training step on the CPU
    (every convolution computes in half precision) and that off/auto stay float32; only
    fp16 scales gradients; the loss the step returns is float32 and finite either way."""
    dtype = HALF.get(amp, torch.float32)
    training = _training(amp)
    assert training.step.amp == HALF.get(amp)
    assert training.step.scaler.is_enabled() == (amp == "fp16")  # bf16 has float32's range
    with _conv_dtypes(training.model) as seen:
        loss = train_step(training.step, *_batch(training))
    assert seen == {dtype}
    assert loss.dtype == torch.float32 and torch.isfinite(loss).item()


@pytest.mark.parametrize("amp", sorted(HALF))
def test_half_precision_steps_keep_float32_master_weights_and_move_them(amp):
    """Guards fp32 master weights under AMP: after steps whose convolutions ran in half
    precision, every parameter and gradient is still float32, finite, and changed."""
    training = _training(amp)
    before = _weights(training.model)
    with _conv_dtypes(training.model) as seen:
        for _ in range(3):
            train_step(training.step, *_batch(training))
    assert seen == {HALF[amp]}
    for name, parameter in training.model.named_parameters():
        assert parameter.dtype == torch.float32, name
        assert parameter.grad is not None and parameter.grad.dtype == torch.float32, name
        assert torch.isfinite(parameter).all(), name
    after = _weights(training.model)
    changed = [not torch.equal(b, a) for b, a in zip(before, after, strict=True)]
    assert all(changed), f"{changed.count(False)} of {len(changed)} parameters unchanged"


def test_fp16_skips_a_step_whose_activations_overflow_then_trains_on():
    """Guards fp16's gradient scaler as zoo builds it (on the CPU): a batch that overflows
    float16 (1e6 is finite in float32) gives non-finite gradients, so its step is
    skipped (weights and optimizer state untouched) and the scale backs off; the next,
    finite batch updates the weights."""
    training = _training("fp16")
    scaler, optimizer = training.step.scaler, training.optimizer
    assert scaler.is_enabled() and scaler.get_scale() == 2.0**16
    x, y = _batch(training)
    before = _weights(training.model)
    loss = train_step(training.step, x * 1e6, y)
    assert not torch.isfinite(loss).item()
    assert all(torch.equal(b, p) for b, p in zip(before, training.model.parameters(), strict=True))
    assert not optimizer.state  # Adam never stepped: no moments, no step count
    assert scaler.get_scale() == 2.0**16 * scaler.get_backoff_factor()
    assert torch.isfinite(train_step(training.step, x, y)).item()
    after = _weights(training.model)
    assert all(torch.isfinite(p).all() for p in after)
    assert not all(torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert optimizer.state  # the finite step did step


def test_fp16_resumes_with_the_scale_it_had_checkpointed(tmp_path):
    """Guards resume under fp16: an epoch's checkpoint carries the scaler that backed off,
    and a stage resumed from it scales as the unbroken one would (a fresh 2**16 would
    skip different steps)."""
    from safetensors import safe_open

    from zoo.paths import StagePaths
    from zoo.train import BackgroundWrites

    training = _training("fp16")
    x, y = _batch(training)
    train_step(training.step, x * 1e6, y)  # overflows: the scale backs off
    scale = training.step.scaler.get_scale()
    assert scale < 2.0**16
    files = StagePaths(tmp_path)
    with BackgroundWrites() as writes:
        training._checkpoint(files, {}, writes)
    with safe_open(files.checkpoint, framework="pt") as handle:
        progress = json.loads(handle.metadata()["progress"])
    assert progress["scaler"]["scale"] == scale
    resumed = _training("fp16", progress)
    assert resumed.step.scaler.get_scale() == scale


@pytest.mark.parametrize("amp", MODES)
def test_config_amp_chooses_the_cpu_autocast_dtype(amp):
    """Guards the mapping from config.amp to the CPU's autocast dtype (auto: none on CPU)."""
    config = RunConfig("x", (StageConfig(name="s", train="a"),), {}, amp=amp)
    assert _amp_dtype(config, torch.device("cpu")) == HALF.get(amp)


def test_amp_is_part_of_the_run_and_stage_identity():
    """Guards that runs or stages differing only in amp are never taken for one another:
    every amp mode has its own digest and its own stage digest."""
    document = {
        "experiment": "x",
        "model": MODEL,
        "datasets": {"a": {**TINY_DATA, "defocus_nm": 0}},
        "stages": [{"name": "s", "train": "a", "epochs": 1}],
    }
    configs = [resolve({**document, "amp": amp}) for amp in MODES]
    assert len({c.digest() for c in configs}) == len(MODES)
    assert len({c.stage_digest(0) for c in configs}) == len(MODES)


@pytest.mark.parametrize("amp", sorted(HALF))
def test_zoo_train_under_amp_finishes_with_finite_losses(project, monkeypatch, amp):
    """Guards the whole ``zoo train`` path under amp: training steps and validation both
    see the model's output in the half dtype, and MLflow holds finite losses."""
    seen: dict[bool, set[torch.dtype]] = {True: set(), False: set()}  # inference?
    head = zoo.train.apply_head

    def spy(logits: torch.Tensor, name: str) -> torch.Tensor:
        seen[torch.is_inference_mode_enabled()].add(logits.dtype)
        return head(logits, name)

    monkeypatch.setattr(zoo.train, "apply_head", spy)
    document = {
        "experiment": "tiny",
        "amp": amp,
        "model": MODEL,
        "datasets": {"a": {**TINY_DATA, "defocus_nm": -10}},
        "stages": [{"name": "s", "train": "a", "size": 8, "epochs": 1}],
        "figures": False,
    }
    path = project.root / "run.yaml"
    path.write_text(yaml.safe_dump(document))
    assert main(["train", str(path)]) == 0
    assert seen == {False: {HALF[amp]}, True: {HALF[amp]}}
    client = MlflowClient(project.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["amp"] == amp
    for name in ("train_loss", "val_loss/a"):
        history = client.get_metric_history(run.info.run_id, name)
        assert history and all(math.isfinite(m.value) for m in history), name
