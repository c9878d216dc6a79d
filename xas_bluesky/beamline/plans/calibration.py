"""Energy calibration of the mono against a reference sample of known spectrum.

:func:`calibrate_energy` measures the reference slot, fits the offset (true photon energy =
readback + offset) by least squares against the known spectrum, writes it to the mono's
``Calib:Offset-SP`` PV and, if given, to ``RE.md["energy_offset"]``.  Later
:func:`~xas_bluesky.beamline.plans.xanes_scan` runs put it into their start documents, where the
analysis reads it: one offset for the whole measurement, shared by all candidates.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from pathlib import Path

import bluesky.plan_stubs as bps
import numpy as np
from numpy.typing import ArrayLike

from xas_bluesky.beamline.devices import mode_fields
from xas_bluesky.beamline.plans.regions import Region
from xas_bluesky.beamline.plans.xanes import xanes_scan
from xas_bluesky.resources import REFERENCE_SLOTS, reference_spectrum
from xas_bluesky.science.grids import ONSET_EV
from xas_bluesky.science.spectra import (
    NormalizationError,
    fit_energy_offset,
    load_spectrum_csv,
    mu_from_channels,
)

__all__ = ["CalibrationError", "calibrate_energy", "calibration_regions", "load_reference"]

#: below this correlation of model and data the fit is refused (wrong slot, no beam, ...)
MIN_FIT_R = 0.9


class CalibrationError(RuntimeError):
    """The reference measurement did not give a trustworthy offset; nothing was stored."""


def calibration_regions(edge: str, dwell: float = 1.0) -> list[Region]:
    """0.2 eV from onset - 4 to onset + 26 eV: the edge and its first resonances (151 points)."""
    e0 = ONSET_EV[edge]
    return [Region(e0 - 4.0, e0 + 26.0, 0.2, dwell)]


def load_reference(
    reference: tuple[ArrayLike, ArrayLike] | str | Path | None, edge: str
) -> tuple[np.ndarray, np.ndarray]:
    """The known spectrum of a calibration reference.

    Parameters
    ----------
    reference : (array_like, array_like), str, Path or None
        ``(energy, mu)``, a CSV ``energy_eV,mu`` path, or ``None``: the shipped reference of
        ``edge`` (:func:`xas_bluesky.resources.reference_spectrum`, the spectrum of the
        ``ref_O`` / ``ref_N`` slot).
    edge : str
        The edge, for the default reference.

    Returns
    -------
    energy, mu : np.ndarray
    """
    if reference is None:
        return reference_spectrum(edge)
    if isinstance(reference, str | Path):
        return load_spectrum_csv(reference)
    energy, mu = (np.asarray(a, dtype=float) for a in reference)
    return energy, mu


def calibrate_energy(
    mono,
    det,
    sample_changer=None,
    *,
    edge: str,
    slot: str | None = None,
    reference=None,
    regions: Sequence[Region] | None = None,
    mode: str = "TEY",
    max_shift: float = 3.0,
    store: MutableMapping | None = None,
    md: dict | None = None,
):
    """Measure a reference of known spectrum and calibrate the mono's energy offset.

    Parameters
    ----------
    slot
        Sample-changer slot of the reference (default: ``ref_O`` / ``ref_N``,
        :data:`xas_bluesky.resources.REFERENCE_SLOTS`, when ``reference`` is also default).
    reference
        Known spectrum on the true energy axis: ``(energy, mu)``, a CSV path, or ``None``.
    max_shift
        Search range of the offset (eV): a mono is rarely off by more.
    store
        A mapping (``RE.md``) that receives ``energy_offset``.

    Returns
    -------
    float
        The offset (eV).  Raises :class:`CalibrationError` (nothing stored) if the data do not
        determine it.
    """
    ref_e, ref_mu = load_reference(reference, edge)
    if slot is None and reference is None:
        slot = REFERENCE_SLOTS[edge][0]
    readings: list[dict] = []
    yield from xanes_scan(
        mono,
        det,
        edge=edge,
        regions=regions if regions is not None else calibration_regions(edge),
        mode=mode,
        sample=slot,
        sample_changer=sample_changer,
        md={"plan_name": "calibrate_energy", "purpose": "energy calibration", **(md or {})},
        collect=readings,
    )
    e_key, i0_key = mono.readback.name, det.i0.name
    sig_key = mode_fields(mono, det, mode)["signal"]
    energy = np.array([r[e_key]["value"] for r in readings], dtype=float)
    mu = mu_from_channels(
        mode,
        [r[i0_key]["value"] for r in readings],
        [r[sig_key]["value"] for r in readings],
        strict=False,  # bad points are NaN, dropped by the fit
    ).mu
    try:
        offset, r = fit_energy_offset(energy, mu, ref_e, ref_mu, max_shift=max_shift)
    except NormalizationError as exc:
        raise CalibrationError(f"energy calibration failed: {exc}") from None
    if r < MIN_FIT_R:
        raise CalibrationError(
            f"energy calibration failed: the reference fits the data poorly (r = {r:.3f} < "
            f"{MIN_FIT_R}); is slot {slot!r} the reference of the {edge} K edge?"
        )
    yield from bps.mv(mono.calib_offset, offset)
    if store is not None:
        store["energy_offset"] = offset
    return offset
