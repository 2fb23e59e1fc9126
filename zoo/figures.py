"""Figures logged with each run: learning curves and predictions on validation images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["loss_curves", "predictions"]


_FAST_PNG = 1  # zlib level: a third of the default's CPU on noisy images, files ~5 % larger


def loss_curves(stages: list[tuple[str, list[dict[str, Any]]]], out: Path) -> Path:
    """Train and adjusted validation loss per epoch, stages one after another. Drawn
    without pyplot's global state, so a background thread may draw while others work."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter

    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
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
    # plain-text tick labels (3e-01): the default's mathtext (3×10⁻¹) is a quarter of the CPU
    axis.yaxis.set_major_formatter(LogFormatter())
    axis.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.legend(fontsize="small")
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)  # tight_layout: +30 % CPU
    figure.savefig(out, dpi=100, pil_kwargs={"compress_level": _FAST_PNG})
    return out


def predictions(images: np.ndarray, masks: np.ndarray, predicted: np.ndarray, out: Path) -> Path:
    """Rows of image | true mask outlined in red | predicted mask outlined in cyan."""
    from PIL import Image

    from zoo.data._preview import outline, to_grey

    rows = []
    for image, mask, guess in zip(images, masks, predicted, strict=True):
        grey = np.repeat(to_grey(image)[..., None], 3, axis=2)
        truth, prediction = grey.copy(), grey.copy()
        truth[outline(mask.astype(np.uint8))] = (255, 40, 40)
        prediction[outline(guess.astype(np.uint8))] = (40, 220, 255)
        rows.append(np.concatenate([grey, truth, prediction], axis=1))
    grid = np.concatenate(rows, axis=0)
    scale = max(1, 192 // images.shape[-1])
    Image.fromarray(grid).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST
    ).save(out, compress_level=_FAST_PNG)
    return out
