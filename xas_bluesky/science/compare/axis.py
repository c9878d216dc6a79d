"""The energy axis of a measured spectrum: FEFF10's, or an experiment's.

Every model spectrum lives on FEFF10's absolute energy axis (:mod:`xas_bluesky.science.grids`).
A measured spectrum's energies are either on that axis already (``axis="feff"``: a simulated
beamline, a mono calibrated against a FEFF spectrum of a reference) or on an experiment's
(``axis="experiment"``): one whose absorption edge (E0, the first inflection point) sits at
xraydb's tabulated K edge, the convention of Athena's and Larch's "E0 at the tabulated edge".

The convention
--------------
``E_feff = E_experiment + offset_ev``, one constant per edge (:data:`AXIS_CONVENTIONS`), applied
to the measured energies *before* the comparator's shared mono offset.  The constants come
from the committed FEFF10 data, not from any measured spectrum: the median E0
(:func:`~xas_bluesky.science.spectra.find_e0`) of the shipped held-out spectra is 530.00 eV
for O (154 spectra; 10-90 % 529.25-535.00 eV) and 399.25 eV for N (110; 398.50-402.50 eV),
13.1 and 10.65 eV below xraydb's K edges (543.1 and 409.9 eV); rounded to the model grid's
0.25 eV, O -13.0 eV and N -10.75 eV.

The constant is uncertain (FEFF's absolute energies, which E0 an experiment's software picked,
a molecule's chemical shift against the median): ``sigma_ev`` is its prior width, 1 eV by
default.  The comparator marginalises ONE offset for the whole measurement; on the experiment
axis its prior covers the mono's calibration and the convention's error together, as
independent Gaussians (:func:`offset_prior`): the prior widens, but stays one shared number
(isomers keep their chemical shifts apart).

Both the constants and the width are configurable (:func:`convention`, the ``offset_ev`` and
``sigma_ev`` keywords): a beamline that knows its own relation to FEFF's axis should use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "AXES",
    "AxisConvention",
    "AXIS_CONVENTIONS",
    "MONO_OFFSET_SIGMA_EV",
    "MONO_OFFSET_MAX_EV",
    "convention",
    "to_feff_axis",
    "offset_prior",
]

#: the energy axes a measured spectrum may be given on
AXES = ("feff", "experiment")

#: the comparator's default prior of the mono's calibration offset (its own defaults)
MONO_OFFSET_SIGMA_EV = 1.0
MONO_OFFSET_MAX_EV = 3.0


@dataclass(frozen=True)
class AxisConvention:
    """The experiment-to-FEFF energy axis relation of one edge.

    Attributes
    ----------
    edge : str
        ``"O"`` or ``"N"``.
    offset_ev : float
        ``E_feff - E_experiment`` (eV): added to a measured energy on the experiment axis.
    sigma_ev : float
        Prior width (1 sigma, eV) of ``offset_ev``'s error.
    """

    edge: str
    offset_ev: float
    sigma_ev: float = 1.0


#: the shipped conventions (see the module's docstring for where the numbers come from)
AXIS_CONVENTIONS: dict[str, AxisConvention] = {
    "O": AxisConvention("O", -13.0, 1.0),
    "N": AxisConvention("N", -10.75, 1.0),
}


def convention(
    edge: str, *, offset_ev: float | None = None, sigma_ev: float | None = None
) -> AxisConvention:
    """The convention of ``edge``, with ``offset_ev`` / ``sigma_ev`` overridden when given.

    Raises
    ------
    ValueError
        For an unknown edge or a negative ``sigma_ev``.
    """
    try:
        base = AXIS_CONVENTIONS[edge]
    except KeyError:
        raise ValueError(f"unknown edge {edge!r}: expected one of O, N") from None
    sig = base.sigma_ev if sigma_ev is None else float(sigma_ev)
    if not (sig >= 0 and math.isfinite(sig)):
        raise ValueError(f"axis prior width must be >= 0, got {sigma_ev!r}")
    off = base.offset_ev if offset_ev is None else float(offset_ev)
    return AxisConvention(edge, off, sig)


def _check_axis(axis: str) -> None:
    if axis not in AXES:
        raise ValueError(f"unknown energy axis {axis!r}: expected one of {', '.join(AXES)}")


def to_feff_axis(
    energy: ArrayLike, edge: str, axis: str = "feff", conv: AxisConvention | None = None
) -> np.ndarray:
    """Measured energies on FEFF10's axis.

    Parameters
    ----------
    energy : array_like
        Energies (eV) on ``axis``.
    edge : str
        The edge, for its convention.
    axis : str
        ``"feff"`` (returned as they are) or ``"experiment"`` (``offset_ev`` added).
    conv : AxisConvention, optional
        :func:`convention` of ``edge`` when None.

    Returns
    -------
    np.ndarray
        Float copy of ``energy`` on FEFF10's axis.
    """
    _check_axis(axis)
    e = np.array(energy, dtype=float)
    if axis == "experiment":
        e += (conv or convention(edge)).offset_ev
    return e


def offset_prior(
    edge: str,
    axis: str = "feff",
    conv: AxisConvention | None = None,
    *,
    mono_sigma: float = MONO_OFFSET_SIGMA_EV,
    mono_max: float = MONO_OFFSET_MAX_EV,
) -> dict[str, float]:
    """Comparator keywords ``offset_sigma`` and ``offset_max`` for a spectrum on ``axis``.

    On FEFF's axis the prior is the mono's (``mono_sigma``, ``mono_max``).  On the experiment
    axis the convention's error adds in quadrature, ``sigma = hypot(mono_sigma, sigma_ev)``,
    and the range grows by two of its widths: ``max = mono_max + 2 sigma_ev``.

    Returns
    -------
    dict
        ``{"offset_sigma": ..., "offset_max": ...}`` for :class:`Comparator`.
    """
    _check_axis(axis)
    if axis == "feff":
        return {"offset_sigma": float(mono_sigma), "offset_max": float(mono_max)}
    c = conv or convention(edge)
    return {
        "offset_sigma": float(math.hypot(mono_sigma, c.sigma_ev)),
        "offset_max": float(mono_max + 2.0 * c.sigma_ev),
    }
