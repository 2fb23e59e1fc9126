"""Tiles of any image, blended: the geometry and weights of ``zoo predict``'s tiling and
the loop that streams tiles from a source array to an output array (either may be
memory-mapped), so that memory follows the tile and batch sizes, not the image.

Tiles of side ``tile`` overlap by ``overlap`` pixels (the last one of a row or column
flush with the image's end). Along an edge shared with another tile, a quarter of the
overlap next to the edge is discarded (weight 0) and the next half fades in linearly;
image borders keep weight 1. Weights are normalised, so they sum to 1 at every pixel:
a model whose reach is at most ``overlap // 4`` pixels gives, tiled, what it gives on
the whole image.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Job", "Tiling", "blend", "starts"]

Run = Callable[[np.ndarray], np.ndarray]  # tiles (B, C, T, T) -> outputs (B, K, T, T)


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts covering ``length``, ``tile - overlap`` apart, the last flush with the end."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    return [*range(0, length - tile, stride), length - tile]


def _profile(length: int, tile: int, start: int, overlap: int) -> np.ndarray:
    """(tile,) weights of the tile at ``start``: 0 over the first quarter of the overlap at
    an edge shared with another tile, a linear ramp over the next half, else 1."""
    margin, ramp = overlap // 4, overlap - 2 * (overlap // 4)
    index = np.arange(tile, dtype=np.float64)
    rise = np.clip((index - margin + 0.5) / max(ramp, 1), 0, 1) if ramp else np.ones(tile)
    weights = np.ones(tile)
    if start > 0:
        weights = np.minimum(weights, rise)
    if start + tile < length:
        weights = np.minimum(weights, rise[::-1])
    return weights


@dataclass(frozen=True)
class Tiling:
    """The tiles of one (height, width) image, which must be at least ``tile`` each way."""

    height: int
    width: int
    tile: int
    overlap: int

    def corners(self) -> Iterator[tuple[int, int]]:
        """Tile corners, row by row (generated: a list would grow with the image)."""
        columns = starts(self.width, self.tile, self.overlap)
        return ((y, x) for y in starts(self.height, self.tile, self.overlap) for x in columns)

    def _axis(self, length: int) -> dict[int, np.ndarray]:
        """Each start's normalised (tile,) profile along an axis of ``length``."""
        profiles = {
            s: _profile(length, self.tile, s, self.overlap)
            for s in starts(length, self.tile, self.overlap)
        }
        total = np.zeros(length)
        for s, p in profiles.items():
            total[s : s + self.tile] += p
        return {s: (p / total[s : s + self.tile]).astype(np.float32) for s, p in profiles.items()}

    def weights(self) -> Callable[[int, int], np.ndarray]:
        """A function of a corner giving its (tile, tile) weights; over all corners they sum
        to 1 at every pixel (weights are made per tile: a row and a column profile kept)."""
        rows, columns = self._axis(self.height), self._axis(self.width)
        return lambda y, x: np.outer(rows[y], columns[x])


@dataclass(frozen=True)
class Job:
    """One image to tile: ``source`` (C, H, W) and ``out`` (K, H, W), each an array or a
    memory map; ``out`` must hold zeros, the blended outputs are added to it."""

    source: Any
    out: Any


def blend(
    run: Run,
    jobs: Sequence[Job],
    tile: int,
    overlap: int,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Run every tile of ``jobs`` through ``run`` in batches of ``batch_size`` (tiles of
    several jobs share a batch) and add the weighted outputs to each job's ``out``;
    ``progress`` is called with the number of tiles each batch did."""
    tilings = [Tiling(*job.source.shape[-2:], tile, overlap) for job in jobs]
    weights = [t.weights() for t in tilings]
    queue = ((j, y, x) for j, t in enumerate(tilings) for y, x in t.corners())
    while batch := list(itertools.islice(queue, batch_size)):
        tiles = np.stack(
            [np.asarray(jobs[j].source[:, y : y + tile, x : x + tile]) for j, y, x in batch]
        ).astype(np.float32, copy=False)
        outputs = run(tiles)
        for (j, y, x), output in zip(batch, outputs, strict=True):
            jobs[j].out[:, y : y + tile, x : x + tile] += output * weights[j](y, x)
        if progress is not None:
            progress(len(batch))
