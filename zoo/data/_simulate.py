"""HRTEM micrographs of crystalline nanoparticles on amorphous carbon, with masks and
the particles' projected potential.

One image is: a scene (particles cut from a crystal, a carbon support), its
projected potential, the transmission exp(iσV) (or, for ``fidelity: multislice``,
abTEM's exit waves, averaged over frozen phonons), the objective lens (defocus,
Cs, aperture, focal spread summed incoherently), a detector that bins the
simulation grid to ``image_size`` pixels, and Poisson noise at the dose.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft

from zoo.data._crystals import LATTICES, cut_sphere, random_rotation, zone_rotation
from zoo.data._multislice import multislice_exit_waves
from zoo.data._optics import (
    aberration_phase,
    focal_spread_samples,
    interaction_constant,
    phasor,
    wavelength,
)
from zoo.data._potential import projected_potential_ft
from zoo.data._scene import Scene
from zoo.data._spec import GeneratorSpec

__all__ = ["Micrograph", "Scene", "make_scene", "simulate", "simulate_scene"]

_SCENE, _OPTICS, _NOISE = 0, 1, 2  # independent random streams of one image


@dataclass(frozen=True)
class Micrograph:
    image: np.ndarray  # (S, S) float32 intensity, mean about 1
    mask: np.ndarray  # (S, S) uint8, 1 = particle
    clean: np.ndarray  # (S, S) float32 noise-free intensity, mean 1
    defocus_nm: float  # the defocus this image was taken at (after jitter)
    # (S, S) float32 phase σV (rad) of the particles' projected potential (no support, no
    # blur), binned like the image; made only for ``target: potential``
    potential: np.ndarray | None = None


def _grid(spec: GeneratorSpec) -> tuple[int, int, float]:
    """(simulation points per side, binning factor, simulation pixel in Å)."""
    field = spec.field_nm * 10
    binning = int(np.ceil(field / (spec.image_size * spec.sim_sampling_a)))
    n = spec.image_size * binning
    return n, binning, field / n


@lru_cache(maxsize=8)
def _frequencies(n: int, pixel: float) -> tuple[np.ndarray, np.ndarray]:
    """|q|² (Å⁻²) on the full fft2 grid and on the rfft2 half grid."""
    q = np.fft.fftfreq(n, pixel)
    full = (q[:, None] ** 2 + q[None, :] ** 2).astype(np.float32)
    return full, full[:, : n // 2 + 1]


@lru_cache(maxsize=16)
def _defocus_phasor(n: int, pixel: float, wavelength_a: float, offset_a: float) -> np.ndarray:
    """exp(-iπλδq²): the extra lens phase of a defocus offset δ (one focal-spread sample)."""
    return phasor(aberration_phase(_frequencies(n, pixel)[0], offset_a, 0.0, wavelength_a))


def _place(spec: GeneratorSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Radii and centres (Å) of non-overlapping particles, all inside the field of view."""
    field, gap = spec.field_nm * 10, spec.min_gap_nm * 10
    wanted = rng.integers(spec.particles[0], spec.particles[1] + 1)
    radii, centres = [], []
    for _ in range(200 * wanted):
        if len(radii) == wanted:
            break
        r = rng.uniform(*spec.radius_nm) * 10
        c = rng.uniform(r, field - r, size=2)
        if all(np.hypot(*(c - c2)) >= r + r2 + gap for r2, c2 in zip(radii, centres, strict=True)):
            radii.append(r)
            centres.append(c)
    return np.array(radii), np.array(centres).reshape(-1, 2)


def make_scene(spec: GeneratorSpec, index: int) -> Scene:
    """The atoms of image ``index``; depends on (spec scene parameters, seed, index) only."""
    rng = np.random.default_rng([spec.seed, index, _SCENE])
    crystal = LATTICES[spec.lattice]
    radii, centres = _place(spec, rng)
    particles: dict[str, list[np.ndarray]] = {}
    depths: dict[str, list[np.ndarray]] = {}
    for radius, centre in zip(radii, centres, strict=True):
        if spec.zone_axis is None:
            rotation = random_rotation(rng)
        else:
            rotation = zone_rotation(crystal, spec.zone_axis, rng.uniform(0, 2 * np.pi))
        for element, xyz in cut_sphere(crystal, radius, rotation, rng).items():
            particles.setdefault(element, []).append(xyz[:, :2] + centre)
            depths.setdefault(element, []).append(xyz[:, 2] + radius)
    side = spec.field_nm * 10
    thickness = rng.uniform(*spec.support_thickness_nm) * 10
    atoms = rng.poisson(spec.support_density * side**2 * thickness)
    support = rng.uniform(0, side, size=(atoms, 2))
    joined = {e: np.concatenate(v) for e, v in particles.items()}
    height = {e: np.concatenate(v) for e, v in depths.items()}
    return Scene(joined, support, radii, centres, height, thickness)


