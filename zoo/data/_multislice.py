"""Exit waves by multislice propagation with abTEM (``fidelity: multislice``).

The scene's atoms (particles resting on the carbon support) become an ``ase.Atoms``
box on the simulation grid of ``full``; abTEM slices its projected potential every
``SLICE_A`` Å and propagates a plane wave through the slices. The lens, focal spread,
detector, dose and mask stay zoo's own (zoo/data/_simulate.py), so multislice and
``full`` images differ only in how the specimen turns into an exit wave. abTEM is
imported here only, when a multislice image is made.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import numpy as np

from zoo.data._scene import Scene
from zoo.data._spec import GeneratorSpec

if TYPE_CHECKING:
    from ase import Atoms


__all__ = ["multislice_exit_waves"]

SLICE_A = 2.0  # slice thickness of the projected potential
PHONON_SIGMA_A = 0.1  # rms thermal displacement of every atom in a frozen-phonon configuration
_DEPTH, _PHONONS = 3, 4  # random streams of one image beyond the scene, optics and noise


def _device() -> str:
    """``gpu`` when abTEM's GPU backend (CuPy) is installed and sees a device, else ``cpu``."""
    if importlib.util.find_spec("cupy") is None:
        return "cpu"
    try:
        import cupy

        return "gpu" if cupy.cuda.runtime.getDeviceCount() > 0 else "cpu"
    except Exception:  # a CuPy without a driver or device: the CPU
        return "cpu"


def _atoms(spec: GeneratorSpec, scene: Scene, index: int) -> Atoms:
    """The scene as ``ase.Atoms`` in a periodic box of field × field × thickness Å: support
    atoms at uniform depths below the particles, each particle resting on the support."""
    from ase import Atoms

    field = spec.field_nm * 10
    support_a = scene.support_thickness_a
    rng = np.random.default_rng([spec.seed, index, _DEPTH])
    symbols = ["C"] * len(scene.support)
    xyz = [np.column_stack([scene.support, rng.uniform(0, support_a, len(scene.support))])]
    for element, xy in scene.particles.items():
        symbols += [element] * len(xy)
        xyz.append(np.column_stack([xy, support_a + scene.depths[element]]))
    positions = np.concatenate(xyz)
    top = positions[:, 2].max(initial=0.0)
    return Atoms(symbols, positions=positions, cell=[field, field, top + SLICE_A], pbc=True)


def multislice_exit_waves(spec: GeneratorSpec, scene: Scene, n: int, index: int) -> np.ndarray:
    """(phonons, n, n) complex64 exit waves of a unit plane wave through ``scene`` on the
    n × n simulation grid: one with atoms at rest for ``phonons: 1``, else one per
    frozen-phonon configuration (seeded by spec seed and index) to be averaged incoherently."""
    import abtem

    atoms = _atoms(spec, scene, index)
    specimen = atoms
    if spec.phonons > 1:
        seed = int(np.random.default_rng([spec.seed, index, _PHONONS]).integers(2**31))
        specimen = abtem.FrozenPhonons(atoms, spec.phonons, PHONON_SIGMA_A, seed=seed)
    device = _device()
    potential = abtem.Potential(specimen, gpts=n, slice_thickness=SLICE_A, device=device)
    wave = abtem.PlaneWave(energy=spec.voltage_kv * 1e3, device=device)
    with abtem.config.set({"dask.lazy": False, "device": device}):
        waves = wave.multislice(potential, lazy=False)
    array = np.asarray(waves.to_cpu().array, np.complex64).reshape(-1, n, n)
    return array.swapaxes(1, 2)  # abTEM indexes (x, y); zoo's images (row = y, column = x)
