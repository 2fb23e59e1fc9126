"""Microscope file formats: what a library here can write is read back with its pixel size
(MRC, TIFF resolution tags, NCEM EMD); DM3/DM4 and SER, which none writes, are read through
rosettasciio's readers (replaced here: their parsing is untested); bad ranks are refused."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from zoo import data
from zoo.cli import main
from zoo.errors import DataError

RNG = np.random.default_rng(0)
IMAGE = RNG.random((12, 10)).astype(np.float32)  # not square: rows and columns stay apart


def _mrc(path, array, voxel_size=None):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(array)
        if voxel_size is not None:
            mrc.voxel_size = voxel_size


def _emd(path, array, scale, units):
    """An NCEM EMD file written by rosettasciio: ``array``'s last two axes of ``scale`` in
    ``units``, a leading stack axis if it has one."""
    from rsciio.emd import file_writer

    def axis(name, size, scale, units, navigate):
        return {
            "name": name,
            "size": size,
            "scale": scale,
            "offset": 0.0,
            "units": units,
            "navigate": navigate,
        }

    axes = [axis(n, s, scale, units, False) for n, s in zip("yx", array.shape[-2:], strict=True)]
    if array.ndim == 3:
        axes.insert(0, axis("n", len(array), 1.0, "", True))
    metadata = {"General": {"title": "t"}, "Signal": {"signal_type": ""}}
    file_writer(
        str(path), {"data": array, "axes": axes, "metadata": metadata, "original_metadata": {}}
    )


@pytest.mark.parametrize("stack", [False, True], ids=["image", "stack"])
def test_mrc_round_trip_keeps_the_array_and_the_voxel_size(tmp_path, stack):
    array = np.stack([IMAGE, IMAGE[::-1]]) if stack else IMAGE
    _mrc(tmp_path / "a.mrc", array, voxel_size=1.6)
    read, size = data.read_image(tmp_path / "a.mrc")
    assert read.dtype == np.float32 and np.array_equal(read, array)
    assert size == pytest.approx(1.6, rel=1e-6)
    _mrc(tmp_path / "unset.mrc", IMAGE.astype(np.int16))  # no voxel size: none
    assert data.read_image(tmp_path / "unset.mrc")[1] is None


@pytest.mark.parametrize(
    ("options", "size"),
    [
        ({"resolution": (1e8 / 1.6, 1e8 / 1.6), "resolutionunit": "CENTIMETER"}, 1.6),
        ({"resolution": (1e4 / 0.25, 1e4 / 0.25), "resolutionunit": "MICROMETER"}, 0.25),
        ({"imagej": True, "resolution": (1 / 0.16, 1 / 0.16), "metadata": {"unit": "nm"}}, 1.6),
        ({"resolution": (72, 72), "resolutionunit": "INCH"}, None),  # print dpi: no size
        ({"resolution": (2, 2)}, None),  # resolution unit none
        ({}, None),
    ],
    ids=["cm", "um", "imagej-nm", "inch", "no-unit", "no-tags"],
)
def test_tiff_resolution_tags_give_the_pixel_size(tmp_path, options, size):
    tifffile.imwrite(tmp_path / "a.tif", IMAGE, **options)
    read, found = data.read_image(tmp_path / "a.tif")
    assert np.array_equal(read, IMAGE)
    assert found == (pytest.approx(size) if size is not None else None)


@pytest.mark.parametrize("size", [1.6, 0.123, None])
def test_write_tiff_is_read_back_with_its_pixel_size(tmp_path, size):
    stack = np.stack([IMAGE, IMAGE]).astype(np.uint8)
    data.write_tiff(tmp_path / "w.tif", stack, size)
    read, found = data.read_image(tmp_path / "w.tif")
    assert np.array_equal(read, stack)
    assert found == (pytest.approx(size, rel=1e-7) if size is not None else None)


@pytest.mark.parametrize(
    ("units", "size"), [("nm", 1.5), ("Å", 0.15), ("µm", 1500.0), ("1/nm", None)]
)
def test_emd_round_trip_converts_the_axes_units_to_angstrom(tmp_path, units, size):
    _emd(tmp_path / "a.emd", IMAGE, 0.15, units)
    read, found = data.read_image(tmp_path / "a.emd")
    assert np.array_equal(read, IMAGE)
    assert found == (pytest.approx(size) if size is not None else None)
    _emd(tmp_path / "s.emd", np.stack([IMAGE, IMAGE]), 0.15, units)
    assert data.read_image(tmp_path / "s.emd")[0].shape == (2, *IMAGE.shape)


@pytest.mark.parametrize(
    ("suffix", "module"),
    [(".dm3", "digitalmicrograph"), (".dm4", "digitalmicrograph"), (".ser", "tia")],
)
def test_read_only_formats_go_to_their_rosettasciio_reader(tmp_path, monkeypatch, suffix, module):
    """No library here writes DM3/DM4 or SER: rosettasciio's reader is replaced by one
    returning what rosettasciio readers return (a list of signals, axes in array order)."""
    from importlib import import_module

    def reader(filename, **options):
        assert filename == str(tmp_path / f"a{suffix}")
        axes = [
            {"scale": 2.0, "units": "µm"},
            {"scale": 0.5, "units": "nm"},
            {"scale": 0.5, "units": "nm"},
        ]
        return [{"data": np.stack([IMAGE] * 3).astype(np.int16), "axes": axes}]

    monkeypatch.setattr(import_module(f"rsciio.{module}"), "file_reader", reader)
    read, size = data.read_image(tmp_path / f"a{suffix}")
    assert read.shape == (3, *IMAGE.shape) and read.dtype == np.float32 and size == 5.0


def test_wrong_rank_unknown_suffix_and_non_square_pixels_are_one_line_errors(tmp_path):
    _mrc(tmp_path / "v.mrc", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"v\.mrc: shape \(2, 3, 8, 8\) of float32; expected"):
        data.read_image(tmp_path / "v.mrc")
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"a\.jpg: unsupported type; allowed: \.png"):
        data.read_image(tmp_path / "a.jpg")
    tifffile.imwrite(tmp_path / "r.tif", IMAGE, resolution=(1e8, 2e8), resolutionunit=3)
    with pytest.raises(DataError, match=r"r\.tif: pixels of 1 × 0\.5 Å are not square"):
        data.read_image(tmp_path / "r.tif")
    (tmp_path / "broken.mrc").write_bytes(b"not an mrc file")
    with pytest.raises(DataError, match=r"broken\.mrc: unreadable image"):
        data.read_image(tmp_path / "broken.mrc")


def _mrc_folder(root, count=8, voxel_sizes=None):
    """images/ of 32 px .mrc files (voxel size 3.2 Å unless given), masks/ as .png and .npy."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, size in enumerate(voxel_sizes or [3.2] * count):
        image = RNG.random((32, 32)).astype(np.float32)
        _mrc(root / "images" / f"im{i}.mrc", image, voxel_size=size)
        mask = (image > 0.5).astype(np.uint8)
        if i % 2:
            np.save(root / "masks" / f"im{i}.npy", mask)
        else:
            Image.fromarray(mask * 255).save(root / "masks" / f"im{i}.png")


