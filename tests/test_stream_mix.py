"""Streamed datasets as mixture parts and sweep axis values, and the streaming demo's plan:
a mixture's sample i of epoch e is a pure function of (its parts, counts, seed, e, i)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.test_stream import DATA, _metrics, _run, _stopped_at_first_batch_then_resumed
from zoo import train
from zoo.cli import main
from zoo.paths import ProjectPaths

ROOT = Path(__file__).parent.parent
STORED = {**DATA, "count": 8, "val_fraction": 0.5}  # 4 training images, 4 validation
MIXES = {
    "stream+stored": {"s": 6, "v": 4},
    "two streams": {"s": 5, "t": 3},
}


def _project(root: Path, monkeypatch, mix: dict[str, int], producers=2, samples=8) -> Path:
    """A run training 2 epochs on mixture ``m`` of ``mix``; streams ``s`` (defocus -10)
    and ``t`` (+10), stored set ``v`` (validation)."""
    root.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("ZOO_ROOT", str(root))
    monkeypatch.chdir(root)
    stream = {"samples_per_epoch": samples, "producers": producers, "queue": 4}
    document = {
        "experiment": "stream",
        "model": {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5},
        "device": "cpu",
        "datasets": {
            "s": {**DATA, "stream": stream},
            "t": {**DATA, "defocus_nm": 10, "stream": stream},
            "v": STORED,
            "m": {"mix": mix},
        },
        "stages": [{"name": "m", "train": "m", "epochs": 2, "batch_size": 4, "select_on": "v"}],
        "validate_on": ["v"],
    }
    (root / "run.yaml").write_text(yaml.safe_dump(document))
    return root


def test_a_mixture_plan_takes_each_part_count_times_in_an_order_fixed_by_the_epoch():
    from zoo.data._stream import mix_plan

    counts, streamed = (6, 4, 3), (True, False, True)
    part, rank, ring, carried = mix_plan(counts, streamed, (0, 0, 1))
    for c, count in enumerate(counts):
        assert sorted(rank[part == c]) == list(range(count))  # every rank once per epoch
    assert list(ring[ring >= 0]) == list(range(9)) and list(carried) == list(
        np.flatnonzero(ring >= 0)
    )
    assert (ring[part == 1] == -1).all()  # the stored part's samples are not in the ring
    again = mix_plan.__wrapped__(counts, streamed, (0, 0, 1))  # a pure function, not the cache
    assert all((a == b).all() for a, b in zip(again, (part, rank, ring, carried), strict=True))
    other = mix_plan(counts, streamed, (0, 0, 2))[0]
    assert (other != part).any()  # another epoch, another order


@pytest.mark.parametrize("mix", MIXES.values(), ids=MIXES)
def test_a_mixture_with_streamed_parts_logs_identical_metrics_on_one_and_two_producers(
    tmp_path, monkeypatch, mix
):
    results = []
    for producers in (1, 2):
        root = _project(tmp_path / str(producers), monkeypatch, mix, producers)
        assert main(["train", "run.yaml"]) == 0
        client, run = _run(root)
        results.append(_metrics(client, run))
        assert len(client.get_metric_history(run.info.run_id, "data_wait_fraction")) == 2
        seen = {i.dataset.name: i.dataset for i in run.inputs.dataset_inputs}
        streams = sorted(n for n in mix if n != "v")
        assert sorted(seen) == streams  # lineage: each streamed part and its samples
        assert f'"samples": [0, {mix[streams[0]]}]' in seen[streams[0]].profile
    assert "train_loss" in results[0] and "val_loss/v" in results[0]
    assert results[0] == results[1]


def test_a_mixture_stopped_mid_epoch_resumes_to_the_uninterrupted_metrics(tmp_path, monkeypatch):
    from zoo import _streaming

    mix = MIXES["stream+stored"]
    reference = _project(tmp_path / "reference", monkeypatch, mix)
    assert main(["train", "run.yaml"]) == 0
    expected = _metrics(*_run(reference))

    root = _project(tmp_path / "stopped", monkeypatch, mix)
    client, run = _stopped_at_first_batch_then_resumed(root, _streaming._MixedBatches, monkeypatch)
    assert run.info.status == "FINISHED"
    assert _metrics(client, run) == expected


def test_a_mixture_holds_a_queue_of_samples_whatever_its_epoch(tmp_path, monkeypatch):
    from zoo import _streaming

    _project(tmp_path, monkeypatch, {"s": 100_000, "v": 4}, samples=100_000)
    take, seen = _streaming._MixedBatches.__call__, {}

    def stop_after_three_batches(batches, start, size):
        out = take(batches, start, size)
        if start == 8:
            time.sleep(1.0)  # producers as far ahead as they can get
            ring = batches.feed.ring
            seen.update(made=int(ring.made.sum()), taken=int(ring.taken[0]), nbytes=ring.nbytes)
            train.STOP.set()
        return out

    monkeypatch.setattr(_streaming._MixedBatches, "__call__", stop_after_three_batches)
    try:
        assert main(["train", "run.yaml"]) != 0
    finally:
        train.STOP.clear()
    assert 8 <= seen["taken"] <= 12  # the streamed of the 12 samples taken
    # at most a full queue made ahead, plus the one each producer holds while it waits
    assert seen["made"] <= seen["taken"] + 4 + 2
    assert seen["nbytes"] < 4 * 2 * 32 * 32 * 4 + 4096


def _files(root: Path) -> list[str]:
    """Every path under ``root`` but the dataset cache (a stored part may be made)."""
    paths = (str(p.relative_to(root)) for p in root.rglob("*"))
    return sorted(p for p in paths if p != ".zoo" and not p.startswith(".zoo/datasets"))


@pytest.mark.parametrize(
    ("mix", "validate_on", "expected"),
    [
        ({"s": 9}, ["v"], "datasets.m.mix.s: 9 is larger than the training split of 's' (8 "),
        ({"s": 2, "v": 2}, ["v", "m"], "config.validate_on.1: 'm' is not allowed"),
    ],
)
def test_a_mixture_asking_too_much_of_a_stream_or_validated_on_is_refused(
    tmp_path, monkeypatch, capsys, mix, validate_on, expected
):
    root = _project(tmp_path, monkeypatch, mix)
    document = yaml.safe_load((root / "run.yaml").read_text())
    (root / "run.yaml").write_text(yaml.safe_dump({**document, "validate_on": validate_on}))
    before = _files(root)
    assert main(["train", "run.yaml"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert expected in line
    assert _files(root) == before


def test_a_stream_and_a_mixture_with_one_are_sweep_axis_values(tmp_path, monkeypatch):
    root = _project(tmp_path, monkeypatch, MIXES["stream+stored"])
    base = yaml.safe_load((root / "run.yaml").read_text())
    base.pop("experiment")
    base["stages"][0]["epochs"] = 1
    spec = {
        "name": "streams",
        "base": base,
        "axes": [{"product": {"data": ["s", "m", "v"]}}],
        "set": {"stages.0.train": "$data"},
        "seeds": [0],
    }
    (root / "sweep.yaml").write_text(yaml.safe_dump(spec))
    assert main(["sweep", "run", "sweep.yaml", "--workers", "1"]) == 0
    client = MlflowClient(ProjectPaths(root).tracking_uri)
    experiment = client.get_experiment_by_name("streams")
    runs = client.search_runs([experiment.experiment_id], "tags.`zoo.kind` = 'run'")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    # trained on s, on m (s and v) and on v: the stream is an input of two, never stored
    inputs = sorted([i.dataset.name for i in r.inputs.dataset_inputs] for r in runs)
    assert inputs == [[], ["s"], ["s"]]
    assert "s" not in json.loads(ProjectPaths(root).dataset_index.read_text())


def test_the_stream_demo_plans_its_six_runs_and_its_report_reads(capsys):
    from zoo.analysis import load_definition

    demo = ROOT / "sweeps" / "stream-demo.yaml"
    assert main(["sweep", "plan", str(demo), "--json", "--images-per-s", "100"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["configs"], plan["runs"], plan["seeds"]) == (2, 6, 3)
    assert plan["stage_trainings"] == {"pretrain": 6, "transfer": 6}
    # the same 64 samples per epoch on either side: 8 epochs pretraining, 4 × 16 × 8 transfer
    assert plan["image_passes"] == 6 * (8 * 64 + 4 * 16 * 8)
    definition = load_definition(ROOT / "analysis" / "stream-demo.yaml")
    assert definition.value == "target_iou" and ("pretraining",) in definition.tables
