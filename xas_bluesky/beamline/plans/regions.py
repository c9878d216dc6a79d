"""Region grids of a XANES scan, as NSLS-II beamlines write them.

Energies are absolute, on FEFF10's axis (O K onset ~530 eV, N K ~399 eV; ``ONSET_EV``), so the
fine region sits on the edge of the spectra the model predicts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from xas_bluesky.science.grids import GRID_SPECS, ONSET_EV

__all__ = ["Region", "as_regions", "default_regions", "grid_region", "region_points"]


@dataclass(frozen=True)
class Region:
    """Points ``start, start + step, ...`` below ``stop`` (``stop`` itself in the last region),
    each counted for ``dwell`` seconds."""

    start: float
    stop: float
    step: float
    dwell: float = 1.0

    def __post_init__(self) -> None:
        vals = (self.start, self.stop, self.step, self.dwell)
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"region {self}: values must be finite")
        if self.stop <= self.start or self.step <= 0 or self.dwell <= 0:
            raise ValueError(f"region {self}: need start < stop, step > 0, dwell > 0")

    def as_dict(self) -> dict:
        return asdict(self)


def as_regions(regions) -> list[Region]:
    """``regions`` as :class:`Region` objects: each may be one already, a mapping with its
    fields (``{"start": 526, "stop": 529, "step": 0.5, "dwell": 1}``, as plain JSON arrives
    through the queue server) or a sequence ``(start, stop, step[, dwell])``."""
    out = []
    for r in regions:
        if isinstance(r, Region):
            out.append(r)
        elif isinstance(r, dict):
            unknown = set(r) - {"start", "stop", "step", "dwell"}
            if unknown:
                raise ValueError(f"region {r}: unknown keys {sorted(unknown)}")
            out.append(Region(**{k: float(v) for k, v in r.items()}))
        elif isinstance(r, (list, tuple)) and len(r) in (3, 4):
            out.append(Region(*(float(v) for v in r)))
        else:
            raise ValueError(
                f"not a region: {r!r} (a Region, a dict or (start, stop, step[, dwell]))"
            )
    return out


def default_regions(edge: str, *, dwell: float = 1.0) -> list[Region]:
    """Pre-edge 0.5 eV, edge 0.2 eV (onset - 1 to onset + 15 eV), post-edge 1 eV at twice the
    dwell, from onset - 4 to onset + 45 eV (O: 526-575 eV, N: 395-444 eV)."""
    try:
        e0 = ONSET_EV[edge]
    except KeyError:
        raise ValueError(f"unknown edge {edge!r}: expected one of {', '.join(ONSET_EV)}") from None
    return [
        Region(e0 - 4.0, e0 - 1.0, 0.5, dwell),
        Region(e0 - 1.0, e0 + 15.0, 0.2, dwell),
        Region(e0 + 15.0, e0 + 45.0, 1.0, 2 * dwell),
    ]


def grid_region(edge: str, step: float = 0.1, dwell: float = 1.0) -> list[Region]:
    """One region: the model's whole energy range (O 526-575 eV, N 396-445 eV) at ``step``."""
    if edge not in GRID_SPECS:
        raise ValueError(f"unknown edge {edge!r}: expected one of {', '.join(GRID_SPECS)}")
    start, stop, _ = GRID_SPECS[edge]
    return [Region(start, stop, step, dwell)]


def region_points(regions: Sequence[Region]) -> tuple[np.ndarray, np.ndarray]:
    """Energies and dwells of ``regions`` (in order, increasing, no duplicates)."""
    if not regions:
        raise ValueError("no regions")
    energies: list[float] = []
    dwells: list[float] = []
    for k, reg in enumerate(regions):
        last = k == len(regions) - 1
        n = int(math.floor((reg.stop - reg.start) / reg.step + 1e-6))
        pts = reg.start + reg.step * np.arange(n + 1)
        if not last:  # the next region starts at this one's stop
            pts = pts[pts < reg.stop - 1e-6]
        pts = np.round(pts, 6)
        if energies and pts.size and pts[0] <= energies[-1] + 1e-6:
            raise ValueError(f"region {reg} overlaps the previous one")
        energies += pts.tolist()
        dwells += [reg.dwell] * pts.size
    return np.asarray(energies), np.asarray(dwells)
