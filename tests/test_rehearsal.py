"""Rehearsals: every planned run and stage of a sweep at toy size, in its own experiment,
sharing nothing with the real sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import squeue_empty
from mlflow.tracking import MlflowClient

from zoo.cli import main
from zoo.sweep import load_spec, make_plan, rehearsal
from zoo.sweep._rehearsal import TOY_SIDE, toy_count, toy_document

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def _runs(project, experiment: str) -> list:
    client = MlflowClient(project.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_toy_sizes_keep_runs_apart_and_fit_their_data():
    sizes = [1, 8, 16, 32, 64, 128, 256, 512, 1024]
    toys = [toy_count(n) for n in sizes]
    assert toys == sorted(set(toys))  # growing: distinct sizes stay distinct
    assert toy_count(512) <= 20
    document = {
        "datasets": {
            "sim": {"preset": "defocus", "count": 640},
            "mine": {"path": "data.h5"},
            "both": {"mix": {"sim": 1, "mine": 1}},
        },
        "stages": [{"name": "s", "train": "sim", "size": 512, "epochs": 50}],
        "model": {"encoder": "resnet18"},
    }
    toy = toy_document(document)
    assert toy["datasets"]["sim"]["image_size"] == TOY_SIDE
    train = toy["datasets"]["sim"]["count"] * 0.8
    assert toy["stages"][0]["size"] <= train < 640
    assert (
        toy["datasets"]["mine"] == {"path": "data.h5"}
        and "image_size" not in toy["datasets"]["both"]
    )
    assert toy["stages"][0]["epochs"] == 1 and toy["model"]["encoder"] == "tu-test_resnet"
    assert document["stages"][0]["size"] == 512  # the real document is left alone


def test_every_grid_sweep_of_the_project_rehearses_with_fitting_data():
    """Every sweep in sweeps/ plans as a rehearsal with its real counts, and every
    mixture part and stage size fits the toy data it draws from."""
    for path in sorted(SWEEPS.glob("*.yaml")):
        document = path.read_text()
        if "search:" in document or "\nbase:" not in document:
            continue  # a search or a run config
        real, toy = make_plan(load_spec(path)), make_plan(rehearsal(load_spec(path)))
        assert real.counts()["stage_trainings"] == toy.counts()["stage_trainings"], path
        for run in toy.runs:
            sources = run.config.sources
            for stage in run.config.stages:
                available = getattr(sources[stage.train], "train_count", None)
                assert available is None or (stage.size or 0) <= available, path
            for source in sources.values():
                for part, count in getattr(source, "mix", {}).items():
                    assert count <= sources[part].train_count, (path, part)


def test_a_rehearsal_plans_every_run_of_the_paper_series_and_prices_it(project, capsys):
    argv = ["sweep", "plan", str(SWEEPS / "defocus.yaml"), "--json", "--images-per-s", "100"]
    assert main([*argv[:3], "--rehearse", *argv[3:]]) == 0
    toy = json.loads(capsys.readouterr().out)
    assert toy["sweep"] == "defocus-rehearsal" and toy["runs"] == 7200
    assert toy["stage_trainings"] == {"pretrain": 30, "transfer": 7200}
    assert toy["image_passes"] < 139_468_800 / 50  # the real series' passes
    assert toy["hours"] < 5


def test_a_rehearsal_trains_every_job_and_the_real_sweep_reuses_nothing(project, tiny_spec, capsys):
    spec = tiny_spec()
    assert main(["sweep", "run", str(spec), "--rehearse", "--workers", "2"]) == 0
    toy = _runs(project, "tiny-rehearsal")
    assert len(toy) == 2 + 4 and {r.info.status for r in toy} == {"FINISHED"}
    assert {r.data.tags["zoo.rehearsal"] for r in toy} == {"true"}
    assert {r.data.params["datasets.a.image_size"] for r in toy} == {str(TOY_SIDE)}
    assert {r.data.params["stages.0.epochs"] for r in toy} == {"1"}
    assert len([r for r in toy if r.data.tags["zoo.kind"] == "stage"]) == 2  # shared
    assert not _runs(project, "tiny")
    capsys.readouterr()
    assert main(["sweep", "status", str(spec), "--rehearse", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["run"]["finished"] == 4 and status["pretrain"]["finished"] == 2
    stages_before = {f.name for f in project.stages.iterdir()}
    assert main(["sweep", "run", str(spec), "--workers", "2"]) == 0
    real = _runs(project, "tiny")
    assert len(real) == 6 and {r.info.status for r in real} == {"FINISHED"}
    assert not any("zoo.rehearsal" in r.data.tags for r in real)
    hashes = {r.data.tags["zoo.config_hash"] for r in real}
    assert not hashes & {r.data.tags["zoo.config_hash"] for r in toy}
    trained = {f.name for f in project.stages.iterdir()} - stages_before
    assert len(trained) == 2 + 4  # the real sweep trained every stage itself


@pytest.mark.slurm
def test_the_noise_series_rehearsed_on_slurm(cluster, project, capsys):
    """The paper's noise series at toy size through the real local cluster: 180 runs
    and 15 shared pretrainings, each once, in noise-rehearsal, none of them the real
    series' runs or stages. In fp32: its fp16 autocast takes 11x as long per step on
    this CPU (1.2 s against 0.11 s at toy size), and tests/test_amp.py covers AMP."""
    spec = project.root / "noise.yaml"
    spec.write_text((SWEEPS / "noise.yaml").read_text().replace("amp: fp16", 'amp: "off"'))
    assert 'amp: "off"' in spec.read_text()
    spec = str(spec)
    options = ["--rehearse", "--runs-per-task", "30", "--max-parallel", "4"]
    assert main(["sweep", "submit", spec, *options]) == 0
    squeue_empty(timeout=900)
    runs = _runs(project, "noise-rehearsal")
    assert len(runs) == 15 + 180 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["zoo.rehearsal"] for r in runs} == {"true"}
    hashes = [r.data.tags["zoo.config_hash"] for r in runs]
    assert len(set(hashes)) == len(hashes)
    real = make_plan(load_spec(spec))
    planned = make_plan(rehearsal(load_spec(spec)))
    assert set(hashes) == {j.key for j in planned.jobs}
    assert not set(hashes) & {j.key for j in real.jobs}
    capsys.readouterr()
    assert main(["sweep", "status", spec, "--rehearse", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["transfer" if "transfer" in status else "run"]["finished"] == 180
