"""Runs: a two-stage training logged to MLflow, freezing, resume, loss floor, config errors."""

from __future__ import annotations

import math
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import unfit_weights, zoo_process
from mlflow.tracking import MlflowClient
from PIL import Image

from zoo.checkpoint import load_weights
from zoo.cli import main
from zoo.config import ModelConfig, load_config
from zoo.figures import predictions
from zoo.losses import LOSSES, apply_head, loss_floor
from zoo.models import create_model, freeze, meta_model, parameter_counts
from zoo.run import load_datasets
from zoo.train import Batcher, DeviceData, dihedral, epoch_order, to_device

TINY_DATA = {"preset": "defocus", "image_size": 32, "count": 20, "sim_sampling_a": 0.4}
TINY_RUN = {
    "experiment": "tiny",
    "seed": 3,
    "model": {"encoder": "tu-test_resnet", "decoder_channels": [16, 16, 16, 16, 16]},
    "datasets": {"a": {**TINY_DATA, "defocus_nm": -10}, "b": {**TINY_DATA, "defocus_nm": 10}},
    "stages": [
        {"name": "pretrain", "train": "a", "size": 8, "epochs": 2, "lr": 1e-3},
        {
            "name": "transfer",
            "train": "b",
            "size": 4,
            "epochs": 2,
            "lr": 1e-4,
            "freeze": "encoder",
            "init": "best",
        },
    ],
    "validate_on": ["a", "b"],
}


@pytest.fixture
def config_file(project):
    def write(changes=None, name="run.yaml"):
        document = yaml.safe_load(yaml.safe_dump(TINY_RUN))
        for stage, values in (changes or {}).items():
            document["stages"][stage].update(values)
        path = project.root / name
        path.write_text(yaml.safe_dump(document))
        return path

    return write


def _runs(project, experiment="tiny"):
    client = MlflowClient(project.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([found.experiment_id]) if found else [])


def test_two_stage_run_is_logged_completely_and_not_repeated(project, config_file):
    path = config_file()
    assert main(["train", str(path)]) == 0
    client, runs = _runs(project)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["stages.1.lr"] == "0.0001"
    assert run.data.params["stages.1.freeze"] == "encoder"
    assert run.data.params["datasets.b.defocus_nm"] == "10.0"
    assert run.data.tags["zoo.config_hash"] == load_config(path).digest()
    assert run.data.tags["zoo.seed"] == "3" and run.data.tags["zoo.stages"] == "pretrain,transfer"
    history = client.get_metric_history(run.info.run_id, "val_loss_adj/b")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3, 4]
    lrs = sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)
    assert [m.value for m in lrs] == pytest.approx([1e-3, 0.99e-3, 1e-4, 0.99e-4])
    metrics = run.data.metrics
    assert metrics["loss_floor"] == pytest.approx(math.log(1 + 1 / math.e))
    for name in (
        "val_iou/a",
        "val_acc/b",
        "images_per_s",
        "epoch_seconds",
        "train_seconds",
        "best_val_loss_adj/transfer/b",
        "best_epoch/pretrain/a",
        "params_total",
        "params_trainable/transfer",
    ):
        assert name in metrics, name
    assert metrics["params_trainable/transfer"] < metrics["params_trainable/pretrain"]
    artifacts = {
        a.path
        for folder in ("", "weights", "figures")
        for a in client.list_artifacts(run.info.run_id, folder)
    }
    assert {
        "config.yaml",
        "weights/best.safetensors",
        "weights/final.safetensors",
        "figures/loss_curves.png",
        "figures/predictions.png",
    } <= artifacts

    assert main(["train", str(path)]) == 0
    assert len(_runs(project)[1]) == 1


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_frozen_part_keeps_weights_and_batchnorm_statistics(project, config_file, part):
    path = config_file({1: {"freeze": part}})
    assert main(["train", str(path)]) == 0
    config = load_config(path)
    before = load_weights(project.stage(config.stage_digest(0)) / "best.safetensors")
    after = load_weights(project.stage(config.stage_digest(1)) / "final.safetensors")
    frozen = [k for k in before if k.startswith(f"{part}.")]
    moving = [k for k in before if not k.startswith(f"{part}.") and before[k].is_floating_point()]
    assert any("running_mean" in k for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in moving)


