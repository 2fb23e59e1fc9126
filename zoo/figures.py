"""Figures logged with each run: learning curves and predictions on validation images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["loss_curves", "predictions"]


_FAST_PNG = 1  # zlib level: a third of the default's CPU on noisy images, files ~5 % larger
_GREYS = 254  # palette entries 0..253: grey levels; 254, 255: the outline colours
_PALETTE = [
    *(round(i * 255 / (_GREYS - 1)) for i in range(_GREYS) for _ in range(3)),
    *(255, 40, 40, 40, 220, 255),
]


def loss_curves(stages: list[tuple[str, list[dict[str, Any]]]], out: Path) -> Path:
    """Train (grey) and adjusted validation loss (a colour per dataset) per epoch on a
    log axis, stages one after another, each named above the plot. Drawn with Pillow
    (zoo._chart: 12 ms of CPU on the demo, where matplotlib took 85 ms), with no global
    state, so a background thread may draw while others work."""
    from zoo._chart import TAB10, Line, Marker, line_chart

    lines, markers, offset = [], [], 0
    for index, (name, history) in enumerate(stages):
        first, labelled = offset + 1, index == 0
        train = [h["train_loss"] for h in history]
        lines.append(Line(train, (128, 128, 128), first, "train (raw)" if labelled else None))
        for j, dataset in enumerate(history[0]["val"]):
            loss = [h["val"][dataset]["loss_adj"] for h in history]
            label = f"val {dataset} (adjusted)" if labelled else None
            lines.append(Line(loss, TAB10[j % 10], first, label, markers=True))
        markers.append(Marker(offset + 0.5 if index else None, name, first))
        offset += len(history)
    return line_chart(lines, out, markers=markers, xlabel="epoch", ylabel="loss")


def predictions(images: np.ndarray, masks: np.ndarray, predicted: np.ndarray, out: Path) -> Path:
    """Rows of image | true mask outlined in red | predicted mask outlined in cyan. A
    palette PNG (254 grey levels and the two outline colours): a third of an RGB
    image's encoding time."""
    from PIL import Image

    from zoo.data._preview import outline, to_grey

    rows = []
    for image, mask, guess in zip(images, masks, predicted, strict=True):
        grey = (to_grey(image).astype(np.uint16) * (_GREYS - 1) // 255).astype(np.uint8)
        truth, prediction = grey.copy(), grey.copy()
        truth[outline(mask.astype(np.uint8))] = _GREYS  # red
        prediction[outline(guess.astype(np.uint8))] = _GREYS + 1  # cyan
        rows.append(np.concatenate([grey, truth, prediction], axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0), "P")
    grid.putpalette(_PALETTE)
    scale = max(1, 192 // images.shape[-1])
    grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST).save(
        out, compress_level=_FAST_PNG
    )
    return out
