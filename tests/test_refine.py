"""Self-training (``refine:``): iterations logged with their metrics and weights, continued
from a logged iteration, resumed inside an interrupted one, blind to the unlabeled labels."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from zoo.cli import main
from zoo.config import load_config
from zoo.paths import ProjectPaths
from zoo.refine import refine_folders

MODEL = {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5}
REFINE = {"unlabeled": "u", "iterations": 2, "epochs": 2, "confidence": 0.5}
REFINE_KEYS = ("iteration", "iter_val_loss/a", "iter_val_iou/a", "iter_agreement_iou")
EPOCH_KEYS = ("train_loss", "val_loss/a", "val_iou/a")


def _h5(path, seed, masks="random"):
    rng = np.random.default_rng(seed)
    images = rng.random((8, 32, 32)).astype(np.float32)
    labels = (images > 0.6).astype(np.uint8)  # something to learn: bright pixels
    if masks == "destroyed":
        labels = np.zeros_like(labels)
    with h5py.File(path, "w") as handle:
        handle["images"], handle["masks"] = images, labels


def _project(root, monkeypatch, unlabeled_masks="random", **stage):
    """A project with labelled set a and unlabeled set u; run.yaml refines stage s."""
    root.mkdir(exist_ok=True)
    monkeypatch.setenv("ZOO_ROOT", str(root))
    monkeypatch.chdir(root)
    _h5(root / "a.h5", 0)
    _h5(root / "u.h5", 1, unlabeled_masks)
    document = {
        "experiment": "refine",
        "model": MODEL,
        "datasets": {"a": {"path": "a.h5", "val_fraction": 0.25}, "u": {"path": "u.h5"}},
        "stages": [
            {"name": "s", "train": "a", "epochs": 2, "augment": "none", "batch_size": 2, "lr": 0.01}
            | {"refine": REFINE}
            | stage
        ],
        "validate_on": ["a"],
    }
    (root / "run.yaml").write_text(yaml.safe_dump(document))
    return root


def _runs(root):
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("refine")
    runs = client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])
    return client, runs


def _history(client, run, key):
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]


def _metrics(client, run, keys=REFINE_KEYS + EPOCH_KEYS, since=0):
    return {k: [(s, v) for s, v in _history(client, run, k) if s >= since] for k in keys}


def test_two_iterations_log_their_metrics_and_weights(tmp_path, monkeypatch):
    root = _project(tmp_path / "p", monkeypatch)
    assert main(["train", "run.yaml"]) == 0
    client, (run,) = _runs(root)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in _history(client, run, "iteration")] == [0, 1, 2]
    assert [s for s, _ in _history(client, run, "iter_val_iou/a")] == [0, 1, 2]
    agreement = _history(client, run, "iter_agreement_iou")
    assert [s for s, _ in agreement] == [1, 2] and all(0 <= v <= 1 for _, v in agreement)
    # the stage's 2 epochs, then 2 epochs in each of 2 iterations
    assert [s for s, _ in _history(client, run, "train_loss")] == [1, 2, 3, 4, 5, 6]
    weights = {f.path for f in client.list_artifacts(run.info.run_id, "weights")}
    assert {f"weights/iter_{k:02d}.safetensors" for k in range(3)} <= weights
    first, last = (
        load_file(client.download_artifacts(run.info.run_id, f"weights/iter_{k:02d}.safetensors"))
        for k in (0, 2)
    )
    assert any(not first[k].equal(last[k]) for k in first)  # the iterations trained
    folders = refine_folders(load_config("run.yaml"), 0, ProjectPaths(root))
    assert len(folders) == 3 and all((f / "result.json").exists() for f in folders)
    assert main(["train", "run.yaml"]) == 0  # finished: nothing trained or logged again
    assert len(_history(client, run, "iteration")) == 3


def test_continuing_from_an_iteration_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    root = _project(tmp_path / "p", monkeypatch)
    assert main(["train", "run.yaml"]) == 0
    client, (whole,) = _runs(root)
    document = yaml.safe_load((root / "run.yaml").read_text())
    document["stages"][0]["init"] = f"run:{whole.info.run_id}@iter:1"
    (root / "continued.yaml").write_text(yaml.safe_dump(document))
    assert main(["train", "continued.yaml"]) == 0
    client, (_, continued) = _runs(root)
    assert continued.data.tags["zoo.config_hash"] != whole.data.tags["zoo.config_hash"]
    assert [s for s, _ in _history(client, continued, "iteration")] == [2]
    since = 5  # iteration 2's epochs are steps 5 and 6
    assert _metrics(client, continued, since=2) == _metrics(client, whole, since=2) | {
        k: [(s, v) for s, v in _history(client, whole, k) if s >= since] for k in EPOCH_KEYS
    }
    ours, theirs = (
        load_file(client.download_artifacts(r.info.run_id, "weights/iter_02.safetensors"))
        for r in (continued, whole)
    )
    assert all(ours[k].equal(theirs[k]) for k in ours)


def test_an_iteration_interrupted_midway_resumes_to_the_uninterrupted_metrics(
    tmp_path, monkeypatch
):
    from zoo import refine, train

    reference = _project(tmp_path / "reference", monkeypatch)
    assert main(["train", "run.yaml"]) == 0
    client, (run,) = _runs(reference)
    expected = _metrics(client, run)

    root = _project(tmp_path / "interrupted", monkeypatch)
    started = refine._RefineShard.epoch

    def stop_in_second_epoch_of_iteration_two(shard, epoch):
        started(shard, epoch)
        if shard.seeds[1] == 2 and epoch == 2:
            train.STOP.set()  # as a preemption signal does: checkpoint after this step

    monkeypatch.setattr(refine._RefineShard, "epoch", stop_in_second_epoch_of_iteration_two)
    try:
        assert main(["train", "run.yaml"]) != 0
    finally:
        train.STOP.clear()
    client, (run,) = _runs(root)
    assert run.info.status == "RUNNING"
    assert [s for s, _ in _history(client, run, "iteration")] == [0, 1]
    monkeypatch.setattr(refine._RefineShard, "epoch", started)
    assert main(["train", "run.yaml"]) == 0
    client, (resumed,) = _runs(root)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert _metrics(client, resumed) == expected


def _rows(client, run):
    return {k: [v for _, v in _history(client, run, k)] for k in REFINE_KEYS + EPOCH_KEYS}


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_destroyed_unlabeled_labels_leave_training_identical(tmp_path, monkeypatch, targets):
    refine = {**REFINE, "iterations": 1, "targets": targets, "mix": True}
    kept = _project(tmp_path / "kept", monkeypatch, refine=refine)
    assert main(["train", "run.yaml"]) == 0
    client, (run,) = _runs(kept)
    expected = _rows(client, run)
    destroyed = _project(tmp_path / "destroyed", monkeypatch, "destroyed", refine=refine)
    assert main(["train", "run.yaml"]) == 0
    client, (run,) = _runs(destroyed)
    assert _rows(client, run) == expected
    assert len(expected["iter_agreement_iou"]) == 1


def test_each_dihedral_transform_is_undone_and_agreement_is_measured_per_task():
    import torch

    from zoo.refine import _agreement, _undo
    from zoo.train import dihedral

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert all(_undo(dihedral(x, k), k).equal(x) for k in range(8))
    probabilities = torch.softmax(torch.randn(2, 2, 4, 4), dim=1)
    assert _agreement(probabilities, probabilities, "segmentation") == {"iter_agreement_iou": 1.0}
    images = torch.rand(2, 1, 4, 4)
    same = _agreement(images, images, "regression")["iter_agreement_psnr"]
    noisy = _agreement(images + 0.1 * torch.randn_like(images), images, "regression")
    assert same == pytest.approx(120.0) and 0 < noisy["iter_agreement_psnr"] < 40


def _micrographs(folder, count=6, pixel_size_a=1.5):
    """An images-only folder of .mrc micrographs: nothing but images, no labels."""
    from zoo.data._formats import write_mrc

    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(count):
        write_mrc(folder / "images" / f"m{i}.mrc", rng.random((32, 32)), pixel_size_a)


def test_self_training_on_a_folder_of_unlabeled_micrographs(tmp_path, monkeypatch):
    from zoo.data import lookup, used_folders
    from zoo.paths import DatasetPaths

    root = _project(tmp_path / "p", monkeypatch)
    _micrographs(root / "micrographs")
    document = yaml.safe_load((root / "run.yaml").read_text())
    document["datasets"]["a"]["pixel_size_a"] = 1.5
    document["datasets"]["u"] = {"path": "micrographs", "val_fraction": 0}
    (root / "run.yaml").write_text(yaml.safe_dump(document))
    assert main(["train", "run.yaml"]) == 0
    client, (run,) = _runs(root)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in _history(client, run, "iteration")] == [0, 1, 2]
    weights = {f.path for f in client.list_artifacts(run.info.run_id, "weights")}
    assert {f"weights/iter_{k:02d}.safetensors" for k in range(3)} <= weights
    config, paths = load_config("run.yaml"), ProjectPaths(root)
    folders = refine_folders(config, 0, paths)
    assert set(folders) <= set(used_folders(config, paths))  # leased while the run trains
    cached = lookup("u", paths)
    meta = yaml.safe_load(DatasetPaths(cached).meta.read_text())
    assert (meta["target"], meta["pixel_size_a"], meta["train_count"]) == ("none", 1.5, 6)
    assert not DatasetPaths(cached).masks.exists()  # no labels stored
    assert main(["data", "show", "u", "--spec", "run.yaml", "--out", "u.png"]) == 0
    assert (root / "u.png").stat().st_size > 0  # shown without outlines


def _unlabeled(root, form):
    """Four 16x16 images without labels, written as ``form``; the dataset's path."""
    from zoo.data._formats import write_mrc

    stack = np.random.default_rng(3).random((4, 16, 16)).astype(np.float32)
    if form in ("images-folder", "loose-folder"):
        folder = root / "m" / ("images" if form == "images-folder" else "")
        folder.mkdir(parents=True)
        for i, image in enumerate(stack):
            write_mrc(folder / f"m{i}.mrc", image, 1.5)
        return "m"
    if form == "h5":
        with h5py.File(root / "m.h5", "w") as handle:
            handle["images"] = stack
        return "m.h5"
    if form == "mrc-stack":
        write_mrc(root / "m.mrc", stack, 1.5)
        return "m.mrc"
    np.save(root / "m.npy", stack)
    return "m.npy"


@pytest.mark.parametrize("form", ["images-folder", "loose-folder", "h5", "mrc-stack", "npy-stack"])
def test_unlabeled_files_are_read_as_images_without_labels(tmp_path, form):
    from zoo.data import FileSpec, content_digest, dataset_target, load, materialise
    from zoo.paths import DatasetPaths

    source = FileSpec(_unlabeled(tmp_path, form), val_fraction=0.25)
    assert dataset_target(source, tmp_path) == "none"
    folder = materialise("m", source, ProjectPaths(tmp_path))
    dataset = load("m", folder)
    assert dataset.images.shape == (4, 16, 16) and dataset.train_count == 3
    assert dataset.pixel_size_a == (None if form in ("h5", "npy-stack") else 1.5)
    assert not DatasetPaths(folder).masks.exists() and not dataset.masks.any()
    before = content_digest(source, tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    if form.endswith("folder"):
        (tmp_path / "m" / "notes.txt").write_text("not an image")
    assert content_digest(source, tmp_path) == before  # the image bytes alone
