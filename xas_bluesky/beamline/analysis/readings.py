"""Which readings the live analysis scores: checks of every point before the comparator sees it.

:func:`~xas_bluesky.science.spectra.mu_from_channels` refuses what no formula can use (NaN, I0
<= 0, It <= 0, negative counts, a ratio that overflows).  :class:`ReadingChecks` adds what a
beamline knows about its detectors and its beam:

- an EPICS alarm of MAJOR or INVALID severity on the I0 or signal reading (the run records the
  severity of each channel: ``xas_fields["i0_alarm"]`` / ``["signal_alarm"]``, data keys that
  :class:`~xas_bluesky.beamline.devices.XASDetector` reads with every point -- ophyd's events
  carry a value and a timestamp only);
- a reading at or over the detector's range: ``saturation`` counts (a 24-bit scaler's
  2^24 - 1), or the upper control limit of the descriptor's data key where it has one
  (``upper_ctrl_limit`` from ophyd, ``limits.control.high`` from ophyd-async);
- I0 below ``i0_fraction`` of the running median I0 of the run (a beam dump, a closed shutter);
- a ring current below ``min_ring_current`` mA, where the run records it
  (``xas_fields["ring_current"]``);
- mu or its noise beyond ``max_abs_mu`` (finite but absurd).

A flagged point is never scored: it counts in ``Match:NPoints-I`` (so a plan waiting for it moves
on) and in ``n_flagged``, and its reason is shown on ``Match:Message-Name``.  Pure Python and
numpy, no EPICS: the engine calls it per point, in the order the points arrive.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ReadingChecks",
    "RunReadings",
    "SATURATION_COUNTS",
    "ALARM_SEVERITIES",
    "channel_range",
]

#: full scale of a 24-bit scaler: a count at or above it is saturated
SATURATION_COUNTS = float(2**24 - 1)
#: EPICS alarm severities by value
ALARM_SEVERITIES = ("NO_ALARM", "MINOR", "MAJOR", "INVALID")


@dataclass(frozen=True)
class ReadingChecks:
    """Thresholds of the per-point checks (None switches a check off).

    Parameters
    ----------
    saturation
        A count at or above it is over the detector's range (applies when the channels are
        counts; a descriptor's own upper limit applies always).
    i0_fraction
        I0 below this fraction of the run's running median I0 is flagged (beam lost).
    min_ring_current
        Ring current (mA) below which a point is flagged, where the run records it.  10 mA is far
        below any storage ring's user operation and far above a dumped beam.
    max_severity
        Highest EPICS alarm severity still scored: 1 (MINOR) flags MAJOR (2) and INVALID (3).
    max_abs_mu
        mu or its noise above it in magnitude is absurd (a ratio of two channels never is).
    history
        I0 readings the running median is taken over.
    """

    saturation: float | None = SATURATION_COUNTS
    i0_fraction: float | None = 0.2
    min_ring_current: float | None = 10.0
    max_severity: int | None = 1
    max_abs_mu: float | None = 1e12
    history: int = 64
    #: whether a descriptor's control limits bound its channel
    descriptor_limits: bool = True

    @classmethod
    def none(cls) -> ReadingChecks:
        """Every check off: only what no formula can use is refused (to measure a fault)."""
        return cls(None, None, None, None, None, descriptor_limits=False)


def channel_range(data_key: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """The (low, high) control limits of a descriptor's data key, (None, None) when it has none.

    ophyd writes ``lower_ctrl_limit`` / ``upper_ctrl_limit`` (0, 0 when the PV has no limits);
    event-model's schema has ``limits: {"control": {"low", "high"}}`` (ophyd-async).
    """
    low = data_key.get("lower_ctrl_limit")
    high = data_key.get("upper_ctrl_limit")
    limits = data_key.get("limits")
    if (low is None or high is None) and isinstance(limits, Mapping):
        control = limits.get("control") or {}
        low, high = control.get("low"), control.get("high")
    try:
        lo = None if low is None else float(low)
        hi = None if high is None else float(high)
    except (TypeError, ValueError):
        return None, None
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return None, None  # EPICS' "no limits" is 0, 0
    return lo, hi


def _severity_text(value: float) -> str:
    k = int(value)
    return ALARM_SEVERITIES[k] if 0 <= k < len(ALARM_SEVERITIES) else str(k)


class RunReadings:
    """The checks of one run: its channels' ranges (from the descriptors) and running median I0.

    Parameters
    ----------
    checks
        The thresholds.
    fields
        The run's ``xas_fields`` (``i0``, ``signal`` and the optional ``ring_current``,
        ``i0_alarm``, ``signal_alarm``).
    counts
        Whether the channels are counts (the saturation level applies).
    """

    def __init__(self, checks: ReadingChecks, fields: Mapping[str, str], counts: bool):
        self.checks = checks
        self.fields = dict(fields)
        self.counts = counts
        self.ranges: dict[str, tuple[float | None, float | None]] = {}
        self._i0: deque[float] = deque(maxlen=max(1, checks.history))

    def describe(self, data_keys: Mapping[str, Mapping[str, Any]]) -> None:
        """Take the channels' limits from a descriptor's data keys."""
        if not self.checks.descriptor_limits:
            return
        for role in ("i0", "signal"):
            key = self.fields[role]
            if key in data_keys:
                self.ranges[key] = channel_range(data_keys[key])

    def i0_reference(self, batch: list[float]) -> float | None:
        """The I0 a new point is compared with: the median of the last good ones, or, before
        there are any, of the finite positive I0 of the batch that brings the first points."""
        if self._i0:
            return statistics.median(self._i0)
        seed = [v for v in batch if math.isfinite(v) and v > 0]
        return statistics.median(seed) if len(seed) >= 3 else None

    def check(
        self,
        i0: float,
        signal: float,
        *,
        mu: float,
        sigma: float,
        i0_reference: float | None,
        ring_current: float | None = None,
        i0_alarm: float | None = None,
        signal_alarm: float | None = None,
    ) -> str:
        """Why a point must not be scored ("" when it may); a good point's I0 joins the median."""
        c = self.checks
        f = self.fields
        why = ""
        if c.max_severity is not None:
            for key, sev in ((f.get("i0_alarm"), i0_alarm), (f.get("signal_alarm"), signal_alarm)):
                if sev is not None and math.isfinite(sev) and sev > c.max_severity:
                    why = f"{key} = {_severity_text(sev)} alarm"
                    break
        if not why:
            for role, value in (("i0", i0), ("signal", signal)):
                key = f[role]
                _, high = self.ranges.get(key, (None, None))
                if high is not None and value >= high:
                    why = f"{key} = {value:.10g} at or over the detector's limit {high:.10g}"
                    break
                if self.counts and c.saturation is not None and value >= c.saturation:
                    why = f"{key} = {value:.10g} saturated (full scale {c.saturation:.10g})"
                    break
        if not why and c.min_ring_current is not None and ring_current is not None:
            if not ring_current >= c.min_ring_current:  # NaN too
                why = (
                    f"{f.get('ring_current')} = {ring_current:.4g} mA below "
                    f"{c.min_ring_current:g} mA (beam down)"
                )
        if not why and c.i0_fraction is not None and i0_reference is not None:
            if i0 < c.i0_fraction * i0_reference:
                why = (
                    f"{f['i0']} = {i0:.6g} below {c.i0_fraction:g} x the run's median "
                    f"{i0_reference:.6g} (beam dump or shutter closed)"
                )
        if (
            not why
            and c.max_abs_mu is not None
            and (abs(mu) > c.max_abs_mu or abs(sigma) > c.max_abs_mu)
        ):
            why = f"mu = {mu:.4g} +- {sigma:.4g} is absurd (> {c.max_abs_mu:g})"
        if not why:
            self._i0.append(float(i0))
        return why