def test_a_folder_of_mrc_images_trains_and_records_their_pixel_size(project):
    _mrc_folder(project.root / "mine")
    run = {
        "experiment": "mrc",
        "model": {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5},
        "datasets": {"mine": {"path": "mine", "val_fraction": 0.25}},
        "stages": [{"name": "s", "train": "mine", "epochs": 1, "augment": "none"}],
    }
    (project.root / "run.yaml").write_text(yaml.safe_dump(run))
    assert main(["train", "run.yaml"]) == 0
    dataset = data.load("mine", data.lookup("mine", project))
    assert dataset.images.shape == (8, 32, 32) and dataset.pixel_size_a == pytest.approx(3.2)


@pytest.mark.parametrize(
    ("declared", "sizes", "message"),
    [
        (None, [3.2, 3.2, 4.0], r"im2\.mrc: pixel size 4 Å differs from that of im0\.mrc"),
        (1.6, [3.2, 3.2, 3.2], r"im0\.mrc: pixel size 3\.2 Å differs from the dataset's"),
    ],
    ids=["files-disagree", "declared-differs"],
)
def test_pixel_sizes_that_disagree_are_refused_naming_the_file(project, declared, sizes, message):
    _mrc_folder(project.root / "mine", voxel_sizes=sizes)
    source = data.dataset_source({"path": "mine", "pixel_size_a": declared}, "d")
    with pytest.raises(DataError, match=message):
        data.materialise("mine", source, project)