def _final_metrics(project):
    client, runs = _runs(project)
    (run,) = runs
    keys = [
        k
        for k in run.data.metrics
        if not k.startswith(("epoch_seconds", "images_per_s", "train_seconds"))
    ]
    return run.info.status, {
        k: [
            (m.step, m.value)
            for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)
        ]
        for k in keys
    }


def _zoo(project, *args, **kwargs):
    return zoo_process(
        project.root,
        *args,
        env={"OMP_NUM_THREADS": "2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **kwargs,
    )


@pytest.mark.slow
def test_killed_run_resumes_into_same_run_with_identical_metrics(project, config_file, tmp_path):
    path = config_file({0: {"epochs": 3}})
    process = _zoo(project, "train", str(path))
    deadline = time.time() + 240
    while not list(project.stages.glob("*/last.safetensors")) and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not list(project.stages.glob("*/result.json")), "killed too late to test resuming"
    assert _zoo(project, "train", str(path)).wait() == 0
    resumed = _final_metrics(project)

    reference_root = tmp_path / "reference"
    reference_root.mkdir()
    reference = type(project)(reference_root)
    (reference_root / "run.yaml").write_text(path.read_text())
    assert _zoo(reference, "train", "run.yaml").wait() == 0
    assert resumed == _final_metrics(reference)
    assert resumed[0] == "FINISHED"


@pytest.mark.parametrize("interval_s", [0.0, 3600.0])
def test_quick_epochs_reach_the_store_together_and_whole(
    project, config_file, monkeypatch, interval_s
):
    """Epochs that end within the live interval of the last send are held and sent
    together: with an hour's interval a 6-epoch run sends all its metrics (and params) in
    one round trip at its end; with none, one per epoch. Every step lands."""
    import zoo.run
    from zoo.store import Tracker

    monkeypatch.setattr(zoo.run, "LIVE_INTERVAL_S", interval_s)
    sends, batch = [], Tracker._batch

    def counted(self, run_id, **items):
        if items.get("metrics"):
            sends.append(run_id)
        batch(self, run_id, **items)

    monkeypatch.setattr(Tracker, "_batch", counted)
    assert main(["train", str(config_file({0: {"epochs": 3}, 1: {"epochs": 3}}))]) == 0
    client, (run,) = _runs(project)
    assert len(sends) == (1 if interval_s else 6)
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]


def _no_second_forward_pass(*_):
    raise AssertionError("the drawer ran the model: training kept no predictions")


@pytest.mark.parametrize("kept", [True, False], ids=["kept-by-validation", "drawer-predicts"])
def test_the_predictions_figure_shows_what_the_best_weights_predict(
    project, config_file, tmp_path, monkeypatch, kept
):
    """The figure's predicted outlines are the run's best weights' on its first validation
    images, as training stored them: kept from the validation of the best epoch (no
    second forward pass; here the last epoch is not the best), or, when the last stage's
    dataset is not validated, predicted by the drawer from the best weights."""
    changes = {"epochs": 4, "lr": 0.5, "freeze": "none", **({} if kept else {"select_on": "a"})}
    path = config_file({1: changes})
    if kept:
        monkeypatch.setattr("zoo.artifacts._predict", _no_second_forward_pass)
    else:
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "validate_on": ["a"]}))
    assert main(["train", str(path)]) == 0
    client, (run,) = _runs(project)
    if kept:
        assert run.data.metrics["best_epoch/transfer/b"] < 4  # lr 0.5 overshoots after epoch 3
    config = load_config(path)
    best = client.download_artifacts(run.info.run_id, "weights/best.safetensors", str(tmp_path))
    model = create_model(config.model).eval()
    model.load_state_dict(load_weights(Path(best)))
    dataset = load_datasets(config, project)["b"]
    inputs = to_device(dataset, torch.device("cpu"), config.model).val_images[:4].float()
    with torch.inference_mode():
        expected = apply_head(model(inputs), config.model.head).argmax(dim=1).numpy()
    masks = np.array(dataset.val[1][:4])
    drawn = predictions(inputs.numpy()[:, 0], masks, expected, tmp_path / "expected.png")
    logged = client.download_artifacts(run.info.run_id, "figures/predictions.png", str(tmp_path))
    assert np.array_equal(np.asarray(Image.open(logged)), np.asarray(Image.open(drawn)))


