"""What a model is: ``zoo models show``, the model card and ``zoo models export``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoo.config import RunConfig
    from zoo.modelzoo._load import LoadedModel
    from zoo.store import Tracker

__all__ = ["describe", "export_model", "model_card"]

_DATASET_KEYS = (
    "path",
    "mix",
    "preset",
    "defocus_nm",
    "field_nm",
    "image_size",
    "count",
    "pixel_size_a",
)
_EPOCH_KEYS = ("train_loss", "lr", "stage", "epoch_seconds", "images_per_s")


def _dataset_hashes(config: RunConfig) -> dict[str, str]:
    """Content hash of each used dataset's resolved parameters (as in the run's identity)."""
    return {
        name: hashlib.sha256(
            json.dumps(config.datasets[name], sort_keys=True).encode()
        ).hexdigest()[:16]
        for name in config.used_datasets
    }


def _lineage(config: RunConfig, tags: dict[str, str], tracker: Tracker) -> dict[str, Any]:
    parent = tags.get("zoo.stage_run") or tags.get("mlflow.parentRunId")
    started_from = None
    if parent:
        parent_tags = tracker.get_run(parent).data.tags
        started_from = {
            "run_id": parent,
            "name": parent_tags.get("mlflow.runName", ""),
            "stage": parent_tags.get("zoo.stage", ""),
        }
    stages = [
        {
            "name": s.name,
            "train": s.train,
            "size": s.size,
            "epochs": s.epochs,
            "lr": s.lr,
            "freeze": s.freeze,
            "init": s.init if s.init != "auto" else ("random" if i == 0 else "best"),
            "identity": config.stage_digest(i),
        }
        for i, s in enumerate(config.stages)
    ]
    return {"started_from": started_from, "init": stages[0]["init"], "stages": stages}


def describe(loaded: LoadedModel, tracker: Tracker) -> dict[str, Any]:
    """Identity, axes, summary metrics, lineage, datasets and pixel size of a loaded model."""
    from zoo.modelzoo._load import image_size, pixel_size_a

    run = tracker.get_run(loaded.run_id)
    tags, config = run.data.tags, loaded.config
    experiment = tracker.get_experiment(run.info.experiment_id).name
    hashes = _dataset_hashes(config)
    return {
        "run_id": loaded.run_id,
        "name": tags.get("mlflow.runName", ""),
        "experiment": experiment,
        "state": run.info.status,
        "identity": tags.get("zoo.config_hash", config.digest()),
        "axes": {k[len("zoo.axis.") :]: v for k, v in tags.items() if k.startswith("zoo.axis.")},
        "metrics": {
            k: v
            for k, v in sorted(run.data.metrics.items())
            if k not in _EPOCH_KEYS and not k.startswith("val_")
        },
        "lineage": _lineage(config, tags, tracker),
        "datasets": {name: {"hash": hashes[name], **config.datasets[name]} for name in hashes},
        "model": config.to_dict()["model"],
        "pixel_size_a": pixel_size_a(config),
        "image_size": image_size(config),
    }


def _table(mapping: dict[str, Any]) -> list[str]:
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in mapping.items()]


def model_card(info: dict[str, Any], ref: str) -> str:
    """A Markdown model card: what it does, how well, from what, and how to load it."""
    metrics = {k: f"{v:.4g}" for k, v in info["metrics"].items() if k.startswith("target_")}
    lineage = info["lineage"]
    started = lineage["started_from"]
    origin = f"`{started['run_id']}` ({started['name']})" if started else "nothing"
    pixel = info["pixel_size_a"]
    lines = [
        f"# {info['name'] or info['run_id']}",
        "",
        f"Segmentation U-Net from zoo experiment `{info['experiment']}`, run `{info['run_id']}` "
        f"(identity `{info['identity']}`).",
        "",
        f"Pixel size: **{f'{pixel:.4g} Å' if pixel else 'unknown'}** per pixel; "
        f"training images {info['image_size'] or '?'} px. Inputs whose pixel size differs by "
        "more than 10 % need `zoo predict --rescale`.",
        "",
        "## Axes",
        *_table(info["axes"]),
        "",
        "## Metrics (best validation, last stage's domain)",
        *_table(metrics),
        "",
        "## Lineage",
        f"Started from: {origin}",
        "",
        "| stage | train | size | epochs | lr | freeze | init |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {s['name']} | {s['train']} | {s['size']} | {s['epochs']} | {s['lr']} "
            f"| {s['freeze']} | {s['init']} |"
            for s in lineage["stages"]
        ),
        "",
        "## Datasets",
        "| name | hash | defocus (nm) | field (nm) | image size | images | path |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {n} | `{d['hash']}` | {d.get('defocus_nm', '')} | {d.get('field_nm', '')} "
            f"| {d.get('image_size', '')} | {d.get('count', '')} | {d.get('path', '')} |"
            for n, d in info["datasets"].items()
        ),
        "",
        "## Model",
        f"`{json.dumps(info['model'])}`",
        "",
        *_load_section(ref),
    ]
    return "\n".join(lines)


def _load_section(ref: str) -> list[str]:
    """The card's lines on loading the model ``ref`` names and applying it."""
    return [
        "## Load",
        "```python",
        "import zoo",
        f'module, config = zoo.load_model("{ref}")',
        "```",
        "or, from this folder alone (nothing is unpickled):",
        "```python",
        "from safetensors.torch import load_file",
        "from zoo.modelzoo import read_config",
        "from zoo.models import create_model",
        'config = read_config("config.yaml")',
        "module = create_model(config.model)",
        'module.load_state_dict(load_file("model.safetensors"))',
        "```",
        "Apply it: `zoo predict " + ref + " IMAGE... --out DIR`.",
        "",
    ]


def export_model(loaded: LoadedModel, tracker: Tracker, out: Path, ref: str) -> Path:
    """``out`` with model.safetensors, the resolved config.yaml and a README.md model card."""
    from zoo._yaml import dump_yaml
    from zoo.paths import CONFIG_ARTIFACT, MODEL_WEIGHTS

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(loaded.weights, out / MODEL_WEIGHTS)
    (out / CONFIG_ARTIFACT).write_text(dump_yaml(loaded.config.to_dict()))
    (out / "README.md").write_text(model_card(describe(loaded, tracker), ref))
    return out
