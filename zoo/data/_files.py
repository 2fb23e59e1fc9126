"""Bring-your-own data: a folder or an HDF5 file of images and masks (segmentation) or of
inputs and image targets (regression, several channels as stacked arrays); or images
without labels (target ``none``), which only a refinement's ``unlabeled:`` set may be."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo._typed import check, to_dict
from zoo.data._formats import IMAGE_SUFFIXES, PIXEL_SIZE_TOLERANCE, read_image
from zoo.errors import DataError
from zoo.paths import ProjectPaths

__all__ = ["FileSpec", "content_digest", "file_hash", "file_target", "read_files", "save_hashes"]

HDF5_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class FileSpec:
    """A dataset read from disk: a folder with ``images/`` and ``masks/`` (segmentation) or
    ``inputs/`` and ``targets/`` (regression; files matched by name, each an (H, W) or a
    stacked (C, H, W) array), or an HDF5 file with datasets ``images`` and ``masks`` or
    ``inputs`` and ``targets`` ((N, H, W) or (N, C, H, W)). Unlabeled: a folder with
    ``images/`` alone or with image files directly in it, an HDF5 file with ``images``
    alone, or one image stack file (N, H, W). A zoo.data.DatasetSource: stored,
    identified by its files' contents once read (content_digest)."""

    stored: ClassVar[bool] = True
    streamed: ClassVar[bool] = False

    path: str  # folder, .h5/.hdf5 file or image stack, relative to the project root or absolute
    val_fraction: float = 0.2  # trailing fraction (in file-name order) held out for validation
    pixel_size_a: float | None = None  # Å per pixel, when known
    channels: tuple[str, ...] = ("image",)  # names of the input channels, in stacked order

    def validate(self, where: str) -> None:
        check(
            0 <= self.val_fraction < 1, f"{where}.val_fraction", self.val_fraction, "0 <= value < 1"
        )
        check(
            len(self.channels) >= 1 and len(set(self.channels)) == len(self.channels),
            f"{where}.channels",
            list(self.channels),
            "distinct channel names (at least one)",
        )
        check(
            self.pixel_size_a is None or self.pixel_size_a > 0,
            f"{where}.pixel_size_a",
            self.pixel_size_a,
            "a value > 0 or null",
        )

    def resolved(self) -> dict[str, Any]:
        """Every parameter, JSON-ready; ``channels`` only when not the default, so
        identities made before it existed stay valid."""
        document = to_dict(self)
        return {k: v for k, v in document.items() if k != "channels" or v != ["image"]}

    def parts(self) -> tuple[str, ...]:
        return ()

    def files(self) -> tuple[str, ...]:
        return (self.path,)

    def digest(self) -> None:
        """None: the identity is the files' contents (content_digest), known once read."""
        return None


def _binary(name: str, mask: np.ndarray) -> np.ndarray:
    """The mask as 0/1 uint8; 0/255 masks are accepted, anything else is an error."""
    values = np.unique(mask)
    if not np.isin(values, [0, 1]).all():
        if np.isin(values, [0, 255]).all():
            return (mask > 0).astype(np.uint8)
        raise DataError(f"{name}: mask is not binary (values {values[:5].tolist()}...)")
    return mask.astype(np.uint8)


def _one_channel(path: Path, spec: FileSpec) -> None:
    """Images/masks layouts hold one grey channel: more named channels are a DataError."""
    if len(spec.channels) != 1:
        raise DataError(
            f"{path}: images/masks data has 1 channel; {_named(spec.channels)} "
            "(several channels need inputs/ and targets/)"
        )


Sizes = list[tuple[Path, float | None]]  # each image or input file with its recorded Å/pixel


