"""Where a run trains never changes what it is: identities leave ``device`` out, options
that change what runs compute (``--gpu-power``) enter the plan before its keys, every
sweep worker is placed on a concrete device by the same code on CPU and GPU nodes, and
a worker that computes another identity than its job's refuses it in one line."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import squeue_empty

from zoo.cli import main
from zoo.config import load_config, resolve
from zoo.store import Tracker
from zoo.sweep import _job, jobs_from_plan, load_spec, make_plan, run_job, with_execution
from zoo.sweep._local import LocalExecutor

DEVICES = ("auto", "cpu", "cuda", "cuda:0", "cuda:1")


def test_an_identity_is_the_same_on_every_device():
    """The example run and each of its stages hash alike with ``device`` unset, cpu,
    cuda:0 and cuda:1 (it was c1acb6e7… / cfc1ce0c… / d5d001d1… for the first stage)."""
    config = load_config("sweeps/example-run.yaml")
    stages = range(len(config.stages))
    expected = (config.digest(), [config.stage_digest(i) for i in stages])
    for device in DEVICES:
        moved = replace(config, device=device)
        assert (moved.digest(), [moved.stage_digest(i) for i in stages]) == expected, device


def test_power_cap_devices_and_amp_enter_the_identity():
    config = load_config("sweeps/example-run.yaml")
    for change in ({"power_cap_w": 250.0}, {"devices": 2}, {"amp": "fp16"}):
        changed = replace(config, **change)
        assert changed.digest() != config.digest(), change
        assert changed.stage_digest(0) != config.stage_digest(0), change


def test_every_job_keeps_its_key_on_any_worker_device(project, tiny_spec, monkeypatch):
    """A worker resolves and places each job of a plan (auto → its device) and computes
    the key the plan gave it, whichever device it was placed on."""
    plan = make_plan(load_spec(tiny_spec()))
    jobs = [j for j in jobs_from_plan(plan, project.tracking_uri, project) if j.kind != "dataset"]
    assert {j.kind for j in jobs} == {"stage", "run"}
    for device in ("cpu", "cuda:0", "cuda:1"):
        monkeypatch.setitem(_job._WORKER, "device", device)
        for job in jobs:
            config = _job.placed(resolve(job.document))
            assert config.device == device
            assert _job.identity_differs(job, config) == "", (device, job.kind)


def test_workers_are_placed_by_one_rule_on_cpu_and_gpu_nodes():
    assert [_job.place_worker(i, 0) for i in range(3)] == ["cpu"] * 3
    assert [_job.place_worker(i, 2) for i in range(4)] == ["cuda:0", "cuda:1"] * 2


def _stage_trainings(project) -> int:
    """Stage checkpoints trained in this project (one folder per trained stage)."""
    return len([f for f in project.stages.iterdir() if (f / "result.json").exists()])


def test_two_placed_workers_train_each_shared_stage_once(project, tiny_spec, tiny_runs):
    """Both local workers are placed on a concrete device (cpu here, as a GPU node places
    them on cuda:N): every run finishes, each shared stage is trained once, and every
    run records the device it trained on."""
    spec = tiny_spec()
    assert main(["sweep", "run", str(spec), "--workers", "2"]) == 0
    runs = tiny_runs()
    assert len(runs) == 2 + 4 and {r.info.status for r in runs} == {"FINISHED"}
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert {r.data.params["device"] for r in runs} <= {_job.place_worker(i, gpus) for i in (0, 1)}
    assert {r.data.tags["zoo.precision"] for r in runs} == {"bf16" if gpus else "off"}  # auto
    stage_keys = [
        r.data.tags["zoo.config_hash"] for r in runs if r.data.tags["zoo.kind"] == "stage"
    ]
    assert len(set(stage_keys)) == len(stage_keys) == 2
    assert _stage_trainings(project) == 2 + 4  # 2 shared pretrainings, 4 transfers


def test_a_job_whose_identity_differs_fails_in_one_line_and_the_sweep_goes_on(
    project, tiny_spec, tiny_runs
):
    """A job edited after planning (the power cap that ``--gpu-power`` used to write into
    each job) trains nothing, ends FAILED naming the field, and the other jobs finish."""
    plan = make_plan(load_spec(tiny_spec(sources=("a",))))
    tracker = Tracker(project.tracking_uri, project)
    tracker.experiment("tiny")
    jobs = jobs_from_plan(plan, tracker.uri, project)
    edited = next(j for j in jobs if j.kind == "run")
    edited = replace(edited, document={**edited.document, "power_cap_w": 250.0})
    jobs = [edited if j.key == edited.key else j for j in jobs]
    report = LocalExecutor(2, echo=lambda line: None).submit("tiny", jobs, tracker)
    assert list(report.failed) == [edited.key] and len(report.finished) == len(plan.jobs) - 1
    (reason,) = report.failed.values()
    assert "\n" not in reason and "(differs: power_cap_w)" in reason
    assert f"not the planned {edited.key}" in reason and "trained nothing" in reason
    failed = [r for r in tiny_runs() if r.info.status == "FAILED"]
    assert [r.data.tags["zoo.config_hash"] for r in failed] == [edited.key]
    assert "train_loss" not in failed[0].data.metrics
    assert _stage_trainings(project) == len(plan.jobs) - 1


def test_a_refused_job_in_a_worker_trains_nothing(project, tiny_spec):
    """run_job itself (the SLURM task's path) refuses and says why in the job's log."""
    plan = make_plan(load_spec(tiny_spec(sources=("a",))))
    stage = next(
        j for j in jobs_from_plan(plan, project.tracking_uri, project) if j.kind == "stage"
    )
    edited = replace(stage, document={**stage.document, "seed": 7})
    log = project.root / "job.log"
    result = run_job(edited, log)
    assert result.status == "failed" and "(differs: seed)" in result.reason
    assert log.read_text().startswith("FAILED: job ")
    assert not project.stages.exists() or not any(project.stages.iterdir())


def test_a_refusal_never_turns_a_finished_run_failed(project, tiny_spec, tiny_runs):
    """A requeued task may meet a job whose identity moved after its run FINISHED: the
    run stays FINISHED; a job written without planned fields says they are unknown."""
    plan = make_plan(load_spec(tiny_spec(sources=("a",))))
    stage = next(
        j for j in jobs_from_plan(plan, project.tracking_uri, project) if j.kind == "stage"
    )
    assert run_job(stage).status == "finished"
    moved = replace(stage, document={**stage.document, "seed": 7})
    result = run_job(moved)
    assert result.status == "finished" and {r.info.status for r in tiny_runs()} == {"FINISHED"}
    config = resolve(moved.document)
    assert "(differs: unknown" in _job.identity_differs(replace(moved, planned={}), config)


def test_gpu_power_enters_the_plan_on_the_local_executor(project, tiny_spec, tiny_runs, capsys):
    """``zoo sweep run --gpu-power W`` on a machine without NVML: every run trains, each
    shared stage once, with the cap in its identity; plan and status given the same
    option compute the same keys."""
    spec = tiny_spec(sources=("a",))
    assert main(["sweep", "run", str(spec), "--workers", "2", "--gpu-power", "250"]) == 0
    runs = tiny_runs()
    assert len(runs) == 1 + 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["power_cap_w"] for r in runs} == {"250.0"}
    capped = make_plan(with_execution(load_spec(spec), power_cap_w=250))
    assert {r.data.tags["zoo.config_hash"] for r in runs} == {j.key for j in capped.jobs}
    assert _stage_trainings(project) == 3
    capsys.readouterr()
    assert main(["sweep", "status", str(spec), "--gpu-power", "250", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["run"]["finished"] == 2 and status["pretrain"]["finished"] == 1


def test_gpu_power_leaves_a_spec_alone_until_given(project, tiny_spec):
    spec = load_spec(tiny_spec())
    assert with_execution(spec) is spec and with_execution(spec, devices=1) is spec
    assert with_execution(spec, 2, 250).base == {**spec.base, "devices": 2, "power_cap_w": 250.0}


@pytest.mark.slurm
def test_gpu_power_on_slurm_finishes_every_run_and_trains_each_stage_once(
    tiny_spec, tiny_runs, cluster, project, capsys
):
    """The bug this guards: ``--gpu-power`` wrote the cap into each job after the plan
    fixed its keys, so no run found its shared stage and 0 of 6 runs finished."""
    spec = tiny_spec()
    assert main(["sweep", "submit", str(spec), "--gpu-power", "250"]) == 0
    squeue_empty()
    runs = tiny_runs()
    assert len(runs) == 2 + 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["power_cap_w"] for r in runs} == {"250.0"}
    assert _stage_trainings(project) == 2 + 4
    capsys.readouterr()
    assert main(["sweep", "status", str(spec), "--gpu-power", "250", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["run"]["finished"] == 4 and status["pretrain"]["finished"] == 2