def test_a_run_without_figures_logs_everything_else(project, config_file):
    """``figures: false`` leaves out the figures only, and is not part of the identity:
    switching it on a finished run trains and logs nothing."""
    path = config_file()
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "figures": False}))
    assert main(["train", str(path)]) == 0
    client, (run,) = _runs(project)
    assert run.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "history.csv", "weights"} <= logged and "figures" not in logged
    assert main(["train", str(config_file(name="with-figures.yaml"))]) == 0
    assert [r.info.run_id for r in _runs(project)[1]] == [run.info.run_id]


def test_failed_run_is_marked_failed_with_reason(project, config_file):
    unfit_weights(project.root / "broken.safetensors")
    path = config_file({1: {"init": "file:broken.safetensors"}})
    assert main(["train", str(path)]) == 2
    _, (run,) = _runs(project)
    assert run.info.status == "FAILED"
    assert "broken.safetensors" in run.data.tags["zoo.error"]
    assert (
        len(MlflowClient(project.tracking_uri).get_metric_history(run.info.run_id, "train_loss"))
        == 2
    )


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_loss_floor_is_the_loss_of_a_perfect_softmax_prediction(classes):
    target = torch.randint(0, classes, (2, 4, 4))
    perfect_logits = torch.nn.functional.one_hot(target, classes).permute(0, 3, 1, 2) * 1e4
    output = apply_head(perfect_logits.float(), "softmax")
    reached = LOSSES["cross_entropy"].compute(output, target).item()
    assert reached == pytest.approx(loss_floor("cross_entropy", "softmax", classes), abs=1e-6)
    assert loss_floor("cross_entropy", "logits", classes) == 0
    assert loss_floor("cross_entropy", "softmax", 2) == pytest.approx(0.31326, abs=1e-5)


def test_resnet18_unet_size_and_encoder_freezing():
    model = create_model(ModelConfig())
    assert parameter_counts(model) == (14_322_082, 14_322_082)
    freeze(model, "encoder")
    total, trainable = parameter_counts(model)
    assert trainable / total == pytest.approx(0.22, abs=0.01)