def _read_folder(root: Path, spec: FileSpec) -> tuple[np.ndarray, np.ndarray | None, Sizes]:
    """A folder's images and masks; masks None for images without labels (``images/``
    alone, or image files directly in the folder)."""
    if (root / "inputs").is_dir():
        return _read_pairs(root, spec.channels)
    _one_channel(root, spec)
    image_dir, mask_dir = root / "images", root / "masks"
    if not image_dir.is_dir():
        if mask_dir.is_dir() or (root / "targets").is_dir():
            raise DataError(
                f"{root}: expected sub-folders images/ and masks/ (or inputs/ and targets/)"
            )
        image_dir = root  # unlabeled: the image files themselves
    image_files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not image_files:
        raise DataError(f"{image_dir}: no {'/'.join(IMAGE_SUFFIXES)} files")
    images, sizes = [], []
    for image_file in image_files:
        image, size = read_image(image_file)
        if image.ndim != 2:
            raise DataError(
                f"{image_file}: shape {image.shape}; expected one 2-D grey image (H, W) per file"
            )
        images.append(image)
        sizes.append((image_file, size))
    if len({i.shape for i in images}) > 1:
        raise DataError(f"{root}: images differ in shape; all must have the same size")
    masks = _read_masks(image_files, mask_dir, images) if mask_dir.is_dir() else None
    return np.stack(images), masks, sizes


def _read_masks(image_files: list[Path], mask_dir: Path, images: list[np.ndarray]) -> np.ndarray:
    """The binary mask of each image, matched by file name."""
    masks_by_stem = _files_by_stem(mask_dir)
    masks = []
    for image_file, image in zip(image_files, images, strict=True):
        mask_file = masks_by_stem.get(image_file.stem)
        if mask_file is None:
            raise DataError(f"{image_file}: no mask named {image_file.stem}.* in {mask_dir}")
        mask, _ = read_image(mask_file)
        if mask.shape != image.shape:
            raise DataError(
                f"{mask_file}: mask shape {mask.shape} does not match image {image.shape}"
            )
        masks.append(_binary(str(mask_file), mask))
    return np.stack(masks)


def _read_stack(path: Path, spec: FileSpec) -> tuple[np.ndarray, Sizes]:
    """The images of one stack file (N, H, W), or of one image (H, W), unlabeled."""
    _one_channel(path, spec)
    stack, size = read_image(path)
    return (stack[None] if stack.ndim == 2 else stack), [(path, size)]


def _files_by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}


def _read_pairs(root: Path, channels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, Sizes]:
    """Inputs (N, H, W) or (N, C, H, W) and float targets (N, H, W) or (N, K, H, W) of an
    ``inputs/``/``targets/`` folder, matched by file name."""
    input_dir, target_dir = root / "inputs", root / "targets"
    if not target_dir.is_dir():
        raise DataError(f"{root}: expected sub-folders inputs/ and targets/")
    inputs, targets = _files_by_stem(input_dir), _files_by_stem(target_dir)
    if not inputs:
        raise DataError(f"{input_dir}: no {'/'.join(IMAGE_SUFFIXES)} files")
    for stem, file in sorted(targets.items()):
        if stem not in inputs:
            raise DataError(f"{file}: no input named {stem}.* in {input_dir}")
    xs, ys, sizes = [], [], []
    for stem, input_file in sorted(inputs.items()):
        if stem not in targets:
            raise DataError(f"{input_file}: no target named {stem}.* in {target_dir}")
        x, size = _stacked(input_file, channels, "input")
        y, _ = _stacked(targets[stem], None, "target")
        if y.shape[1:] != x.shape[1:]:
            raise DataError(f"{targets[stem]}: target shape {y.shape} does not match {x.shape}")
        xs.append(x)
        ys.append(y)
        sizes.append((input_file, size))
    if len({x.shape for x in xs}) > 1 or len({y.shape for y in ys}) > 1:
        raise DataError(f"{root}: inputs or targets differ in shape; all must be the same")
    return _squeezed(np.stack(xs)), _squeezed(np.stack(ys)), sizes


def _stacked(
    path: Path, channels: tuple[str, ...] | None, kind: str
) -> tuple[np.ndarray, float | None]:
    """The file's array as float32 (C, H, W) and its recorded pixel size; ``channels``: the
    names it must have."""
    array, size = read_image(path)
    array = array[None] if array.ndim == 2 else array
    if channels is not None and len(array) != len(channels):
        raise DataError(f"{path}: {len(array)} {kind} channels; {_named(channels)}")
    return array, size


