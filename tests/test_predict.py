"""zoo predict: any size (tiled and blended), the training standardisation, masks in the
input's format family, overlays, the pixel-size check and one-line errors."""

from __future__ import annotations

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from zoo.cli import main
from zoo.data import generator_spec, read_image, simulate
from zoo.modelzoo import load
from zoo.predict import segment
from zoo.tracking import Tracker
from zoo.train import standardise

SIDE = 32  # the tiny sweep's training images: 32 px of 3.2 Å


@pytest.fixture(scope="module")
def micrograph() -> np.ndarray:
    """A 96 px micrograph (3× the training size) at the training pixel size."""
    spec = generator_spec(
        {
            "preset": "defocus",
            "defocus_nm": 10,
            "image_size": 3 * SIDE,
            "field_nm": 3 * 10.24,
            "count": 1,
            "sim_sampling_a": 0.4,
            "particles": [4, 8],
        },
        "test",
    )
    return simulate(spec, 0).image


def test_large_image_gives_the_central_crops_mask(trained, micrograph):
    model = load("tiny", Tracker())
    tiled = segment(model.module, micrograph, SIDE).argmax(axis=0)
    crop = micrograph[SIDE : 2 * SIDE, SIDE : 2 * SIDE]
    with torch.inference_mode():
        direct = model.module(standardise(torch.from_numpy(crop)[None, None])).argmax(dim=1)[0]
    differ = tiled[SIDE : 2 * SIDE, SIDE : 2 * SIDE] != direct.numpy()
    assert differ.mean() <= 0.03, f"{differ.sum()} of {differ.size} pixels differ"
    assert tiled.shape == micrograph.shape


def test_every_format_gives_masks_of_its_family_and_overlays(trained, micrograph, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    np.save(inputs / "m.npy", micrograph)
    tifffile.imwrite(inputs / "t.tif", np.stack([micrograph, micrograph[::-1]]))
    scaled = (255 * (micrograph - micrograph.min()) / np.ptp(micrograph)).astype(np.uint8)
    Image.fromarray(scaled[:50, :70]).save(inputs / "p.png")  # odd size, wider than tall
    with h5py.File(inputs / "h.h5", "w") as handle:
        handle.create_dataset("images", data=micrograph[None]).attrs["pixel_size_a"] = 3.1
    out = tmp_path / "out"
    assert main(["predict", "tiny", str(inputs), "--out", str(out), "--batch-size", "3"]) == 0
    said = {
        line.split(" -> ")[0].rsplit("/", 1)[1]: line
        for line in capsys.readouterr().out.splitlines()
    }
    for name in ("m.npy", "t.tif", "p.png"):  # they record none: the model's was assumed
        assert f"{name} records no pixel size: assumed the model's 3.2 Å" in said[name]
    assert "assumed" not in said["h.h5"]  # it records 3.1 Å
    assert np.load(out / "m_mask.npy").shape == micrograph.shape
    assert tifffile.imread(out / "t_mask.tif").shape == (2, *micrograph.shape)
    png = np.asarray(Image.open(out / "p_mask.png"))
    assert png.shape == (50, 70) and set(np.unique(png)) <= {0, 255}
    with h5py.File(out / "h_mask.h5") as handle:
        assert handle["masks"].shape == (1, *micrograph.shape)
    for name in ("m", "t_0", "t_1", "p", "h"):
        assert Image.open(out / f"{name}_overlay.png").mode == "RGB"
    same = np.load(out / "m_mask.npy")
    assert np.array_equal(tifffile.imread(out / "t_mask.tif")[0], same)


def test_a_different_pixel_size_is_refused_unless_rescaled_or_forced(
    trained, micrograph, tmp_path, capsys
):
    fine = tmp_path / "fine.npz"
    np.savez(fine, images=micrograph[None], pixel_size_A=np.float64(1.6))
    out = tmp_path / "out"
    assert main(["predict", "tiny", str(fine), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "1.6 Å" in error and "3.2 Å" in error and "--rescale" in error
    assert not out.exists()
    plain = tmp_path / "plain.npy"  # no pixel size in the file: --pixel-size tells it
    np.save(plain, micrograph)
    assert main(["predict", "tiny", str(plain), "--out", str(out), "--pixel-size", "4"]) == 2
    assert "4 Å" in capsys.readouterr().err
    assert main(["predict", "tiny", str(fine), "--out", str(out), "--rescale"]) == 0
    assert "resampled ×0.5" in capsys.readouterr().out
    assert np.load(out / "fine_mask.npz")["masks"].shape == (1, *micrograph.shape)
    assert main(["predict", "tiny", str(fine), "--out", str(tmp_path / "f"), "--force"]) == 0


def test_an_mrc_is_read_with_its_voxel_size_and_its_masks_keep_it(
    trained, micrograph, tmp_path, capsys
):
    for name, voxel_size in (("fine", 1.6), ("m", 3.2)):
        with mrcfile.new(tmp_path / f"{name}.mrc") as mrc:
            mrc.set_data(micrograph)
            mrc.voxel_size = voxel_size
    out = tmp_path / "out"
    assert main(["predict", "tiny", str(tmp_path / "fine.mrc"), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "fine.mrc: pixel size 1.6 Å" in error and "3.2 Å" in error
    assert not out.exists()
    assert main(["predict", "tiny", str(tmp_path / "m.mrc"), "--out", str(out)]) == 0
    masks, size = read_image(out / "m_mask.tif")
    assert masks.shape == micrograph.shape and size == pytest.approx(3.2, rel=1e-6)
    np.save(tmp_path / "m.npy", micrograph)
    assert main(["predict", "tiny", str(tmp_path / "m.npy"), "--out", str(tmp_path / "n")]) == 0
    assert np.array_equal(masks, np.load(tmp_path / "n" / "m_mask.npy"))


def test_a_non_empty_out_needs_force(trained, micrograph, tmp_path, capsys):
    image, out = tmp_path / "m.npy", tmp_path / "out"
    np.save(image, micrograph)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["predict", "tiny", str(image), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"--out: {str(out)!r}" in error and "--force" in error
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main(["predict", "tiny", str(image), "--out", str(out), "--force"]) == 0
    assert (out / "m_mask.npy").exists() and (out / "notes.txt").read_text() == "mine"


def test_bad_inputs_are_one_line_errors(trained, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 8, 8)))
    (tmp_path / "empty").mkdir()
    for name, text in (
        ("broken.png", "unreadable"),
        ("cube.npy", "expected a 2-D image"),
        ("empty", "no .png"),
        ("missing.tif", "no such file"),
    ):
        assert main(["predict", "tiny", str(tmp_path / name), "--out", str(tmp_path / "o")]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and text in error, error
    assert not (tmp_path / "o").exists()