def _bin(array: np.ndarray, factor: int) -> np.ndarray:
    n = array.shape[0] // factor
    return array.reshape(n, factor, n, factor).mean(axis=(1, 3))


def simulate_scene(spec: GeneratorSpec, scene: Scene, index: int) -> Micrograph:
    """Image ``scene`` with the optics and detector of ``spec``."""
    n, binning, pixel = _grid(spec)
    q2_half = _frequencies(n, pixel)[1]
    sigma = interaction_constant(spec.voltage_kv * 1e3)

    particle_ft = projected_potential_ft(scene.particles, n, pixel, q2_half)
    if spec.propagation == "multislice":
        exit_waves = multislice_exit_waves(spec, scene, n, index)
    else:
        support_ft = projected_potential_ft({"C": scene.support}, n, pixel, q2_half)
        potential = fft.irfft2(particle_ft + support_ft, s=(n, n), workers=-1)
        exit_waves = [np.exp(1j * sigma * potential).astype(np.complex64)]
    blur = np.exp(-2 * np.pi**2 * spec.mask_blur_a**2 * q2_half)
    particle_phase = sigma * fft.irfft2(particle_ft * blur, s=(n, n), workers=-1)
    mask = _bin((particle_phase > spec.mask_threshold_rad).astype(np.float32), binning) > 0.5
    optics_rng = np.random.default_rng([spec.seed, index, _OPTICS])
    defocus_nm = spec.defocus_nm + spec.defocus_jitter_nm * optics_rng.normal()
    intensity = sum(_lens(spec, wave, pixel, defocus_nm) for wave in exit_waves)
    clean = _bin(intensity, binning)
    clean = (clean / clean.mean()).astype(np.float32)
    phase = None
    if spec.target == "potential":
        phase = _bin(sigma * fft.irfft2(particle_ft, s=(n, n), workers=-1), binning)
        phase = phase.astype(np.float32)
    image = _detect(spec, clean, index)
    return Micrograph(image, mask.astype(np.uint8), clean, defocus_nm, phase)


def _lens(
    spec: GeneratorSpec, exit_wave: np.ndarray, pixel: float, defocus_nm: float
) -> np.ndarray:
    """Image intensity of one exit wave: objective aberrations, aperture and focal spread."""
    n = exit_wave.shape[0]
    q2 = _frequencies(n, pixel)[0]
    lam = wavelength(spec.voltage_kv * 1e3)
    spectrum = fft.fft2(exit_wave, workers=-1)  # before the phasor: full's images bit for bit
    q_max = spec.aperture_mrad * 1e-3 / lam
    chi = aberration_phase(q2, defocus_nm * 10, spec.cs_um * 1e4, lam)
    image_wave = spectrum * phasor(chi) * (q2 <= q_max**2)
    intensity = np.zeros((n, n), np.float32)
    for offset, weight in zip(*focal_spread_samples(spec.focal_spread_a), strict=True):
        spread = _defocus_phasor(n, pixel, lam, float(offset))
        intensity += weight * np.abs(fft.ifft2(image_wave * spread, workers=-1)) ** 2
    return intensity


def _detect(spec: GeneratorSpec, clean: np.ndarray, index: int) -> np.ndarray:
    """Poisson counts at ``dose`` e⁻/Å² per detector pixel, scaled back to mean about 1."""
    if spec.dose is None:
        return clean
    electrons = spec.dose * (spec.field_nm * 10 / spec.image_size) ** 2
    rng = np.random.default_rng([spec.seed, index, _NOISE])
    return (rng.poisson(clean * electrons) / electrons).astype(np.float32)


def simulate(spec: GeneratorSpec, index: int) -> Micrograph:
    """Image ``index`` of the dataset ``spec``: deterministic in (spec, index)."""
    return simulate_scene(spec, make_scene(spec, index), index)
