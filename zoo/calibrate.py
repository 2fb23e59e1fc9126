"""Throughput profiles: what one worker does per second on a device, to price a sweep.

``zoo calibrate NAME [SPEC]`` measures, on the machine where it runs (a compute
node), the training and validation images per second of SPEC's model (default:
the demo's U-Net) at its image size, and the fixed cost of a job (tracking,
model set-up, checkpoints, figures) as a sweep worker pays it, from real runs in
one, and saves them as ``.zoo/profiles/NAME.json``. ``zoo sweep plan --profile
NAME`` reads a profile from there, else from the ones committed in
``zoo/profiles/``; only ``calibrate`` measures anything.
"""

from __future__ import annotations

import json
import platform
import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError
from zoo.paths import ProjectPaths

__all__ = [
    "Profile",
    "calibrate",
    "known_profiles",
    "load_profile",
    "profile_file",
    "save_profile",
]

DEMO_MODEL = {
    "arch": "unet",
    "encoder": "resnet18",
    "encoder_depth": 3,
    "decoder_channels": [64, 32, 16],
    "in_channels": 1,
    "classes": 2,
    "head": "softmax",
}
_PACKAGED = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class Profile:
    """One worker's throughput on one device for one model, at ``image_size``."""

    name: str
    device: str  # e.g. "cpu (x86_64, 1 thread)" or the GPU's name
    model: dict[str, Any]  # the model measured
    image_size: int  # rates scale with pixels: images/s at side s = rate × (image_size / s)²
    train_images_per_s: float
    val_images_per_s: float
    # per job beyond the epochs it records (tracking, model set-up, checkpoint hand-overs,
    # figures): a sweep worker's job wall time minus its train_seconds
    job_overhead_s: float
    worker_host_bytes: int  # peak resident memory of a worker after runs (or of the rates)
    measured: str  # UTC time of the measurement

    def rate(self, kind: str, side: int) -> float:
        base = self.train_images_per_s if kind == "train" else self.val_images_per_s
        return base * (self.image_size / side) ** 2


def save_profile(profile: Profile, paths: ProjectPaths) -> Path:
    out = paths.profile(profile.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(profile), indent=1) + "\n")
    return out


def load_profile(name: str, paths: ProjectPaths) -> Profile:
    """Profile ``name``: this project's, else a committed one."""
    return Profile(**json.loads(profile_file(name, paths).read_text()))


def profile_file(name: str, paths: ProjectPaths) -> Path:
    """The file profile ``name`` is read from; a ConfigError naming the known profiles
    when there is none."""
    for path in (paths.profile(name), _PACKAGED / f"{name}.json"):
        if path.exists():
            return path
    raise ConfigError(
        f"--profile: no profile {name!r}; known: {', '.join(known_profiles(paths)) or 'none'} "
        f"(measure one with `zoo calibrate {name}` on the target machine)"
    )


def known_profiles(paths: ProjectPaths) -> list[str]:
    """Names ``--profile`` takes here: this project's profiles and the committed ones."""
    saved = paths.profile("any").parent  # where zoo calibrate saves them
    return sorted({p.stem for folder in (_PACKAGED, saved) for p in folder.glob("*.json")})


def calibrate(name: str, spec: Path | None = None, echo=print, *, resolver: Any) -> Profile:
    """Measure a profile of SPEC's first run config (default: the demo's model at 64 px),
    configs resolved against ``resolver`` (a zoo.config.Resolver)."""
    import torch

    from zoo._malloc import keep_freed_memory
    from zoo.sweep._plan import make_plan
    from zoo.sweep._spec import load_spec

    torch.set_num_threads(1)  # as sweep workers train
    keep_freed_memory()
    if spec is not None:
        config = make_plan(load_spec(spec, resolver=resolver)).runs[0].config
        model, side = config.model.to_dict(), _side(config)
    else:
        model, side = DEMO_MODEL, 64
        config = _config(model, side, resolver, count=40)
    train = _train_images_per_s(config, side)
    echo(f"training: {train:.1f} images/s at {side} px")
    val = _val_images_per_s(config, side)
    echo(f"validation: {val:.1f} images/s at {side} px")
    overhead, worker_bytes = _in_a_worker(model)
    echo(f"job overhead: {overhead:.2f} s")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return Profile(
        name,
        f"{device} ({platform.machine()}, 1 thread)" if device == "cpu" else device,
        model,
        side,
        train,
        val,
        overhead,
        max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, worker_bytes),
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )


