"""Datasets: a physically grounded HRTEM generator, bring-your-own data, a cache by content.

Public API: declare a dataset with :func:`dataset_source`, make it with
:func:`materialise`, read it with :func:`load`.
"""

from zoo.data._crystals import LATTICES
from zoo.data._files import FileSpec, content_digest, file_hash
from zoo.data._formats import IMAGE_SUFFIXES, PIXEL_SIZE_TOLERANCE, read_image, write_tiff
from zoo.data._preview import preview
from zoo.data._source import DatasetSource
from zoo.data._spec import PRESETS, STRUCTURES, GeneratorSpec, generator_spec
from zoo.data._store import (
    Dataset,
    MixSpec,
    dataset_channels,
    dataset_folder,
    dataset_source,
    dataset_target,
    declared,
    export,
    load,
    lookup,
    materialise,
    mixture,
    streamed,
    used_folders,
)
from zoo.data._stream import StreamedSpec, StreamSettings, check_streams

__all__ = [
    "IMAGE_SUFFIXES",
    "LATTICES",
    "PIXEL_SIZE_TOLERANCE",
    "PRESETS",
    "STRUCTURES",
    "Dataset",
    "DatasetSource",
    "FileSpec",
    "GeneratorSpec",
    "Micrograph",
    "MixSpec",
    "StreamSettings",
    "StreamedSpec",
    "check_streams",
    "content_digest",
    "dataset_channels",
    "dataset_folder",
    "dataset_source",
    "dataset_target",
    "declared",
    "export",
    "file_hash",
    "generator_spec",
    "load",
    "lookup",
    "make_scene",
    "materialise",
    "mixture",
    "preview",
    "read_image",
    "simulate",
    "simulate_scene",
    "streamed",
    "used_folders",
    "write_tiff",
]

_SIMULATION = ("Micrograph", "make_scene", "simulate", "simulate_scene")


def __getattr__(name: str):
    """The generator's names, imported on first use: planning and loading never need
    SciPy's FFT (a third of a second to import)."""
    if name in _SIMULATION:
        from zoo.data import _simulate

        return getattr(_simulate, name)
    raise AttributeError(f"module 'zoo.data' has no attribute {name!r}")
