"""CUDA paths: fast defaults, a step loop without host synchronisation, NVML energy,
packed runs matching runs alone. Marked gpu: skipped without a CUDA device (conftest)."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from zoo.cli import main
from zoo.config import ModelConfig, StageConfig
from zoo.data import Dataset
from zoo.models import create_model
from zoo.train import Batcher, Step, epoch_order, make_optimizer, to_device, train_step

pytestmark = pytest.mark.gpu


def _device_data(size=64, count=32):
    images = torch.randn(count, size, size).numpy()
    masks = (torch.rand(count, size, size) > 0.5).to(torch.uint8).numpy()
    return to_device(Dataset("x", images, masks, count - 4, None, "x"), torch.device("cuda"))


def test_step_loop_never_synchronises_with_the_host():
    data = _device_data()
    model = create_model(ModelConfig()).cuda().to(memory_format=torch.channels_last).train()
    stage = StageConfig(name="s", train="x", lr=1e-4)
    optimizer = make_optimizer(stage, model)
    assert optimizer.defaults["fused"]
    step = Step(model, optimizer, amp=torch.bfloat16)
    order = epoch_order(0, 0, 1, len(data.train_images), augment=True)
    batches = Batcher(data, order)
    total = torch.zeros((), device="cuda")
    train_step(step, *batches(0, 16))  # warm-up: lazy CUDA initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for start in range(16, len(order) - 16, 16):
            total += train_step(step, *batches(start, 16)) * 16
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(total).item()


def _transfers(tiny_runs) -> dict[str, dict[str, float]]:
    runs = [r for r in tiny_runs() if r.data.tags["zoo.kind"] == "run"]
    return {r.data.tags["zoo.config_hash"]: r.data.metrics for r in runs}


def test_cuda_run_logs_energy_and_packed_runs_match_runs_alone(tiny_spec, tiny_runs, project):
    spec = tiny_spec(sources=("a",), freezes=("none", "encoder"), epochs=40)  # seconds long
    assert main(["sweep", "run", str(spec), "--runs-per-gpu", "2"]) == 0
    packed = _transfers(tiny_runs)
    assert len(packed) == 2
    assert all(m["energy_wh_per_1000_images/transfer"] > 0 for m in packed.values())
    assert all(m["mean_power_w/transfer"] > 0 for m in packed.values())
    client = MlflowClient(project.tracking_uri)
    client.rename_experiment(client.get_experiment_by_name("tiny").experiment_id, "tiny-packed")
    for stage in project.stages.iterdir():  # train the shared stage again, alone
        stage.rename(stage.with_name(stage.name + "-packed"))
    assert main(["sweep", "run", str(spec), "--workers", "1"]) == 0
    alone = _transfers(tiny_runs)
    assert alone.keys() == packed.keys()
    for key, metrics in alone.items():
        assert metrics["target_loss"] == pytest.approx(packed[key]["target_loss"], rel=2e-2)