def _squeezed(array: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) as (N, H, W), the layout of single-channel data; others unchanged."""
    return array[:, 0] if array.shape[1] == 1 else array


def _named(channels: tuple[str, ...]) -> str:
    return f"the dataset's channels name {len(channels)} ({', '.join(channels)})"


def _read_hdf5_pairs(
    handle: Any, path: Path, channels: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    if "targets" not in handle:
        raise DataError(f"{path}: no dataset 'targets' (needs 'inputs' and 'targets')")
    inputs = np.asarray(handle["inputs"], np.float32)
    targets = np.asarray(handle["targets"], np.float32)
    x = inputs[:, None] if inputs.ndim == 3 else inputs
    y = targets[:, None] if targets.ndim == 3 else targets
    if x.ndim != 4 or y.ndim != 4 or len(x) != len(y) or x.shape[2:] != y.shape[2:]:
        raise DataError(
            f"{path}: inputs {inputs.shape} and targets {targets.shape} must be (N, H, W) or "
            "(N, C, H, W) with the same N, H and W"
        )
    if x.shape[1] != len(channels):
        raise DataError(f"{path}: {x.shape[1]} input channels; {_named(channels)}")
    return _squeezed(x), _squeezed(y)


def _read_hdf5(path: Path, spec: FileSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """An HDF5 file's images and masks; masks None for ``images`` alone (unlabeled)."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if "inputs" in handle:
                return _read_hdf5_pairs(handle, path, spec.channels)
            _one_channel(path, spec)
            if "images" not in handle:
                raise DataError(f"{path}: no dataset 'images' (needs 'images' and 'masks')")
            images = np.asarray(handle["images"], np.float32)
            raw_masks = np.asarray(handle["masks"]) if "masks" in handle else None
    except OSError as error:
        raise DataError(f"{path}: unreadable HDF5 file ({error})") from None
    if raw_masks is None and images.ndim != 3:
        raise DataError(f"{path}: images {images.shape} must be (N, H, W)")
    if raw_masks is None:
        return images, None
    if images.ndim != 3 or raw_masks.shape != images.shape:
        raise DataError(
            f"{path}: images {images.shape} and masks {raw_masks.shape} must both be "
            "(N, H, W) of the same shape"
        )
    return images, _binary(str(path), raw_masks)


_FILE_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256


def _located(spec: FileSpec, root: Path) -> Path:
    """The dataset's folder or file; a missing one or a symlink loop is a DataError."""
    try:
        path = (root / spec.path).resolve(strict=True)
    except (OSError, RuntimeError) as error:
        reason = "no such folder or file" if isinstance(error, FileNotFoundError) else str(error)
        raise DataError(f"{root / spec.path}: {reason}") from None
    return path


def _data_files(path: Path) -> list[tuple[str, os.DirEntry | Path]]:
    """(name relative to the dataset, file) of every file a folder or HDF5 dataset is
    read from, in a fixed order."""
    if not path.is_dir():
        return [("", path)]
    subs = [s for s in ("images", "inputs", "masks", "targets") if (path / s).is_dir()]
    files = []
    for sub in subs or [""]:  # no sub-folders: the unlabeled image files themselves
        with os.scandir(path / sub) as entries:
            files += [
                (f"{sub}/{e.name}" if sub else e.name, e)
                for e in entries
                if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file()
            ]
    return sorted(files, key=lambda item: item[0])


def file_hash(path: Path | os.DirEntry) -> str:
    """sha256 of a file's bytes, remembered by (path, size, mtime) so unchanged files are
    read once per process; an unreadable file is a DataError naming it."""
    try:
        stat = path.stat()
        key = (os.fspath(path), stat.st_size, stat.st_mtime_ns)
        if key not in _FILE_HASHES:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            _FILE_HASHES[key] = digest.hexdigest()
    except OSError as error:
        raise DataError(f"{os.fspath(path)}: cannot read ({error.strerror})") from None
    return _FILE_HASHES[key]


def content_digest(spec: FileSpec, root: Path) -> str:
    """Hash of the dataset's file contents (names relative to it) and its split parameters:
    its identity, whatever its path. File hashes are shared between processes through the
    project's hash cache (when the project has a dataset cache)."""
    path = _located(spec, root)
    cache = ProjectPaths(root).file_hashes
    _load_hashes(cache)
    known = len(_FILE_HASHES)
    digest = hashlib.sha256()
    for name, file in _data_files(path):
        digest.update(f"{name}\0{file_hash(file)}".encode())
    split = (spec.val_fraction, spec.pixel_size_a)
    digest.update(repr(split if spec.channels == ("image",) else (*split, spec.channels)).encode())
    if len(_FILE_HASHES) > known:
        save_hashes(cache)
    return digest.hexdigest()[:16]


