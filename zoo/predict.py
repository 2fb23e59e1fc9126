"""``zoo predict``: a trained model applied to image files, any size, any task.

Every file is checked before anything is written (format, channels, size, pixel size).
NPY, MRC and uncompressed TIFF inputs are read memory-mapped, and outputs are written
memory-mapped (float32 ``.npy`` for NPY inputs, else ``.tif`` recording the input's
pixel size): memory follows the tile and batch sizes, not the image. Segmentation
writes class probabilities beside masks in the input's format family and an overlay
PNG; regression writes its output with the input's shape. Small files share batches.
The in-memory function both this and the MLflow model call is :func:`apply`
(zoo._apply).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoo._apply import (
    Bundle,
    PredictOptions,
    apply,
    apply_all,
    bundle,
    load_bundle,
    masks,
    resample_factor,
    tiling,
)
from zoo._inputs import input_files
from zoo.data import IMAGE_SUFFIXES, read_image
from zoo.data._formats import read_guarded
from zoo.errors import ConfigError, DataError

if TYPE_CHECKING:
    from zoo.store import Tracker

__all__ = [
    "Bundle",
    "PredictOptions",
    "apply",
    "apply_all",
    "bundle",
    "input_files",
    "load_bundle",
    "masks",
    "predict",
]

OVERLAY_SIDE = 2048  # overlays are subsampled to at most this many pixels a side
BAND_PIXELS = 2**20  # pixels of masks computed at a time (whole rows, at least one)
PLAIN_EVERY_S = 10.0  # seconds between plain progress lines when not on a terminal


@dataclass(frozen=True)
class Opened:
    """One input file: its array as stored ((H, W), (N|C, H, W) or (N, C, H, W); an array
    or a read-only memory map) and the pixel size it records."""

    path: Path
    array: Any  # None once dropped (see _File.release)
    pixel_size_a: float | None
    shape: tuple[int, ...]


def _container(path: Path) -> tuple[np.ndarray, float | None]:
    """The ``images`` (or ``inputs``) of an NPZ or HDF5 file and the pixel size it records."""
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            key = next((k for k in ("images", "inputs") if k in archive), None)
            if key is None:
                raise DataError(f"{path}: no 'images' array (has {', '.join(archive.files)})")
            size = float(archive["pixel_size_A"]) if "pixel_size_A" in archive else None
            return archive[key], size if size == size else None
    import h5py

    with h5py.File(path, "r") as handle:
        key = next((k for k in ("images", "inputs") if k in handle), None)
        if key is None:
            raise DataError(f"{path}: no 'images' dataset (has {', '.join(handle)})")
        size = handle[key].attrs.get("pixel_size_a", handle.attrs.get("pixel_size_a"))
        return handle[key][()], None if size is None else float(size)


def _mrc(path: Path) -> tuple[np.ndarray, float | None]:
    """An MRC file's data memory-mapped (read-only) and its voxel size."""
    import mrcfile
    from mrcfile.utils import data_dtype_from_header, data_shape_from_header

    from zoo.data._formats import _square

    with mrcfile.open(path, mode="r", header_only=True) as mrc:
        header, size = mrc.header, mrc.voxel_size
        dtype, shape = data_dtype_from_header(header), data_shape_from_header(header)
        offset = header.nbytes + int(header.nsymbt)
    array = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return array, _square(path, float(size.x) or None, float(size.y) or None)


def _tiff(path: Path) -> tuple[np.ndarray, float | None]:
    """An uncompressed grey TIFF memory-mapped; any other TIFF read as read_image reads it."""
    import tifffile

    from zoo.data._formats import tiff_pixel_size

    with tifffile.TiffFile(path) as tiff:
        size = tiff_pixel_size(path, tiff)
        mappable = tiff.pages[0].samplesperpixel == 1 and tiff.series[0].dataoffset is not None
    return (tifffile.memmap(path, mode="r"), size) if mappable else read_image(path)


