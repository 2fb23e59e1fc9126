"""Applying a trained model to images in memory, any size, any task (re-exported by
zoo.predict).

:func:`apply` is the one in-memory entry point (``zoo predict`` and the MLflow model
both call it, through :func:`apply_all`): an image (C, H, W) in, float32 outputs
(K, H, W) out: class probabilities for segmentation (:func:`masks` gives the masks),
the model's output in the input's units for regression. Images larger than the tile
(the training size by default) are cut into overlapping tiles and blended
(zoo._tiles); each tile is scaled as training scaled its images
(``model.input_scaling``: per tile for ``per_image``, by the training split's channel
statistics for ``per_dataset``), and regression outputs are scaled back with the
reference channel's shift and scale. The model's pixel size comes from its resolved
config; an input whose pixel size differs by more than 10 % is refused unless
resampled (``rescale``) or forced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from zoo.data import PIXEL_SIZE_TOLERANCE
from zoo.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from zoo.config import ModelConfig, RunConfig
    from zoo.paths import ProjectPaths
    from zoo.store import Tracker

__all__ = [
    "Bundle",
    "PredictOptions",
    "apply",
    "apply_all",
    "bundle",
    "load_bundle",
    "masks",
    "resample_factor",
    "tiling",
]

FALLBACK_TILE = 256  # tile side when the training image size is not in the config
MAX_PIXELS = 2**30  # pixels per image (32768 x 32768) zoo predict takes by default


@dataclass(frozen=True)
class PredictOptions:
    pixel_size_a: float | None = None  # Å per pixel of the inputs; None: from the file, if any
    rescale: bool = False  # resample inputs to the model's pixel size
    force: bool = False  # predict despite a pixel-size mismatch, and into a non-empty out
    batch_size: int = 16  # tiles per forward pass (tiles of several images share one)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    tile: int | None = None  # tile side; None: the training image size
    overlap: int | None = None  # pixels neighbouring tiles share; None: half a tile
    tta: bool = False  # average the 8 flips and rotations of every tile
    max_pixels: int = MAX_PIXELS  # larger images (height x width) are refused


@dataclass(frozen=True)
class Bundle:
    """A model ready to apply: module (eval mode, on its device) and what applying it needs."""

    module: torch.nn.Module
    model: ModelConfig
    tile: int  # default tile side: the training image size
    pixel_size_a: float | None  # Å per pixel of the training images, when known
    stats: tuple[np.ndarray, np.ndarray] | None = None  # per_dataset: channel means, stds


def bundle(module: torch.nn.Module, config: RunConfig, paths: ProjectPaths | None = None) -> Bundle:
    """``module`` with what applying it needs from its resolved ``config``; a
    ``per_dataset`` model's channel statistics are those of its last stage's training
    dataset, made (or found) in project ``paths``, which such a model needs (an MLflow
    model never is one: zoo.modelzoo._pyfunc.predictable)."""
    from zoo.modelzoo._load import image_size, pixel_size_a

    stats = _dataset_stats(config, paths) if config.model.input_scaling == "per_dataset" else None
    tile = image_size(config) or FALLBACK_TILE
    return Bundle(module, config.model, tile, pixel_size_a(config), stats)


def load_bundle(ref: str, tracker: Tracker, device: str = "auto") -> Bundle:
    """The model ``ref`` names (see zoo.modelzoo.resolve_ref) as a Bundle on ``device``."""
    import torch

    from zoo.modelzoo._load import load

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load(ref, tracker, device)
    return bundle(loaded.module, loaded.config, tracker.paths)


def _dataset_stats(config: RunConfig, paths: ProjectPaths | None) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from zoo.run import load_datasets
    from zoo.train import dataset_stats

    if paths is None:
        raise ValueError("a per_dataset model's statistics need its project's paths")
    datasets = load_datasets(config, paths)
    mean, std = dataset_stats(datasets[config.stages[-1].train], config.model, torch.device("cpu"))
    return mean.numpy(), std.numpy()


def resample_factor(bundle: Bundle, given: float | None, options: PredictOptions) -> float:
    """The resampling factor for inputs of ``given`` Å per pixel (1 when either size is
    unknown, within PIXEL_SIZE_TOLERANCE, or forced); refuses a mismatch beyond it unless
    ``options.rescale``."""
    model = bundle.pixel_size_a
    if given is None or model is None:
        return 1.0
    difference = given / model - 1
    if abs(difference) <= PIXEL_SIZE_TOLERANCE or options.force:
        return 1.0
    if options.rescale:
        return given / model
    raise ConfigError(
        f"pixel size {given:.4g} Å differs from the model's {model:.4g} Å by "
        f"{difference:+.0%} (more than {PIXEL_SIZE_TOLERANCE:.0%}); use --rescale to resample "
        "or --force"
    )


def tiling(bundle: Bundle, options: PredictOptions) -> tuple[int, int]:
    """(tile, overlap) for ``options``; a tile the network cannot take (not a multiple of
    2**encoder_depth) or an overlap outside 0..tile-1 is a ConfigError."""
    tile = options.tile or bundle.tile
    step = 2**bundle.model.encoder_depth
    if tile < step or tile % step:
        raise ConfigError(
            f"--tile: {tile} is not allowed; expected a multiple of {step} "
            f"(2 to the model's encoder_depth {bundle.model.encoder_depth})"
        )
    overlap = tile // 2 if options.overlap is None else options.overlap
    if not 0 <= overlap < tile:
        raise ConfigError(f"--overlap: {overlap} is not allowed; expected 0 to {tile - 1}")
    return tile, overlap


def _runner(bundle: Bundle, tta: bool) -> Callable[[np.ndarray], np.ndarray]:
    """Tiles (B, C, T, T) -> outputs (B, K, T, T): scaled as in training (kept in the
    dtype training keeps them in), through the model (the 8 dihedral transforms
    averaged when ``tta``), as probabilities or as regression outputs scaled back."""
    import torch

    from zoo.losses import apply_head
    from zoo.train import DIHEDRAL, STORAGE, dihedral, scaling

    model, module = bundle.model, bundle.module
    device = next(module.parameters()).device
    stats = None
    if bundle.stats is not None:
        stats = tuple(torch.from_numpy(s).to(device) for s in bundle.stats)
    stored = model.input_scaling in ("per_image", "per_dataset")
    reference = model.reference_channel

    def run(tiles: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(tiles).to(device)
        shift, scale = scaling(x, model.input_scaling, stats)
        x = (x - shift) / scale
        x = x.to(STORAGE).float() if stored else x
        total = torch.zeros((), device=device)
        transforms = range(DIHEDRAL) if tta else range(1)
        with torch.inference_mode():
            for k in transforms:
                y = module(dihedral(x, k)).float()
                y = y.softmax(dim=1) if model.task == "segmentation" else apply_head(y, model.head)
                y = torch.flip(y, dims=(-1,)) if k >= 4 else y
                total = total + torch.rot90(y, -(k % 4), dims=(-2, -1))
        y = total / len(transforms)
        if model.task == "regression":
            y = y * _channel(scale, reference) + _channel(shift, reference)
        return y.cpu().numpy()

    return run


def _channel(value: torch.Tensor, channel: int) -> torch.Tensor:
    """The reference channel's shift or scale: a scalar, or (B|1, 1, 1, 1)."""
    return value if value.dim() == 0 else value[:, channel : channel + 1]


