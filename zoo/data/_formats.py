"""Image files by suffix, read alike by bring-your-own datasets and ``zoo predict``.

Each reader gives the file's array and the pixel size in Å that the file records: MRC's
voxel size, a TIFF's resolution tags (in centimetres, millimetres or micrometres, or in
ImageJ's ``unit``; inches are a print resolution and give none), and the last two axes'
scale and units of what rosettasciio reads (DM3/DM4, EMD, SER). PNG and NPY record none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "PIXEL_SIZE_TOLERANCE", "read_guarded", "read_image", "write_tiff"]

PIXEL_SIZE_TOLERANCE = 0.10  # relative pixel-size difference accepted against a reference

Reading = tuple[np.ndarray, float | None]  # (array, Å per pixel or None)

_ANGSTROMS = {  # length units as microscope software writes them, in Å
    "pm": 0.01,
    "å": 1.0,
    "a": 1.0,
    "angstrom": 1.0,
    "nm": 10.0,
    "µm": 1e4,  # micro sign
    "μm": 1e4,  # Greek mu
    "um": 1e4,
    "micron": 1e4,
    "\\u00b5m": 1e4,  # ImageJ's escaped micro sign
    "mm": 1e7,
    "cm": 1e8,
    "m": 1e10,
}
_TIFF_UNITS = {3: "cm", 4: "mm", 5: "µm"}  # ResolutionUnit; 1 (none) and 2 (inch) give none


def _angstroms(scale: float, unit: object) -> float | None:
    """``scale`` in ``unit`` as Å; None for a unit that is not a length or a scale <= 0."""
    factor = _ANGSTROMS.get(str(unit).strip().lower())
    return float(scale) * factor if factor is not None and scale > 0 else None


def _square(path: Path, x: float | None, y: float | None) -> float | None:
    """The pixel size of square pixels (or of the one axis known); non-square pixels
    (differing by more than 1 %) are a DataError."""
    if x is not None and y is not None and abs(y / x - 1) > 0.01:
        raise DataError(f"{path}: pixels of {x:.4g} × {y:.4g} Å are not square")
    return x if x is not None else y


def _numpy(path: Path) -> Reading:
    return np.load(path, allow_pickle=False), None


def _pillow(path: Path) -> Reading:
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("L", "1", "I", "I;16", "F"):
            return np.asarray(image if image.mode in ("L", "1") else image.convert("F")), None
        return _grey(path, np.asarray(image.convert("RGB")), image.mode), None


def _grey(path: Path, colour: np.ndarray, mode: str) -> np.ndarray:
    """The one channel of an (H, W, C) colour image whose channels are all equal (grey
    saved as colour); a DataError for a real colour image: averaging its channels
    would feed a model something it was never trained on, without a word."""
    if not (colour == colour[..., :1]).all():
        raise DataError(
            f"{path}: a colour image ({mode}, {colour.shape[-1]} channels that differ); "
            "expected one grey channel per image (a micrograph, not a preview or a figure)"
        )
    return colour[..., 0]


def tiff_pixel_size(path: Path, tiff: Any) -> float | None:
    """The pixel size an open ``tifffile.TiffFile`` of ``path`` records (see _tiff)."""
    page = tiff.pages[0]
    unit = (tiff.imagej_metadata or {}).get("unit") or _TIFF_UNITS.get(page.resolutionunit)
    x, y = (_angstroms(1 / r, unit) if r > 0 else None for r in page.resolution)
    return _square(path, x, y)


def _tiff(path: Path) -> Reading:
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        array = tiff.asarray()
        if page.samplesperpixel > 1 and array.ndim == 3 and array.shape[-1] == page.samplesperpixel:
            array = _grey(path, array, f"TIFF, {page.photometric.name}")
        return array, tiff_pixel_size(path, tiff)


def _mrc(path: Path) -> Reading:
    import mrcfile

    with mrcfile.open(path, mode="r") as mrc:
        size = mrc.voxel_size
        return np.array(mrc.data), _square(path, float(size.x) or None, float(size.y) or None)


def _rosettasciio(module: str, **options: object) -> Callable[[Path], Reading]:
    """A reader of the first signal rosettasciio's ``module`` finds in a file."""

    def read(path: Path) -> Reading:
        from importlib import import_module

        signals = import_module(f"rsciio.{module}").file_reader(str(path), **options)
        if not signals:
            raise DataError(f"{path}: no image in the file")
        data, axes = np.asarray(signals[0]["data"]), signals[0]["axes"]
        if data.ndim < 2:
            return data, None
        y, x = (_angstroms(a.get("scale", 0), a.get("units")) for a in axes[-2:])
        return data, _square(path, x, y)

    return read


_READERS: dict[str, Callable[[Path], Reading]] = {
    ".png": _pillow,
    ".tif": _tiff,
    ".tiff": _tiff,
    ".npy": _numpy,
    ".mrc": _mrc,
    ".dm3": _rosettasciio("digitalmicrograph"),
    ".dm4": _rosettasciio("digitalmicrograph"),
    ".emd": _rosettasciio("emd", select_type="image"),  # Velox: images only, no spectra
    ".ser": _rosettasciio("tia"),
}
IMAGE_SUFFIXES = tuple(_READERS)


def read_guarded(
    reader: Callable[[Path], tuple[np.ndarray, float | None]], path: Path
) -> tuple[np.ndarray, float | None]:
    """``reader(path)``; any failure but a DataError becomes one naming the file."""
    try:
        return reader(path)
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"{path}: unreadable image ({type(error).__name__}: {error})") from None


def read_image(path: Path) -> Reading:
    """The image (H, W) or stack (N, H, W) in ``path`` as float32, and the pixel size in Å
    the file records (None where it records none). An unknown suffix, an unreadable file,
    another rank or values that are not real numbers are a DataError naming the file."""
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported type; allowed: {', '.join(IMAGE_SUFFIXES)}")
    array, size = read_guarded(reader, path)
    if array.ndim not in (2, 3) or min(array.shape) == 0 or array.dtype.kind not in "biuf":
        raise DataError(
            f"{path}: shape {tuple(array.shape)} of {array.dtype}; expected a 2-D image "
            "(H, W) or a stack (N, H, W) of real numbers"
        )
    return array.astype(np.float32), size


def write_tiff(path: Path, array: np.ndarray, pixel_size_a: float | None) -> None:
    """``array`` as a TIFF whose resolution tags (per centimetre) record ``pixel_size_a``, as
    read_image reads it back; none recorded when None."""
    import tifffile

    if pixel_size_a is None:
        tifffile.imwrite(path, array)
    else:
        per_cm = _ANGSTROMS["cm"] / pixel_size_a
        tifffile.imwrite(path, array, resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")


def write_mrc(path: Path, array: np.ndarray, pixel_size_a: float | None) -> None:
    """``array`` (an image or a stack) as an MRC file whose voxel size records
    ``pixel_size_a``, as read_image reads it back; 0 (unknown) when None."""
    import mrcfile

    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(array, dtype=np.float32))
        mrc.voxel_size = pixel_size_a or 0.0
