"""zoo predict: any size (tiled and blended), the training standardisation, masks in the
input's format family, overlays, the pixel-size check and one-line errors."""

from __future__ import annotations

from dataclasses import replace

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
from zoo.predict import PredictOptions, apply, load_bundle, masks
from zoo.store import Tracker
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
    tiled = masks(apply(load_bundle("tiny", Tracker(), "cpu"), micrograph))
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
    probabilities = np.load(out / "m_probabilities.npy")  # beside the masks: (classes, H, W)
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, *micrograph.shape)
    assert np.allclose(probabilities.sum(axis=0), 1, atol=1e-5)
    assert np.array_equal(probabilities.argmax(axis=0), same)
    assert tifffile.imread(out / "t_probabilities.tif").shape == (2, 2, *micrograph.shape)


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


RESIDUAL = {  # image and baseline in, baseline + correction out; reach 9 px (depth 1)
    "experiment": "residual",
    "seed": 2,
    "model": {
        "encoder": "tu-test_resnet",
        "encoder_depth": 1,
        "decoder_channels": [16],
        "task": "regression",
        "inputs": ["image", "baseline"],
        "classes": 1,
        "head": "logits",
        "output": "residual",
        "residual_input": "baseline",
        "input_scaling": 2.0,  # pointwise: the whole image is scaled as any tile of it
    },
    "datasets": {
        "pairs": {"path": "pairs", "channels": ["image", "baseline"], "pixel_size_a": 1.6}
    },
    "stages": [{"name": "fit", "train": "pairs", "epochs": 1, "batch_size": 4, "loss": "mse"}],
}


