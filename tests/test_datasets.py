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
