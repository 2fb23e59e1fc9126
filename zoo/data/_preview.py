"""Preview grids of images with their masks outlined, or beside their image targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["outline", "preview", "to_grey"]


def to_grey(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    return (np.clip((image - lo) / max(hi - lo, 1e-8), 0, 1) * 255).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    for axis in (0, 1):
        for shift in (1, -1):
            inner &= np.roll(mask, shift, axis)
    return mask.astype(bool) & ~inner.astype(bool)


def preview(
    images: np.ndarray, masks: np.ndarray, out: Path, columns: int = 4, tile: int = 256
) -> Path:
    """A PNG grid: each image in grey (its first channel) beside itself with the mask edge
    in red, or beside its image target (first channel) in grey."""
    from PIL import Image

    rows = []
    for image, mask in zip(images, masks, strict=True):
        grey = to_grey(image[0] if image.ndim == 3 else image)
        if mask.dtype == np.uint8:
            overlay = np.repeat(grey[..., None], 3, axis=2)
            overlay[outline(mask)] = (255, 40, 40)
        else:
            overlay = np.repeat(to_grey(mask[0] if mask.ndim == 3 else mask)[..., None], 3, 2)
        pair = [np.repeat(grey[..., None], 3, axis=2), overlay]
        rows.append(
            np.concatenate(
                [np.asarray(Image.fromarray(p).resize((tile, tile), Image.NEAREST)) for p in pair],
                1,
            )
        )
    while len(rows) % columns:
        rows.append(np.zeros_like(rows[0]))
    grid = np.concatenate(
        [np.concatenate(rows[i : i + columns], 1) for i in range(0, len(rows), columns)], 0
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out)
    return out
