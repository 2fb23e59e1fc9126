"""Datasets by name: cache by content, previews, export, bring-your-own data, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from zoo import data
from zoo.cli import main
from zoo.errors import ConfigError, DataError
from zoo.train import standardise, to_device

TINY = {"preset": "defocus", "defocus_nm": -10, "image_size": 32, "count": 6, "sim_sampling_a": 0.4}


@pytest.fixture
def datasets_file(project):
    path = project.root / "datasets.yaml"
    path.write_text(
        textwrap.dedent("""\
        datasets:
          df-10: {preset: defocus, defocus_nm: -10, image_size: 32, count: 6, sim_sampling_a: 0.4}
          cu: {preset: structure, structure: fcc_Cu_small, image_size: 32, count: 4}
        """)
    )
    return path


def test_make_caches_by_content_and_skips_when_cached(project, datasets_file, capsys):
    assert main(["data", "make", str(datasets_file)]) == 0
    folder = data.lookup("df-10", project)
    assert folder.name == data.generator_spec(TINY, "d").digest()
    stamp = (folder / "images.npy").stat().st_mtime_ns
    assert main(["data", "make", str(datasets_file), "df-10"]) == 0
    assert (folder / "images.npy").stat().st_mtime_ns == stamp
    assert len(_cached(project)) == 2


def test_device_copies_are_standardised_half_precision_splits(project):
    dataset = data.load("d", data.materialise("d", data.generator_spec(TINY, "d"), project))
    assert dataset.images.shape == (6, 32, 32) and dataset.masks.dtype == np.uint8
    assert len(dataset.train[0]) == 5 and len(dataset.val[0]) == 1
    on_device = to_device(dataset, torch.device("cpu"))
    images = torch.cat([on_device.train_images, on_device.val_images])
    assert images.dtype == torch.float16 and images.shape == (6, 1, 32, 32)
    assert torch.allclose(images.float().mean(dim=(1, 2, 3)), torch.zeros(6), atol=1e-3)
    assert torch.allclose(images.float().std(dim=(1, 2, 3)), torch.ones(6), atol=2e-3)
    raw = torch.from_numpy(dataset.images[:, None])
    assert torch.allclose(images.float(), standardise(raw), atol=4e-3)


def test_export_writes_arrays_and_parameters(project, datasets_file):
    out = project.root / "cu.npz"
    assert main(["data", "export", "cu", "--out", str(out), "--spec", str(datasets_file)]) == 0
    with np.load(out) as archive:
        assert archive["images"].shape == (4, 32, 32) and archive["images"].dtype == np.float32
        assert archive["masks"].dtype == np.uint8 and set(np.unique(archive["masks"])) <= {0, 1}
        assert float(archive["pixel_size_A"]) == pytest.approx(3.2)
        assert json.loads(str(archive["params"]))["lattice"] == "fcc_Cu"


@pytest.mark.parametrize("suffix", [".mrc", ".tif"])
def test_export_as_a_microscope_file_reads_back_with_its_pixel_size(project, datasets_file, suffix):
    """What `make demo` predicts on: the images as a microscope writes them, the pixel size
    in the file's own metadata."""
    from zoo.data._formats import read_image

    for out in (project.root / "cu.npz", project.root / f"cu{suffix}"):
        assert main(["data", "export", "cu", "--out", str(out), "--spec", str(datasets_file)]) == 0
    images, pixel_size = read_image(project.root / f"cu{suffix}")
    with np.load(project.root / "cu.npz") as archive:
        assert np.array_equal(images, archive["images"])
    assert pixel_size == pytest.approx(3.2, rel=1e-4)


def test_show_writes_a_preview_grid(project, datasets_file):
    main(["data", "make", str(datasets_file), "df-10"])
    out = project.root / "preview.png"
    assert main(["data", "show", "df-10", "--out", str(out), "--count", "4"]) == 0
    with Image.open(out) as image:
        pixels = np.asarray(image)
    assert pixels.shape == (256, 4 * 512, 3)
    assert (pixels[..., 0] == 255).sum() > 50 and pixels.std() > 20  # outlines and content


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dose": -5}, "dose"),
        ({"lattice": "hcp_Mg"}, "lattice"),
        ({"image_size": 0}, "image_size"),
        ({"colour": 3}, "colour"),
        ({"count": "many"}, "count"),
    ],
)
def test_bad_parameters_name_the_field(change, field):
    with pytest.raises(ConfigError, match=rf"^d\.{field}: .*(expected|allowed)"):
        data.generator_spec({**TINY, **change}, "d")


