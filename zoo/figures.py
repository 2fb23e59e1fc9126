"""Figures logged with each run: learning curves and predictions on validation images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["loss_curves", "predictions"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves(stages: list[tuple[str, list[dict[str, Any]]]], out: Path) -> Path:
    """Train and adjusted validation loss per epoch, stages one after another."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    offset = 0
    for index, (name, history) in enumerate(stages):
        epochs = np.arange(offset + 1, offset + len(history) + 1)
        axis.plot(
            epochs,
            [h["train_loss"] for h in history],
            "k-",
            alpha=0.5,
            label="train (raw)" if index == 0 else None,
        )
        for j, dataset in enumerate(history[0]["val"]):
            axis.plot(
                epochs,
                [h["val"][dataset]["loss_adj"] for h in history],
                f"C{j}o-",
                label=f"val {dataset} (adjusted)" if index == 0 else None,
            )
        if index:
            axis.axvline(offset + 0.5, color="grey", ls=":")
        axis.text(offset + 1, 1.0, name, transform=axis.get_xaxis_transform(), va="bottom")
        offset += len(history)
    axis.set(xlabel="epoch", ylabel="loss", yscale="log")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def predictions(images: np.ndarray, masks: np.ndarray, predicted: np.ndarray, out: Path) -> Path:
    """Rows of image | true mask | predicted mask."""
    plt = _pyplot()
    figure, axes = plt.subplots(len(images), 3, figsize=(6, 2 * len(images)), squeeze=False)
    for row, panels in zip(axes, zip(images, masks, predicted, strict=True), strict=True):
        for axis, panel, title in zip(row, panels, ("image", "mask", "predicted"), strict=True):
            axis.imshow(panel, cmap="gray")
            axis.set_title(title, fontsize="small")
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