def _pair(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(image and baseline (2, side, side), target): a smooth field, the baseline the
    field plus noise, the image an offset noisy copy."""
    y, x = np.mgrid[:side, :side] / 32
    a, b = rng.uniform(0.5, 2, 2)
    target = np.sin(2 * np.pi * (a * x + b * y)).astype(np.float32)
    noise = rng.standard_normal((2, side, side)).astype(np.float32)
    return np.stack([2 + target + noise[0], target + 0.3 * noise[1]]), target


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    """A project with a trained two-channel residual regression model, experiment
    "residual" (32 px pairs of 1.6 Å, one epoch)."""
    import yaml

    root = tmp_path_factory.mktemp("residual")
    rng = np.random.default_rng(0)
    for sub in ("inputs", "targets"):
        (root / "pairs" / sub).mkdir(parents=True)
    for i in range(10):
        inputs, target = _pair(rng, SIDE)
        np.save(root / "pairs" / "inputs" / f"p{i}.npy", inputs)
        np.save(root / "pairs" / "targets" / f"p{i}.npy", target)
    (root / "run.yaml").write_text(yaml.safe_dump(RESIDUAL))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_ROOT", str(root))
        patch.chdir(root)
        assert main(["train", "run.yaml"]) == 0
    return root


@pytest.fixture
def in_residual(residual, monkeypatch):
    monkeypatch.setenv("ZOO_ROOT", str(residual))
    monkeypatch.chdir(residual)
    return residual


def _whole(image: np.ndarray) -> np.ndarray:
    """The residual model applied to the whole image at once, scaled by hand."""
    model = load("residual", Tracker())
    with torch.inference_mode():
        return model.module(torch.from_numpy(image * 2.0)[None])[0, 0].numpy() / 2.0


def test_a_residual_model_tiled_equals_the_whole_image_away_from_seams(in_residual, tmp_path):
    image = _pair(np.random.default_rng(5), 3 * SIDE)[0]  # 3x the training size
    np.save(tmp_path / "big.npy", image)
    tifffile.imwrite(tmp_path / "big.tif", image, resolution=(1e8 / 1.6,) * 2, resolutionunit=3)
    whole = _whole(image)
    assert np.abs(whole - image[1]).mean() > 1e-3  # the model adds a correction
    out = tmp_path / "out"
    argv = ["predict", "residual", str(tmp_path / "big.npy"), "--tile", str(SIDE)]
    assert main([*argv, "--out", str(out)]) == 0  # file data: the training size is not known
    tiled = np.load(out / "big_output.npy")
    assert tiled.dtype == np.float32 and tiled.shape == image.shape[1:]
    # 32 px tiles 16 apart; a quarter of the 16 px overlap discarded at shared edges, the
    # next half faded: pixels 12-19 of every 16 (and the image borders) lie only in tiles
    # where they are 12 px from an edge, beyond the model's reach of 9
    clear = (np.arange(3 * SIDE) % 16 >= 12) | (np.arange(3 * SIDE) % 16 < 4)
    clear[:20] = clear[-20:] = True
    assert np.allclose(tiled[np.ix_(clear, clear)], whole[np.ix_(clear, clear)], atol=1e-5)
    assert not np.allclose(tiled, whole, atol=1e-5)  # seams differ: the check can fail
    # 48 px overlap: 12 px discarded, beyond the reach everywhere
    argv = ["predict", "residual", str(tmp_path / "big.tif"), "--tile", "64", "--overlap", "48"]
    assert main([*argv, "--out", str(tmp_path / "wide")]) == 0
    wide, size = read_image(tmp_path / "wide" / "big_output.tif")
    assert np.allclose(wide, whole, atol=1e-5) and size == pytest.approx(1.6, rel=1e-6)


def test_a_two_channel_model_refuses_one_channel_images_in_one_line(in_residual, tmp_path, capsys):
    np.save(tmp_path / "grey.npy", np.zeros((3 * SIDE, 3 * SIDE), np.float32))
    np.save(tmp_path / "three.npy", np.zeros((3, SIDE, SIDE), np.float32))
    for name in ("grey.npy", "three.npy"):
        out = tmp_path / "out"
        assert main(["predict", "residual", str(tmp_path / name), "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and name in error, error
        assert "takes 2 (image, baseline): expected (2, H, W) or a stack (N, 2, H, W)" in error
        assert not out.exists()


CAPPED = """
import resource, sys
import torch
from zoo.cli import main

def data_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmData"):
            return int(line.split()[1])

small, big, out, headroom = sys.argv[1:5]
torch.set_num_threads(1)
argv = ["--tile", "64", "--overlap", "16", "--batch-size", "1"]
assert main(["predict", "residual", small, "--out", out + "-warm", *argv]) == 0
cap = (data_kib() + int(headroom)) * 1024
resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.getrlimit(resource.RLIMIT_DATA)[1]))
sys.exit(main(["predict", "residual", big, "--out", out, *argv]))
"""


def test_per_dataset_scaling_uses_the_training_splits_statistics(in_residual):
    from zoo._apply import _dataset_stats
    from zoo.modelzoo import read_config

    loaded = load("residual", Tracker())
    paths = Tracker().paths
    mean, std = _dataset_stats(read_config(loaded.weights.parent / "config.yaml"), paths)
    train = np.stack([np.load(f"pairs/inputs/p{i}.npy") for i in range(8)])  # 8 of 10
    assert np.allclose(mean, train.mean(axis=(0, 2, 3)), rtol=1e-5)
    assert np.allclose(std, train.std(axis=(0, 2, 3)), rtol=1e-4)
    model = load_bundle("residual", Tracker(), "cpu")
    model = replace(model, model=replace(model.model, input_scaling="per_dataset"))
    model = replace(model, stats=(mean, std))
    image = _pair(np.random.default_rng(3), 3 * SIDE)[0]
    scaled = (image - mean[:, None, None]) / std[:, None, None]
    scaled = torch.from_numpy(scaled).half().float()  # kept as training keeps it
    with torch.inference_mode():
        direct = model.module(scaled[None])[0, 0].numpy() * std[1] + mean[1]
    tiled = apply(model, image, PredictOptions(tile=3 * SIDE))[0]
    assert np.allclose(tiled, direct, atol=1e-4)


def test_tta_averages_the_eight_flips_and_rotations(in_residual):
    from zoo.train import dihedral

    image = _pair(np.random.default_rng(2), 3 * SIDE)[0]
    model = load_bundle("residual", Tracker(), "cpu")
    plain = PredictOptions(tile=SIDE)
    averaged = apply(model, image, replace(plain, tta=True))
    expected = np.zeros_like(averaged)
    for k in range(8):  # each transform of the image predicted, its output transformed back
        seen = apply(model, dihedral(torch.from_numpy(image), k).numpy(), plain)
        back = torch.from_numpy(seen)
        back = torch.flip(back, dims=(-1,)) if k >= 4 else back
        expected += torch.rot90(back, -(k % 4), dims=(-2, -1)).numpy() / 8
    assert np.allclose(averaged, expected, atol=1e-5)
    assert not np.allclose(averaged, apply(model, image, plain), atol=1e-3)
    out = in_residual / "tta"
    argv = ["predict", "residual", str(in_residual / "pairs" / "inputs"), "--tta", "--tile", "32"]
    assert main([*argv, "--out", str(out)]) == 0  # ten files, one batch
    first = np.load(in_residual / "pairs" / "inputs" / "p0.npy")
    expected = apply(model, first, replace(plain, tta=True))[0]
    assert np.allclose(np.load(out / "p0_output.npy"), expected, atol=1e-5)


def test_an_image_beyond_max_pixels_is_refused_in_one_line(in_residual, tmp_path, capsys):
    np.lib.format.open_memmap(tmp_path / "huge.npy", "w+", np.float32, (2, 40000, 30000))
    out = tmp_path / "out"
    assert main(["predict", "residual", str(tmp_path / "huge.npy"), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "huge.npy: 40000 x 30000 = 1200000000 pixels" in error
    assert "--max-pixels 1073741824" in error and not out.exists()
    argv = ["predict", "residual", str(tmp_path / "huge.npy"), "--max-pixels", "1000"]
    assert main([*argv, "--out", str(out)]) == 2 and "--max-pixels 1000" in capsys.readouterr().err


def test_progress_off_a_terminal_is_plain_lines(monkeypatch, capsys):
    from zoo import predict

    monkeypatch.setattr(predict, "PLAIN_EVERY_S", 0.0)
    progress = predict._Progress("big.npy", 40)
    progress(16)
    progress(24)
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(", ")[0] for line in lines] == [
        "big.npy: 16 of 40 tiles",
        "big.npy: 40 of 40 tiles",
    ]


@pytest.mark.parametrize("overlap", [0, 5, 16, 31])
def test_tile_weights_sum_to_one_on_any_size(overlap):
    from zoo._tiles import Tiling

    tiling = Tiling(37, 100, 32, overlap)
    total = np.zeros((37, 100))
    weights = tiling.weights()
    for y, x in tiling.corners():
        total[y : y + 32, x : x + 32] += weights(y, x)
    assert np.allclose(total, 1)


def test_a_registered_regression_model_loads_in_mlflow_and_predicts_as_zoo_does(
    in_residual, tmp_path
):
    """Every task is an MLflow model: the two-channel residual model's outputs from
    ``mlflow.pyfunc.load_model`` equal ``zoo predict``'s, shape (N, K, H, W)."""
    import mlflow

    image = _pair(np.random.default_rng(7), 2 * SIDE)[0]
    np.save(tmp_path / "pair.npy", image)
    assert main(["models", "register", "residual", "--name", "res", "--alias", "best"]) == 0
    assert (
        main(["predict", "res@best", str(tmp_path / "pair.npy"), "--out", str(tmp_path / "o")]) == 0
    )
    written = np.load(tmp_path / "o" / "pair_output.npy")
    mlflow.set_tracking_uri(f"sqlite:///{in_residual / 'mlflow.db'}")
    try:
        model = mlflow.pyfunc.load_model("models:/res@best")
        found = model.predict(image[None].astype(np.float32))
    finally:
        mlflow.set_tracking_uri(None)
    assert found.shape == (1, 1, 2 * SIDE, 2 * SIDE) and found.dtype == np.float32
    np.testing.assert_allclose(found[0, 0], written, atol=1e-5)
