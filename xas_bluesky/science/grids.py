"""Energy grids of the predicted spectra, on FEFF10's absolute energy axis.

The O K onset sits near 530 eV and the N K onset near 399 eV on this axis, ~13 and ~10 eV below
xraydb's tabulated K edges (543.1 and 409.9 eV); see ``docs/architecture.rst``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EDGES", "GRID_SPECS", "ONSET_EV", "energy_grid", "other_edge", "to_grid"]

EDGES = ("O", "N")

#: (start, stop, step) in eV of each edge's model grid, stop included
GRID_SPECS: dict[str, tuple[float, float, float]] = {
    "O": (526.0, 575.0, 0.25),
    "N": (396.0, 445.0, 0.25),
}

#: approximate absorption onset of each K edge on FEFF10's axis (eV)
ONSET_EV: dict[str, float] = {"O": 530.0, "N": 399.0}


def other_edge(edge: str) -> str:
    """The other K edge of the two (``"O"`` -> ``"N"``), for training on both."""
    if edge not in EDGES:
        raise ValueError(f"unknown edge {edge!r}: expected one of {', '.join(EDGES)}")
    return EDGES[1 - EDGES.index(edge)]


def energy_grid(edge: str) -> np.ndarray:
    """The model's energy grid of ``edge`` (``"O"`` or ``"N"``), in eV."""
    try:
        start, stop, step = GRID_SPECS[edge]
    except KeyError:
        raise ValueError(f"unknown edge {edge!r}: expected one of {', '.join(EDGES)}") from None
    n = int(round((stop - start) / step)) + 1
    return start + step * np.arange(n)


def to_grid(omega, mu, grid: np.ndarray) -> np.ndarray:
    """Interpolate a FEFF spectrum onto ``grid``.

    FEFF spectra start a little above or below the grid's first energy: the pre-edge is padded with
    mu = 0 (FEFF's mu is ~0 there) and the spectrum is held at its last value past its end.
    """
    omega = np.asarray(omega, dtype=float)
    mu = np.asarray(mu, dtype=float)
    order = np.argsort(omega)
    omega, mu = omega[order], mu[order]
    return np.interp(grid, omega, mu, left=0.0, right=mu[-1])
