"""Applying a trained model to one's own micrographs, any size.

Images larger than the training images are cut into tiles of the training size
overlapping by half a tile; each tile is standardised on its own (mean 0, std 1,
exactly as training images are) and the class probabilities of overlapping tiles
are blended with weights falling towards tile edges. The model's pixel size
comes from its resolved config; an input whose pixel size differs by more than
10 % is refused unless resampled (``rescale``) or forced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoo.data import IMAGE_SUFFIXES, PIXEL_SIZE_TOLERANCE, read_image, write_tiff
from zoo.data._formats import read_guarded
from zoo.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

    from zoo.tracking import Tracker

__all__ = ["Micrographs", "PredictOptions", "blend_weights", "predict", "read_input", "segment"]

SUFFIXES = (*IMAGE_SUFFIXES, ".npz", ".h5", ".hdf5")
FALLBACK_TILE = 256  # tile side when the training image size is not in the config


@dataclass(frozen=True)
class PredictOptions:
    pixel_size_a: float | None = None  # Å per pixel of the inputs; None: from the file, if any
    rescale: bool = False  # resample inputs to the model's pixel size
    force: bool = False  # predict despite a pixel-size mismatch, and into a non-empty out
    batch_size: int = 16  # tiles per forward pass
    device: str = "auto"  # auto, cpu, cuda, cuda:N


@dataclass(frozen=True)
class Micrographs:
    """The images of one input file."""

    path: Path
    images: np.ndarray  # (N, H, W) float32
    pixel_size_a: float | None  # as recorded in the file, if it records one


def _container(path: Path) -> tuple[np.ndarray, float | None]:
    """The ``images`` of an NPZ or HDF5 file and the pixel size it records."""
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive:
                raise DataError(f"{path}: no 'images' array (has {', '.join(archive.files)})")
            size = float(archive["pixel_size_A"]) if "pixel_size_A" in archive else None
            return archive["images"], size if size == size else None
    import h5py

    with h5py.File(path, "r") as handle:
        if "images" not in handle:
            raise DataError(f"{path}: no 'images' dataset (has {', '.join(handle)})")
        size = handle["images"].attrs.get("pixel_size_a", handle.attrs.get("pixel_size_a"))
        return handle["images"][()], None if size is None else float(size)


def read_input(path: Path) -> Micrographs:
    """The images in one file, with the pixel size it records: an image or a stack (N, H, W)
    in any format zoo.data reads (``IMAGE_SUFFIXES``), or ``images`` of an NPZ or HDF5 file."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        array, size = read_image(path)
    else:
        array, size = read_guarded(_container, path)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or min(array.shape) == 0 or not np.issubdtype(array.dtype, np.number):
        raise DataError(
            f"{path}: expected a 2-D image or a stack (N, H, W) of numbers; got shape "
            f"{tuple(array.shape)} of {array.dtype}"
        )
    return Micrographs(path, array.astype(np.float32), size)


def input_files(inputs: list[Path]) -> list[Path]:
    """Files named, plus the image files of folders named; an empty folder is an error."""
    files = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in SUFFIXES)
            if not found:
                raise DataError(f"{item}: no {'/'.join(SUFFIXES)} files")
            files += found
        elif not item.exists():
            raise DataError(f"{item}: no such file or folder")
        elif item.suffix.lower() not in SUFFIXES:
            raise DataError(f"{item}: unsupported type; allowed: {', '.join(SUFFIXES)}")
        else:
            files.append(item)
    return files


