"""The energy axis of a measured spectrum: FEFF10's, or an experiment's.

Every model spectrum lives on FEFF10's absolute energy axis (:mod:`xas_bluesky.science.grids`).
A measured spectrum's energies are either on that axis already (``axis="feff"``: a simulated
beamline, a mono calibrated against a FEFF spectrum of a reference -- such a beamline should use
``--axis feff``) or on an experiment's (``axis="experiment"``): a measured NEXAFS spectrum whose
energy axis is calibrated the usual way, against gas-phase / literature energies of reference
resonances.

The convention
--------------
``E_feff = E_experiment + offset_ev``, one constant per edge (:data:`AXIS_CONVENTIONS`), applied
to the measured energies *before* the comparator's shared mono offset.  The constants come from
literature energies of the first (1s -> pi*) resonance of small QM9 molecules measured in the gas
phase, compared with where this project's FEFF pipeline (:mod:`xas_bluesky.science.feff`, the
training data's cards) puts the same resonance for the same QM9 geometry
(:data:`AXIS_REFERENCES`): ``offset_ev`` is the mean of ``E_feff_peak - E_literature`` over an
edge's references, rounded to 0.05 eV, and ``sigma_ev`` their sample standard deviation, at least
1 eV (:func:`derive_convention`).  No measured spectrum is used.  FEFF's peak is the first local
maximum of the absorbing site's spectrum on FEFF's own energy points (0.1-0.25 eV apart there),
ignoring points below 20 % of the spectrum's maximum (:func:`first_peak_energy`); the site
spectra are committed in ``data/axis_references/feff_sites.jsonl.gz``.

=====  ==============  =========  ======  =========  ==========  =========================
edge   molecule        QM9 index  site    FEFF (eV)  lit. (eV)   FEFF - lit. (eV)
=====  ==============  =========  ======  =========  ==========  =========================
O      formaldehyde    6          O1      530.574    530.8       -0.23
O      acetaldehyde    11         O2      530.563    531.2       -0.64
O      acetone         18         O3      530.543    531.35      -0.81
N      acetonitrile    10         N2      401.138    399.9       +1.24
N      pyridine        215        N3      399.707    398.8       +0.91
=====  ==============  =========  ======  =========  ==========  =========================

O: -0.56 +- 0.30 eV -> ``offset_ev = -0.55``, ``sigma_ev = 1.0``; N: +1.07 +- 0.23 eV ->
``offset_ev = +1.05``, ``sigma_ev = 1.0``.  The width is the floor, not the references' spread:
few references of one or two classes of molecule per edge (methyl formate, left out for want of
a confirmed literature value, would give -1.33 eV), a peak rule that moves the offsets by
0.5-1.8 eV if the half-rise is used instead, and literature values not re-read here.  The literature energies are the commonly quoted
gas-phase values; each reference names the paper that measured it (formaldehyde: Remmers et al.,
Phys. Rev. A 46, 3935 (1992); acetaldehyde, acetone: Prince et al., J. Phys. Chem. A 107, 1955
(2003); acetonitrile: Carniato et al., J. Chem. Phys. 123, 214301 (2005); pyridine:
Vall-llosera et al., J. Chem. Phys. 128, 044316 (2008)).  The numbers have not been re-read from
those papers here: check them there before tightening ``sigma_ev``.

An earlier version referred the experiment axis to xraydb's tabulated atomic K edges (543.1,
409.9 eV) and shipped O -13.0 / N -10.75 eV: wrong for molecular NEXAFS, whose first resonance
sits ~12 eV below the atomic edge, so a real spectrum was shifted ~11 eV too far.

The constant is uncertain (FEFF's absolute energies and its broad first peak, the few reference
molecules, chemical shifts between classes of molecule): ``sigma_ev`` is its prior width.  The
comparator marginalises ONE offset for the whole measurement; on the experiment axis its prior
covers the mono's calibration and the convention's error together, as independent Gaussians
(:func:`offset_prior`): the prior widens, but stays one shared number (isomers keep their
chemical shifts apart).

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
    "AxisReference",
    "AXIS_REFERENCES",
    "first_peak_energy",
    "derive_convention",
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


@dataclass(frozen=True)
class AxisReference:
    """One reference resonance: a literature energy and FEFF10's peak for the same QM9 molecule.

    Attributes
    ----------
    edge : str
        ``"O"`` or ``"N"``.
    molecule : str
        Common name.
    qm9_index : int
        QM9 index of the geometry FEFF was run on.
    site : int
        Index of the absorbing atom in QM9's atom order.
    literature_ev : float
        Gas-phase energy of the resonance (eV).
    source : str
        Where ``literature_ev`` was measured.
    feff_peak_ev : float
        :func:`first_peak_energy` of FEFF10's site spectrum (eV).
    """

    edge: str
    molecule: str
    qm9_index: int
    site: int
    literature_ev: float
    source: str
    feff_peak_ev: float

    @property
    def offset_ev(self) -> float:
        """``E_feff - E_experiment`` of this reference (eV)."""
        return self.feff_peak_ev - self.literature_ev


#: the reference resonances behind :data:`AXIS_CONVENTIONS` (module docstring)
AXIS_REFERENCES: tuple[AxisReference, ...] = (
    AxisReference("O", "formaldehyde", 6, 1, 530.8,
                  "O 1s->pi*; Remmers et al., Phys. Rev. A 46, 3935 (1992)", 530.574),
    AxisReference("O", "acetaldehyde", 11, 2, 531.2,
                  "O 1s->pi*; Prince et al., J. Phys. Chem. A 107, 1955 (2003)", 530.563),
    AxisReference("O", "acetone", 18, 3, 531.35,
                  "O 1s->pi* (quoted 531.3-531.4); Prince et al., J. Phys. Chem. A 107, 1955 "
                  "(2003)", 530.543),
    AxisReference("N", "acetonitrile", 10, 2, 399.9,
                  "N 1s->pi*; Carniato et al., J. Chem. Phys. 123, 214301 (2005)", 401.138),
    AxisReference("N", "pyridine", 215, 3, 398.8,
                  "N 1s->pi*; Vall-llosera et al., J. Chem. Phys. 128, 044316 (2008)", 399.707),
)  # fmt: skip


def first_peak_energy(energy: ArrayLike, mu: ArrayLike, *, floor: float = 0.2) -> float:
    """Energy of the first local maximum of ``mu`` at or above ``floor`` x max(mu).

    The resonance locator of :data:`AXIS_REFERENCES`: on a FEFF site spectrum, the first
    (1s -> pi*) peak.  Points are sorted by energy; a flat top counts at its last point.

    Raises
    ------
    ValueError
        When ``mu`` has no such maximum.
    """
    e = np.asarray(energy, dtype=float)
    y = np.asarray(mu, dtype=float)
    order = np.argsort(e, kind="stable")
    e, y = e[order], y[order]
    level = floor * float(np.max(y)) if y.size else 0.0
    for i in range(1, y.size - 1):
        if y[i] >= level and y[i] >= y[i - 1] and y[i] > y[i + 1]:
            return float(e[i])
    raise ValueError("no local maximum above the floor")


def derive_convention(
    edge: str,
    references: tuple[AxisReference, ...] = AXIS_REFERENCES,
    *,
    step: float = 0.05,
    min_sigma: float = 1.0,
) -> AxisConvention:
    """The convention of ``edge`` from its references.

    ``offset_ev`` is the mean of their :attr:`AxisReference.offset_ev` rounded to ``step``;
    ``sigma_ev`` their sample standard deviation rounded to ``step``, at least ``min_sigma``.

    Raises
    ------
    ValueError
        When ``edge`` has no reference.
    """
    offs = np.array([r.offset_ev for r in references if r.edge == edge])
    if offs.size == 0:
        raise ValueError(f"no axis reference for edge {edge!r}")
    spread = float(np.std(offs, ddof=1)) if offs.size > 1 else 0.0
    off = round(round(float(np.mean(offs)) / step) * step, 10)
    sig = max(min_sigma, round(round(spread / step) * step, 10))
    return AxisConvention(edge, off, sig)


#: the shipped conventions: :func:`derive_convention` of :data:`AXIS_REFERENCES` (a test checks)
AXIS_CONVENTIONS: dict[str, AxisConvention] = {
    "O": AxisConvention("O", -0.55, 1.0),
    "N": AxisConvention("N", 1.05, 1.0),
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
