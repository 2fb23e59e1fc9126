"""Crystal structures and nanoparticles cut from them as spheres."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LATTICES", "Crystal", "cut_sphere", "random_rotation", "zone_rotation"]

_FCC = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def _plus_fcc(sites: list[list[float]]) -> np.ndarray:
    return (np.asarray(sites, float)[:, None, :] + _FCC[None]).reshape(-1, 3) % 1.0


@dataclass(frozen=True)
class Crystal:
    """A lattice: cell vectors (rows, Å) and atoms as (element, fractional position)."""

    name: str
    cell: np.ndarray
    elements: tuple[str, ...]
    fractional: np.ndarray

    def d_spacing(self, hkl: tuple[int, int, int]) -> float:
        """Interplanar spacing of the (hkl) planes in Å."""
        reciprocal = np.linalg.inv(self.cell).T
        return float(1.0 / np.linalg.norm(np.asarray(hkl) @ reciprocal))


def _cubic(name: str, a: float, species: list[tuple[str, np.ndarray]]) -> Crystal:
    elements = tuple(e for e, sites in species for _ in range(len(sites)))
    return Crystal(name, np.eye(3) * a, elements, np.concatenate([s for _, s in species]))


def _wurtzite(name: str, a: float, c: float, cation: str, anion: str, u: float = 0.375) -> Crystal:
    cell = np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]])
    base = np.array([[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5]])
    fractional = np.concatenate([base, (base + np.array([0, 0, u])) % 1.0])
    return Crystal(name, cell, (cation, cation, anion, anion), fractional)


def _spinel(name: str, a: float, metal: str) -> Crystal:
    """Ideal spinel M3O4 (Fd-3m, origin choice 2, u = 1/4)."""
    tetrahedral = _plus_fcc([[1 / 8, 1 / 8, 1 / 8], [7 / 8, 3 / 8, 3 / 8]])
    octahedral = _plus_fcc([[0.5, 0.5, 0.5], [0.25, 0.75, 0], [0.75, 0, 0.25], [0, 0.25, 0.75]])
    oxygen = (0.25 + np.concatenate([(_FCC + corner) / 2 for corner in np.ndindex(2, 2, 2)])) % 1
    metals = np.concatenate([tetrahedral, octahedral])
    return _cubic(name, a, [(metal, metals), ("O", oxygen)])


LATTICES: dict[str, Crystal] = {
    c.name: c
    for c in (
        _wurtzite("w_CdSe", 4.2985, 7.0152, "Cd", "Se"),
        _wurtzite("w_ZnS", 3.8227, 6.2607, "Zn", "S"),
        _cubic("fcc_Cu", 3.6157, [("Cu", _FCC)]),
        _cubic("fcc_Ag", 4.0782, [("Ag", _FCC)]),
        _cubic("dc_C", 3.5673, [("C", np.concatenate([_FCC, _FCC + 0.25]))]),
        _cubic("dc_Si", 5.430, [("Si", np.concatenate([_FCC, _FCC + 0.25]))]),
        _spinel("spinel_Fe3O4", 8.394, "Fe"),
        _spinel("spinel_Co3O4", 8.065, "Co"),
        _cubic("bcc_Fe", 2.866, [("Fe", np.array([[0, 0, 0], [0.5, 0.5, 0.5]]))]),
    )
}


def cut_sphere(
    crystal: Crystal, radius: float, rotation: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Atoms of ``crystal`` inside a sphere of ``radius`` Å around the origin.

    The lattice gets a random origin inside its cell, then is rotated.
    Returns element -> (n, 3) Cartesian positions in Å.
    """
    span = int(np.ceil(radius / np.min(np.linalg.norm(crystal.cell, axis=1)) * 2)) + 2
    grid = np.stack(np.meshgrid(*[np.arange(-span, span + 1)] * 3, indexing="ij"), -1)
    cells = grid.reshape(-1, 1, 3) + crystal.fractional[None] + rng.random(3)
    positions = (cells @ crystal.cell).reshape(-1, 3)
    inside = np.einsum("ij,ij->i", positions, positions) <= radius**2
    labels = np.tile(np.asarray(crystal.elements), len(grid.reshape(-1, 3)))
    positions = positions[inside] @ rotation.T
    return {e: positions[labels[inside] == e] for e in dict.fromkeys(crystal.elements)}


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def zone_rotation(crystal: Crystal, axis: tuple[int, int, int], angle: float) -> np.ndarray:
    """A rotation that puts the lattice direction [uvw] along the beam (z), turned by ``angle``."""
    beam = np.asarray(axis, float) @ crystal.cell
    beam /= np.linalg.norm(beam)
    helper = np.array([1.0, 0, 0]) if abs(beam[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = np.cross(helper, beam)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(beam, e1)
    to_beam = np.stack([e1, e2, beam])
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ to_beam
