"""Content-addressed dataset cache, names, loading, export and previews."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo._disk import raise_if_full
from zoo._leases import Lease
from zoo._refine_identity import refine_folders
from zoo._typed import build, to_dict
from zoo.data._files import FileSpec, file_target, read_files, save_hashes
from zoo.data._lock import index_lock, making
from zoo.data._source import DatasetSource
from zoo.data._spec import GeneratorSpec, generator_spec
from zoo.data._stream import StreamedSpec, streamed_source
from zoo.errors import ConfigError
from zoo.paths import DatasetPaths, ProjectPaths

__all__ = [
    "Dataset",
    "MixSpec",
    "dataset_channels",
    "dataset_folder",
    "dataset_source",
    "dataset_target",
    "declared",
    "export",
    "load",
    "lookup",
    "materialise",
    "mixture",
    "streamed",
    "used_folders",
]


@dataclass(frozen=True)
class MixSpec:
    """A mixture: the first ``count`` training images of each named dataset, concatenated.

    Validation images are all validation images of every component. A
    zoo.data.DatasetSource: neither stored nor streamed itself; no identity of its own.
    """

    stored: ClassVar[bool] = False
    streamed: ClassVar[bool] = False
    pixel_size_a: ClassVar[None] = None  # its parts'

    mix: dict[str, int]  # dataset name -> training images taken from it

    def validate(self, where: str) -> None:
        if not self.mix:
            raise ConfigError(f"{where}.mix: {{}} is not allowed; expected at least one part")
        for name, count in self.mix.items():
            if count < 0:
                raise ConfigError(f"{where}.mix.{name}: {count} is not allowed; expected >= 0")

    @property
    def train_count(self) -> int:
        return sum(self.mix.values())

    def parts(self) -> tuple[str, ...]:
        return tuple(self.mix)

    def files(self) -> tuple[str, ...]:
        return ()

    def digest(self) -> None:
        return None


def dataset_source(mapping: Any, where: str) -> DatasetSource:
    """A generator spec; a file spec when the mapping has ``path``; a mixture with ``mix``;
    a streamed generator (zoo.data._stream) with ``stream``."""
    if isinstance(mapping, dict) and "stream" in mapping:
        return streamed_source(mapping, where)
    if isinstance(mapping, dict) and "path" in mapping:
        return build(FileSpec, mapping, where)
    if isinstance(mapping, dict) and "mix" in mapping:
        return build(MixSpec, mapping, where)
    return generator_spec(mapping, where)


def dataset_target(source: GeneratorSpec | FileSpec | StreamedSpec, root: Path) -> str:
    """What a (non-mixture) dataset's targets are: ``mask`` (segmentation), ``clean``,
    ``potential`` or ``image`` (regression), or ``none`` (images without labels, which
    only a refinement's ``unlabeled:`` set may be)."""
    return file_target(source, root) if source.files() else source.target


def dataset_channels(source: GeneratorSpec | FileSpec | StreamedSpec) -> tuple[str, ...]:
    """Names of a (non-mixture) dataset's input channels."""
    return source.channels


def mixture(name: str, spec: MixSpec, components: dict[str, Dataset]) -> Dataset:
    """The mixture ``spec`` of already loaded ``components``; with a streamed part, a
    stand-in like a streamed set's, nothing stored (zoo._streaming mixes its training
    samples while the run trains; it has no validation split)."""
    parts = [components[component] for component in spec.mix]
    _check_parts(name, spec, parts)
    counts = spec.mix.values()
    digest = "+".join(f"{d.digest}:{n}" for d, n in zip(parts, counts, strict=True))
    first = parts[0]
    if any(d.streamed is not None for d in parts):
        images, masks = first.images[:0], first.masks[:0]
        return Dataset(
            name, images, masks, 0, first.pixel_size_a, digest, first.channels, spec.train_count
        )
    train = [(d.train[0][:n], d.train[1][:n]) for d, n in zip(parts, counts, strict=True)]
    images = np.concatenate([x for x, _ in train] + [d.val[0] for d in parts])
    masks = np.concatenate([y for _, y in train] + [d.val[1] for d in parts])
    return Dataset(
        name, images, masks, spec.train_count, first.pixel_size_a, digest, first.channels
    )


def _check_parts(name: str, spec: MixSpec, parts: list[Dataset]) -> None:
    """Refuse a mixture taking more of a part than its training split (a streamed part:
    its samples per epoch) has, or whose parts differ in channels or image size."""
    for (component, count), part in zip(spec.mix.items(), parts, strict=True):
        available = part.train_count if part.streamed is None else part.streamed
        if count > available:
            raise ConfigError(
                f"datasets.{name}.mix.{component}: {count} is larger than the "
                f"training split of {component!r} ({available} images)"
            )
    if len({d.channels for d in parts}) > 1:
        raise ConfigError(
            f"datasets.{name}.mix: parts with different channels "
            f"({'; '.join(', '.join(d.channels) for d in parts)}); expected the same channels"
        )
    sizes = ["x".join(map(str, d.images.shape[-2:])) for d in parts]
    if len(set(sizes)) > 1:
        raise ConfigError(
            f"datasets.{name}.mix: parts with different image sizes ({'; '.join(sizes)}); "
            "expected the same size"
        )


@dataclass(frozen=True)
class Dataset:
    """Images, masks and the train/validation split point; training standardises each
    image on its device (``zoo.train.to_device``). An unlabeled dataset's masks are
    zeros that nothing reads (none are stored)."""

    name: str
    images: np.ndarray  # (N, H, W) float32 as generated or read; (N, C, H, W) for C channels
    # (N, H, W) uint8 masks, or float32 image targets (regression; (N, K, H, W) for K > 1)
    masks: np.ndarray
    train_count: int  # images [0, train_count) train; the rest validate
    pixel_size_a: float | None
    digest: str
    channels: tuple[str, ...] = ("image",)  # names of the input channels
    # a streamed set's stand-in (or a mixture's with a streamed part): its training
    # samples per epoch, made while the run trains (none stored); None for stored data
    streamed: int | None = None

    def inputs(self, names: tuple[str, ...], rows: slice = slice(None)) -> np.ndarray:
        """The named channels of images ``rows``, stacked (n, len(names), H, W)."""
        images = self.images[rows]
        if images.ndim == 3:
            images = images[:, None]
        return images[:, [self.channels.index(n) for n in names]]

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.images[: self.train_count], self.masks[: self.train_count]

    @property
    def val(self) -> tuple[np.ndarray, np.ndarray]:
        return self.images[self.train_count :], self.masks[self.train_count :]


def _write(
    folder: Path,
    staging: Path,
    images: np.ndarray,
    masks: np.ndarray | None,
    meta: dict[str, Any],
) -> None:
    """Write the arrays into ``folder`` by way of ``staging`` (a new folder, renamed into
    place): a reader sees all of it or nothing. No masks (unlabeled data): no masks file."""
    staging.mkdir(parents=True)
    files = DatasetPaths(staging)
    try:
        np.save(files.images, images)
        if masks is not None:
            np.save(files.masks, masks)
        files.meta.write_text(json.dumps(meta, indent=1, sort_keys=True))
    except OSError as error:  # a full disk: the error names it; nothing half-written stays
        try:
            raise_if_full(error, folder, images.nbytes + (0 if masks is None else masks.nbytes))
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    try:
        os.rename(staging, folder)
    except OSError:  # another process finished the same dataset first
        shutil.rmtree(staging)


def _generate(spec: GeneratorSpec) -> tuple[np.ndarray, np.ndarray, list[float]]:
    from zoo.data._simulate import simulate  # SciPy's FFT: imported only to make data

    images = np.empty((spec.count, spec.image_size, spec.image_size), np.float32)
    masks = np.empty(images.shape, np.uint8 if spec.target == "mask" else np.float32)
    defocus = []
    for index in range(spec.count):
        micrograph = simulate(spec, index)
        images[index] = micrograph.image
        masks[index] = getattr(micrograph, spec.target)
        defocus.append(round(micrograph.defocus_nm, 4))
    return images, masks, defocus


def materialise(name: str, source: DatasetSource, paths: ProjectPaths) -> Path:
    """The cache folder of a dataset, generating or reading it only when not cached yet;
    concurrent makers of one dataset make it once (zoo.data._lock). A streamed dataset
    is never stored: a ConfigError."""
    if source.streamed:
        raise ConfigError(
            f"datasets.{name}.stream: a streamed dataset is made while a run trains, never "
            "stored; expected a dataset without stream: to make"
        )
    with making(source, paths):
        return _materialise(name, source, paths)


def _materialise(name: str, source: DatasetSource, paths: ProjectPaths) -> Path:
    """Make the dataset holding a lease (zoo._leases) on its folder and staging folder
    from when its digest is known (a generator's: at once; files': once read)."""
    meta: dict[str, Any] = {"source": to_dict(source)}
    digest = source.digest()
    if digest is not None:  # known at once: a generator
        with _making(name, digest, paths) as staging:
            if not DatasetPaths(paths.dataset(digest)).meta.exists():
                images, masks, meta["defocus_nm"] = _generate(source)
                meta.update(train_count=source.train_count, pixel_size_a=source.pixel_size_a)
                _write(paths.dataset(digest), staging, images, masks, meta)
            return _remember(name, digest, source, paths)
    images, masks, pixel_size, digest = read_files(source, paths.root)
    meta.update(
        train_count=len(images) - round(len(images) * source.val_fraction),
        pixel_size_a=pixel_size,
    )
    if source.channels != ("image",):
        meta["channels"] = list(source.channels)
    if masks is None:
        meta["target"] = "none"  # unlabeled: images only
    with _making(name, digest, paths) as staging:
        if not DatasetPaths(paths.dataset(digest)).meta.exists():
            _write(paths.dataset(digest), staging, images, masks, meta)
        save_hashes(paths.file_hashes)  # the dataset cache exists now
        return _remember(name, digest, source, paths)


@contextmanager
def _making(name: str, digest: str, paths: ProjectPaths) -> Iterator[Path]:
    """A staging folder's name, with dataset ``digest``'s folder and it leased."""
    staging = paths.dataset_staging(digest)
    with Lease(paths, [paths.dataset(digest), staging], f"making dataset {name}"):
        yield staging


def dataset_folder(name: str, source: DatasetSource, paths: ProjectPaths) -> Path | None:
    """The cache folder of a dataset, made or not: by content hash for a generator; for
    files the one the index records for this declaration (None before they are read, and
    for a mixture: it is cut from its parts)."""
    if not source.stored:
        return None
    digest = source.digest()
    if digest is not None:
        return paths.dataset(digest)
    index = json.loads(paths.dataset_index.read_text()) if paths.dataset_index.exists() else {}
    entry = index.get(name, {})
    return paths.dataset(entry["digest"]) if entry.get("source") == to_dict(source) else None


def used_folders(config: Any, paths: ProjectPaths) -> list[Path]:
    """The folders a run of ``config`` (a zoo.config.RunConfig) uses, for its lease
    (zoo._leases): its stages' (a refining stage's iterations' too) and its datasets' (a
    file dataset's once read)."""
    stages = [paths.stage(config.stage_digest(i)) for i in range(len(config.stages))]
    for i, stage in enumerate(config.stages):
        stages += refine_folders(config, i, paths) if stage.refine is not None else []
    folders = (dataset_folder(n, config.sources[n], paths) for n in config.used_datasets)
    return stages + [f for f in folders if f is not None]


def _remember(name: str, digest: str, source: DatasetSource, paths: ProjectPaths) -> Path:
    """Record ``name`` -> digest in the index so the dataset can be found by name."""
    with index_lock(paths):
        index = json.loads(paths.dataset_index.read_text()) if paths.dataset_index.exists() else {}
        if index.get(name, {}).get("digest") != digest:
            index[name] = {"digest": digest, "source": to_dict(source)}
            tmp = paths.dataset_index.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
            os.replace(tmp, paths.dataset_index)
    return paths.dataset(digest)


def streamed(name: str, spec: StreamedSpec) -> Dataset:
    """A streamed dataset's stand-in: no stored images, the shape and dtypes of its samples
    (its training samples come from zoo._streaming while the run trains)."""
    size, target = spec.generator.image_size, spec.generator.target
    images = np.empty((0, size, size), np.float32)
    masks = np.empty((0, size, size), np.uint8 if target == "mask" else np.float32)
    pixel = spec.pixel_size_a
    return Dataset(name, images, masks, 0, pixel, spec.digest(), spec.channels, spec.train_count)


def lookup(name: str, paths: ProjectPaths) -> Path:
    """The cache folder of a dataset made earlier under ``name``."""
    index = json.loads(paths.dataset_index.read_text()) if paths.dataset_index.exists() else {}
    if name not in index:
        known = ", ".join(sorted(index)) or "none yet; run `zoo data make FILE.yaml`"
        raise ConfigError(f"dataset {name!r} is not in the cache; known: {known}")
    return paths.dataset(index[name]["digest"])


def load(name: str, folder: Path) -> Dataset:
    """The dataset cached in ``folder``, memory-mapped: pages are read when used and
    shared by every process on the node (copy-on-write, never written back)."""
    files = DatasetPaths(folder)
    meta = json.loads(files.meta.read_text())
    images = np.load(files.images, mmap_mode="c").astype(np.float32, copy=False)
    if meta.get("target") == "none":  # unlabeled: nothing stored (zero pages: no memory)
        masks = np.zeros(images.shape[:1] + images.shape[-2:], np.uint8)
    else:
        masks = np.load(files.masks, mmap_mode="c")
    return Dataset(
        name,
        images,
        masks,
        meta["train_count"],
        meta["pixel_size_a"],
        folder.name,
        tuple(meta.get("channels", ["image"])),
    )


def export(folder: Path, out: Path) -> None:
    """Write the cached arrays (not standardised; no masks for unlabeled data) and their
    parameters as one ``.npz``; or the images alone, with their pixel size, as ``.mrc`` or
    ``.tif`` (one image as a 2-D file, several as a stack)."""
    from zoo.data._formats import write_mrc, write_tiff

    files = DatasetPaths(folder)
    meta = json.loads(files.meta.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix in (".mrc", ".tif", ".tiff"):
        images = np.load(files.images)
        images = images[0] if len(images) == 1 else images
        write = write_mrc if out.suffix == ".mrc" else write_tiff
        write(out, images.astype(np.float32), meta["pixel_size_a"])
        return
    masks = {} if meta.get("target") == "none" else {"masks": np.load(files.masks)}
    np.savez_compressed(
        out,
        images=np.load(files.images),
        **masks,
        pixel_size_A=np.float64(meta["pixel_size_a"] or np.nan),
        params=np.array(json.dumps(meta["source"], sort_keys=True)),
    )


def declared(path: Path) -> dict[str, DatasetSource]:
    """The ``datasets:`` mapping of a YAML file: a datasets file or run config (top level)
    or a sweep spec (under ``base:``)."""
    from zoo._yaml import load_yaml

    document = load_yaml(path)
    if isinstance(document, dict) and isinstance(document.get("base"), dict):
        document = document["base"]
    if not isinstance(document, dict) or not isinstance(document.get("datasets"), dict):
        raise ConfigError(
            f"{path}: expected a 'datasets:' mapping of name -> parameters "
            "(at the top level, or under 'base:' in a sweep spec)"
        )
    return {
        name: dataset_source(spec, f"datasets.{name}")
        for name, spec in document["datasets"].items()
    }
