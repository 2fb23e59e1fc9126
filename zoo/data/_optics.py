"""Electron optics: wavelength, interaction constant and the objective lens."""

from __future__ import annotations

import numpy as np

__all__ = [
    "aberration_phase",
    "focal_spread_samples",
    "interaction_constant",
    "phasor",
    "wavelength",
]

_REST_ENERGY_EV = 510998.95


def wavelength(voltage_v: float) -> float:
    """Relativistic electron wavelength in Å."""
    return 12.26426 / np.sqrt(voltage_v * (1 + voltage_v / (2 * _REST_ENERGY_EV)))


def interaction_constant(voltage_v: float) -> float:
    """σ in rad/(V·Å): the phase an electron picks up per unit projected potential."""
    factor = (_REST_ENERGY_EV + voltage_v) / (2 * _REST_ENERGY_EV + voltage_v)
    return 2 * np.pi / (wavelength(voltage_v) * voltage_v) * factor


def aberration_phase(
    q2: np.ndarray, defocus_a: float, cs_a: float, wavelength_a: float
) -> np.ndarray:
    """χ(q) = π λ Δf q² + π/2 Cs λ³ q⁴ in rad; negative defocus is underfocus."""
    return np.pi * wavelength_a * q2 * (defocus_a + 0.5 * cs_a * wavelength_a**2 * q2)


def phasor(angle: np.ndarray) -> np.ndarray:
    """exp(-i·angle) as complex64, without a complex128 intermediate."""
    out = np.empty(angle.shape, np.complex64)
    out.real, out.imag = np.cos(angle), -np.sin(angle)
    return out


def focal_spread_samples(spread_a: float, points: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Defocus offsets (Å) and weights of a Gauss-Hermite rule for a Gaussian focal spread."""
    if spread_a <= 0:
        return np.zeros(1), np.ones(1)
    nodes, weights = np.polynomial.hermite.hermgauss(points)
    return np.sqrt(2) * spread_a * nodes, weights / np.sqrt(np.pi)
