"""Region-grid XANES scans.

The start document carries what the live analysis needs
(:class:`~xas_bluesky.contracts.XASStart`)::

    xas_element     "O" | "N"            the absorbing element (K edge)
    xas_edge        "K"
    xas_mode        "TEY" | "PFY" | "TRANS"
    xas_fields      {"energy": ..., "i0": ..., "signal": ...}   data keys of the primary stream
                    (+ "i0_alarm", "signal_alarm": the channels' alarm severities, and
                    "ring_current" when the plan reads it)
    xas_regions     [{"start", "stop", "step", "dwell"}, ...]
    xas_e0          onset on FEFF10's axis (eV)
    sample_name     the slot / sample measured
    candidates      the candidate set (a path or a label), or None
    energy_offset   mono calibration: true photon energy = readback + energy_offset (eV)
    xdi             XDI metadata by namespace: {"Element": {"symbol", "edge"}, "Mono": {"name"},
                    "Detector": {"I0", "TEY" | "IF" | "IT"}, "Sample": {"name"}}

and ``data_session`` (NSLS-II's proposal session, e.g. ``"pass-123456"``) when given to the plan;
otherwise the RunEngine's ``RE.md["data_session"]`` reaches the start document as usual.

mu is ``signal / i0`` (TEY, PFY) or ``ln(i0 / signal)`` (TRANS); see
:func:`xas_bluesky.science.spectra.mu_from_channels`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp

from xas_bluesky.beamline.devices import SIGNAL_CHANNELS, mode_fields
from xas_bluesky.beamline.plans.regions import (
    Region,
    as_regions,
    default_regions,
    grid_region,
    region_points,
)
from xas_bluesky.contracts import XASStart
from xas_bluesky.science.grids import ONSET_EV

__all__ = ["XDI_DETECTOR_TAGS", "xas_metadata", "measure_point", "xanes_scan", "grid_xanes_scan"]

#: measurement mode -> XDI's ``Detector`` tag of its signal channel (I0 is ``Detector.I0``)
XDI_DETECTOR_TAGS = {"TEY": "TEY", "PFY": "IF", "TRANS": "IT"}


def _xdi(mono, det, *, edge: str, mode: str, sample_name: str | None) -> dict:
    """XDI metadata by namespace (element, edge, mono, detector channels, sample)."""
    fields = mode_fields(mono, det, mode)
    descriptions = getattr(det, "descriptions", {})
    channel = SIGNAL_CHANNELS[mode.upper()]

    def detector(key: str, field: str) -> str:
        what = descriptions.get(key)
        return f"{what} ({field})" if what else field

    mono_md = {"name": str(getattr(mono, "xdi_name", None) or mono.name)}
    d_spacing = getattr(mono, "d_spacing", None)
    if isinstance(d_spacing, int | float) and math.isfinite(d_spacing) and d_spacing > 0:
        mono_md["d_spacing"] = f"{float(d_spacing):.6f}"
    out = {
        "Element": {"symbol": edge, "edge": "K"},
        "Mono": mono_md,
        "Detector": {
            "I0": detector("i0", fields["i0"]),
            XDI_DETECTOR_TAGS[mode.upper()]: detector(channel, fields["signal"]),
        },
    }
    if sample_name is not None:
        out["Sample"] = {"name": str(sample_name)}
    return out


def xas_metadata(
    mono,
    det,
    *,
    edge: str,
    mode: str,
    sample_name: str | None,
    candidates: str | None,
    energy_offset: float,
    regions: Sequence[Region] = (),
    ring_current=None,
) -> XASStart:
    """The XAS keys of a start document (:class:`~xas_bluesky.contracts.XASStart`);
    ``ring_current`` is the signal of the ring current when the plan reads it with every point."""
    if edge not in ONSET_EV:
        raise ValueError(f"unknown edge {edge!r}: expected one of {', '.join(ONSET_EV)}")
    return XASStart(
        xas_element=edge,
        xas_edge="K",
        xas_mode=mode.upper(),
        xas_fields=mode_fields(mono, det, mode, ring_current),
        xas_regions=[r.as_dict() for r in regions],
        xas_e0=ONSET_EV[edge],
        sample_name=sample_name,
        candidates=None if candidates is None else str(candidates),
        energy_offset=float(energy_offset),
        xdi=_xdi(mono, det, edge=edge, mode=mode, sample_name=sample_name),
    )


def measure_point(mono, det, energy: float, readables: Sequence):
    """Move the mono to ``energy``, count and read one event of the primary stream; returns the
    reading.

    A checkpoint precedes it, so a pause or a suspender during the point resumes by measuring it
    again (its event was not emitted).  One follows it, so an interruption after the point (a
    plan waiting for its score, moving on) never measures it again: a rewind re-sends every
    message since the last checkpoint, an emitted event included, with its ``seq_num``.
    """
    yield from bps.checkpoint()
    yield from bps.mv(mono, energy)
    reading = yield from bps.trigger_and_read(list(readables))
    yield from bps.checkpoint()
    return reading


def _read_list(mono, det, readables: Sequence, ring_current) -> list:
    """What a point reads: the mono, the detector, the extra readables, the ring current once."""
    out = [mono, det, *readables]
    if ring_current is not None and all(r is not ring_current for r in out):
        out.append(ring_current)
    return out


def _sample_name(sample_changer, sample):
    if sample_changer is not None and sample is not None:
        yield from bps.mv(sample_changer, sample)
    if sample is not None:
        return str(sample)
    if sample_changer is not None:
        return str((yield from bps.rd(sample_changer.slot_rb)))
    return None


def xanes_scan(
    mono,
    det,
    *,
    edge: str,
    regions: Sequence[Region | dict] | None = None,
    mode: str = "TEY",
    sample: str | None = None,
    sample_changer=None,
    candidates: str | None = None,
    energy_offset: float | None = None,
    readables: Sequence = (),
    ring_current=None,
    md: dict | None = None,
    collect: list | None = None,
    data_session: str | None = None,
):
    """Step scan over region grids: at each energy move the mono, count, read.

    Parameters
    ----------
    mono, det
        :class:`~xas_bluesky.beamline.devices.Mono` and
        :class:`~xas_bluesky.beamline.devices.XASDetector` (or devices with the same parts).
    edge
        Absorbing element of the K edge, ``"O"`` or ``"N"``.
    regions
        Region grids (:class:`~.regions.Region`, or plain dicts of its fields as the queue
        server passes them: :func:`~.regions.as_regions`); default
        :func:`~.regions.default_regions` of ``edge``.
    mode
        ``"TEY"`` (default, soft X-ray O/N K edges), ``"PFY"`` or ``"TRANS"``.
    sample, sample_changer
        Slot to measure: moved into the beam first when a sample changer is given; recorded as
        ``sample_name`` (default: the slot in the beam).
    candidates
        The candidate set the analysis should score against (recorded as given).
    energy_offset
        Mono calibration for the analysis; default: the mono's ``calib_offset`` PV, as written by
        :func:`~.calibration.calibrate_energy`.
    readables
        Extra devices read with every point.
    ring_current
        The ring current's signal (mA): read with every point and named in ``xas_fields``, so
        that the live analysis refuses points measured with the beam down.
    md
        Extra start-document metadata (overrides the defaults).
    collect
        If given, every event's reading is appended to it (plans that post-process, e.g.
        calibration).
    data_session
        The proposal session (NSLS-II: ``"pass-123456"``) recorded as ``data_session``; default:
        the RunEngine's ``RE.md["data_session"]``, if any.
    """
    regions = as_regions(regions) if regions is not None else default_regions(edge)
    energies, dwells = region_points(regions)
    fields = mode_fields(mono, det, mode, ring_current)  # an unknown mode fails here
    if energy_offset is None:
        energy_offset = float((yield from bps.rd(mono.calib_offset)))
    if not math.isfinite(energy_offset):
        raise ValueError(f"energy offset {energy_offset!r} is not a number: recalibrate the mono")
    sample_name = yield from _sample_name(sample_changer, sample)
    read_list = _read_list(mono, det, readables, ring_current)
    _md = {
        "plan_name": "xanes_scan",
        "plan_args": {
            "edge": edge,
            "mode": mode,
            "regions": [repr(r) for r in regions],
            "sample": sample,
        },
        "detectors": [det.name],
        "motors": [mono.name],
        "num_points": int(energies.size),
        "num_intervals": int(energies.size) - 1,
        "hints": {"dimensions": [([fields["energy"]], "primary")]},
        **xas_metadata(
            mono,
            det,
            edge=edge,
            mode=mode,
            sample_name=sample_name,
            candidates=candidates,
            energy_offset=energy_offset,
            regions=regions,
            ring_current=ring_current,
        ),
    }
    if data_session is not None:
        _md["data_session"] = str(data_session)
    _md.update(md or {})

    @bpp.stage_decorator([mono, det])
    @bpp.run_decorator(md=_md)
    def inner():
        dwell_now = None
        for energy, dwell in zip(energies, dwells, strict=True):
            if dwell != dwell_now:  # the count time is read with every event
                yield from bps.mv(det.count_time, float(dwell))
                dwell_now = dwell
            reading = yield from measure_point(mono, det, float(energy), read_list)
            if collect is not None:
                collect.append(reading)

    return (yield from inner())


def grid_xanes_scan(mono, det, *, edge: str, step: float = 0.1, dwell: float = 1.0, **kwargs):
    """:func:`xanes_scan` over one region: the model's whole range (O 526-575 eV, N 396-445 eV)
    at ``step`` (0.1 eV: 491 points).  Other keywords go to :func:`xanes_scan`."""
    md = {"plan_name": "grid_xanes_scan", **(kwargs.pop("md", None) or {})}
    return (
        yield from xanes_scan(
            mono, det, edge=edge, regions=grid_region(edge, step, dwell), md=md, **kwargs
        )
    )
