"""What a sweep's plan will cost: wall time on a throughput profile, disk, memory.

Time per job = its training image passes ÷ the profile's training rate (a frozen
encoder's or decoder's passes at their FROZEN_PASS_COST) + its validation image
passes (every epoch validates on every validation set) ÷ the validation rate, rates
scaled by pixel count and measured on bare steps, + the profile's per-job overhead
(what a sweep worker's job takes beyond the epochs it records; the epochs' own
batching and metrics, beyond bare steps, are priced nowhere: on the demo the plan
came within 4 % of the measured sweep).
With N workers the sweep takes the larger of (total ÷ N) and its longest chain
(a shared stage, then the slowest run that starts from it).
"""

from __future__ import annotations

import json
from typing import Any

from zoo._typed import to_dict
from zoo.calibrate import Profile, load_profile
from zoo.sweep._plan import (
    Plan,
    format_report,
    image_side,
    report,
    stage_passes,
    trained_stages,
)

__all__ = ["format_cost", "job_seconds", "predict", "profile_report", "source_key"]


def _job_seconds(config: Any, trained: list[int], profile: Profile) -> tuple[float, int]:
    """(seconds, validation image passes) of training stages ``trained`` of ``config``."""
    seconds, val_passes = profile.job_overhead_s, 0
    for kind, passes, side, cost in stage_passes(config, trained):
        seconds += passes * cost / profile.rate(kind, side)
        val_passes += passes if kind == "val" else 0
    return seconds, val_passes


def _dataset_bytes(config: Any, name: str, per_pixel: int) -> int:
    source = config.sources[name]
    count = getattr(source, "count", 0)
    return count * image_side(config, name) ** 2 * per_pixel


def job_seconds(plan: Plan, profile: Profile) -> dict[str, float]:
    """Job key -> its predicted seconds on ``profile`` (per-job overhead included)."""
    return _priced(plan, profile)[0]


def _priced(plan: Plan, profile: Profile) -> tuple[dict[str, float], int]:
    """(job key -> predicted seconds, validation image passes of the whole plan)."""
    stage_keys = {j.key for j in plan.jobs if j.kind == "stage"}
    times: dict[str, float] = {}
    val_passes = 0
    for job in plan.jobs:
        times[job.key], passes = _job_seconds(job.config, trained_stages(job, stage_keys), profile)
        val_passes += passes
    return times, val_passes


def predict(plan: Plan, profile: Profile, workers: int = 1) -> dict[str, Any]:
    """Predicted seconds with ``workers`` workers, disk bytes, memory per worker."""
    from zoo.resident import cache_limit

    stage_keys = {j.key for j in plan.jobs if j.kind == "stage"}
    times, val_passes = _priced(plan, profile)
    chain = max(
        (times[j.key] + sum(times[d] for d in j.depends) for j in plan.jobs if j.kind == "run"),
        default=0.0,
    )
    total = sum(times.values())
    host: dict[str, int] = {}  # source -> bytes cached (float32 images + uint8 masks)
    device: dict[str, int] = {}  # source -> bytes on the device (float16 + uint8)
    largest = 0
    for job in plan.jobs:
        used = [source_key(job.config, n) for n in job.config.used_datasets]
        for key, name in zip(used, job.config.used_datasets, strict=True):
            host[key] = _dataset_bytes(job.config, name, 5)
            device[key] = _dataset_bytes(job.config, name, 3)
        largest = max(largest, sum(device[k] for k in used))
    on_device = min(sum(device.values()), max(largest, cache_limit()))
    return {
        "profile": profile.name,
        "workers": workers,
        "predicted_seconds": max(total / workers, chain),
        "work_seconds": total,
        "validation_image_passes": val_passes,
        "disk_bytes": sum(host.values()) + _checkpoint_bytes(plan, stage_keys),
        "dataset_bytes": sum(host.values()),
        "host_bytes_per_worker": profile.worker_host_bytes
        + (on_device if profile.device.startswith("cpu") else 0),
        "mapped_bytes_per_node": sum(host.values()),  # page cache, shared by a node's workers
        "device_bytes_per_worker": on_device,
    }


def source_key(config: Any, name: str) -> str:
    return json.dumps(to_dict(config.sources[name]), sort_keys=True)


def profile_report(plan: Plan, name: str, workers: int, show: int) -> dict[str, Any]:
    """The plan's report (zoo.sweep.report) priced on profile ``name`` with ``workers``."""
    from zoo.paths import ProjectPaths

    profile = load_profile(name, ProjectPaths.default())
    first = plan.runs[0].config if plan.runs else None
    rate = profile.rate("train", image_side(first, first.stages[0].train)) if first else 1.0
    return {**report(plan, rate, show), **predict(plan, profile, workers)}


def format_cost(summary: dict[str, Any]) -> str:
    """``profile_report`` as text: the plan's lines, then time, disk and memory."""
    gb = 1e9
    return "\n".join(
        [
            format_report(summary),
            f"  validation image passes: {summary['validation_image_passes']:,}",
            f"  predicted wall time on profile {summary['profile']} with "
            f"{summary['workers']} worker(s): {summary['predicted_seconds'] / 3600:.2f} h "
            f"({summary['predicted_seconds']:.0f} s)",
            f"  disk: {summary['disk_bytes'] / gb:.2f} GB "
            f"(datasets {summary['dataset_bytes'] / gb:.2f} GB, the rest checkpoints)",
            f"  memory per worker: host {summary['host_bytes_per_worker'] / gb:.2f} GB, "
            f"device {summary['device_bytes_per_worker'] / gb:.2f} GB; datasets mapped per "
            f"node {summary['mapped_bytes_per_node'] / gb:.2f} GB (page cache, shared)",
        ]
    )


def _checkpoint_bytes(plan: Plan, stage_keys: set[str]) -> int:
    """Best and final weights (float32) of every stage trained, the final training state
    (weights and two Adam moments) a run's last stage keeps, and kept epoch weights;
    logged weights are links."""
    from zoo.models import create_model

    if not plan.jobs:
        return 0
    params = sum(p.numel() for p in create_model(plan.jobs[0].config.model).parameters())
    copies = dict.fromkeys(stage_keys, 2)  # stage -> weight-sized files it keeps
    for job in plan.jobs:
        if job.kind == "run":
            config = job.config
            for index, stage in enumerate(config.stages):
                kept = 2 + (stage.epochs if stage.keep_epochs else 0)
                if index == len(config.stages) - 1 or config.keeps_optimizer(index):
                    kept += 3
                digest = config.stage_digest(index)
                copies[digest] = max(copies.get(digest, 2), kept)
    return sum(copies.values()) * 4 * params
