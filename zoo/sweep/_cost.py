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
from zoo.calibrate import Profile, known_profiles, load_profile, profile_file
from zoo.errors import ConfigError
from zoo.paths import ProjectPaths
from zoo.sweep._plan import Plan, format_report, image_side, report, stage_passes, trained_stages

__all__ = [
    "format_priced",
    "job_seconds",
    "no_price",
    "predict",
    "priced_report",
    "source_key",
]


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


def priced_report(
    plan: Plan, profile: str | None, images_per_s: float | None, workers: int, paths: ProjectPaths
) -> dict[str, Any]:
    """The plan's report (zoo.sweep.report) with one price, never measured here: on
    throughput profile ``profile`` of project ``paths`` (wall time with ``workers``
    workers, disk, memory), or at ``images_per_s`` training images per second, or none
    (``priced_by`` null and ``no_price``, the line saying how to get one). Both given is
    a ConfigError."""
    if profile is not None and images_per_s is not None:
        raise ConfigError("--images-per-s: not allowed with --profile; expected one price")
    summary = report(plan)
    if profile is not None:
        found = load_profile(profile, paths)
        source = f"{profile_file(profile, paths)}: {found.device}, measured {found.measured}"
        return {
            **summary,
            "priced_by": f"profile {profile} ({source})",
            **predict(plan, found, workers),
        }
    if images_per_s is not None:
        return {
            **summary,
            "priced_by": "--images-per-s",
            "images_per_s": images_per_s,
            "hours": summary["image_passes"] / images_per_s / 3600,
            "hours_unshared": summary["image_passes_unshared"] / images_per_s / 3600,
        }
    return {**summary, "priced_by": None, "no_price": no_price(known_profiles(paths))}


def no_price(profiles: list[str] | None) -> str:
    """The line of a plan given no price: how to get one (``profiles``: the names
    ``--profile`` takes; None where a plan takes only ``--images-per-s``)."""
    start = "no time estimate (nothing is measured here): give"
    if profiles is None:
        return (
            f"{start} --images-per-s N (a profile's train_images_per_s: `zoo calibrate NAME` "
            "on a compute node measures one)"
        )
    return (
        f"{start} --profile NAME (known: {', '.join(profiles) or 'none'}; `zoo calibrate "
        "NAME` on a compute node measures one) or --images-per-s N"
    )


def format_priced(summary: dict[str, Any]) -> str:
    """``priced_report`` as text: the plan's lines, then its one estimate and where it
    came from (on a profile also disk and memory), or the line saying how to get one."""
    lines = [format_report(summary)]
    if summary["priced_by"] is None:
        return "\n".join([*lines, f"  {summary['no_price']}"])
    if summary["priced_by"] == "--images-per-s":
        return "\n".join(
            [
                *lines,
                f"  estimated time at {summary['images_per_s']:.1f} images/s (--images-per-s, "
                f"training passes only): {summary['hours']:.1f} h "
                f"({summary['hours_unshared']:.1f} h without sharing)",
            ]
        )
    gb = 1e9
    return "\n".join(
        [
            *lines,
            f"  validation image passes: {summary['validation_image_passes']:,}",
            f"  predicted wall time on profile {summary['profile']} with "
            f"{summary['workers']} worker(s): {summary['predicted_seconds'] / 3600:.2f} h "
            f"({summary['predicted_seconds']:.0f} s); {summary['priced_by']}",
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
