"""The model zoo on a finished tiny sweep: list, show, export, load, readable names and
experiment tags; bad references are one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

import zoo
from zoo.cli import main
from zoo.models import create_model
from zoo.modelzoo import read_config

FROZEN, NO_FREEZE = "frozen encoder · source a · seed 0", "no freeze · source a · seed 0"


def _models(capsys, *args: str) -> list[dict]:
    assert main(["models", "list", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_list_has_one_row_per_trained_model_with_readable_names_best_first(trained, capsys):
    rows = _models(capsys, "tiny.yaml")
    # the shared pretrain stage is not a model; axes in spec order (the YAML sorts them)
    assert sorted(r["name"] for r in rows) == sorted([NO_FREEZE, FROZEN])
    losses = [r["target_loss_adj"] for r in rows]
    assert losses == sorted(losses)
    for row in rows:
        assert row["train"] == "a→b" and row["validate"] == "a,b,c"
        assert row["state"] == "FINISHED" and row["params"] > 1000
        assert row["source"] == "a" and row["freeze"] in ("none", "encoder")
    (frozen,) = _models(capsys, "tiny", "--where", "freeze=encoder", "--limit", "5")
    assert frozen["name"] == FROZEN
    assert main(["models", "list", "--limit", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["run_id", "name"] and "target_loss_adj" in table[0]
    assert len(table) == 2


def test_listing_fits_the_terminal_and_keeps_names_apart():
    """A listing as wide as the sweep's names is cut to the terminal: domains and sizes go
    first, then names lose their middle, so the seeds at their end still tell them apart."""
    import pandas as pd

    from zoo.modelzoo import format_models

    long = "pretrain df-10 · transfer df+10 · freeze encoder · lr 0.001 → 0.0001 · seed "
    table = pd.DataFrame(
        {
            "run_id": ["0123456789abcdef" * 2, "fedcba9876543210" * 2],
            "name": [long + "0", long + "1"],
            "freeze": ["encoder", "encoder"],
            "target_loss_adj": [0.0123456789, 0.0234567891],
            "train": ["df-10→df+10"] * 2,
            "validate": ["df-10,df+0,df+10"] * 2,
            "params": [14_300_000] * 2,
            "state": ["FINISHED"] * 2,
        }
    )
    wide = format_models(table).splitlines()
    assert "0123456789abcdef" * 2 not in wide[1] and wide[1].startswith("01234567 ")
    assert "0.01235" in wide[1] and "df-10,df+0,df+10" in wide[1]
    narrow = format_models(table, width=80).splitlines()
    assert max(len(line) for line in narrow) <= 80
    start, end = narrow[0].index("name"), narrow[0].index("freeze")
    names = [line[start:end].strip() for line in narrow[1:]]
    assert names[0] != names[1] and "…" in names[0]
    assert narrow[1].rstrip().endswith("FINISHED") and "0.01235" in narrow[1]


def test_sweep_reads_well_in_mlflow(trained):
    client = MlflowClient(trained.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.note.content"] == "tiny sweep for the model zoo tests"
    runs = client.search_runs([experiment.experiment_id])
    names = {r.info.run_name: r for r in runs}
    stage = names["pretrain · source a · seed 0"]
    for name in (NO_FREEZE, FROZEN):
        assert names[name].data.tags["mlflow.parentRunId"] == stage.info.run_id


def test_analyze_publishes_the_report_to_a_run_of_the_experiment(
    trained, tmp_path, monkeypatch, capsys
):
    """The sweep's report is reachable from the MLflow UI: the artifacts of one report
    run, which status counts and model listings leave out."""
    root = tmp_path / "copy"
    shutil.copytree(trained.root, root)  # the session's store stays as it was
    monkeypatch.setenv("ZOO_ROOT", str(root))
    monkeypatch.chdir(root)
    for _ in range(2):  # a second analysis replaces the report, in the same run
        assert main(["analyze", "tiny.yaml", "--out", "report"]) == 0
        assert "finished 3," in capsys.readouterr().out  # 1 stage + 2 runs, not the report
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny").experiment_id
    (report,) = client.search_runs([experiment], "tags.`zoo.kind` = 'report'")
    assert report.info.run_name == "report · tiny" and report.info.status == "FINISHED"
    files = {f.path for f in client.list_artifacts(report.info.run_id, "report")}
    assert "report/report.html" in files
    assert main(["models", "list", "tiny", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_bad_list_options_and_references_are_one_line_errors(trained, capsys):
    for argv in (
        ["models", "list", "tiny", "--where", "colour=red"],
        ["models", "list", "tiny", "--sort", "beauty"],
        ["models", "list", "nosuch"],
        ["models", "show", "nosuch@champion"],
        ["models", "show", "0" * 32],
        ["models", "show", "tiny:freeze=decoder"],
        ["models", "export", "not a ref!", "--out", "x"],
    ):
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert error.startswith("zoo: error: ") and error.count("\n") == 1, error
    # a text listing reads only target_ metrics; a --sort among none of them names all
    assert main(["models", "list", "tiny", "--sort", "target_beauty"]) == 2
    assert "best_val_loss_adj/" in capsys.readouterr().err


def test_a_model_is_named_by_an_id_or_hash_prefix_or_its_run_name(trained, capsys):
    """What sweep progress and `models list` show (a config-hash prefix, a run's name)
    and a run-id prefix name the same model as its whole run id."""
    from mlflow.tracking import MlflowClient

    (best,) = _models(capsys, "tiny", "--limit", "1")
    run = MlflowClient(trained.tracking_uri).get_run(best["run_id"])
    for form in (best["run_id"][:8], run.data.tags["zoo.config_hash"][:8], run.info.run_name):
        assert main(["models", "show", form]) == 0, form
        assert yaml.safe_load(capsys.readouterr().out)["run_id"] == best["run_id"], form


def test_a_run_name_names_its_run_and_a_shared_name_is_refused_naming_the_runs(tmp_path):
    """`zoo train`'s names (letters, digits, '-') are found as names, not taken for
    experiments; a name two runs share (a rehearsal's and the real sweep's) is refused
    with each run's id prefix and experiment, so the user can pick one."""
    from mlflow.tracking import MlflowClient

    from zoo.errors import ConfigError
    from zoo.modelzoo._ref import resolve_ref

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    trained = client.create_run(client.create_experiment("train"), run_name="transfer-1a2b3c4d")
    client.set_terminated(trained.info.run_id)
    shared = [
        client.create_run(client.create_experiment(name), run_name="freeze none · seed 0")
        for name in ("demo", "demo-rehearsal")
    ]
    assert resolve_ref("transfer-1a2b3c4d", uri).run_id == trained.info.run_id
    with pytest.raises(ConfigError, match="names 2 runs") as refused:
        resolve_ref("freeze none · seed 0", uri)
    for run in shared:
        assert run.info.run_id[:8] in str(refused.value)


def test_show_export_and_load_round_trip(trained, capsys, tmp_path):
    (best,) = _models(capsys, "tiny", "--limit", "1")
    assert main(["models", "show", best["run_id"]]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["name"] == best["name"] and shown["pixel_size_a"] == pytest.approx(3.2)
    assert shown["lineage"]["started_from"]["name"] == "pretrain · source a · seed 0"
    assert shown["lineage"]["init"] == "random"
    assert [s["init"] for s in shown["lineage"]["stages"]] == ["random", "best"]
    assert set(shown["datasets"]) == {"a", "b", "c"}
    assert all(len(d["hash"]) == 16 for d in shown["datasets"].values())
    assert shown["metrics"]["target_loss_adj"] == pytest.approx(best["target_loss_adj"], rel=1e-3)
    assert all(v == float(f"{v:.4g}") for v in shown["metrics"].values())  # 4 digits shown

    out = tmp_path / "exported"
    assert main(["models", "export", "tiny", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.yaml",
        "model.safetensors",
    ]
    card = (out / "README.md").read_text()
    for text in (
        best["name"],
        best["run_id"],
        "3.2 Å",
        "zoo.load_model",
        "pretrain",
        "## Datasets",
    ):
        assert text in card
    assert main(["models", "export", "tiny", "--out", str(out)]) == 2  # it holds an export
    assert f"--out: {str(out)!r} is a folder with files" in capsys.readouterr().err
    assert main(["models", "export", "tiny", "--out", str(out), "--force"]) == 0

    module, config = zoo.load_model(best["run_id"])
    assert config.stages[1].freeze == best["freeze"] and not module.training
    copy = create_model(read_config(out / "config.yaml").model).eval()
    copy.load_state_dict(load_file(out / "model.safetensors"))
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        assert torch.equal(module(x), copy(x))
    by_query, _ = zoo.load_model("tiny")
    assert all(
        torch.equal(a, b)
        for a, b in zip(by_query.state_dict().values(), module.state_dict().values(), strict=True)
    )


def test_import_zoo_does_not_import_torch():
    code = "import sys, zoo; assert callable(zoo.load_model); print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_registered_model_loads_safely_and_initialises_a_new_run(trained, capsys):
    argv = ["models", "register", "tiny:freeze=encoder", "--name", "tiny-best"]
    assert main([*argv, "--alias", "champion"]) == 0
    assert "tiny-best@champion" in capsys.readouterr().out
    client = MlflowClient(trained.tracking_uri)
    version = client.get_model_version_by_alias("tiny-best", "champion")
    assert version.tags["zoo.axis.freeze"] == "encoder" and version.tags["zoo.axis.source"] == "a"
    files = {a.path for a in client.list_artifacts(version.run_id, "model")}
    assert files == {"model/model.safetensors", "model/config.yaml", "model/README.md"}
    registered, _ = zoo.load_model("tiny-best@champion")
    by_version, _ = zoo.load_model(f"tiny-best/{version.version}")
    by_run, _ = zoo.load_model(version.run_id)
    for other in (by_version, by_run):
        assert all(
            torch.equal(a, b)
            for a, b in zip(
                registered.state_dict().values(), other.state_dict().values(), strict=True
            )
        )

    config = yaml.safe_load((trained.root / "tiny.yaml").read_text())["base"]
    config["experiment"] = "tiny-init"
    config["stages"] = [
        {"name": "finetune", "train": "b", "size": 4, "epochs": 1, "freeze": "encoder"},
    ]
    config["stages"][0]["init"] = "model:tiny-best@champion"
    (trained.root / "init.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "init.yaml"]) == 0
    finetuned, _ = zoo.load_model("tiny-init")
    # a frozen encoder keeps the registered weights and batch-norm statistics exactly
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            registered.encoder.state_dict().values(),
            finetuned.encoder.state_dict().values(),
            strict=True,
        )
    )
    assert not torch.equal(
        registered.segmentation_head[0].weight, finetuned.segmentation_head[0].weight
    )


def test_sweep_logs_prints_a_jobs_log_by_any_name_of_its_run(trained, capsys):
    """`zoo sweep logs RUN` takes what `models list` and sweep progress show (a run id prefix,
    a config-hash prefix, a run's name) and prints that job's own log."""
    from mlflow.tracking import MlflowClient

    (best,) = _models(capsys, "tiny", "--limit", "1")
    run = MlflowClient(trained.tracking_uri).get_run(best["run_id"])
    identity = run.data.tags["zoo.config_hash"]
    log = trained.job_log("tiny", identity).read_text()
    assert best["run_id"] in log
    for form in (best["run_id"][:8], identity[:8], run.info.run_name):
        assert main(["sweep", "logs", form]) == 0, form
        assert capsys.readouterr().out == log, form
    assert main(["sweep", "logs", identity[:8], "--tail", "1"]) == 0
    assert capsys.readouterr().out == log.splitlines(keepends=True)[-1]
    assert main(["sweep", "logs", "0" * 12]) == 2
    (error,) = capsys.readouterr().err.splitlines()
    assert "0" * 12 in error
