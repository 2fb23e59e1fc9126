"""Projected atomic potentials from tabulated electron scattering factors.

Scattering factors are the 5-Gaussian fits of Peng, Ren, Dudarev & Whelan,
Acta Cryst. A52 (1996) 257-276 (table for 0 < s < 6 Å⁻¹):
f_e(s) = Σ a_i exp(-b_i s²), s = q/2, f_e in Å, b_i in Å². By the first Born
approximation the Fourier transform of an atom's projected potential is
V(q) = h²/(2π m₀ e) f_e(q) = 47.878 V·Å² × f_e(q).
"""

from __future__ import annotations

import numpy as np
from scipy import fft

__all__ = ["ELEMENTS", "deposit", "projected_potential_ft"]

_BORN = 47.878  # h² / (2π m₀ e) in V·Å²

ELEMENTS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "C": ((0.0489, 0.2091, 0.7537, 1.1420, 0.3555), (0.1140, 1.0825, 5.4281, 17.8811, 51.1341)),
    "O": ((0.0365, 0.1729, 0.5805, 0.8814, 0.3121), (0.0652, 0.6184, 2.9449, 9.6298, 28.2194)),
    "Si": ((0.0567, 0.3365, 0.8104, 2.4960, 2.1186), (0.0582, 0.6155, 3.2522, 16.7929, 57.6767)),
    "S": ((0.0915, 0.4312, 1.0847, 2.4671, 1.0852), (0.0838, 0.7788, 4.3462, 15.5846, 44.6365)),
    "Fe": ((0.1929, 0.8239, 1.8689, 2.3694, 1.9060), (0.1087, 1.0806, 4.7637, 22.8500, 76.7309)),
    "Co": ((0.2186, 0.9861, 1.8540, 2.3258, 1.4685), (0.1182, 1.2300, 5.4177, 25.7602, 80.8542)),
    "Cu": ((0.3501, 1.6558, 1.9582, 0.2134, 1.4109), (0.1867, 1.9917, 11.3396, 53.2619, 63.2520)),
    "Zn": ((0.1780, 0.8096, 1.6744, 1.9499, 1.4495), (0.0876, 0.8650, 3.8612, 18.8726, 64.7016)),
    "Se": ((0.1574, 0.7614, 1.4834, 3.0016, 1.7978), (0.0686, 0.6808, 3.1163, 14.3458, 44.0455)),
    "Ag": ((0.2739, 1.0503, 3.1564, 2.7543, 1.4328), (0.0881, 0.8028, 4.4451, 18.7011, 79.2633)),
    "Cd": ((0.3072, 1.1303, 3.2046, 2.9329, 1.6560), (0.0966, 0.8856, 4.6273, 20.6789, 73.4723)),
}


def _scattering_factor(element: str, q2: np.ndarray) -> np.ndarray:
    a, b = ELEMENTS[element]
    s2 = q2 / 4.0
    return sum(ai * np.exp(-bi * s2) for ai, bi in zip(a, b, strict=True))


def deposit(xy: np.ndarray, n: int, pixel: float) -> np.ndarray:
    """Atom positions (m, 2) in Å spread onto a periodic n×n grid by bilinear weights."""
    grid = xy / pixel
    base = np.floor(grid).astype(np.int64)
    frac = grid - base
    counts = np.zeros(n * n, np.float64)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        weight = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
        flat = ((base[:, 1] + dy) % n) * n + (base[:, 0] + dx) % n
        counts += np.bincount(flat, weight, n * n)
    return counts.reshape(n, n)


def projected_potential_ft(
    atoms: dict[str, np.ndarray], n: int, pixel: float, q2: np.ndarray
) -> np.ndarray:
    """Half-spectrum (rfft2) of the projected potential in V·Å per pixel of an n×n grid.

    ``atoms`` maps element -> (m, 2) positions in Å; ``q2`` is |q|² (Å⁻²) on the rfft2 grid.
    """
    total = np.zeros(q2.shape, np.complex128)
    for element, xy in atoms.items():
        if len(xy):
            density = fft.rfft2(deposit(xy, n, pixel), workers=-1)
            total += density * _scattering_factor(element, q2)
    return total * (_BORN / pixel**2)
