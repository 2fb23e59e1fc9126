"""One run on several devices (zoo.distributed): two CPU processes train like one.

Tolerance: with the same global batch, a run on 2 processes logs the same train and
validation losses as on 1 process within a relative 1e-4 per epoch. What differs is
only floating-point summation order: gradients are summed across ranks by gloo, and
batch-norm statistics of the global batch are all-reduced (GlobalBatchNorm2d)
instead of computed in one pass.
"""

from __future__ import annotations

import multiprocessing

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from zoo.cli import main
from zoo.config import resolve

TOLERANCE = 1e-4  # relative, per logged loss; stated in the README too
MODEL = {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5}
DATA = {"preset": "defocus", "image_size": 32, "count": 20, "sim_sampling_a": 0.4}


def _config(devices: int) -> dict:
    """Unequal shares (batches of 3 over 11 images: 2 + 1 images per rank) in the first
    stage; the second carries its optimizer, so rank 0's state must reach rank 1."""
    return {
        "experiment": f"ddp{devices}",
        "seed": 3,
        "devices": devices,
        "model": MODEL,
        "datasets": {"a": {**DATA, "defocus_nm": -10}},
        "stages": [
            {
                "name": "pre",
                "train": "a",
                "size": 11,
                "epochs": 2,
                "batch_size": 3,
                "augment": "none",
            },
            {
                "name": "post",
                "train": "a",
                "size": 8,
                "epochs": 1,
                "batch_size": 4,
                "augment": "none",
                "init": "last",
                "optimizer_state": "carry",
            },
        ],
    }


def test_devices_enter_identities_only_when_not_1():
    one, two = resolve(_config(1)), resolve(_config(2))
    document = _config(1)
    del document["devices"]
    assert one.digest() == resolve(document).digest()
    assert one.stage_digest(0) == resolve(document).stage_digest(0)
    assert two.digest() != one.digest() and two.stage_digest(0) != one.stage_digest(0)


def test_each_rank_gets_a_contiguous_share_of_every_batch():
    from zoo.distributed import Group, _share

    for count in range(1, 9):
        shares = [_share(count, Group(r, 3, torch.device("cpu"))) for r in range(3)]
        assert [i for low, high in shares for i in range(low, high)] == list(range(count))
        sizes = [high - low for low, high in shares]
        assert max(sizes) - min(sizes) <= 1


@pytest.fixture
def one_process_group():
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_global_batch_norm_equals_batch_norm_on_one_process(one_process_group):
    from zoo.distributed import global_batchnorm

    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(3)
    synced = global_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))
    synced.load_state_dict({f"0.{k}": v for k, v in plain.state_dict().items()})
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    outputs, grads = [], []
    for module in (plain, synced):
        leaf = x.clone().requires_grad_()
        output = module(leaf)
        (output * torch.linspace(-1, 1, 25).view(5, 5)).sum().backward()
        outputs.append(output)
        grads.append(leaf.grad)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(synced[0].running_var, plain.running_var)
    torch.testing.assert_close(synced[0].running_mean, plain.running_mean)
    assert list(synced.state_dict()) == [f"0.{k}" for k in plain.state_dict()]


def _histories(tracking_uri: str, experiment: str) -> tuple[dict, dict]:
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    keys = ("train_loss", "val_loss/a")
    history = {k: [m.value for m in client.get_metric_history(run.info.run_id, k)] for k in keys}
    return history, run.data.params


def _preempted_then_resumed(project, document: dict) -> None:
    """Train ``document`` stopped (USR1's flag) after its first step, then to the end."""
    from zoo.run import run
    from zoo.store import Tracker
    from zoo.train import STOP, Preempted

    config, tracker = resolve(document), Tracker(project.tracking_uri, project)
    STOP.set()
    try:
        with pytest.raises(Preempted):
            run(config, tracker, project, echo=lambda _: None)
    finally:
        STOP.clear()
    assert not multiprocessing.active_children()  # rank 0 ended the follower
    run(config, tracker, project, echo=lambda _: None)


@pytest.mark.slow
def test_two_processes_give_the_losses_of_one_and_resume_after_preemption(project):
    threads = torch.get_num_threads()
    for devices in (1, 2):
        path = project.root / f"run{devices}.yaml"
        path.write_text(yaml.safe_dump(_config(devices)))
        assert main(["train", str(path)]) == 0
    assert torch.get_num_threads() == threads  # the ranks' share of the cores given back
    one, _ = _histories(project.tracking_uri, "ddp1")
    two, params = _histories(project.tracking_uri, "ddp2")
    assert params["devices"] == "2"  # rank 0 alone logged: one run, each epoch once
    assert [len(v) for v in two.values()] == [3, 3]
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=TOLERANCE), key
    two_processes = resolve(_config(2))
    for index in range(2):  # its own stages, not the one-process checkpoints
        assert project.stage_files(two_processes.stage_digest(index)).result.exists()
    assert not multiprocessing.active_children()  # the follower ended with the run
    # preempted mid-epoch on 2 processes: the rest resumes as if never stopped
    _preempted_then_resumed(project, {**_config(2), "experiment": "ddp2p", "share_stages": False})
    resumed, _ = _histories(project.tracking_uri, "ddp2p")
    for key in two:
        assert resumed[key] == pytest.approx(two[key], rel=1e-6), key


def test_gpus_per_task_trains_each_run_on_that_many_gpus(project, tiny_spec, capsys):
    from zoo import sweep
    from zoo.sweep._slurm_submit import SubmitOptions, with_options

    path = tiny_spec()
    plan = sweep.make_plan(sweep.load_spec(path))
    on_two = with_options(plan, SubmitOptions(gpus_per_task=2))
    assert {j.config.devices for j in on_two.jobs} == {2}
    assert not {j.key for j in on_two.jobs} & {j.key for j in plan.jobs}  # new identities
    for gpus in (1, None):
        assert with_options(plan, SubmitOptions(gpus_per_task=gpus)) is plan
    capsys.readouterr()
    assert main(["sweep", "submit", str(path), "--dry-run", "--gpus-per-task", "2"]) == 0
    scripts = capsys.readouterr().out
    runs = [s for s in scripts.split("# would run: ")[1:] if "zoo-tiny-jobs-" in s]
    assert runs and all("\n#SBATCH --gpus-per-task=2\n" in s for s in runs)
