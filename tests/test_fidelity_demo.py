"""The fidelity demo (sweeps/fidelity-demo.yaml) end to end on tiny images, analysed with
analysis/regression.yaml, and the headline that follows the task in reports, plans and
model listings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from zoo.analysis import HEADLINES, Definition, higher_is_better, table_task
from zoo.cli import main
from zoo.metrics import HEADLINE
from zoo.modelzoo import sort_models
from zoo.modelzoo._ui import _view

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "sweeps" / "fidelity-demo.yaml"


def _tiny_demo() -> dict:
    """The demo spec with its shape kept (every axis, both fidelities, the residual U-Net,
    the shared pretraining) and its sizes cut: 32 px, the tiny test encoder, 1 epoch per
    stage, transfer sizes 2 and 4, one seed."""
    spec = yaml.safe_load(DEMO.read_text())
    base = spec["base"]
    base["model"].update(encoder="tu-test_resnet", encoder_depth=5, decoder_channels=[16] * 5)
    base["datasets"]["cheap"].update(image_size=32, count=10)
    if "fidelity" not in base["datasets"]["cheap"]:  # cheap: simulated at the pixel size
        base["datasets"]["cheap"]["sim_sampling_a"] = 3.2
    base["datasets"]["full"].update(image_size=32, count=10, sim_sampling_a=0.4)
    for stage in base["stages"]:
        stage.update(size=8, epochs=1, batch_size=4)
    spec["axes"][0]["product"]["size"] = [2, 4]
    spec["seeds"] = [0]
    return spec


def test_fidelity_demo_runs_shares_its_pretraining_and_reports_whether_it_helped(project):
    spec = _tiny_demo()
    (project.root / "demo.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["sweep", "run", "demo.yaml", "--workers", "2"]) == 0
    client = MlflowClient(project.tracking_uri)
    experiment = client.get_experiment_by_name(spec["name"])
    runs = client.search_runs([experiment.experiment_id])
    kinds = pd.Series([r.data.tags.get("zoo.kind") for r in runs]).value_counts()
    assert kinds["run"] == 8 and kinds["stage"] == 1  # one pretraining, shared by all 8 runs
    assert all(r.info.status == "FINISHED" for r in runs)

    out = project.root / "report"
    definition = ROOT / "analysis" / "regression.yaml"
    assert main(["analyze", "demo.yaml", "--out", str(out), "--definition", str(definition)]) == 0
    table = pd.read_csv(out / "aggregate_pretrained_loss_size.csv")
    assert set(table["pretrained"]) == {"yes", "no"} and len(table) == 8
    assert all(math.isfinite(v) for v in table["median"])  # PSNR, dB
    assert {"median target_ssim", "median target_mae"} <= set(table.columns)
    report = (out / "report.html").read_text()
    assert "PSNR (dB), high-fidelity validation set" in report
    assert "Not drawn" not in report  # every figure of the definition applies to the demo
    # the default (transfer) definition names no headline: it follows the task
    assert main(["analyze", "demo.yaml", "--out", str(project.root / "default")]) == 0
    default = (project.root / "default" / "report.html").read_text()
    assert f"Tables: {HEADLINES['regression'][1]} over seeds" in default


def test_headline_follows_the_task():
    assert HEADLINES["regression"][0] == f"target_{HEADLINE['regression'][0]}"
    regression = pd.DataFrame(
        {"run_id": ["a", "b"], "target_loss": [0.2, 0.1], "target_psnr": [20.0, 30.0]}
    )
    segmentation = pd.DataFrame(
        {"run_id": ["a", "b"], "target_loss_adj": [0.2, 0.1], "target_loss": [0.5, 0.4]}
    )
    assert table_task(regression) == "regression" and table_task(segmentation) == "segmentation"
    logged = segmentation.assign(**{"param.model.task": ["regression", None]})
    assert table_task(logged) == "segmentation"  # mixed: today's default
    assert table_task(logged.iloc[:1]) == "regression"  # the logged task wins
    assert Definition().resolved(regression).value == "target_psnr"
    assert Definition().resolved(segmentation).value == "target_loss_adj"
    assert Definition(value="target_ssim").resolved(regression).value_label == "target_ssim"
    # best first: the higher PSNR, the lower loss
    assert list(sort_models(regression)["run_id"]) == ["b", "a"]
    assert list(sort_models(segmentation)["run_id"]) == ["b", "a"]
    assert list(sort_models(regression, "target_loss")["run_id"]) == ["b", "a"]
    assert higher_is_better("best_val_iou/transfer/dfp10") and not higher_is_better("target_mae")
    # the MLflow UI view `zoo ui` links to: best PSNR first; segmentation as before
    view = json.loads(_view(["loss"], {"target_loss": 0.1, "target_psnr": 20.0}))
    assert view["orderByKey"] == "metrics.`target_psnr`" and view["orderByAsc"] is False
    view = json.loads(_view(["freeze"], {"target_loss": 0.4, "target_loss_adj": 0.1}))
    assert view["orderByKey"] == "metrics.`target_loss_adj`" and view["orderByAsc"] is True


@pytest.mark.parametrize(
    ("spec", "task", "headline"),
    [
        ("fidelity-demo.yaml", "regression", "target_psnr"),
        ("demo.yaml", "segmentation", "target_loss_adj"),
    ],
)
def test_plan_names_the_task_and_its_headline(spec, task, headline, capsys):
    assert main(["sweep", "plan", str(ROOT / "sweeps" / spec), "--images-per-s", "100"]) == 0
    assert f"task {task}: reports and `zoo models list` rank by {headline}" in (
        capsys.readouterr().out
    )
