"""The generator's images obey the physics they claim: fringes, contrast, noise, masks."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.data import LATTICES, generator_spec, make_scene, simulate
from zoo.errors import ConfigError

NOISE_FREE = {"dose": None, "defocus_jitter_nm": 0.0, "count": 1}


def _strongest_spacing(image: np.ndarray, pixel_a: float) -> float:
    """d (Å) of the strongest power-spectrum peak between 0.15 and 0.7 Å⁻¹."""
    n = image.shape[0]
    window = np.hanning(n)
    spectrum = (
        np.abs(np.fft.fft2((image - image.mean()) * np.outer(window, window), s=(4 * n, 4 * n)))
        ** 2
    )
    q = np.fft.fftfreq(4 * n, pixel_a)
    qx, qy = np.meshgrid(q, q, indexing="ij")
    radius = np.hypot(qx, qy)
    peak = np.argmax(np.where((radius > 0.15) & (radius < 0.7), spectrum, 0))
    near = np.hypot(qx - qx.flat[peak], qy - qy.flat[peak]) < 0.012
    return float(1 / np.average(radius[near], weights=spectrum[near]))


@pytest.mark.parametrize(
    ("lattice", "zone", "reflections"),
    [
        ("w_CdSe", (0, 0, 1), [(1, 0, 0), (1, 1, 0)]),
        ("fcc_Ag", (1, 1, 0), [(1, 1, 1), (2, 0, 0)]),
        ("dc_Si", (1, 1, 0), [(1, 1, 1), (2, 2, 0)]),
        ("bcc_Fe", (0, 0, 1), [(1, 1, 0), (2, 0, 0)]),
        ("spinel_Fe3O4", (1, 1, 0), [(1, 1, 1), (2, 2, 0), (4, 0, 0)]),
    ],
)
@pytest.mark.parametrize("image_size", [128, 512])
def test_fringe_spacing_matches_d_spacing(lattice, zone, reflections, image_size):
    spec = generator_spec(
        {
            **NOISE_FREE,
            "lattice": lattice,
            "zone_axis": list(zone),
            "radius_nm": [2.5, 2.5],
            "particles": [1, 1],
            "support_thickness_nm": [0, 0],
            "image_size": image_size,
        },
        "d",
    )
    measured = _strongest_spacing(simulate(spec, 0).clean, 102.4 / image_size)
    expected = [LATTICES[lattice].d_spacing(hkl) for hkl in reflections]
    error = min(abs(measured - d) / d for d in expected)
    assert error < 0.03, f"{lattice}: fringes at {measured:.3f} Å, lattice planes at {expected}"


def test_contrast_is_smallest_in_focus_and_grows_with_defocus():
    defocus = np.arange(-25, 30, 5)
    contrast = np.array(
        [
            simulate(
                generator_spec({**NOISE_FREE, "defocus_nm": float(d), "image_size": 64}, "d"), 0
            ).clean.std()
            for d in defocus
        ]
    )
    assert abs(defocus[np.argmin(contrast)]) <= 5
    underfocus, overfocus = contrast[defocus <= 0][::-1], contrast[defocus >= 0]
    assert np.all(np.diff(underfocus) > 0) and np.all(np.diff(overfocus) > 0), contrast


def test_shot_noise_variance_scales_as_one_over_dose():
    pixel_area = (102.4 / 64) ** 2
    for dose in (30.0, 300.0, 3000.0):
        spec = generator_spec({"defocus_jitter_nm": 0.0, "dose": dose, "image_size": 64}, "d")
        micrograph = simulate(spec, 0)
        measured = np.var(micrograph.image - micrograph.clean)
        expected = micrograph.clean.mean() / (dose * pixel_area)
        assert measured == pytest.approx(expected, rel=0.10), dose


def test_mask_area_matches_projected_particle_area():
    spec = generator_spec({"preset": "defocus", "defocus_nm": -10, "image_size": 128}, "d")
    for index in range(4):
        projected = np.sum(np.pi * make_scene(spec, index).radii_a ** 2)
        masked = simulate(spec, index).mask.sum() * (102.4 / 128) ** 2
        assert masked == pytest.approx(projected, rel=0.10)


def test_particles_stay_inside_the_field_and_apart():
    spec = generator_spec(
        {"preset": "structure", "structure": "fcc_Cu_large", "particles": [5, 5], "image_size": 64},
        "d",
    )
    for index in range(5):
        scene = make_scene(spec, index)
        assert np.all(scene.centres_a - scene.radii_a[:, None] >= 0)
        assert np.all(scene.centres_a + scene.radii_a[:, None] <= 102.4)
        for i in range(len(scene.radii_a)):
            for j in range(i):
                gap = np.hypot(*(scene.centres_a[i] - scene.centres_a[j]))
                assert gap - scene.radii_a[i] - scene.radii_a[j] >= 10 - 1e-9


def test_same_seed_same_arrays_other_seed_differs():
    spec = {"preset": "noise", "dose": 75, "image_size": 32}
    first = simulate(generator_spec(spec, "d"), 3)
    again = simulate(generator_spec(spec, "d"), 3)
    other = simulate(generator_spec({**spec, "seed": 1}, "d"), 3)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.mask, again.mask)
    assert not np.array_equal(first.image, other.image)


def test_small_images_show_the_same_particles_as_large_ones():
    small = simulate(generator_spec({**NOISE_FREE, "image_size": 64}, "d"), 0).mask
    large = simulate(generator_spec({**NOISE_FREE, "image_size": 512}, "d"), 0).mask
    binned = large.reshape(64, 8, 64, 8).mean(axis=(1, 3)) > 0.5
    assert np.mean(binned == small.astype(bool)) > 0.98


def test_potential_target_is_the_particles_phase_where_the_mask_is():
    """Phase retrieval: σV of the particles, binned like the image: finite, >= 0 up to
    Fourier ringing, large inside the mask and small outside it."""
    spec = generator_spec(
        {"preset": "defocus", "defocus_nm": -10, "image_size": 64, "target": "potential"}, "d"
    )
    micrograph = simulate(spec, 0)
    phase, mask = micrograph.potential, micrograph.mask.astype(bool)
    assert phase.shape == (64, 64) and phase.dtype == np.float32 and np.isfinite(phase).all()
    assert phase[mask].mean() > 10 * abs(phase[~mask].mean())
    assert np.corrcoef(phase.ravel(), mask.ravel())[0, 1] > 0.7
    plain = simulate(generator_spec({**spec.resolved(), "target": "mask"}, "d"), 0)
    assert plain.potential is None and np.array_equal(plain.image, micrograph.image)


def test_cheap_fidelity_simulates_on_the_detector_grid_without_focal_spread():
    base = {"preset": "noise", "dose": 100, "image_size": 32}
    cheap = generator_spec({**base, "fidelity": "cheap"}, "d")
    assert cheap.focal_spread_a == 0 and cheap.sim_sampling_a == pytest.approx(102.4 / 32)
    full = generator_spec({**base, "fidelity": "full"}, "d")
    assert full.digest() == generator_spec(base, "d").digest()  # existing specs keep theirs
    explicit = {**base, "sim_sampling_a": cheap.sim_sampling_a, "focal_spread_a": 0.0}
    assert cheap.digest() == generator_spec(explicit, "d").digest() != full.digest()
    assert not np.array_equal(simulate(cheap, 0).clean, simulate(full, 0).clean)
    with pytest.raises(ConfigError, match=r"d\.fidelity: 'cheap' .*full when focal_spread_a"):
        generator_spec({**base, "fidelity": "cheap", "focal_spread_a": 5.0}, "d")
    with pytest.raises(ConfigError, match=r"d\.fidelity: 'high' .*cheap, full or multislice"):
        generator_spec({**base, "fidelity": "high"}, "d")