def _positions(length: int, tile: int) -> list[int]:
    """Tile starts covering ``length``, a half tile apart (the last one flush with the end)."""
    if length <= tile:
        return [0]
    stride = max(tile // 2, 1)
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def blend_weights(tile: int) -> np.ndarray:
    """(tile, tile) weights: 1 in the middle half, falling linearly to near 0 at the edges."""
    ramp = np.minimum(np.arange(tile) + 0.5, tile - np.arange(tile) - 0.5) / (tile / 4)
    edge = np.clip(ramp, 1e-3, 1.0)
    return np.outer(edge, edge).astype(np.float32)


def segment(
    module: torch.nn.Module,
    image: np.ndarray,
    tile: int,
    batch_size: int = 16,
    progress: Any = None,
) -> np.ndarray:
    """Class probabilities (C, H, W) of one image, tiled and blended; ``progress`` (a tqdm
    bar) is advanced by the tiles done."""
    import torch

    from zoo.train import standardise

    device = next(module.parameters()).device
    height, width = image.shape
    pad = ((0, max(tile - height, 0)), (0, max(tile - width, 0)))
    padded = np.pad(image, pad, mode="reflect") if any(p[1] for p in pad) else image
    full_h, full_w = padded.shape
    corners = [(y, x) for y in _positions(full_h, tile) for x in _positions(full_w, tile)]
    weights = torch.from_numpy(blend_weights(tile)).to(device)
    total: torch.Tensor | None = None
    norm = torch.zeros((full_h, full_w), device=device)
    source = torch.from_numpy(np.ascontiguousarray(padded)).to(device)
    with torch.inference_mode():
        for start in range(0, len(corners), batch_size):
            batch = corners[start : start + batch_size]
            x = torch.stack([source[y : y + tile, x : x + tile] for y, x in batch])[:, None]
            probabilities = module(standardise(x)).float().softmax(dim=1)
            if total is None:
                total = torch.zeros((probabilities.shape[1], full_h, full_w), device=device)
            for (y, x), p in zip(batch, probabilities, strict=True):
                total[:, y : y + tile, x : x + tile] += p * weights
                norm[y : y + tile, x : x + tile] += weights
            if progress is not None:
                progress.update(len(batch))
    assert total is not None
    return (total / norm)[:, :height, :width].cpu().numpy()


def _assumed_size(item: Micrographs, options: PredictOptions, model: float | None) -> str:
    """What a file's line says when its pixel size was assumed, not read or given."""
    if model is None or options.pixel_size_a or item.pixel_size_a:
        return ""
    return (
        f" (warning: {item.path.name} records no pixel size: assumed the model's "
        f"{model:.4g} Å; give --pixel-size if it differs)"
    )


def _check_pixel_size(
    path: Path, given: float | None, model: float | None, options: PredictOptions
) -> float:
    """The resampling factor for one input; refuses a mismatch beyond PIXEL_SIZE_TOLERANCE."""
    if given is None or model is None:
        return 1.0
    difference = given / model - 1
    if abs(difference) <= PIXEL_SIZE_TOLERANCE or options.force:
        return 1.0
    if options.rescale:
        return given / model
    raise ConfigError(
        f"{path}: pixel size {given:.4g} Å differs from the model's {model:.4g} Å by "
        f"{difference:+.0%} (more than {PIXEL_SIZE_TOLERANCE:.0%}); use --rescale to resample "
        "or --force"
    )


def _overlay(image: np.ndarray, mask: np.ndarray, path: Path) -> None:
    from PIL import Image

    low, high = np.percentile(image, [1, 99])
    gray = np.clip((image - low) / max(high - low, 1e-8), 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[mask > 0] = 0.55 * rgb[mask > 0] + 0.45 * np.array([1.0, 0.15, 0.1])
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)


def _write_masks(item: Micrographs, masks: np.ndarray, out: Path, stem: str) -> Path:
    """Masks (0/1, uint8) in the input's format family: PNG (0/255) per image, else one file;
    a TIFF recording the input's pixel size for TIFF and microscope formats (MRC, DM, ...)."""
    suffix = item.path.suffix.lower()
    if suffix == ".png":
        from PIL import Image

        names = (
            [f"{stem}_mask.png"]
            if len(masks) == 1
            else [f"{stem}_{i}_mask.png" for i in range(len(masks))]
        )
        for name, mask in zip(names, masks, strict=True):
            Image.fromarray(mask * 255).save(out / name)
        return out / names[0]
    if suffix not in (".tiff", ".npy", ".npz", ".h5", ".hdf5"):
        suffix = ".tif"
    target = out / f"{stem}_mask{suffix}"
    if suffix in (".tif", ".tiff"):
        write_tiff(target, masks[0] if len(masks) == 1 else masks, item.pixel_size_a)
    elif suffix == ".npy":
        np.save(target, masks[0] if len(masks) == 1 else masks)
    elif suffix == ".npz":
        np.savez_compressed(target, masks=masks)
    else:
        import h5py

        with h5py.File(target, "w") as handle:
            handle.create_dataset("masks", data=masks, compression="gzip")
    return target


def _resample(image: np.ndarray, factor: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.zoom(image, factor, order=1) if factor != 1.0 else image


def _predict_file(
    item: Micrographs, module: Any, tile: int, factor: float, options: PredictOptions, bar: Any
) -> np.ndarray:
    from scipy import ndimage

    masks = []
    for image in item.images:
        probabilities = segment(module, _resample(image, factor), tile, options.batch_size, bar)
        mask = probabilities.argmax(axis=0).astype(np.uint8)
        if mask.shape != image.shape:
            zoom = (image.shape[0] / mask.shape[0], image.shape[1] / mask.shape[1])
            mask = ndimage.zoom(mask, zoom, order=0)
        masks.append(mask)
    return np.stack(masks)


def predict(
    ref: str, inputs: list[Path], out: Path, tracker: Tracker, options: PredictOptions
) -> list[str]:
    """Segment every image of ``inputs`` with model ``ref``; writes masks and overlay PNGs
    into ``out`` and returns one line per input file (saying so where a file's pixel size
    was assumed: it records none). Bad inputs fail before any output;
    an ``out`` that holds anything is one unless ``options.force``."""
    import torch
    from tqdm import tqdm

    from zoo.modelzoo import image_size, load, pixel_size_a
    from zoo.paths import check_out_folder

    check_out_folder(out, options.force)
    items = [read_input(path) for path in input_files(inputs)]
    device = options.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load(ref, tracker, device)
    model = loaded.config.model
    if (model.task, model.inputs, model.input_scaling) != ("segmentation", ("image",), "per_image"):
        raise ConfigError(
            f"{ref}: a {model.task} model of inputs {list(model.inputs)} scaled "
            f"{model.input_scaling!r}; zoo predict takes segmentation models of one grey "
            "image standardised per image"
        )
    model_size, tile = pixel_size_a(loaded.config), image_size(loaded.config) or FALLBACK_TILE
    factors = [
        _check_pixel_size(i.path, options.pixel_size_a or i.pixel_size_a, model_size, options)
        for i in items
    ]
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    tiles = sum(
        len(i.images)
        * len(_positions(max(round(i.images.shape[1] * f), tile), tile))
        * len(_positions(max(round(i.images.shape[2] * f), tile), tile))
        for i, f in zip(items, factors, strict=True)
    )
    stems = [i.path.stem for i in items]
    with tqdm(total=tiles, unit="tile", desc="predict", disable=None) as bar:
        for item, factor in zip(items, factors, strict=True):
            stem = item.path.stem
            if stems.count(stem) > 1:  # big.npy and big.tif: big_npy_*, big_tif_*
                stem = f"{stem}_{item.path.suffix[1:].lower()}"
            masks = _predict_file(item, loaded.module, tile, factor, options, bar)
            target = _write_masks(item, masks, out, stem)
            overlays = []
            for i, (image, mask) in enumerate(zip(item.images, masks, strict=True)):
                name = f"{stem}_overlay.png" if len(masks) == 1 else f"{stem}_{i}_overlay.png"
                _overlay(image, mask, out / name)
                overlays.append(out / name)
            note = f" (resampled ×{factor:.3g})" if factor != 1.0 else ""
            note += _assumed_size(item, options, model_size)
            lines.append(f"{item.path} -> {target}, {overlays[0]}{note}")
    return lines