def _side(config: Any) -> int:
    return getattr(config.sources[config.stages[0].train], "image_size", 64)


def _config(model: dict[str, Any], side: int, resolver: Any, count: int, seed: int = 0) -> Any:
    from zoo.config import resolve

    return resolve(
        {
            "experiment": "calibrate",
            "seed": seed,
            "model": model,
            "datasets": {
                "t": {"preset": "defocus", "defocus_nm": 0, "image_size": side, "count": count}
            },
            "stages": [{"name": "s", "train": "t", "size": 8, "epochs": 2, "batch_size": 8}],
            "validate_on": ["t"],
            "log_weights": ["best"],
        },
        resolver=resolver,
    )


def _train_images_per_s(config: Any, side: int, steps: int = 8) -> float:
    """Training images/s of the config's model and first stage on this machine, from
    ``steps`` steps on random ``side`` px data (after one untimed step)."""
    import torch

    from zoo.losses import make_loss
    from zoo.models import create_model
    from zoo.train import Step, make_optimizer, pick_device, train_step

    stage = config.stages[0]
    device = pick_device(config)
    model = create_model(config.model).to(device).train()
    step = Step(model, make_optimizer(stage, model), make_loss(stage.loss), config.model.head)
    x = torch.randn(stage.batch_size, config.model.in_channels, side, side, device=device)
    y = torch.randint(0, config.model.classes, (stage.batch_size, side, side), device=device)
    train_step(step, x, y)
    start = time.perf_counter()
    for _ in range(steps):
        loss = train_step(step, x, y)
    loss.item()
    return steps * stage.batch_size / (time.perf_counter() - start)


def _val_images_per_s(config: Any, side: int, batches: int = 4) -> float:
    import torch

    from zoo.models import create_model
    from zoo.train import pick_device

    device = pick_device(config)
    model = create_model(config.model).to(device).eval()
    x = torch.randn(config.val_batch_size, config.model.in_channels, side, side, device=device)
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for _ in range(batches):
            model(x).sum().item()
    return batches * config.val_batch_size / (time.perf_counter() - start)


def _in_a_worker(model: dict[str, Any], runs: int = 5) -> tuple[float, int]:
    """(median seconds a job takes beyond the epochs it records (its ``train_seconds``),
    the worker's peak resident bytes), over ``runs`` (at least 2) one-stage, two-epoch
    runs at 32 px in one worker forked as a sweep's are; the first, cold job is left
    out of the median."""
    import statistics

    from zoo.config import Resolver
    from zoo.run import load_datasets
    from zoo.store import Tracker
    from zoo.sweep._job import Job, run_job
    from zoo.sweep._local import worker_pool

    overheads = []
    with tempfile.TemporaryDirectory() as tmp, worker_pool(1) as pool:
        paths = ProjectPaths(Path(tmp))
        tracker = Tracker(paths.tracking_uri, paths)
        for seed in range(runs):
            config = _config(model, 32, Resolver(paths), count=16, seed=seed)
            load_datasets(config, paths)  # making data is not a job's overhead
            job = Job(
                config.digest(),
                "run",
                "run",
                experiment=config.experiment,
                uri=tracker.uri,
                root=tmp,
                document=config.to_dict(),
            )
            result = pool.submit(run_job, job, unfinished=True).result()
            if result.status != "finished":
                raise RuntimeError(f"calibration run failed: {result.reason}")
            epochs = tracker.get_run(result.run_id).data.metrics["train_seconds"]
            overheads.append(result.seconds - epochs)
        peak = pool.submit(resource.getrusage, resource.RUSAGE_SELF).result().ru_maxrss
    return statistics.median(overheads[1:]), peak * 1024
