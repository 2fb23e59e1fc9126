"""Continued runs: more epochs of a finished run, or an extra stage, go on from where it
stopped into a new linked run, with the numbers of an uninterrupted longer run."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from zoo.cli import main
from zoo.config import load_config
from zoo.continuation import intermediate_weights
from zoo.store import Tracker

MODEL = {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5}
STAGE = {"train": "d", "augment": "none", "lr_decay": 0.5, "batch_size": 4}


def _h5(path):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as handle:
        handle["images"] = rng.random((8, 32, 32)).astype(np.float32)
        handle["masks"] = (rng.random((8, 32, 32)) > 0.5).astype(np.uint8)


def _config(root, stages, name="run.yaml"):
    document = {
        "experiment": "cont",
        "model": MODEL,
        "datasets": {"d": {"path": "data.h5", "val_fraction": 0.25}},
        "stages": [{**STAGE, **s} for s in stages],
    }
    (root / name).write_text(yaml.safe_dump(document))
    return str(root / name)


def _runs(root):
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cont")
    return client, client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])


def _history(client, run, key):
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]


def _in(root, monkeypatch):
    monkeypatch.setenv("ZOO_ROOT", str(root))
    monkeypatch.chdir(root)
    _h5(root / "data.h5")


KEYS = ("train_loss", "lr", "val_loss/d", "val_iou/d")


def test_more_epochs_continue_into_a_new_run_equal_to_an_uninterrupted_one(
    tmp_path, monkeypatch, capsys
):
    longer = tmp_path / "longer"
    longer.mkdir()
    _in(longer, monkeypatch)
    assert main(["train", _config(longer, [{"name": "s", "epochs": 3}])]) == 0
    client, (reference,) = _runs(longer)

    continued = tmp_path / "continued"
    continued.mkdir()
    _in(continued, monkeypatch)
    assert main(["train", _config(continued, [{"name": "s", "epochs": 2}])]) == 0
    capsys.readouterr()
    assert main(["train", _config(continued, [{"name": "s", "epochs": 3}])]) == 0
    out = capsys.readouterr().out
    assert "continuing after epoch 2" in out
    client, (old, new) = _runs(continued)
    assert new.data.tags["zoo.continued_from"] == old.info.run_id
    assert new.data.tags["zoo.config_hash"] == reference.data.tags["zoo.config_hash"]
    assert old.info.status == new.info.status == "FINISHED"
    assert [s for s, _ in _history(client, old, "train_loss")] == [1, 2]  # old run untouched
    # epochs 1-2 are the old run's (replayed, not trained again): the same timings
    assert _history(client, new, "epoch_seconds")[:2] == _history(client, old, "epoch_seconds")
    assert old.data.params["stages.0.epochs"] == "2"
    reference_client = MlflowClient(f"sqlite:///{longer / 'mlflow.db'}")
    for key in KEYS:
        assert _history(client, new, key) == _history(reference_client, reference, key), key
    # bit-identical weights
    for kind in ("best", "final"):
        found = continued.glob(f".zoo/stages/*/{kind}.safetensors")
        (ours,) = [p for p in found if _epochs(p) == 3]
        (theirs,) = longer.glob(f".zoo/stages/*/{kind}.safetensors")
        a, b = load_file(ours), load_file(theirs)
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), kind
    assert main(["train", _config(continued, [{"name": "s", "epochs": 3}])]) == 0
    assert "nothing to do" in capsys.readouterr().out


def _epochs(weights):
    import json

    return json.loads((weights.parent / "result.json").read_text())["record"]["config"]["stages"][
        -1
    ]["epochs"]


def test_an_appended_stage_reuses_the_finished_run_and_links_to_it(project, capsys):
    _h5(project.root / "data.h5")
    assert main(["train", _config(project.root, [{"name": "a", "epochs": 1}])]) == 0
    capsys.readouterr()
    two = [{"name": "a", "epochs": 1}, {"name": "b", "epochs": 1, "lr": 1e-4}]
    assert main(["train", _config(project.root, two)]) == 0
    out = capsys.readouterr().out
    client, (old, new) = _runs(project.root)
    assert new.data.tags["zoo.continued_from"] == old.info.run_id
    assert len(list(project.stages.iterdir())) == 2  # stage a trained once
    assert _history(client, new, "train_loss")[0] == _history(client, old, "train_loss")[0]
    assert "b epoch 1" in out
    # zoo train's progress: epoch of epochs, its time and what is left of the stage
    assert re.search(r"  b epoch 1/1 \([0-9.]+ s, stage ETA 0m00s\): train loss \d", out)


def test_a_length_dependent_schedule_is_not_continued(project, capsys):
    _h5(project.root / "data.h5")
    one = [{"name": "s", "scheduler": "cosine", "epochs": 1}]
    assert main(["train", _config(project.root, one)]) == 0
    capsys.readouterr()
    two = [{"name": "s", "scheduler": "cosine", "epochs": 2}]
    assert main(["train", _config(project.root, two)]) == 0
    assert "continuing" not in capsys.readouterr().out
    _, (_, new) = _runs(project.root)
    assert "zoo.continued_from" not in new.data.tags


def test_a_run_starts_from_a_kept_epoch_or_a_stage_of_another_run(project, capsys):
    _h5(project.root / "data.h5")
    kept = [{"name": "s", "epochs": 2, "keep_epochs": True}, {"name": "t", "epochs": 1}]
    assert main(["train", _config(project.root, kept)]) == 0
    client, (upstream,) = _runs(project.root)
    (folder,) = [p.parent for p in project.stages.glob("*/epoch-2.safetensors")]
    assert (folder / "epoch-1.safetensors").exists()
    (project.root / "e1.safetensors").write_bytes((folder / "epoch-1.safetensors").read_bytes())
    histories = {}
    for init in (f"run:{upstream.info.run_id}@epoch:1", "file:e1.safetensors"):
        stages = [{"name": "f", "epochs": 1, "lr": 1e-4, "init": init}]
        assert main(["train", _config(project.root, stages, "f.yaml")]) == 0
        _, runs = _runs(project.root)
        histories[init] = _history(client, runs[-1], "train_loss")
    first, second = histories.values()
    assert first == second  # the same starting weights
    last = project.stage(load_config(project.root / "run.yaml").stage_digest(1))
    for point, expected in (  # a stage's best; an epoch; a stage's last epoch: its final
        ("t", last / "best.safetensors"),
        ("epoch:2", folder / "epoch-2.safetensors"),
        ("epoch:3", last / "final.safetensors"),
    ):
        found = intermediate_weights(f"{upstream.info.run_id}@{point}", Tracker(), project)
        assert found == expected, point
    capsys.readouterr()
    stages = [{"name": "f", "epochs": 1, "init": f"run:{upstream.info.run_id}@epoch:9"}]
    before = len(_runs(project.root)[1])
    assert main(["train", _config(project.root, stages, "f.yaml")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "config.stages.0.init" in error
    assert "the run trained 3 epochs" in error
    assert len(_runs(project.root)[1]) == before  # refused before any run exists


def test_an_epoch_or_stage_a_run_did_not_keep_is_refused_before_training():
    from zoo.errors import ConfigError
    from zoo.modelzoo._identity import check_point as _check_point

    params = {"stages.0.name": "s", "stages.0.epochs": "3", "stages.0.keep_epochs": "False"}
    params |= {"stages.1.name": "t", "stages.1.epochs": "2", "stages.1.keep_epochs": "True"}
    for point in ("s", "t", "epoch:3", "epoch:4", "epoch:5"):  # last epochs, kept epochs
        _check_point(params, point, "refused:")
    for point, reason in (
        ("epoch:2", "stage 0 kept only its last epoch (3"),
        ("epoch:6", "the run trained 5 epochs"),
        ("u", "no stage 'u'"),
    ):
        with pytest.raises(ConfigError, match=re.escape(reason)):
            _check_point(params, point, "refused:")
    with pytest.raises(ConfigError, match="not trained by zoo"):
        _check_point({}, "s", "refused:")
