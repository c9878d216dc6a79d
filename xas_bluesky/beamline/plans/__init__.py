"""Bluesky plans of the XAS beamline.

- :mod:`.regions` -- region grids (pre-edge coarse, edge fine, post-edge coarse, per-region dwell).
- :mod:`.xanes` -- :func:`xanes_scan`, :func:`grid_xanes_scan`; the start-document keys the
  analysis reads (:class:`~xas_bluesky.contracts.XASStart`).
- :mod:`.calibration` -- :func:`calibrate_energy`.
- :mod:`.adaptive` -- :func:`adaptive_xanes_scan`, steered by the score PVs.
- :mod:`.two_edges` -- :func:`two_edge_xanes_scan`: both K edges of a sample, two runs open at
  once, each point at the edge where it tells most.
- :mod:`.agent` -- :class:`~.agent.IdentificationOptimizer` and :class:`~.agent.XASAcquisition`:
  which sample and edge to measure next, behind bluesky-adaptive's ``Optimizer`` protocol.

All are ordinary bluesky plans: checkpoints at every point (pause/resume, suspenders), staging,
one run each (two for :func:`two_edge_xanes_scan`).
"""

from xas_bluesky.beamline.plans.adaptive import adaptive_xanes_scan
from xas_bluesky.beamline.plans.calibration import CalibrationError, calibrate_energy
from xas_bluesky.beamline.plans.regions import (
    Region,
    as_regions,
    default_regions,
    grid_region,
    region_points,
)
from xas_bluesky.beamline.plans.two_edges import two_edge_xanes_scan
from xas_bluesky.beamline.plans.xanes import (
    grid_xanes_scan,
    measure_point,
    xanes_scan,
    xas_metadata,
)

__all__ = [
    "Region",
    "as_regions",
    "default_regions",
    "grid_region",
    "region_points",
    "xas_metadata",
    "measure_point",
    "xanes_scan",
    "grid_xanes_scan",
    "CalibrationError",
    "calibrate_energy",
    "adaptive_xanes_scan",
    "two_edge_xanes_scan",
]
