"""fidelity: multislice: abTEM exit waves through the same scene, lens and detector as full."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

from tests.test_physics import _strongest_spacing
from zoo.data import LATTICES, _spec, generator_spec, simulate

# one 1.5 nm CdSe particle down [001], no support, noise-free
THIN = {
    "dose": None,
    "defocus_jitter_nm": 0.0,
    "count": 1,
    "lattice": "w_CdSe",
    "zone_axis": [0, 0, 1],
    "radius_nm": [1.5, 1.5],
    "particles": [1, 1],
    "support_thickness_nm": [0, 0],
    "image_size": 64,
    "defocus_nm": -10.0,
}


def _image(fidelity: str, **changes) -> np.ndarray:
    return simulate(generator_spec({**THIN, **changes, "fidelity": fidelity}, "d"), 0).clean


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_thin_particle_multislice_matches_full():
    multislice, full = _image("multislice"), _image("full")
    assert multislice.shape == full.shape == (64, 64) and multislice.dtype == np.float32
    assert _corr(multislice, full) >= 0.9


def test_multislice_fringes_have_the_lattice_spacing():
    measured = _strongest_spacing(_image("multislice", image_size=128), 102.4 / 128)
    expected = [LATTICES["w_CdSe"].d_spacing(hkl) for hkl in ((1, 0, 0), (1, 1, 0))]
    assert min(abs(measured - d) / d for d in expected) < 0.03, (measured, expected)


def test_multislice_contrast_reverses_across_focus_as_full_does():
    under, over = _image("multislice", defocus_nm=-10.0), _image("multislice", defocus_nm=10.0)
    full_under, full_over = _image("full", defocus_nm=-10.0), _image("full", defocus_nm=10.0)
    assert _corr(full_under, full_over) < -0.5
    assert _corr(under, over) < -0.5
    assert _corr(over, full_over) >= 0.9


def test_frozen_phonons_average_configurations_on_the_same_mask_and_scene():
    spec = generator_spec({**THIN, "fidelity": "multislice", "phonons": 2, "dose": 200.0}, "d")
    phonons, rest = (
        simulate(spec, 0),
        simulate(generator_spec({**THIN, "fidelity": "multislice"}, "d"), 0),
    )
    assert np.array_equal(phonons.mask, rest.mask) and np.isfinite(phonons.image).all()
    assert not np.array_equal(phonons.clean, rest.clean) and _corr(phonons.clean, rest.clean) > 0.8
    assert np.array_equal(simulate(spec, 0).image, phonons.image)  # deterministic in (spec, index)


def test_multislice_has_its_own_identity_and_full_and_cheap_keep_theirs(monkeypatch):
    base = {"preset": "noise", "dose": 100, "image_size": 32}
    # digests made before multislice existed
    assert generator_spec(base, "d").digest() == "ae9c5040eb584852"
    assert generator_spec({**base, "fidelity": "cheap"}, "d").digest() == "f056deef9b4dbf1c"
    multislice = generator_spec({**base, "fidelity": "multislice"}, "d")
    assert multislice.propagation == "multislice" and multislice.phonons == 1
    assert multislice.digest() != generator_spec(base, "d").digest()
    assert (
        multislice.digest()
        != generator_spec({**base, "fidelity": "multislice", "phonons": 3}, "d").digest()
    )
    first = multislice.digest()
    monkeypatch.setattr(_spec, "MULTISLICE_VERSION", _spec.MULTISLICE_VERSION + 1)
    assert multislice.digest() != first  # a new simulator version is a new dataset


def test_abtem_is_imported_only_for_multislice_images():
    code = (
        "import sys, zoo.cli, zoo.data;"
        "zoo.data.simulate(zoo.data.generator_spec({'image_size': 16, 'count': 1}, 'd'), 0);"
        "print(sorted({'abtem', 'ase', 'numba'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fidelity": "multislice", "phonons": 0}, r"d\.phonons: 0 .*an integer >= 1"),
        ({"phonons": 2}, r"d\.phonons: 2 .*1 unless fidelity is multislice"),
        ({"fidelity": "exact"}, r"d\.fidelity: 'exact' .*cheap, full or multislice"),
    ],
)
def test_bad_multislice_settings_name_the_field(changes, message):
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        generator_spec({**THIN, **changes}, "d")


def test_multislice_uses_the_gpu_only_where_cupy_sees_one(monkeypatch):
    from zoo.data import _multislice

    def cupy_seeing(count):
        def devices():
            if isinstance(count, Exception):
                raise count
            return count

        return types.SimpleNamespace(
            cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=devices))
        )

    monkeypatch.setattr(_multislice.importlib.util, "find_spec", lambda name: None)
    assert _multislice._device() == "cpu"  # no CuPy installed
    monkeypatch.setattr(_multislice.importlib.util, "find_spec", lambda name: object())
    for seen, device in ((1, "gpu"), (0, "cpu"), (RuntimeError("no CUDA driver"), "cpu")):
        monkeypatch.setitem(sys.modules, "cupy", cupy_seeing(seen))
        assert _multislice._device() == device
