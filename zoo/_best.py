"""An epoch's recorded metrics, and each validation set's best epoch under the stage's
selection metric, judged in that metric's direction (zoo.metrics.better)."""

from __future__ import annotations

from typing import Any

from zoo.metrics import HEADLINE, better

__all__ = ["epoch_metrics", "headline", "update_best"]


def headline(values: dict[str, float]) -> tuple[str, ...]:
    """The headline metrics among a validation set's ``values`` (its task's)."""
    return HEADLINE["segmentation" if "iou" in values else "regression"]


def update_best(
    best: dict[str, dict[str, float]],
    epoch: int,
    metrics: dict[str, dict[str, float]],
    floor: float,
    select: str = "loss_adj",
) -> set[str]:
    """Record new bests per validation set, judged by metric ``select`` in its direction;
    returns the sets that improved."""
    improved = set()
    for name, values in metrics.items():
        scored = {**values, "loss_adj": values["loss"] - floor}
        if name not in best or better(select, scored[select], best[name][select]):
            best[name] = {
                "loss": values["loss"],
                "loss_adj": scored["loss_adj"],
                "epoch": epoch,
                **{k: values[k] for k in (*headline(values), select) if k in values},
            }
            improved.add(name)
    return improved


def epoch_metrics(
    train_loss: float,
    lr: float,
    seconds: float,
    images: int,
    validation: dict[str, dict[str, float]],
    floor: float,
) -> dict[str, Any]:
    """What an epoch records: its training loss, learning rate, speed, and under ``val``
    each validation set's metrics with its adjusted loss (loss - ``floor``)."""
    metrics: dict[str, Any] = {
        "train_loss": train_loss,
        "lr": lr,
        "epoch_seconds": seconds,
        "images_per_s": images / seconds,
    }
    metrics["val"] = {n: {**v, "loss_adj": v["loss"] - floor} for n, v in validation.items()}
    return metrics
