"""Run identity is content: rewritten data or init files train again, every swept field
counts, colliding plans are refused; checkpoints heal; run states are honest."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml
from conftest import zoo_process
from mlflow.tracking import MlflowClient

from zoo.cli import main

MODEL = {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5}


def _h5(path, count, seed=0):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as handle:
        handle["images"] = rng.random((count, 32, 32)).astype(np.float32)
        handle["masks"] = (rng.random((count, 32, 32)) > 0.5).astype(np.uint8)


def _config(project, name="run.yaml", **stage):
    document = {
        "experiment": "ident",
        "model": MODEL,
        "datasets": {"d": {"path": "data.h5", "val_fraction": 0.25}},
        "stages": [{"name": "s", "train": "d", "epochs": 1, "augment": "none", **stage}],
    }
    path = project.root / name
    path.write_text(yaml.safe_dump(document))
    return path


def _runs(project, experiment="ident"):
    client = MlflowClient(project.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([found.experiment_id]) if found else [])


def test_rewritten_hdf5_dataset_trains_again(project, capsys):
    _h5(project.root / "data.h5", 16)
    path = _config(project)
    assert main(["train", str(path)]) == 0
    assert main(["train", str(path)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    _h5(project.root / "data.h5", 40, seed=1)
    assert main(["train", str(path)]) == 0
    assert "nothing to do" not in capsys.readouterr().out
    _, runs = _runs(project)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["zoo.config_hash"] for r in runs}) == 2


def test_overwritten_init_file_trains_again(project, capsys):
    _h5(project.root / "data.h5", 8)
    assert main(["train", str(_config(project, "first.yaml"))]) == 0
    (stage,) = project.stages.iterdir()
    weights = project.root / "init.safetensors"
    weights.write_bytes((stage / "best.safetensors").read_bytes())
    path = _config(project, init="file:init.safetensors", lr=1e-4)
    assert main(["train", str(path)]) == 0
    assert main(["train", str(path)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    weights.write_bytes((stage / "final.safetensors").read_bytes())  # same size, new bytes?
    from safetensors.torch import load_file, save_file

    tensors = {k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    assert main(["train", str(path)]) == 0
    assert "nothing to do" not in capsys.readouterr().out
    _, runs = _runs(project)
    assert len(runs) == 3


def _sweep(project, extra):
    spec = {
        "name": "capsweep",
        "base": {
            "model": MODEL,
            "datasets": {"d": {"path": "data.h5", "val_fraction": 0.25}},
            "stages": [{"name": "s", "train": "d", "epochs": 1, "augment": "none"}],
        },
        **extra,
    }
    path = project.root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_every_swept_field_is_identity_and_collisions_are_refused(project, capsys):
    _h5(project.root / "data.h5", 8)
    spec = _sweep(
        project,
        {"axes": [{"product": {"cap": [250, 400]}}], "set": {"power_cap_w": "$cap"}},
    )
    assert main(["sweep", "plan", str(spec), "--json", "--images-per-s", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["jobs"] == {"run": 2}
    assert main(["sweep", "run", str(spec)]) == 0
    _, runs = _runs(project, "capsweep")
    assert sorted(r.data.params["power_cap_w"] for r in runs) == ["250.0", "400.0"]
    capsys.readouterr()
    assert main(["sweep", "status", str(spec), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run"]["finished"] == 2

    for field in ("log_weights", "share_stages"):
        values = {"log_weights": [["best"], ["final"]]}
        spec = _sweep(
            project,
            {
                "axes": [{"product": {"v": values.get(field, [True, False])}}],
                "set": {field: "$v"},
            },
        )
        assert main(["sweep", "plan", str(spec), "--json", "--images-per-s", "10"]) == 0, field
        assert json.loads(capsys.readouterr().out)["runs"] == 2

    # where a run is placed is not what it is: a device axis makes one run twice
    spec = _sweep(project, {"axes": [{"product": {"v": ["auto", "cpu"]}}], "set": {"device": "$v"}})
    assert main(["sweep", "plan", str(spec), "--images-per-s", "10"]) == 2
    assert "axes v change nothing the run computes" in capsys.readouterr().err

    spec = _sweep(project, {"axes": [{"product": {"unused": [1, 2], "lr": [0.1]}}]})
    before = sorted(p.name for p in project.root.iterdir())
    assert main(["sweep", "plan", str(spec), "--images-per-s", "10"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "axes unused change nothing" in error
    assert sorted(p.name for p in project.root.iterdir()) == before


def _stage_call(project, epochs, on_epoch):
    from zoo.config import load_config
    from zoo.run import load_datasets
    from zoo.train import pick_device, to_device, train_stage

    config = load_config(_config(project, epochs=epochs))
    device = pick_device(config)
    data = {n: to_device(d, device) for n, d in load_datasets(config, project).items()}
    folder = project.stage(config.stage_digest(0))
    folder.mkdir(parents=True, exist_ok=True)
    return train_stage(config, 0, data, folder, None, lambda _: None, on_epoch), folder


class _Stop(Exception):
    pass


def _stop_after(epoch, seen=None):
    def on_epoch(at, metrics, replayed):
        if seen is not None:
            seen.append(metrics)
        if at == epoch:
            raise _Stop

    return on_epoch


def test_corrupt_checkpoint_is_set_aside_and_training_resumes(project, caplog, tmp_path):
    _h5(project.root / "data.h5", 8)
    reference, _ = _stage_call(project, 3, lambda *_: None)
    for folder in project.stages.iterdir():
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()

    first_attempt = []
    with pytest.raises(_Stop):
        _stage_call(project, 3, _stop_after(2, first_attempt))
    (folder,) = project.stages.iterdir()
    last = folder / "last.safetensors"
    assert (folder / "previous.last.safetensors").exists()
    last.write_bytes(last.read_bytes()[:1000])  # a kill during a write, a full disk
    replayed = []
    result, _ = _stage_call(project, 3, lambda epoch, *_: replayed.append(epoch))
    assert replayed == [1, 2, 3]
    # resumed from the previous good checkpoint: epoch 1 is the first attempt's, not redone
    assert result.history[0]["epoch_seconds"] == first_attempt[0]["epoch_seconds"]
    assert result.history[1]["epoch_seconds"] != first_attempt[1]["epoch_seconds"]
    assert [m["train_loss"] for m in result.history] == [m["train_loss"] for m in reference.history]
    assert any(
        "damaged checkpoint" in r.message and "last.safetensors" in r.message
        for r in caplog.records
    )
    assert list(folder.glob("last.safetensors.corrupt-*"))
    record = json.loads((folder / "result.json").read_text())["record"]
    assert record["config"]["stages"][0]["epochs"] == 3 and "commit" in record

    # both checkpoints damaged: the stage restarts instead of failing
    for file in folder.glob("*"):
        file.unlink()
    with pytest.raises(_Stop):
        _stage_call(project, 3, _stop_after(2))
    for file in folder.glob("*last.safetensors"):
        file.write_bytes(b"garbage")
    result, _ = _stage_call(project, 3, lambda *_: None)
    assert [m["train_loss"] for m in result.history] == [m["train_loss"] for m in reference.history]


def test_dead_running_run_shows_interrupted(project, capsys):
    _h5(project.root / "data.h5", 8)
    spec = _sweep(
        project, {"axes": [{"product": {"lr": [1e-3, 1e-4]}}], "set": {"stages.0.lr": "$lr"}}
    )
    assert main(["sweep", "run", str(spec)]) == 0
    client, runs = _runs(project, "capsweep")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    client.set_tag(runs[0].info.run_id, "zoo.pid", dead)
    client.update_run(runs[0].info.run_id, status="RUNNING")
    capsys.readouterr()
    assert main(["sweep", "status", str(spec), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)["run"]
    assert status["interrupted"] == 1 and status["finished"] == 1 and status["running"] == 0


@pytest.mark.slow
def test_concurrent_attempts_at_one_identity_train_once(project):
    _h5(project.root / "data.h5", 8)
    path = _config(project, epochs=2)
    processes = [zoo_process(project.root, "train", str(path), text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    client, (run,) = _runs(project)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2]
    assert sum("nothing to do" in o for o in outputs) == 2


def test_data_make_handles_mixtures(project, capsys):
    _h5(project.root / "data.h5", 8)
    path = project.root / "datasets.yaml"
    path.write_text(
        yaml.safe_dump({"datasets": {"d": {"path": "data.h5"}, "m": {"mix": {"d": 2}}}})
    )
    assert main(["data", "make", str(path)]) == 0
    out = capsys.readouterr().out
    assert "m: a mixture of d" in out and "d: " in out


def test_damaged_stage_weights_are_set_aside_and_the_stage_trains_again(project, caplog):
    _h5(project.root / "data.h5", 8)
    assert main(["train", str(_config(project, "one.yaml"))]) == 0
    (folder,) = project.stages.iterdir()
    best = folder / "best.safetensors"
    trained = best.read_bytes()
    best.write_bytes(trained[:-100] + bytes(100))  # bit rot: still a readable file
    document = yaml.safe_load(_config(project).read_text())
    document["stages"].append({"name": "t", "train": "d", "epochs": 1, "augment": "none"})
    (project.root / "two.yaml").write_text(yaml.safe_dump(document))
    assert main(["train", str(project.root / "two.yaml")]) == 0
    (warning,) = [r.message for r in caplog.records if "damaged weights" in r.message]
    assert str(best) in warning and "\n" not in warning
    assert list(folder.glob("best.safetensors.corrupt-*"))
    assert best.read_bytes() == trained  # trained again: the same weights
    _, runs = _runs(project)
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_an_init_run_is_identified_by_what_it_is_not_by_its_id(project, capsys):
    from zoo.config import load_config
    from zoo.modelzoo._identity import store_resolver

    _h5(project.root / "data.h5", 8)
    upstream = yaml.safe_load(_config(project, "up.yaml").read_text())
    for experiment, lr in (("up", 1e-3), ("up-again", 1e-3), ("other", 1e-4)):
        upstream["experiment"], upstream["stages"][0]["lr"] = experiment, lr
        (project.root / "up.yaml").write_text(yaml.safe_dump(upstream))
        assert main(["train", str(project.root / "up.yaml")]) == 0
    ids = {e: _runs(project, e)[1][0].info.run_id for e in ("up", "up-again", "other")}
    assert len(set(ids.values())) == 3

    def digest(run_id):
        path = _config(project, "down.yaml", init=f"run:{run_id}")
        return load_config(path, resolver=store_resolver(project)).digest()

    # another run of the same config (as in another store): the same identity
    assert digest(ids["up"]) == digest(ids["up-again"]) != digest(ids["other"])

    capsys.readouterr()
    before = sorted(str(p.relative_to(project.root)) for p in project.root.rglob("*"))
    missing = "0" * 32
    assert main(["train", str(_config(project, "down.yaml", init=f"run:{missing}"))]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"config.stages.0.init: 'run:{missing}'" in error
    assert "no run" in error
    after = sorted(str(p.relative_to(project.root)) for p in project.root.rglob("*"))
    assert after == before


@pytest.mark.parametrize("overrides", [[], ["share_stages=false"]])
def test_each_seed_of_a_sweep_has_the_identities_of_its_config_resolved_alone(overrides):
    # a sweep copies a config's first seed for its other seeds (RunConfig.reseeded)
    # rather than resolving and hashing it again: the run, each stage (its parent and
    # its owner) and the documents recorded beside checkpoints must not tell them apart
    from pathlib import Path

    from zoo.config import resolve
    from zoo.sweep import expand, load_spec

    demo = Path(__file__).parents[1] / "sweeps" / "demo.yaml"
    runs = expand(load_spec(demo, overrides))
    assert {r.names["seed"] for r in runs} == {0, 1}
    for run in runs[:8]:
        alone = resolve(run.config.to_dict())
        assert alone.digest() == run.config.digest(), run.names
        for index in range(len(alone.stages)):
            assert alone.stage_digest(index) == run.config.stage_digest(index), run.names
            assert alone.stage_identity(index) == run.config.stage_identity(index)
            assert alone.identity_fields(index) == run.config.identity_fields(index)