def test_a_model_built_for_weights_leaves_the_random_stream_to_the_run_initialising():
    """A sweep worker's figure drawer builds the finished run's model while the next run
    seeds torch and initialises its own: had the build drawn from torch's random stream,
    that run's initial weights would depend on the drawer's timing."""
    config = ModelConfig(encoder_depth=3, decoder_channels=(24, 12, 6))  # built here only
    torch.manual_seed(7)
    alone = create_model(config).state_dict()
    torch.manual_seed(7)
    module = meta_model(config)  # one input channel: smp re-initialises the first conv
    beside_a_build = create_model(config).state_dict()
    assert all(torch.equal(alone[k], beside_a_build[k]) for k in alone)
    assert {p.device.type for p in module.decoder.parameters()} == {"meta"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.0.lr=0", "config.stages.0.lr: 0"),
        ("stages.1.freeze=all", "config.stages.1.freeze: 'all'"),
        ("stages.0.size=17", "config.stages.0.size: 17 .*training split of 'a' \\(16 images\\)"),
        ("stages.0.epochs=two", "config.stages.0.epochs: 'two' .*an integer"),
        ("model.depth=3", "config.model.depth: unknown key"),
        ("stages.5.lr=1", "override stages.5: '5' is not an index below 2"),
        ("stages.0.train=c", "config.stages.0.train: 'c'"),
    ],
)
def test_config_errors_exit_2_name_the_field_and_log_nothing(
    project, config_file, capsys, override, message
):
    assert main(["train", str(config_file()), override]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert re.search(message, error), error
    assert not project.tracking_db.exists() and not project.state.exists()


def test_overrides_read_values_as_yaml(config_file):
    config = load_config(config_file(), ["stages.1.lr=1e-5", "model.head=logits", "seed=7"])
    assert config.stages[1].lr == 1e-5 and config.model.head == "logits" and config.seed == 7


def test_batches_hold_each_image_under_its_dihedral_transform():
    images = torch.randn(3, 1, 5, 5).half()
    masks = (torch.rand(3, 5, 5) > 0.5).to(torch.uint8)
    data = DeviceData(images, masks, images[:1], masks[:1])
    order = epoch_order(seed=1, stage=0, epoch=1, count=3, augment=True)
    x, y = Batcher(data, order)(4, 9)
    assert x.dtype == torch.float32 and x.shape == (9, 1, 5, 5) and y.shape == (9, 5, 5)
    for row, (index, k) in enumerate(order[4:13]):
        assert torch.equal(x[row], dihedral(images[index], k).float())
        assert torch.equal(y[row], dihedral(masks[index], k))
    assert len({tuple(pair) for pair in order}) == 24  # every image under all 8 transforms


def test_compiled_run_reports_compile_time_apart_and_trains_like_eager(project):
    losses = {}
    for compile_ in (False, True):
        document = {**TINY_RUN, "experiment": f"compile-{compile_}", "compile": compile_}
        document["stages"] = TINY_RUN["stages"][:1]
        path = project.root / f"compile-{compile_}.yaml"
        path.write_text(yaml.safe_dump(document))
        assert main(["train", str(path)]) == 0
        client, (run,) = _runs(project, document["experiment"])
        metrics = run.data.metrics
        assert ("compile_seconds/pretrain" in metrics) == compile_
        history = client.get_metric_history(run.info.run_id, "train_loss")
        losses[compile_] = [m.value for m in sorted(history, key=lambda m: m.step)]
    # compiling takes longer than this stage's training: were it counted in train_seconds,
    # train_seconds would exceed it (a factor of 1 keeps the check true under machine load)
    assert metrics["compile_seconds/pretrain"] > metrics["train_seconds/pretrain"] > 0
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


def test_a_half_precision_weights_file_initialises_a_float32_model_with_its_values(project):
    from zoo._resume import _loaded
    from zoo.config import resolve

    config = resolve(TINY_RUN)
    reference = create_model(config.model)
    half = {k: v.half() if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    model = _loaded(config, 1, half)
    for name, value in model.state_dict().items():
        assert value.dtype == reference.state_dict()[name].dtype, name
        assert torch.equal(value, half[name].to(value.dtype)), name


def test_a_failed_checkpoint_write_stops_training_at_the_next_epoch(tmp_path):
    from zoo.checkpoint import BackgroundWrites

    model = torch.nn.Linear(2, 2)
    (tmp_path / "file").write_text("not a folder")
    blocked = tmp_path / "file" / "best.safetensors"  # its folder cannot be made
    with pytest.raises(OSError), BackgroundWrites() as writes:
        writes.weights(model, blocked)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the next hand-over raises the write's error
            writes.weights(model, tmp_path / "later.safetensors")
            time.sleep(0.05)
    assert not (tmp_path / "later.safetensors").exists()
