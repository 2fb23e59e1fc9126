"""What a run leaves in the store: its tags, summary metrics, per-epoch history, config,
weights and figures (zoo.run calls these once its stages are trained)."""

from __future__ import annotations

import platform
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo._yaml import dump_yaml
from zoo.artifacts import FigureJob, draw_later, log_linked
from zoo.config import RunConfig
from zoo.data import Dataset
from zoo.models import meta_template
from zoo.paths import CONFIG_ARTIFACT, HISTORY_ARTIFACT, WEIGHTS_ARTIFACTS, StagePaths
from zoo.store import Tracker, metric_key
from zoo.train import SAMPLE_IMAGES, StageResult, git_commit, headline, model_inputs, precision

__all__ = [
    "base_tags",
    "epoch_metrics",
    "figure_job",
    "history_csv",
    "log_artifacts",
    "power_limit_unknown",
    "summary_metrics",
]


def base_tags(config: RunConfig, device: torch.device, floor: float) -> dict[str, str]:
    """The tags a new run starts with: seed, stages, host, versions, precision, name."""
    tags = {
        "zoo.seed": str(config.seed),
        "zoo.stages": ",".join(s.name for s in config.stages),
        "zoo.host": platform.node(),
        "zoo.torch": torch.__version__,
        "zoo.cuda": str(torch.version.cuda),
        "zoo.loss_floor": f"{floor:.6f}",
        "zoo.precision": precision(config, device),  # amp, with auto decided
        "mlflow.runName": f"{config.stages[-1].name}-{config.digest()[:8]}",
    }
    if device.type == "cuda":
        tags["zoo.gpu"] = torch.cuda.get_device_name(device)
    if git_commit():
        tags["mlflow.source.git.commit"] = git_commit()
    return tags


def power_limit_unknown(config: RunConfig, results: list[StageResult]) -> bool:
    """Whether a power cap was asked for and some stage trained where the limit in force
    could not be read (no NVML or no CUDA device; see zoo.telemetry.GpuMeter). Where it
    was read, it is the stage's ``power_limit_w`` metric."""
    return config.power_cap_w is not None and any(
        "power_limit_w" not in r.telemetry for r in results
    )


def epoch_metrics(metrics: dict[str, Any], stage: int) -> dict[str, float]:
    flat = {k: v for k, v in metrics.items() if k != "val"}
    flat["stage"] = stage
    for dataset, values in metrics["val"].items():
        for name, value in values.items():
            flat[metric_key(f"val_{name}", dataset)] = value
    return flat


def summary_metrics(
    config: RunConfig, results: list[StageResult], floor: float, total_params: int
) -> dict[str, float]:
    summary = {
        "loss_floor": floor,
        "params_total": total_params,
        "train_seconds": sum(r.seconds for r in results),
    }
    target = config.stages[-1].train
    if target in results[-1].best:  # best on the last stage's own domain: the headline result
        best = results[-1].best[target]
        summary.update(
            target_loss=best["loss"],
            target_loss_adj=best["loss_adj"],
            **{f"target_{k}": best[k] for k in headline(best)},
            target_epoch=best["epoch"],
        )
        if len(results) > 1 and target in results[0].best:
            summary["pretrain_target_loss"] = results[0].best[target]["loss"]
            summary["pretrain_target_loss_adj"] = results[0].best[target]["loss_adj"]
    for stage, result in zip(config.stages, results, strict=True):
        summary[metric_key("params_trainable", stage.name)] = result.trainable
        summary[metric_key("train_seconds", stage.name)] = result.seconds
        if config.compile:
            summary[metric_key("compile_seconds", stage.name)] = result.compile_seconds
        for name, value in result.telemetry.items():
            summary[metric_key(name, stage.name)] = value
        if "energy_wh" in result.telemetry and result.images:
            summary[metric_key("energy_wh_per_1000_images", stage.name)] = (
                1000 * result.telemetry["energy_wh"] / result.images
            )
        for dataset, best in result.best.items():
            summary[metric_key("best_val_loss_adj", stage.name, dataset)] = best["loss_adj"]
            summary[metric_key("best_val_loss", stage.name, dataset)] = best["loss"]
            summary[metric_key("best_epoch", stage.name, dataset)] = best["epoch"]
            for key in headline(best):
                summary[metric_key(f"best_val_{key}", stage.name, dataset)] = best[key]
    return summary


def log_artifacts(
    config: RunConfig,
    results: list[StageResult],
    datasets: dict[str, Dataset],
    tracker: Tracker,
    run_id: str,
) -> None:
    """Config, history and weights now; the figures (unless ``config.figures`` is false)
    through ``draw_later`` (zoo.artifacts)."""
    last = results[-1]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / CONFIG_ARTIFACT).write_text(dump_yaml(config.to_dict()))
        tracker.log_artifact(run_id, folder / CONFIG_ARTIFACT)
        names = [s.name for s in config.stages]
        for entry in config.log_weights:  # best, final (the last stage's) or STAGE/best|final
            stage, _, kind = entry.rpartition("/")
            result = results[names.index(stage)] if stage else last
            where = f"{WEIGHTS_ARTIFACTS}/{stage}" if stage else WEIGHTS_ARTIFACTS
            log_linked(tracker, run_id, StagePaths(result.folder).weights(kind), where)
        tracker.log_artifact(run_id, history_csv(config, results, folder / HISTORY_ARTIFACT))
    if config.figures:
        draw_later(figure_job(config, results, datasets, run_id), tracker)


def figure_job(
    config: RunConfig, results: list[StageResult], datasets: dict[str, Dataset], run_id: str
) -> FigureJob:
    """The figures of a finished run: its loss curves and, for segmentation, what its
    best weights predict on the first SAMPLE_IMAGES validation images of its last
    stage's dataset (kept by its validation, else predicted by the drawer)."""
    last = results[-1]
    curves = [(s.name, r.history) for s, r in zip(config.stages, results, strict=True)]
    job = FigureJob(run_id, curves)
    dataset = datasets[config.stages[-1].train]
    # no figure for image targets yet, nor for a streamed set (no validation images)
    if config.model.task == "segmentation" and len(dataset.val[0]):
        first = dataset.train_count
        job = replace(
            job,
            model=config.model,
            # template and weights: for the drawer to predict when training kept nothing
            template=meta_template(config.model),
            weights=str(StagePaths(last.folder).weights("best")),
            inputs=model_inputs(dataset, config.model, slice(first, first + SAMPLE_IMAGES)).numpy(),
            masks=np.array(dataset.val[1][:SAMPLE_IMAGES]),
            predicted=last.predicted,
        )
    return job


def history_csv(config: RunConfig, results: list[StageResult], out: Path) -> Path:
    """Every epoch's logged metrics as one CSV row (step = epoch counted across stages)."""
    import csv

    rows, step = [], 0
    for index, result in enumerate(results):
        for metrics in result.history:
            step += 1
            rows.append(
                {
                    "step": step,
                    "stage_name": config.stages[index].name,
                    **epoch_metrics(metrics, index),
                }
            )
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return out