def test_cli_rejects_bad_dataset_with_exit_2_and_writes_nothing(project, capsys):
    bad = project.root / "bad.yaml"
    bad.write_text("datasets:\n  x: {preset: noise, dose: -1}\n")
    assert main(["data", "make", str(bad)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "datasets.x.dose" in error
    assert not project.datasets.exists()


def _folder_dataset(root, count=3, size=16):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(
            root / "images" / f"im{i}.png"
        )
        np.save(root / "masks" / f"im{i}.npy", (rng.random((size, size)) > 0.5).astype(np.uint8))
    return root


def test_folder_dataset_loads_and_is_cached(project):
    _folder_dataset(project.root / "mine", count=5)
    source = data.dataset_source({"path": "mine", "val_fraction": 0.4}, "datasets.mine")
    dataset = data.load("mine", data.materialise("mine", source, project))
    assert dataset.images.shape == (5, 16, 16) and dataset.train_count == 3


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: (r / "masks" / "im1.npy").unlink(), r"im1\.png: no mask"),
        (lambda r: np.save(r / "masks" / "im1.npy", np.zeros((8, 8), np.uint8)), "does not match"),
        (lambda r: np.save(r / "masks" / "im1.npy", np.full((16, 16), 7, np.uint8)), "not binary"),
        (lambda r: (r / "images" / "im2.png").write_bytes(b"not a png"), r"im2\.png: unreadable"),
    ],
)
def test_broken_folder_is_one_line_error_naming_the_file_and_caches_nothing(
    project, breakage, message
):
    root = _folder_dataset(project.root / "mine")
    breakage(root)
    with pytest.raises(DataError, match=message):
        data.materialise("mine", data.dataset_source({"path": "mine"}, "d"), project)
    assert _cached(project) == []


def test_hdf5_dataset(project):
    with h5py.File(project.root / "set.h5", "w") as handle:
        handle["images"] = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
        handle["masks"] = np.eye(8, dtype=np.uint8)[None].repeat(4, 0) * 255
    source = data.dataset_source({"path": "set.h5", "val_fraction": 0.25}, "d")
    dataset = data.load("h5", data.materialise("h5", source, project))
    assert dataset.train_count == 3 and set(np.unique(dataset.masks)) == {0, 1}


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys, contextlib, io; from zoo import cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.main(['--help'])\n"
        "print(sorted(m for m in ('torch', 'mlflow', 'seaborn', 'pandas', 'numpy')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_make_reads_the_datasets_of_a_sweep_spec(project):
    spec = project.root / "spec.yaml"
    spec.write_text(
        "name: s\nbase:\n  datasets:\n"
        "    x: {preset: noise, dose: 30, image_size: 16, count: 2, sim_sampling_a: 0.8}\n"
    )
    assert main(["data", "make", str(spec)]) == 0
    assert (data.lookup("x", project) / "images.npy").exists()


