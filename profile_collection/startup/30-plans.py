"""XANES plans bound to this beamline's devices, and a ring-current suspender.

RE(calibrate("O"))                                     # mono offset -> PV and RE.md
RE(xanes("O", sample="qm9_011315"))                    # region grids, TEY
RE(grid_xanes("N", sample="mine", step=0.1))           # the 0.1 eV grid
RE(adaptive("O", sample="qm9_011315"))                 # steered by the score PVs
agent_acquire: the acquisition plan bluesky-adaptive's QueueserverOptimizationRunner queues
"""

from bluesky.suspenders import SuspendFloor
from ophyd import EpicsSignalRO

from xas_bluesky.beamline.epics.devices import MatchScores
from xas_bluesky.beamline.plans import (  # noqa: F401  (for the user's namespace)
    Region,
    adaptive_xanes_scan,
    calibrate_energy,
    default_regions,
    grid_xanes_scan,
    xanes_scan,
)
from xas_bluesky.beamline.plans.agent import queued_acquisition


def xanes(edge="O", sample=None, *, regions=None, mode="TEY", candidates=None, **kwargs):
    """:func:`xanes_scan` with this beamline's mono, detectors, sample changer and ring."""
    return (
        yield from xanes_scan(
            mono,
            det,
            edge=edge,
            regions=regions,
            mode=mode,
            sample=sample,
            sample_changer=sample_changer,
            candidates=candidates,
            ring_current=ring_current,
            **kwargs,
        )
    )


def grid_xanes(edge="O", sample=None, *, step=0.1, dwell=1.0, **kwargs):
    """:func:`grid_xanes_scan` (the model's whole range at ``step``) on this beamline."""
    return (
        yield from grid_xanes_scan(
            mono,
            det,
            edge=edge,
            step=step,
            dwell=dwell,
            sample=sample,
            sample_changer=sample_changer,
            ring_current=ring_current,
            **kwargs,
        )
    )


# the live analysis' score PVs, read over Channel Access like any other device
scores = MatchScores(SCORE_PREFIX, name="scores")


def adaptive(edge="O", sample=None, *, threshold=0.99, max_points=49, **kwargs):
    """:func:`adaptive_xanes_scan`: a coarse pass, then where the score PVs point, until the best
    candidate reaches ``threshold`` or ``max_points`` are spent."""
    return (
        yield from adaptive_xanes_scan(
            mono,
            det,
            scores,
            edge=edge,
            threshold=threshold,
            max_points=max_points,
            sample=sample,
            sample_changer=sample_changer,
            ring_current=ring_current,
            **kwargs,
        )
    )


def agent_acquire(
    suggestions, actuators=(), sensors=(), *, md=None, threshold=0.99, max_points=49, **kwargs
):
    """bluesky-adaptive's queued acquisition: one :func:`adaptive` run per suggestion
    (``{"_id", "sample", "edge", "sample_uid"}`` from ``IdentificationOptimizer``) inside a run
    of the runner's, with an ``outcomes`` event per suggestion (``TiledOutcomes`` reads them).
    ``actuators`` and ``sensors`` (the runner's names) are this beamline's own devices."""
    return (
        yield from queued_acquisition(
            mono,
            det,
            scores,
            sample_changer,
            suggestions,
            md=md,
            threshold=threshold,
            max_points=max_points,
            ring_current=ring_current,
            **kwargs,
        )
    )


def calibrate(edge="O", slot=None, **kwargs):
    """:func:`calibrate_energy` on the reference slot; keeps the offset in the PV and RE.md."""
    return (
        yield from calibrate_energy(
            mono, det, sample_changer, edge=edge, slot=slot, store=RE.md, **kwargs
        )
    )


# a beam dump pauses the scan; it resumes once the ring is refilled (monitored signal)
ring_current_monitor = EpicsSignalRO(
    RING_CURRENT_PV, name="ring_current_monitor", auto_monitor=True
)
ring_current_monitor.wait_for_connection(timeout=10)
ring_suspender = SuspendFloor(ring_current_monitor, 100.0, resume_thresh=300.0, sleep=5.0)
RE.install_suspender(ring_suspender)