def _pad(image: np.ndarray, tile: int) -> np.ndarray:
    """``image`` (C, H, W) reflected out to ``tile`` where it is smaller."""
    pad = [(0, 0), (0, max(tile - image.shape[1], 0)), (0, max(tile - image.shape[2], 0))]
    return np.pad(np.asarray(image, dtype=np.float32), pad, mode="reflect")


def apply_all(
    bundle: Bundle,
    images: Sequence[Any],
    outs: Sequence[Any],
    options: PredictOptions = PredictOptions(),
    progress: Callable[[int], None] | None = None,
) -> None:
    """Apply the model to each image (C, H, W) of ``images`` (arrays or memory maps) and
    write its outputs (K, H, W) into the zeroed ``outs`` (arrays or memory maps); tiles
    of all images share batches. Images are resampled by ``resample_factor`` (for
    ``options.pixel_size_a``) and their outputs back. Memory follows the tile and batch
    sizes, except for an image smaller than the tile or resampled (held in memory)."""
    from scipy import ndimage

    from zoo._tiles import Job, blend

    tile, overlap = tiling(bundle, options)
    factor = resample_factor(bundle, options.pixel_size_a, options)
    jobs, finish = [], []
    for image, out in zip(images, outs, strict=True):
        height, width = image.shape[-2:]
        if factor == 1.0 and min(height, width) >= tile:
            jobs.append(Job(image, out))
            continue
        source = np.asarray(image, dtype=np.float32)
        if factor != 1.0:
            source = ndimage.zoom(source, (1, factor, factor), order=1)
        size = source.shape[-2:]
        source = _pad(source, tile)
        jobs.append(Job(source, np.zeros((len(out), *source.shape[-2:]), np.float32)))
        finish.append((jobs[-1].out, size, out))
    blend(_runner(bundle, options.tta), jobs, tile, overlap, options.batch_size, progress)
    for result, (height, width), out in finish:
        result = result[:, :height, :width]
        if result.shape[-2:] != out.shape[-2:]:
            zoom = (1, out.shape[-2] / height, out.shape[-1] / width)
            result = ndimage.zoom(result, zoom, order=1)
        out[...] = result


def apply(
    bundle: Bundle, image: np.ndarray, options: PredictOptions = PredictOptions()
) -> np.ndarray:
    """The model's float32 outputs (K, H, W) for ``image`` (C, H, W), or (H, W) for a
    one-channel model: class probabilities (segmentation; see :func:`masks`) or the
    regression output in the input's units; what ``zoo predict`` writes for it. A wrong
    channel count is a ConfigError."""
    channels = bundle.model.in_channels
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2 and channels == 1:
        image = image[None]
    if image.ndim != 3 or image.shape[0] != channels:
        raise ConfigError(
            f"image of shape {image.shape}: expected ({channels}, H, W) for the model's "
            f"inputs ({', '.join(bundle.model.inputs)})"
        )
    out = np.zeros((bundle.model.classes, *image.shape[-2:]), np.float32)
    apply_all(bundle, [image], [out], options)
    return out


def masks(probabilities: np.ndarray) -> np.ndarray:
    """Masks (uint8 class indices) of class probabilities (..., K, H, W)."""
    return probabilities.argmax(axis=-3).astype(np.uint8)