_LOADED: set[Path] = set()


def _load_hashes(cache: Path) -> None:
    """Merge the hash cache file into memory (once per process); a damaged one is ignored."""
    if cache in _LOADED:
        return
    _LOADED.add(cache)
    try:
        entries = json.loads(cache.read_text())
        _FILE_HASHES.update({(p, int(s), int(m)): h for p, s, m, h in entries})
    except (OSError, ValueError, TypeError):
        pass


def save_hashes(cache: Path) -> None:
    """Write the known file hashes to ``cache`` atomically, if its folder exists (the
    dataset cache: nothing is created for it)."""
    if not cache.parent.is_dir():
        return
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps([[*key, value] for key, value in _FILE_HASHES.items()]))
        os.replace(tmp, cache)
    except OSError:  # a cache only: training goes on without it
        tmp.unlink(missing_ok=True)


def _pixel_size(spec: FileSpec, sizes: Sizes) -> float | None:
    """The dataset's Å per pixel: its declared ``pixel_size_a``, else the first one its files
    record. A file recording one that differs from it by more than PIXEL_SIZE_TOLERANCE is a
    DataError naming the file."""
    recorded = [(path, size) for path, size in sizes if size is not None]
    if spec.pixel_size_a is not None:
        reference, source = spec.pixel_size_a, "the dataset's pixel_size_a"
    elif recorded:
        reference, source = recorded[0][1], f"that of {recorded[0][0].name}"
    else:
        return None
    for path, size in recorded:
        if abs(size / reference - 1) > PIXEL_SIZE_TOLERANCE:
            raise DataError(
                f"{path}: pixel size {size:.4g} Å differs from {source}, {reference:.4g} Å, by "
                f"{size / reference - 1:+.0%} (more than {PIXEL_SIZE_TOLERANCE:.0%})"
            )
    return reference


def read_files(
    spec: FileSpec, root: Path
) -> tuple[np.ndarray, np.ndarray | None, float | None, str]:
    """(images float32, masks uint8 or image targets (None for unlabeled data), Å per pixel
    or None, content digest) of a folder, HDF5 or stack dataset.

    Every file is checked before anything is returned; the first problem raises
    a DataError naming the file.
    """
    path = _located(spec, root)
    sizes: Sizes = []
    masks: np.ndarray | None = None
    if path.is_dir():
        images, masks, sizes = _read_folder(path, spec)
    elif path.suffix.lower() in HDF5_SUFFIXES:
        images, masks = _read_hdf5(path, spec)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        images, sizes = _read_stack(path, spec)
    else:
        raise DataError(
            f"{path}: expected a folder, an {'/'.join(HDF5_SUFFIXES)} file or an image stack "
            f"({'/'.join(IMAGE_SUFFIXES)})"
        )
    return images, masks, _pixel_size(spec, sizes), content_digest(spec, root)


_HDF5_TARGETS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> target


def file_target(spec: FileSpec, root: Path) -> str:
    """``image`` for a dataset of inputs and image targets, ``none`` for images without
    labels, else ``mask`` (an HDF5 file's answer remembered by path, size and mtime: a
    sweep asks once per file)."""
    path = _located(spec, root)
    if path.is_dir():
        if (path / "inputs").is_dir():
            return "image"
        if (path / "images").is_dir():
            return "mask" if (path / "masks").is_dir() else "none"
        labels = any((path / sub).is_dir() for sub in ("masks", "targets"))
        return "mask" if labels else "none"  # reading names a folder of labels alone
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "none"
    if path.suffix.lower() not in HDF5_SUFFIXES:
        return "mask"  # reading it names the problem
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HDF5_TARGETS:
        import h5py

        try:
            with h5py.File(path, "r") as handle:
                _HDF5_TARGETS[key] = _hdf5_target(handle)
        except OSError as error:
            raise DataError(f"{path}: unreadable HDF5 file ({error})") from None
    return _HDF5_TARGETS[key]


def _hdf5_target(handle: Any) -> str:
    if "inputs" in handle:
        return "image"
    return "none" if "images" in handle and "masks" not in handle else "mask"