def _open(path: Path) -> Opened:
    """The array in ``path`` (memory-mapped where its format allows) as stored, checked
    for a rank the format allows and real numbers."""
    suffix = path.suffix.lower()
    readers = {".npy": lambda p: (np.load(p, mmap_mode="r"), None), ".mrc": _mrc}
    reader = readers.get(suffix, _tiff if suffix in (".tif", ".tiff") else None)
    if reader is None:
        reader = read_image if suffix in IMAGE_SUFFIXES else _container
    array, size = read_guarded(reader, path)
    ranks = (2, 3) if suffix in IMAGE_SUFFIXES and suffix != ".npy" else (2, 3, 4)
    if array.ndim not in ranks or min(array.shape) == 0 or array.dtype.kind not in "biuf":
        raise DataError(
            f"{path}: shape {tuple(array.shape)} of {array.dtype}; expected a 2-D image "
            "(H, W) or a stack (N, H, W) of real numbers"
            + (", or (C, H, W) / (N, C, H, W) for models of C channels" if 4 in ranks else "")
        )
    return Opened(path, array, size, tuple(array.shape))


def _layout(item: Opened, bundle: Bundle) -> tuple[tuple[int, ...], bool]:
    """(the shape (N, C, H, W) the file's images take, whether the file holds a stack);
    a layout that does not give the model's channels is a DataError."""
    shape, channels = item.shape, bundle.model.in_channels
    names = ", ".join(bundle.model.inputs)
    if channels == 1:
        if len(shape) == 2:
            return (1, 1, *shape), False
        if len(shape) == 3 or shape[1] == 1:
            return (shape[0], 1, *shape[-2:]), True
        raise DataError(
            f"{item.path}: shape {shape}; expected a 2-D image (H, W) or a stack (N, H, W) "
            f"for the model's one input channel ({names})"
        )
    if len(shape) == 3 and shape[0] == channels:
        return (1, *shape), False
    if len(shape) == 4 and shape[1] == channels:
        return shape, True
    raise DataError(
        f"{item.path}: shape {shape} is not {channels} stacked channels; the model takes "
        f"{channels} ({names}): expected ({channels}, H, W) or a stack (N, {channels}, H, W)"
    )


def _checked(item: Opened, bundle: Bundle, options: PredictOptions) -> PredictOptions:
    """The options for one file (its pixel size filled in) once its channels, size and
    pixel size are found fit; else a one-line error naming the file."""
    height, width = _layout(item, bundle)[0][-2:]
    if height * width > options.max_pixels:
        raise DataError(
            f"{item.path}: {height} x {width} = {height * width} pixels per image is more "
            f"than --max-pixels {options.max_pixels}; crop or bin it, or raise --max-pixels"
        )
    given = replace(options, pixel_size_a=options.pixel_size_a or item.pixel_size_a)
    try:
        resample_factor(bundle, given.pixel_size_a, given)
    except ConfigError as error:
        raise ConfigError(f"{item.path}: {error}") from None
    return given


def _new_array(path: Path, shape: tuple[int, ...], dtype: Any, pixel_size_a: float | None):
    """A zero-filled memory-mapped ``.npy``, or ``.tif``/``.tiff`` recording
    ``pixel_size_a`` (as read_image reads it back)."""
    if path.suffix == ".npy":
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    import tifffile

    per_cm = {} if pixel_size_a is None else {"resolution": (1e8 / pixel_size_a,) * 2}
    unit = {"resolutionunit": "CENTIMETER"} if per_cm else {}
    return tifffile.memmap(path, shape=shape, dtype=dtype, **per_cm, **unit)


@dataclass(frozen=True)
class _Shape:
    """What a released file's images are known by until they are read again."""

    shape: tuple[int, ...]

    def __len__(self) -> int:
        return self.shape[0]


@dataclass
class _File:
    """One input file on its way: its images (N, C, H, W), options, and outputs."""

    item: Opened  # its array dropped between the checks and its turn (release)
    frames: Any
    stack: bool
    options: PredictOptions
    stem: str
    outputs: Any = None  # the float32 outputs, memory-mapped, the input's shape
    target: Path | None = None
    squeeze: bool = False  # outputs hold one channel, without its axis

    def views(self) -> list[Any]:
        """One (K, H, W) view of ``outputs`` per image."""
        full = self.outputs if self.stack else self.outputs[None]
        return [image[None] if self.squeeze else image for image in full]

    def release(self) -> None:
        """Drop the file's images and outputs (arrays, memory maps and their open files)."""
        self.item, self.frames = replace(self.item, array=None), _Shape(self.frames.shape)
        self.outputs = None

    def reopen(self) -> None:
        """Read (or map) the file's images again, as (N, C, H, W) views."""
        self.item = _open(self.item.path)
        self.frames = self.item.array.reshape(self.frames.shape)

    def tiles(self, model: Bundle) -> int:
        """Tiles of all its images."""
        from zoo._tiles import starts

        tile, overlap = tiling(model, self.options)
        factor = resample_factor(model, self.options.pixel_size_a, self.options)
        height, width = (max(round(n * factor), tile) for n in self.frames.shape[-2:])
        rows, columns = starts(height, tile, overlap), starts(width, tile, overlap)
        return len(self.frames) * len(rows) * len(columns)


