"""The atoms of one simulated image, shared by the weak-phase (zoo.data._simulate) and
multislice (zoo.data._multislice) simulations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Scene"]


@dataclass(frozen=True)
class Scene:
    """Atoms of one image: element -> (m, 2) projected positions (Å) for particles and support;
    ``depths``: element -> (m,) height (Å) of each particle atom above its particle's bottom."""

    particles: dict[str, np.ndarray]
    support: np.ndarray
    radii_a: np.ndarray
    centres_a: np.ndarray
    depths: dict[str, np.ndarray]
    support_thickness_a: float
