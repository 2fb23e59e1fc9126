"""Dihedral augmentation: each epoch's reproducible order of (image, transform) pairs,
and its batches gathered on the device under their transforms (Batcher)."""

from __future__ import annotations

import numpy as np
import torch

from zoo._placement import DeviceData

__all__ = ["DIHEDRAL", "Batcher", "dihedral", "epoch_order"]

DIHEDRAL = 8  # the 4 rotations, each with and without a flip


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` (0-7) of the dihedral group on the last two axes."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def epoch_order(seed: int, stage: int, epoch: int, count: int, augment: bool) -> np.ndarray:
    """(image index, transform) pairs of one epoch, shuffled reproducibly."""
    transforms = DIHEDRAL if augment else 1
    rng = np.random.default_rng([seed, stage, epoch])
    order = rng.permutation(count * transforms)
    return np.stack([order % count, order // count], axis=1)


class Batcher:
    """Batches of one epoch gathered on the device: one upload of the epoch's order,
    then per batch one gather of the images and one of the pixels (the dihedral
    transforms as precomputed pixel permutations); no host synchronisation."""

    def __init__(self, data: DeviceData, order: np.ndarray):
        self.images, self.masks = data.train_images, data.train_masks
        device, (height, width) = self.images.device, self.images.shape[-2:]
        self.order = torch.from_numpy(order).to(device)
        pixels = torch.arange(height * width, device=device).view(height, width)
        transforms = range(DIHEDRAL) if height == width else range(1)
        self.permutations = torch.stack([dihedral(pixels, k).flatten() for k in transforms])

    def __call__(self, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled float32 images (B, C, H, W) and masks (B, H, W) or targets (B, K, H, W) of
        a slice of the order, each under its transform."""
        index, transform = self.order[start : start + size].unbind(1)
        pixels = self.permutations[transform]
        images, masks = self.images[index], self.masks[index]
        x = images.flatten(-2).gather(-1, _along(pixels, images)).view_as(images)
        y = masks.flatten(-2).gather(-1, _along(pixels, masks)).view_as(masks)
        return x.float(), y


def _along(pixels: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Pixel permutations (B, H·W) shaped to gather from ``batch`` flattened: repeated over
    its channels when it has some."""
    if batch.dim() == 3:
        return pixels
    return pixels[:, None].expand(-1, batch.shape[1], -1)