def _allocate(file: _File, out: Path, bundle: Bundle) -> list[Any]:
    """Create a file's float32 outputs (probabilities or regression output) and return a
    (K, H, W) view of them per image."""
    model = bundle.model
    file.squeeze = squeeze = model.task == "regression" and model.classes == 1
    n, _, height, width = file.frames.shape
    shape = (*((n,) if file.stack else ()), *(() if squeeze else (model.classes,)), height, width)
    kind = "probabilities" if model.task == "segmentation" else "output"
    suffix = ".npy" if file.item.path.suffix.lower() == ".npy" else ".tif"
    file.target = out / f"{file.stem}_{kind}{suffix}"
    file.outputs = _new_array(file.target, shape, np.float32, file.options.pixel_size_a)
    return file.views()


def _write_masks(file: _File, out: Path) -> Path:
    """Masks (0/1 or class indices, uint8) in the input's format family: PNG (0/255) per
    image, NPY and TIFF memory-mapped (band by band), NPZ and HDF5 as one array; a TIFF
    recording the pixel size for TIFF and microscope formats (MRC, DM, ...)."""
    suffix, stem = file.item.path.suffix.lower(), file.stem
    probabilities = file.views()
    if suffix in (".png", ".npz", ".h5", ".hdf5"):
        return _write_small_masks(file, np.stack([masks(p) for p in probabilities]), out)
    suffix = suffix if suffix in (".npy", ".tiff") else ".tif"
    target = out / f"{stem}_mask{suffix}"
    height, width = file.frames.shape[-2:]
    shape = (len(probabilities), height, width) if file.stack else (height, width)
    written = _new_array(target, shape, np.uint8, file.options.pixel_size_a)
    for i, image in enumerate(probabilities):
        mask = written[i] if file.stack else written
        rows = max(1, BAND_PIXELS // width)
        for top in range(0, height, rows):
            mask[top : top + rows] = masks(image[:, top : top + rows])
    written.flush()
    return target


def _write_small_masks(file: _File, found: np.ndarray, out: Path) -> Path:
    """PNG (0/255, one per image), NPZ (``masks``) or HDF5 (``masks``) masks, in memory."""
    stem = file.stem
    if file.item.path.suffix.lower() == ".png":
        from PIL import Image

        several = len(found) > 1
        names = [
            f"{stem}_{i}_mask.png" if several else f"{stem}_mask.png" for i in range(len(found))
        ]
        for name, mask in zip(names, found, strict=True):
            Image.fromarray((mask > 0).astype(np.uint8) * 255).save(out / name)
        return out / names[0]
    if file.item.path.suffix.lower() == ".npz":
        np.savez_compressed(out / f"{stem}_mask.npz", masks=found)
        return out / f"{stem}_mask.npz"
    import h5py

    target = out / f"{stem}_mask{file.item.path.suffix.lower()}"
    with h5py.File(target, "w") as handle:
        handle.create_dataset("masks", data=found, compression="gzip")
    return target


def _overlays(file: _File, out: Path) -> list[Path]:
    """An overlay PNG per image: the first input channel in grey, the foreground in red;
    subsampled to at most OVERLAY_SIDE pixels a side."""
    from PIL import Image

    step = max(1, -(-max(file.frames.shape[-2:]) // OVERLAY_SIDE))
    paths = []
    for i, (image, probabilities) in enumerate(zip(file.frames, file.views(), strict=True)):
        grey = np.asarray(image[0, ::step, ::step], dtype=np.float32)
        mask = masks(np.asarray(probabilities[:, ::step, ::step]))
        low, high = np.percentile(grey, [1, 99])
        rgb = np.repeat(np.clip((grey - low) / max(high - low, 1e-8), 0, 1)[..., None], 3, axis=2)
        rgb[mask > 0] = 0.55 * rgb[mask > 0] + 0.45 * np.array([1.0, 0.15, 0.1])
        name = (
            f"{file.stem}_{i}_overlay.png" if len(file.frames) > 1 else f"{file.stem}_overlay.png"
        )
        Image.fromarray((rgb * 255).astype(np.uint8)).save(out / name)
        paths.append(out / name)
    return paths


class _Progress:
    """Tiles done of one group of files: a tqdm line on a terminal, else a plain line on
    stderr every PLAIN_EVERY_S seconds (none for a group done sooner)."""

    def __init__(self, label: str, total: int):
        from tqdm import tqdm

        self.label, self.total, self.done = label, total, 0
        self.started = self.said = time.monotonic()
        self.bar = tqdm(total=total, unit="tile", desc=label, leave=False) if _terminal() else None

    def __call__(self, tiles: int) -> None:
        self.done += tiles
        if self.bar is not None:
            self.bar.update(tiles)
        elif time.monotonic() - self.said >= PLAIN_EVERY_S:
            self.said = time.monotonic()
            elapsed = self.said - self.started
            print(
                f"{self.label}: {self.done} of {self.total} tiles, {elapsed:.0f} s", file=sys.stderr
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _terminal() -> bool:
    return sys.stderr.isatty()


def _note(file: _File, factor: float, model_size: float | None) -> str:
    """What a file's line adds: resampling, and a pixel size assumed (none read or given)."""
    note = f" (resampled ×{factor:.3g})" if factor != 1.0 else ""
    if model_size is not None and file.options.pixel_size_a is None:
        note += (
            f" (warning: {file.item.path.name} records no pixel size: assumed the model's "
            f"{model_size:.4g} Å; give --pixel-size if it differs)"
        )
    return note


def _prepare(
    ref: str, inputs: list[Path], out: Path, tracker: Tracker, options: PredictOptions
) -> tuple[Bundle, list[_File]]:
    """The model and every input file, checked: any bad input or option fails here,
    before anything is written."""
    from zoo.paths import check_out_folder

    check_out_folder(out, options.force)
    opened = [replace(_open(path), array=None) for path in input_files(inputs)]
    model = load_bundle(ref, tracker, options.device)
    tiling(model, options)
    stems = [item.path.stem for item in opened]
    files = []
    for item in opened:
        stem = item.path.stem
        if stems.count(stem) > 1:  # big.npy and big.tif: big_npy_*, big_tif_*
            stem = f"{stem}_{item.path.suffix[1:].lower()}"
        shape, stack = _layout(item, model)
        files.append(_File(item, _Shape(shape), stack, _checked(item, model, options), stem))
    return model, files


def _groups(files: list[_File], model: Bundle) -> list[list[_File]]:
    """Consecutive files whose tiles fit one batch share a group (one forward pass)."""
    groups: list[list[_File]] = []
    count = 0
    for file in files:
        tiles = file.tiles(model)
        if not groups or count + tiles > file.options.batch_size:
            groups.append([])
            count = 0
        groups[-1].append(file)
        count += tiles
    return groups


def predict(
    ref: str, inputs: list[Path], out: Path, tracker: Tracker, options: PredictOptions
) -> Iterator[str]:
    """Apply model ``ref`` to every image of ``inputs`` (files or folders) into ``out``;
    yields one line per input file as it is done (saying so where a file's pixel size was
    assumed: it records none). Bad inputs fail before any output; an ``out`` that holds
    anything is one unless ``options.force``."""
    model, files = _prepare(ref, inputs, out, tracker, options)
    out.mkdir(parents=True, exist_ok=True)
    for group in _groups(files, model):
        by_options: dict[PredictOptions, list[tuple[Any, Any]]] = {}
        for file in group:
            file.reopen()
            views = _allocate(file, out, model)
            by_options.setdefault(file.options, []).extend(zip(file.frames, views, strict=True))
        total = sum(f.tiles(model) for f in group)
        label = group[0].item.path.name + (f" (+{len(group) - 1} files)" if len(group) > 1 else "")
        progress = _Progress(label, total)
        for given, pairs in by_options.items():
            apply_all(model, [p[0] for p in pairs], [p[1] for p in pairs], given, progress)
        progress.close()
        for file in group:
            yield _finish(file, out, model)
            file.release()


def _finish(file: _File, out: Path, model: Bundle) -> str:
    """Write what follows from a file's outputs (masks, overlays); its line."""
    file.outputs.flush()
    factor = resample_factor(model, file.options.pixel_size_a, file.options)
    note = _note(file, factor, model.pixel_size_a)
    if model.model.task == "regression":
        return f"{file.item.path} -> {file.target}{note}"
    target = _write_masks(file, out)
    overlays = _overlays(file, out)
    return f"{file.item.path} -> {target}, {overlays[0]}, {file.target}{note}"
