"""Dataset declarations: generator parameters, presets and their validation."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from zoo._typed import build, check, to_dict
from zoo.data._crystals import LATTICES
from zoo.errors import ConfigError

__all__ = ["FIDELITIES", "PRESETS", "STRUCTURES", "GeneratorSpec", "generator_spec"]

STRUCTURE_RADII_NM = {"small": (1.0, 2.0), "large": (2.5, 3.5)}
STRUCTURES = [f"{lattice}_{size}" for lattice in LATTICES for size in STRUCTURE_RADII_NM]


# the multislice generator's version: part of a multislice dataset's identity; bump it when
# its images change (abTEM pin, slicing, phonon model), full and cheap identities untouched
MULTISLICE_VERSION = 1
_NONE = object()


@dataclass(frozen=True)
class GeneratorSpec:
    """Every parameter of a simulated HRTEM dataset; the images depend on these alone.
    A zoo.data.DatasetSource: stored, identified by its parameters."""

    stored: ClassVar[bool] = True
    streamed: ClassVar[bool] = False

    lattice: str = "w_CdSe"  # crystal of the nanoparticles, one of LATTICES
    radius_nm: tuple[float, float] = (1.5, 2.5)  # particle radius range (uniform)
    particles: tuple[int, int] = (1, 5)  # particles per image, inclusive range
    min_gap_nm: float = 1.0  # smallest surface-to-surface distance between particles
    zone_axis: tuple[int, int, int] | None = None  # [uvw] along the beam; null = random
    support_thickness_nm: tuple[float, float] = (2.0, 8.0)  # amorphous carbon, per image
    support_density: float = 0.1103  # carbon atoms per Å³
    voltage_kv: float = 300.0
    defocus_nm: float = -10.0  # mean defocus; negative = underfocus
    defocus_jitter_nm: float = 1.5  # per-image Gaussian jitter of the defocus
    cs_um: float = -2.0  # spherical aberration (aberration-corrected instrument)
    aperture_mrad: float = 25.0  # objective aperture semi-angle
    focal_spread_a: float = 10.0  # σ of the focal spread, summed incoherently
    dose: float | None = 400.0  # e⁻/Å²; null = noise-free
    field_nm: float = 10.24  # field of view (the paper: 512 px × 0.2 Å)
    image_size: int = 512  # detector pixels per side
    sim_sampling_a: float = 0.2  # coarsest simulation sampling in Å
    mask_threshold_rad: float = math.pi / 64  # particle phase above which a pixel is particle
    mask_blur_a: float = 1.0  # σ of the Gaussian blur of the particle phase before threshold
    count: int = 640  # images in the dataset
    val_fraction: float = 0.2  # trailing fraction of images held out for validation
    seed: int = 0
    # the targets: particle masks (segmentation), the noise-free image (denoising) or the
    # particles' projected potential as the phase it imparts, σV in rad (phase retrieval)
    target: Literal["mask", "clean", "potential"] = "mask"
    # how the specimen becomes an exit wave: one phase grating exp(iσV) of the projected
    # potential (fidelities full and cheap) or abTEM multislice (fidelity multislice)
    propagation: Literal["phase_object", "multislice"] = "phase_object"
    phonons: int = 1  # frozen-phonon configurations averaged (multislice); 1 = atoms at rest

    def validate(self, where: str) -> None:
        check(
            self.lattice in LATTICES,
            f"{where}.lattice",
            self.lattice,
            "one of " + ", ".join(LATTICES),
        )
        lo, hi = self.radius_nm
        check(0 < lo <= hi, f"{where}.radius_nm", list(self.radius_nm), "0 < min <= max")
        check(
            1 <= self.particles[0] <= self.particles[1],
            f"{where}.particles",
            list(self.particles),
            "1 <= min <= max",
        )
        check(self.min_gap_nm >= 0, f"{where}.min_gap_nm", self.min_gap_nm, "a value >= 0")
        lo, hi = self.support_thickness_nm
        check(0 <= lo <= hi, f"{where}.support_thickness_nm", [lo, hi], "0 <= min <= max")
        for name in ("support_density", "focal_spread_a", "defocus_jitter_nm", "mask_blur_a"):
            check(getattr(self, name) >= 0, f"{where}.{name}", getattr(self, name), "a value >= 0")
        for name in (
            "voltage_kv",
            "aperture_mrad",
            "field_nm",
            "sim_sampling_a",
            "mask_threshold_rad",
        ):
            check(getattr(self, name) > 0, f"{where}.{name}", getattr(self, name), "a value > 0")
        check(
            self.dose is None or self.dose > 0,
            f"{where}.dose",
            self.dose,
            "a dose > 0 (e⁻/Å²) or null for noise-free images",
        )
        check(self.phonons >= 1, f"{where}.phonons", self.phonons, "an integer >= 1")
        check(
            self.phonons == 1 or self.propagation == "multislice",
            f"{where}.phonons",
            self.phonons,
            "1 unless fidelity is multislice",
        )
        check(self.image_size >= 8, f"{where}.image_size", self.image_size, "an integer >= 8")
        check(self.count >= 1, f"{where}.count", self.count, "an integer >= 1")
        check(
            0 <= self.val_fraction < 1, f"{where}.val_fraction", self.val_fraction, "0 <= value < 1"
        )
        check(
            2 * self.radius_nm[1] < self.field_nm,
            f"{where}.radius_nm",
            list(self.radius_nm),
            f"a largest diameter below field_nm ({self.field_nm})",
        )

    @property
    def channels(self) -> tuple[str, ...]:
        """Names of the input channels: one grey image."""
        return ("image",)

    @property
    def pixel_size_a(self) -> float:
        return self.field_nm * 10 / self.image_size

    @property
    def val_count(self) -> int:
        return round(self.count * self.val_fraction)

    def parts(self) -> tuple[str, ...]:
        return ()

    def files(self) -> tuple[str, ...]:
        return ()

    @property
    def train_count(self) -> int:
        return self.count - self.val_count

    def resolved(self) -> dict[str, Any]:
        """Every parameter, JSON-ready; ``target``, ``propagation`` and ``phonons`` only when
        not at their defaults, so identities made before they existed stay valid."""
        document = to_dict(self)
        return {k: v for k, v in document.items() if _LATER_DEFAULTS.get(k, _NONE) != v}

    def digest(self) -> str:
        """Content hash of the parameters: the dataset's identity in the cache."""
        document = self.resolved()
        if self.propagation == "multislice":  # its images change with the simulator's version
            document["multislice_version"] = MULTISLICE_VERSION
        text = json.dumps(document, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# fields added after datasets were hashed: left out of the identity at these defaults
_LATER_DEFAULTS = {"target": "mask", "propagation": "phase_object", "phonons": 1}


def _defocus(spec: dict[str, Any], where: str) -> dict[str, Any]:
    _require(spec, "defocus_nm", where, "defocus")
    return {"lattice": "w_CdSe", "radius_nm": [1.5, 2.5], "dose": 400.0, **spec}


def _noise(spec: dict[str, Any], where: str) -> dict[str, Any]:
    _require(spec, "dose", where, "noise")
    return {"lattice": "w_CdSe", "radius_nm": [1.5, 2.5], "defocus_nm": -10.0, **spec}


def _structure(spec: dict[str, Any], where: str) -> dict[str, Any]:
    _require(spec, "structure", where, "structure")
    structure = spec.pop("structure")
    check(
        structure in STRUCTURES, f"{where}.structure", structure, "one of " + ", ".join(STRUCTURES)
    )
    lattice, size = structure.rsplit("_", 1)
    defaults = {"radius_nm": list(STRUCTURE_RADII_NM[size]), "defocus_nm": -10.0, "dose": 300.0}
    return {**defaults, "lattice": lattice, **spec}


def _require(spec: dict[str, Any], key: str, where: str, preset: str) -> None:
    if key not in spec:
        raise ConfigError(f"{where}.{key}: missing; the {preset!r} preset needs it")


PRESETS = {"defocus": _defocus, "noise": _noise, "structure": _structure}
# fidelity -> how it is simulated; cheap: on the detector grid (no finer simulation
# sampling, so no binning) without focal spread, for pretraining data made fast;
# multislice: full's grid and optics with abTEM's multislice exit waves
FIDELITIES = ("cheap", "full", "multislice")
_CHEAP_KEYS = ("sim_sampling_a", "focal_spread_a")


def _fidelity(spec: dict[str, Any], where: str) -> dict[str, Any]:
    """``spec`` with its ``fidelity`` key expanded into simulation parameters (full: as
    given; cheap: detector-grid sampling, no focal spread), so equal data hash equally."""
    fidelity = spec.pop("fidelity", "full")
    check(fidelity in FIDELITIES, f"{where}.fidelity", fidelity, "cheap, full or multislice")
    if fidelity == "full":
        return spec
    if fidelity == "multislice":
        return {**spec, "propagation": "multislice"}
    given = [k for k in _CHEAP_KEYS if k in spec]
    check(
        not given,
        f"{where}.fidelity",
        fidelity,
        f"full when {given[0] if given else ''} is given (cheap sets {' and '.join(_CHEAP_KEYS)})",
    )
    defaults = GeneratorSpec()
    field = spec.get("field_nm", defaults.field_nm)
    size = spec.get("image_size", defaults.image_size)
    if not all(isinstance(v, int | float) and v > 0 for v in (field, size)):
        return spec  # the spec's own validation names the field
    sampling = field * 10 / size  # the detector pixel, rounded up until no binning
    while math.ceil(field * 10 / (size * sampling)) > 1:
        sampling = math.nextafter(sampling, math.inf)
    return {**spec, "sim_sampling_a": sampling, "focal_spread_a": 0.0}


def generator_spec(mapping: Any, where: str) -> GeneratorSpec:
    """A validated GeneratorSpec from a YAML mapping, with an optional ``preset`` key."""
    check(isinstance(mapping, dict), where, mapping, "a mapping of generator parameters")
    spec = dict(mapping)
    preset = spec.pop("preset", None)
    if preset is not None:
        check(preset in PRESETS, f"{where}.preset", preset, "one of " + ", ".join(PRESETS))
        spec = PRESETS[preset](spec, where)
    return build(GeneratorSpec, _fidelity(spec, where), where)