def _cached(project) -> list:
    """The dataset folders in the cache (its dot-entries hold locks, not data)."""
    if not project.datasets.exists():
        return []
    return [p for p in project.datasets.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _pairs(root, count=4, channels=2, side=8, seed=0):
    """An inputs/ and targets/ folder: (channels, side, side) inputs, (side, side) targets."""
    rng = np.random.default_rng(seed)
    for sub in ("inputs", "targets"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shape = (channels, side, side) if channels > 1 else (side, side)
        np.save(root / "inputs" / f"s{i}.npy", rng.random(shape).astype(np.float32))
        np.save(root / "targets" / f"s{i}.npy", rng.random((side, side)).astype(np.float32))
    return root


def _regression_set(images, targets, train_count, channels=("image", "base")):
    return data.Dataset("r", images, targets, train_count, None, "r", channels)


def test_per_dataset_scaling_standardises_each_channel_over_the_training_split():
    from zoo.config import ModelConfig

    rng = np.random.default_rng(0)
    images = np.stack([rng.normal(5, 2, (6, 8, 8)), rng.normal(-1, 0.5, (6, 8, 8))], axis=1)
    targets = rng.normal(-1, 0.5, (6, 8, 8))
    dataset = _regression_set(images.astype(np.float32), targets.astype(np.float32), 4)
    model = ModelConfig(
        task="regression", classes=1, inputs=("image", "base"), in_channels=2,
        input_scaling="per_dataset", residual_input="base",
    )  # fmt: skip
    on_device = to_device(dataset, torch.device("cpu"), model)
    train = on_device.train_images.double()
    assert torch.allclose(train.mean(dim=(0, 2, 3)), torch.zeros(2, dtype=torch.double), atol=2e-3)
    assert torch.allclose(
        train.std(dim=(0, 2, 3), correction=0), torch.ones(2, dtype=train.dtype), atol=2e-3
    )
    mean, std = images[:4, 1].mean(), images[:4, 1].std()  # targets: the base channel's scaling
    expected = torch.from_numpy((targets[4:] - mean) / std).float()[:, None]
    assert torch.allclose(on_device.val_masks, expected, atol=1e-4)
    # every image shares one shift and scale: the per-image means still differ
    assert on_device.train_images.float().mean(dim=(2, 3)).std(dim=0).min() > 0.01


@pytest.mark.parametrize(("scaling", "factor"), [("none", 1.0), (8.0, 8.0)])
def test_unstandardised_scalings_multiply_inputs_and_targets_alike(scaling, factor):
    from zoo.config import ModelConfig

    rng = np.random.default_rng(1)
    images, targets = rng.random((3, 8, 8)).astype(np.float32), rng.random((3, 2, 8, 8))
    dataset = data.Dataset("r", images, targets.astype(np.float32), 2, None, "r")
    model = ModelConfig(task="regression", classes=2, input_scaling=scaling)
    on_device = to_device(dataset, torch.device("cpu"), model)
    assert on_device.train_images.dtype == torch.float32
    assert torch.allclose(on_device.val_images[:, 0], factor * torch.from_numpy(images[2:]))
    assert on_device.train_masks.shape == (2, 2, 8, 8)
    assert torch.allclose(on_device.train_masks, factor * torch.from_numpy(targets[:2]).float())


def test_folder_of_inputs_and_targets_loads_stacked_channels_and_keeps_old_digests(project):
    _folder_dataset(project.root / "masks_set", count=3)
    before = data.content_digest(data.dataset_source({"path": "masks_set"}, "d"), project.root)
    _pairs(project.root / "pairs", count=5)
    spec = {"path": "pairs", "channels": ["image", "base"], "val_fraction": 0.4}
    source = data.dataset_source(spec, "datasets.pairs")
    dataset = data.load("pairs", data.materialise("pairs", source, project))
    assert dataset.images.shape == (5, 2, 8, 8) and dataset.masks.shape == (5, 8, 8)
    assert dataset.masks.dtype == np.float32 and dataset.channels == ("image", "base")
    assert data.dataset_target(source, project.root) == "image"
    assert source.resolved()["channels"] == ["image", "base"]
    assert data.preview(dataset.images, dataset.masks, project.root / "p.png").is_file()
    assert "channels" not in data.dataset_source({"path": "masks_set"}, "d").resolved()
    assert (
        data.content_digest(data.dataset_source({"path": "masks_set"}, "d"), project.root) == before
    )
    np.save(project.root / "pairs" / "targets" / "s0.npy", np.zeros((8, 8), np.float32))
    assert data.content_digest(source, project.root) != dataset.digest  # contents identify it


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: (r / "targets" / "s1.npy").unlink(), r"s1\.npy: no target named s1\.\*"),
        (lambda r: (r / "inputs" / "s2.npy").unlink(), r"s2\.npy: no input named s2\.\*"),
        (
            lambda r: np.save(r / "inputs" / "s1.npy", np.zeros((3, 8, 8), np.float32)),
            r"s1\.npy: 3 input channels; the dataset's channels name 2",
        ),
        (
            lambda r: np.save(r / "targets" / "s1.npy", np.zeros((4, 4), np.float32)),
            r"s1\.npy: target shape \(1, 4, 4\) does not match",
        ),
    ],
)
def test_broken_pairs_folder_is_one_line_error_naming_the_file(project, breakage, message):
    breakage(_pairs(project.root / "pairs"))
    source = data.dataset_source({"path": "pairs", "channels": ["image", "base"]}, "d")
    with pytest.raises(DataError, match=message):
        data.materialise("pairs", source, project)
    assert _cached(project) == []


def test_hdf5_inputs_and_targets_with_several_target_channels(project):
    rng = np.random.default_rng(0)
    with h5py.File(project.root / "pairs.h5", "w") as handle:
        handle["inputs"] = rng.random((5, 8, 8)).astype(np.float32)
        handle["targets"] = rng.random((5, 3, 8, 8)).astype(np.float32)
    source = data.dataset_source({"path": "pairs.h5"}, "d")
    dataset = data.load("h5", data.materialise("h5", source, project))
    assert dataset.images.shape == (5, 8, 8) and dataset.masks.shape == (5, 3, 8, 8)
    assert data.dataset_target(source, project.root) == "image"


def test_a_worker_keeps_one_device_copy_per_input_scaling(project):
    from zoo.config import ModelConfig
    from zoo.resident import clear, device_datasets

    dataset = data.load("d", data.materialise("d", data.generator_spec(TINY, "d"), project))
    clear()
    cpu, quiet = torch.device("cpu"), lambda line: None
    standardised = device_datasets({"d": dataset}, cpu, quiet)["d"]
    scaled = device_datasets({"d": dataset}, cpu, quiet, ModelConfig(input_scaling=2.0))["d"]
    assert scaled is not standardised
    assert torch.allclose(scaled.val_images[:, 0], 2 * torch.from_numpy(dataset.val[0]))
    assert device_datasets({"d": dataset}, cpu, quiet)["d"] is standardised
    clear()
