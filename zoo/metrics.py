"""Validation metrics per task, each with the direction that makes it better.

Segmentation: ``iou`` (of the foreground classes, pooled over the split) and ``acc``
(pixel accuracy, the mean over images). Regression: ``mae``, ``psnr`` and ``ssim``, each
the mean over images of a per-image value; PSNR and SSIM use each target image's own
range (max - min) as the data range, so they do not depend on the targets' units or on
how the split is batched.

A metric sums per-batch statistics (``totals``) and turns the sums over a whole split
into its value (``finish``), so a split is scored in batches without holding it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

__all__ = [
    "HEADLINE",
    "METRICS",
    "TASK_HEADLINE",
    "Metric",
    "batch_totals",
    "better",
    "finish",
    "score",
    "task_metrics",
]

Task = Literal["segmentation", "regression"]


@dataclass(frozen=True)
class Metric:
    task: Task
    higher_is_better: bool
    totals: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> sums
    finish: Callable[[list[float], int], float]  # (sums over the split, images) -> value


def _iou_totals(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    import torch

    prediction, truth = output.argmax(dim=1), target.long()
    foreground_pred, foreground_true = prediction > 0, truth > 0
    return torch.stack(
        [
            ((prediction == truth) & foreground_true).sum().double(),
            (foreground_pred | foreground_true).sum().double(),
        ]
    )


def _acc_totals(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((output.argmax(dim=1) == target.long()).double().mean() * len(output)).reshape(1)


def _per_image_range(target: torch.Tensor) -> torch.Tensor:
    span = target.amax(dim=(1, 2, 3)) - target.amin(dim=(1, 2, 3))
    return span.clamp_min(1e-8).view(-1, 1, 1, 1)


def _mae_totals(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    error = (output.double() - target.double()).abs()
    return error.mean(dim=(1, 2, 3)).sum().reshape(1)


def _psnr_totals(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x, y = output.double(), target.double()
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-20)
    span = _per_image_range(y).flatten()
    return (10 * (span**2 / mse).log10()).sum().reshape(1)


def _ssim_totals(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from pytorch_msssim import ssim

    x, y = output.float(), target.float()
    values = ssim(x, y, data_range=_per_image_range(y), size_average=False)
    return values.double().sum().reshape(1)


def _mean(sums: list[float], images: int) -> float:
    return sums[0] / images


def _ratio(sums: list[float], images: int) -> float:
    return sums[0] / sums[1] if sums[1] else 1.0


METRICS: dict[str, Metric] = {
    "iou": Metric("segmentation", True, _iou_totals, _ratio),
    "acc": Metric("segmentation", True, _acc_totals, _mean),
    "mae": Metric("regression", False, _mae_totals, _mean),
    "psnr": Metric("regression", True, _psnr_totals, _mean),
    "ssim": Metric("regression", True, _ssim_totals, _mean),
}


# the metrics kept with each validation set's best epoch and logged in the run's summary
HEADLINE: dict[str, tuple[str, ...]] = {
    "segmentation": ("iou",),
    "regression": ("psnr", "ssim", "mae"),
}

# The one table of each task's headline: the metric of the target domain's best epoch that
# reports tabulate, plans name and `zoo models list` sorts on unless told otherwise, with
# its label (zoo.analysis.HEADLINES is its report-column form). Segmentation keeps the
# paper's best adjusted loss; regression takes the first of HEADLINE (PSNR).
TASK_HEADLINE: dict[str, tuple[str, str]] = {
    "segmentation": ("loss_adj", "best adjusted loss, target domain"),
    "regression": (HEADLINE["regression"][0], "PSNR (dB) at the best epoch, target domain"),
}


def task_metrics(task: Task) -> tuple[str, ...]:
    """The metrics validation logs for ``task``, in registry order."""
    return tuple(name for name, metric in METRICS.items() if metric.task == task)


def batch_totals(task: Task, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each metric's sums over one batch (device tensors: no host synchronisation)."""
    return {name: METRICS[name].totals(output, target) for name in task_metrics(task)}


def finish(task: Task, sums: dict[str, torch.Tensor], images: int) -> dict[str, float]:
    """Each metric's value from its sums over a split of ``images`` images."""
    return {name: METRICS[name].finish(sums[name].tolist(), images) for name in task_metrics(task)}


def score(task: Task, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Every metric of ``task`` over (output, target) batches that make up one split."""
    sums: dict[str, torch.Tensor] = {}
    for output, target in batches:
        for name, value in batch_totals(task, output, target).items():
            sums[name] = sums[name] + value if name in sums else value
    return finish(task, sums, sum(len(output) for output, _ in batches))


def better(metric: str, new: float, old: float) -> bool:
    """Whether ``new`` improves on ``old`` for ``metric`` (``loss``/``loss_adj``: lower)."""
    higher = METRICS[metric].higher_is_better if metric in METRICS else False
    return new > old if higher else new < old
