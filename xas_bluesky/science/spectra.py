"""The processing chain of a measured spectrum: mu(E) from detector channels, its noise, its
normalisation, the mono's energy offset against a known spectrum, and peaks.

Pure numpy (scipy for the peaks): no Bluesky, no EPICS.  The live-analysis callback, the demo's
``measured`` block, :func:`~xas_bluesky.beamline.plans.calibrate_energy`, the benchmarks and the
simulated beamline's spectrum files all use these functions.

mu from channels
    :func:`mu_from_channels` in one of the detection modes (``mode``):

    ``"transmission"``
        mu = ln(I0 / It): Beer-Lambert through the sample.
    ``"fluorescence"``
        mu ~ If / I0: the fluorescence yield is proportional to the absorption of a dilute or thin
        sample (self-absorption is not corrected).
    ``"tey"`` (total electron yield, the default of soft X-ray NEXAFS)
        mu ~ Iey / I0: the drain current counts the electrons the absorption releases near the
        surface.

    Dark currents (offsets of the amplifiers with the beam off) are subtracted from each channel
    when given.  A reading that cannot give a trustworthy mu -- NaN, inf, I0 <= 0 after the dark
    subtraction, or It <= 0 in transmission -- is never turned into a number: it raises
    :class:`BadReading` naming the channel and the value, or (``strict=False``) is flagged and
    gives NaN.
noise
    Poisson from the counts (``counts=True``), else :func:`noise_from_scatter`.
normalisation
    :func:`normalize`: Larch's ``pre_edge`` in numpy (a pre-edge line or level subtracted, a
    post-edge polynomial, the edge step between them at E0, ``norm`` and ``flat``), with defaults
    for O/N K-edge NEXAFS; E0 is the edge's onset on FEFF10's axis (:data:`ONSET_EV`) unless given
    (:func:`find_e0` is Larch's rule).  Too few points or no positive step raise
    :class:`NormalizationError`.
energy offset
    :func:`fit_energy_offset` (the mono's calibration offset, least squares against a known
    spectrum) and :func:`best_shift_pearson` (Pearson's r after the best shift).
peaks
    :func:`find_peak_energies`.
known spectra
    :func:`load_spectrum_csv` reads an ``energy_eV,mu`` file, :func:`check_spectrum` checks a
    spectrum's arrays; both raise :class:`SpectrumError`.

Energies are on FEFF10's absolute axis like everything else here (the O K onset sits near 530 eV,
the N K onset near 399 eV).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.polynomial import Polynomial
from numpy.typing import ArrayLike, NDArray

from xas_bluesky.science.grids import ONSET_EV

__all__ = [
    "KINDS",
    "BadReading",
    "MuResult",
    "mu_from_channels",
    "noise_from_scatter",
    "NormalizationError",
    "Normalization",
    "normalize",
    "find_e0",
    "PRE1",
    "PRE2",
    "NORM1",
    "NORM2",
    "NNORM",
    "LINE_SPAN",
    "best_shift_pearson",
    "fit_energy_offset",
    "find_peak_energies",
    "SpectrumError",
    "check_spectrum",
    "load_spectrum_csv",
]

#: the formulas of mu: ln(I0/It), or the yield's signal / I0 (the measurement modes of a run,
#: :data:`xas_bluesky.contracts.MODES`, and their aliases map onto these)
KINDS = ("transmission", "fluorescence", "tey")
_MODE_ALIASES = {
    "transmission": "transmission",
    "trans": "transmission",
    "fluorescence": "fluorescence",
    "fluo": "fluorescence",
    "pfy": "fluorescence",
    "tfy": "fluorescence",
    "tey": "tey",
    "electron_yield": "tey",
    "ey": "tey",
}


class BadReading(ValueError):
    """A detector reading that cannot give a trustworthy mu(E).

    Attributes
    ----------
    channel : str
        Name of the offending channel (as given by the caller, e.g. ``"I0"`` or ``"sclr_ch2"``).
    value : float
        The offending value (after dark subtraction where that is what made it bad).
    index : int or None
        Position of the point in the input arrays (None for scalars).
    reason : str
        What is wrong with it.
    """

    def __init__(self, channel: str, value: float, reason: str, index: int | None = None):
        self.channel = channel
        self.value = float(value)
        self.reason = reason
        self.index = index
        where = "" if index is None else f" at point {index}"
        super().__init__(f"bad reading of channel {channel!r}{where}: {self.value!r} ({reason})")


@dataclass
class MuResult:
    """mu(E) computed from detector channels.

    Attributes
    ----------
    mu : np.ndarray
        mu per point (NaN where ``ok`` is False).
    sigma : np.ndarray or None
        One-standard-deviation noise of mu per point (Poisson, when the channels are counts), else
        None: then estimate it from the data, e.g. with :func:`noise_from_scatter`.
    ok : np.ndarray
        Per-point flag: True where the reading was good.
    problems : list[str]
        One message per bad point (empty when all are good).
    """

    mu: np.ndarray
    sigma: np.ndarray | None
    ok: np.ndarray
    problems: list[str] = field(default_factory=list)


def _mode(mode: str) -> str:
    try:
        return _MODE_ALIASES[mode.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown detection mode {mode!r}: expected one of {KINDS}") from None


def mu_from_channels(
    mode: str,
    i0: ArrayLike,
    signal: ArrayLike,
    *,
    dark_i0: float = 0.0,
    dark_signal: float = 0.0,
    counts: bool = False,
    strict: bool = True,
    i0_name: str = "I0",
    signal_name: str | None = None,
) -> MuResult:
    """mu from the incident-flux channel ``i0`` and the ``signal`` channel of ``mode``.

    Parameters
    ----------
    mode : {"transmission", "fluorescence", "tey"}
        Detection mode; ``signal`` is It, If or the electron-yield current respectively.
    i0, signal : float or array_like
        Raw readings (scalars or arrays of the same length).
    dark_i0, dark_signal : float
        Dark currents (or dark counts over the same dwell time) subtracted before anything else.
    counts : bool
        True when the channels are photon / electron counts: then the noise is Poisson,
        var(N) = N of the raw (not dark-subtracted) counts, propagated to mu, and a negative
        signal (counts cannot be) is a bad reading in every mode.  For currents from
        electrometers the noise is unknown here and ``sigma`` is None.
    strict : bool
        True: raise :class:`BadReading` at the first bad point.  False: flag bad points in
        ``ok``, set their mu (and sigma) to NaN and describe them in ``problems``.
    i0_name, signal_name : str
        Channel names used in messages (``signal_name`` defaults to It / If / TEY).

    Returns
    -------
    MuResult
    """
    mode = _mode(mode)
    if signal_name is None:
        signal_name = {"transmission": "It", "fluorescence": "If", "tey": "TEY"}[mode]
    scalar = np.ndim(i0) == 0 and np.ndim(signal) == 0
    raw0 = np.atleast_1d(np.asarray(i0, dtype=float))
    raws = np.atleast_1d(np.asarray(signal, dtype=float))
    if raw0.shape != raws.shape:
        raise ValueError(
            f"{i0_name} and {signal_name} differ in shape: {raw0.shape} vs {raws.shape}"
        )
    a0 = raw0 - float(dark_i0)
    s = raws - float(dark_signal)

    ok = np.ones(raw0.shape, dtype=bool)
    errors: list[BadReading] = []

    def flag(bad: np.ndarray, channel: str, values: np.ndarray, reason: str) -> None:
        new = bad & ok
        for idx in np.flatnonzero(new):
            errors.append(BadReading(channel, values[idx], reason, None if scalar else int(idx)))
        ok[new] = False

    flag(~np.isfinite(raw0), i0_name, raw0, "not a finite number")
    flag(~np.isfinite(raws), signal_name, raws, "not a finite number")
    flag(a0 <= 0, i0_name, a0, "incident flux must be > 0 after dark subtraction")
    if mode == "transmission":
        flag(s <= 0, signal_name, s, "transmitted flux must be > 0 after dark subtraction")
    elif counts:
        flag(raws < 0, signal_name, raws, "counts cannot be negative")

    mu = np.full(raw0.shape, np.nan)
    sigma = np.full(raw0.shape, np.nan) if counts else None
    g = ok.copy()
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        if mode == "transmission":
            mu[g] = np.log(a0[g] / s[g])
        else:
            mu[g] = s[g] / a0[g]
        if counts:
            assert sigma is not None  # allocated above when ``counts``
            # Poisson: var = raw counts (the dark level is treated as known exactly)
            v0 = np.maximum(raw0[g], 1.0) / a0[g] ** 2  # relative variance of I0
            if mode == "transmission":
                sigma[g] = np.sqrt(v0 + np.maximum(raws[g], 1.0) / s[g] ** 2)
            else:
                # var(S/I0) = var(S)/I0^2 + S^2 var(I0)/I0^4
                sigma[g] = np.sqrt(np.maximum(raws[g], 1.0) / a0[g] ** 2 + mu[g] ** 2 * v0)
    # a tiny positive I0 (or It) passes the checks above and overflows the ratio: one bad point
    overflow = ~np.isfinite(mu) if sigma is None else ~(np.isfinite(mu) & np.isfinite(sigma))
    flag(g & overflow, i0_name, a0, "mu (or its noise) overflows: incident flux too small")
    mu[~ok] = np.nan
    if sigma is not None:
        sigma[~ok] = np.nan
    errors.sort(key=lambda err: err.index or 0)  # report in point order
    if errors and strict:
        raise errors[0]
    problems = [str(err) for err in errors]
    if scalar:
        mu, sigma, ok = mu[:1], None if sigma is None else sigma[:1], ok[:1]
    return MuResult(mu, sigma, ok, problems)


def noise_from_scatter(mu: ArrayLike, *, floor: float = 0.0) -> float:
    """Noise of a spectrum from its point-to-point scatter (for channels that are not counts).

    Uses the second difference d_i = mu_i - (mu_{i-1} + mu_{i+1}) / 2, which removes a smooth
    signal; for white noise of std s, var(d) = 1.5 s^2.  The median absolute deviation keeps
    edges and peaks from inflating it.

    Parameters
    ----------
    mu : array_like
        The spectrum in energy order; NaNs are dropped.
    floor : float
        Least value returned.

    Returns
    -------
    float
        One standard deviation of mu per point; ``floor`` when fewer than 5 points are given.
    """
    y = np.asarray(mu, dtype=float)
    y = y[np.isfinite(y)]
    if y.size < 5:
        return float(floor)
    d = y[1:-1] - 0.5 * (y[:-2] + y[2:])
    s = 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(1.5)
    return float(max(s, floor))


class NormalizationError(ValueError):
    """Too few valid points, or no edge step, to normalise a spectrum or fit its energy offset."""


#: the pre-edge window's lower end relative to E0 (eV) unless given: the first point (Larch's clamp
#: of ``pre1`` to the data); Larch's rule (the second point, rounded to 2 eV) drops 1 of the 3 eV
#: below the N K onset on the model grid
PRE1 = -np.inf
#: the pre-edge window's upper end relative to E0 (eV) unless given: NEXAFS rises at the onset,
#: so the window ends 1 eV below it (Larch: half of ``pre1``, 2 eV of the 4 the model grid has)
PRE2 = -1.0
#: the post-edge window's lower end relative to E0 (eV) unless given: past the pi* and the
#: strongest sigma* resonances (Larch's rule gives the same 15 eV on a 45 eV post-edge)
NORM1 = 15.0
#: the post-edge window's upper end relative to E0 (eV) unless given: the last point (Larch's
#: clamp); Larch's rule rounds it to 5 eV and drops up to 2.5 eV of the post-edge
NORM2 = np.inf
#: degree of the post-edge polynomial unless given: a constant (Larch picks 1 for a 30 eV window;
#: on NEXAFS it would follow the sigma* resonances' tail back to E0)
NNORM = 0
#: a pre-edge window spanning less than this (eV) gets a level (Larch's ``npre=0``), not a line
LINE_SPAN = 8.0


@dataclass(frozen=True)
class Normalization:
    """A normalised spectrum (:func:`normalize`), with Larch ``pre_edge``'s results.

    Attributes
    ----------
    energy, mu : np.ndarray
        The valid points, sorted by energy (NaN-free, repeated energies kept).
    norm : np.ndarray
        ``(mu - pre_edge) / edge_step`` on ``energy``.
    e0 : float
        The edge energy the windows are relative to (eV).
    edge_step : float
        ``post_edge - pre_edge`` at E0 (at the point nearest E0, as Larch), or the ``step``
        given.
    pre_slope, pre_offset : float
        The line fitted to ``mu * energy**nvict`` in the pre-edge window (``pre_slope`` 0 for a
        level): ``pre_edge = (pre_offset + pre_slope * energy) * energy**-nvict``.
    flat : np.ndarray
        ``norm`` with the post-edge polynomial's curvature taken out above E0 (Larch's ``flat``;
        equal to ``norm`` for ``nnorm=0``).
    pre_edge, post_edge : np.ndarray
        The pre-edge curve and the post-edge curve (pre-edge plus the polynomial) on ``energy``.
    pre1, pre2, norm1, norm2 : float
        The windows used, relative to E0 (eV), after Larch's defaults and clamps.
    npre, nvict, nnorm : int
        Pre-edge degree used (1 a line, 0 a level), its energy exponent, the post-edge
        polynomial's degree.
    norm_coefs : tuple of float
        The post-edge polynomial's coefficients, constant first (of ``mu - pre_edge``).
    """

    energy: np.ndarray
    mu: np.ndarray
    norm: np.ndarray
    e0: float
    edge_step: float
    pre_slope: float
    pre_offset: float
    flat: np.ndarray
    pre_edge: np.ndarray
    post_edge: np.ndarray
    pre1: float
    pre2: float
    norm1: float
    norm2: float
    npre: int
    nvict: int
    nnorm: int
    norm_coefs: tuple[float, ...]

    def larch_kwargs(self) -> dict[str, float | int]:
        """The arguments that make ``larch.xafs.pre_edge`` reproduce this normalisation."""
        return {
            "e0": self.e0,
            "pre1": self.pre1,
            "pre2": self.pre2,
            "norm1": self.norm1,
            "norm2": self.norm2,
            "nnorm": self.nnorm,
            "nvict": self.nvict,
            "npre": self.npre,
        }


def _window(e0: float, lo: float, hi: float) -> str:
    if np.isinf(lo):
        return f"below {e0 + hi:.1f} eV"
    if np.isinf(hi):
        return f"above {e0 + lo:.1f} eV"
    return f"in {e0 + lo:.1f}-{e0 + hi:.1f} eV"


def _clean(energy: ArrayLike, mu: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Finite points, sorted by energy (stable: repeated energies keep their order)."""
    e = np.asarray(energy, dtype=float).ravel()
    m = np.asarray(mu, dtype=float).ravel()
    if e.shape != m.shape:
        raise ValueError(f"energy and mu differ in length: {e.size} vs {m.size}")
    keep: NDArray[np.bool_] = np.isfinite(e) & np.isfinite(m)  # typed: keeps e an array
    e, m = e[keep], m[keep]
    order = np.argsort(e, kind="stable")
    return e[order], m[order]


def _index_of(x: np.ndarray, value: float) -> int:
    """Larch's ``index_of`` on sorted ``x``: the last index with ``x <= value``, 0 below all."""
    return max(int(np.searchsorted(x, value, side="right")) - 1, 0)


def _index_nearest(x: np.ndarray, value: float) -> int:
    """Larch's ``index_nearest``: the (first) index of the point nearest ``value``."""
    return int(np.abs(x - value).argmin())


def _smooth(x: np.ndarray, y: np.ndarray, step: float) -> np.ndarray:
    """Larch's ``smooth`` (Lorentzian, sigma = ``step``, on a uniform grid of ``step``)."""
    npad = 5
    xmin = step * int((x.min() - npad * step) / step)
    xmax = step * int((x.max() + npad * step) / step)
    npts = min(1 + int(abs(xmax - xmin + step * 0.1) / step), 50 * x.size)
    x0 = np.linspace(xmin, xmax, npts)
    y0 = np.interp(x0, x, y)
    wx = np.arange(2 * npts)
    win = 1.0 / (1.0 + (wx - npts) ** 2)  # Lorentzian of unit width (in grid points)
    y1 = np.concatenate((y0[npts:0:-1], y0, y0[-1 : -npts - 1 : -1]))
    y2 = np.convolve(win / win.sum(), y1, mode="valid")
    if y2.size > x0.size:
        nex = (y2.size - x0.size) // 2
        y2 = y2[nex:][: x0.size]
    return np.interp(x, x0, y2)


def _in_order(x: np.ndarray) -> np.ndarray:
    """Larch's selection of the points "in order" (``diff(argsort(x)) == 1``): on sorted data,
    every point but the last."""
    return np.where(np.diff(np.argsort(x)) == 1)[0]


def _energy_step(energy: np.ndarray) -> float:
    """Larch's ``find_energy_step``: the mean of the 10 smallest steps past the smallest 1 %
    (NaN below 100 points, as in Larch, where ``[0:-0]`` is empty)."""
    nskip = int(0.01 * energy.size)
    ediff = np.diff(energy[_in_order(energy)][nskip:-nskip])
    ediff = np.sort(ediff)[nskip : nskip + 10]
    return float(ediff.mean()) if ediff.size else float("nan")


def _finde0(energy: np.ndarray, mu: np.ndarray, estep: float | None, smooth: bool):
    """Larch's ``_finde0``: the point of largest derivative among >= 3 neighbouring points of
    high derivative (the 'in order' points, so not the last)."""
    ordered = _in_order(energy)
    en, mu = energy[ordered], mu[ordered]
    if estep is None:
        estep = _energy_step(en)
    nmin = max(3, int(en.size * 0.02))
    dmu = np.gradient(mu) / np.gradient(en)
    if smooth:
        dmu = _smooth(en, dmu, estep)
    dmu[~np.isfinite(dmu)] = -1.0
    inner = dmu[nmin:-nmin]
    dmu = (dmu - inner.min()) / max(1e-10, float(np.ptp(inner)))
    dhigh = 0.60 if en.size > 20 else 0.30
    high = np.where(dmu > dhigh)[0]
    if high.size < 3:
        for _ in range(2):
            if high.size > 3:
                break
            dhigh *= 0.5
            high = np.where(dmu > dhigh)[0]
    if high.size < 3:
        high = np.where(np.isfinite(dmu))[0]
    hset = set(high.tolist())
    imax, dmax = 0, 0.0
    for i in high.tolist():
        if i < nmin or i > en.size - nmin:
            continue
        if dmu[i] > dmax and (i + 1) in hset and (i - 1) in hset:
            imax, dmax = i, float(dmu[i])
    return float(en[imax]), imax, estep


def find_e0(energy: ArrayLike, mu: ArrayLike) -> float:
    """E0 by Larch's rule (``larch.xafs.find_e0``): the largest derivative of mu, found once
    unsmoothed, then refined on the Lorentzian-smoothed derivative within 75 points of it; an
    edge in the first 5 % of the points is taken for a glitch.

    On NEXAFS it is the steepest rise of the first (pi*) resonance, which moves from molecule to
    molecule, not the absorption onset :func:`normalize` uses by default; pass it as ``e0`` to
    normalise as Larch does by default.

    Parameters
    ----------
    energy, mu : array_like
        The spectrum, points in any order (non-finite ones dropped, repeated energies averaged).

    Returns
    -------
    float
        E0 (eV), one of the energies.

    Raises
    ------
    NormalizationError
        Fewer than 20 distinct valid points.
    """
    e, m = _sorted_unique(energy, mu)
    if e.size < 20:
        raise NormalizationError(f"need >= 20 distinct valid points to find E0, have {e.size}")
    e1, ie0, estep1 = _finde0(e, m, None, smooth=False)
    istart, istop = max(3, ie0 - 75), min(ie0 + 75, e.size - 3)
    if ie0 < 0.05 * e.size:  # an edge in the first 5 % of the points: a glitch
        e1 = float(e.mean())
        istart, istop = max(3, ie0 - 20), e.size - 3
    # Python's min/max as Larch has them: a NaN step (fewer than 100 points) gives 1 eV
    estep = 0.5 * (max(0.01, min(1.0, estep1)) + max(0.01, min(1.0, e1 / 25000.0)))
    found, ix, _ = _finde0(e[istart:istop], m[istart:istop], estep, smooth=True)
    return float(e[istart + 2]) if ix < 1 else found


def normalize(
    energy: ArrayLike,
    mu: ArrayLike,
    edge: str | None = None,
    *,
    e0: float | None = None,
    step: float | None = None,
    pre1: float | None = PRE1,
    pre2: float | None = PRE2,
    norm1: float | None = NORM1,
    norm2: float | None = NORM2,
    nnorm: int | None = NNORM,
    nvict: int = 0,
    npre: int = 1,
    line_span: float = LINE_SPAN,
) -> Normalization:
    """Pre-edge subtraction and edge-step normalisation with the semantics of Larch's
    ``pre_edge`` (``larch.xafs.pre_edge``), in numpy.

    1. E0: ``e0`` if given, else the onset of ``edge`` on FEFF10's axis (:data:`ONSET_EV`), else
       (no edge) Larch's rule, :func:`find_e0`.
    2. Pre-edge: a line fitted to ``mu * energy**nvict`` over ``[E0 + pre1, E0 + pre2]``,
       divided by ``energy**nvict``; a level (the window's mean, Larch's ``npre=0``) when
       ``npre=0``, when the window holds fewer than 3 points (Larch's rule) or when it spans less
       than ``line_span`` eV (this package's rule: ~3 eV below the onset, a line extrapolated
       45 eV tilts the spectrum more than the background it would remove).
    3. Post-edge: a polynomial of degree ``nnorm`` fitted to ``mu - pre_edge`` over
       ``[E0 + norm1, E0 + norm2]``.
    4. ``edge_step = post_edge(E0) - pre_edge(E0)``, ``norm = (mu - pre_edge) / edge_step``,
       ``flat`` = ``norm`` less the post-edge polynomial's change above E0.

    The windows are taken as Larch takes them: from the last point at or below the lower end to
    the point nearest the upper end, that one excluded; ``pre1`` is raised to the first point,
    ``norm2`` lowered to the last, ``norm1`` kept 2 eV below ``norm2``; edge quantities are read
    at the point nearest E0.  With the same arguments (:meth:`Normalization.larch_kwargs`) the
    result is Larch's to rounding.

    Defaults, for O/N K-edge NEXAFS on the model's ~50 eV window (E0 - 4 to E0 + 45 eV):
    E0 the edge's onset; ``pre1`` and ``norm2`` all the data on either side (:data:`PRE1`,
    :data:`NORM2`, through Larch's clamps); ``pre2=-1`` (:data:`PRE2`), ``norm1=15``
    (:data:`NORM1`), ``nnorm=0`` (:data:`NNORM`), ``nvict=0`` and ``npre=1`` (Larch's),
    ``line_span=8`` (:data:`LINE_SPAN`).  ``None`` for ``pre1``, ``pre2``, ``norm1``, ``norm2``
    or ``nnorm`` takes Larch's rule for it.

    Parameters
    ----------
    energy, mu : array_like
        Points in any order; non-finite ones are dropped.
    edge : str, optional
        ``"O"`` or ``"N"``: E0 defaults to its onset on FEFF10's axis.
    e0 : float, optional
        Edge energy (eV); must lie inside the data (Larch would search one instead).
    step : float, optional
        A fixed edge step instead of the fitted one.
    pre1, pre2 : float, optional
        Pre-edge window relative to E0 (eV).
    norm1, norm2 : float, optional
        Post-edge window relative to E0 (eV).
    nnorm : int, optional
        Degree of the post-edge polynomial (0-5).
    nvict : int
        Energy exponent of the pre-edge fit (Victoreen): the line is fitted to mu * E**nvict.
    npre : int
        1: a pre-edge line; 0: a level.
    line_span : float
        A pre-edge window narrower than this (eV) gets a level; 0 for Larch's rule alone.

    Returns
    -------
    Normalization

    Raises
    ------
    NormalizationError
        Fewer than 2 valid points in the pre-edge window or none in the post-edge window, E0
        outside the data, or an edge step that is not positive.
    """
    energy, mu = _clean(energy, mu)
    if energy.size < 4:
        raise NormalizationError(f"need >= 4 valid points to normalise, have {energy.size}")
    if e0 is None:
        e0 = ONSET_EV[edge] if edge is not None else find_e0(energy, mu)
    e0 = float(e0)
    if not energy[1] <= e0 <= energy[-2]:
        raise NormalizationError(
            f"E0 {e0:.2f} eV lies outside the data ({energy[0]:.2f}-{energy[-1]:.2f} eV)"
        )
    n = energy.size
    ie0 = _index_nearest(energy, e0)
    last = float(energy[-1] - e0)

    # the windows, as Larch's preedge() sets them; first what the data must hold (Larch would
    # swap a window that lies beyond the data and fit the edge itself)
    lo = -np.inf if pre1 is None else float(pre1)
    open_end = norm2 is None or norm2 == np.inf  # for the message only
    if pre1 is None:
        grain = 5.0 if ie0 > 20 else 2.0  # the first point but one, rounded
        pre1 = grain * round(float(energy[1] - e0) / grain)
    pre1 = max(pre1, float(energy[0] - e0))
    if pre2 is None:
        pre2 = 0.5 * pre1
    if norm2 is None:
        norm2 = 5.0 * round(last / 5.0)
    if norm2 < 0:
        norm2 = last - norm2
    norm2 = min(norm2, last)
    if norm1 is None:
        norm1 = min(25.0, 5.0 * round(norm2 / 15.0))
    hi = np.inf if open_end else norm2
    n_pre = int(np.count_nonzero((energy >= e0 + lo) & (energy < e0 + pre2)))
    n_post = int(np.count_nonzero((energy > e0 + norm1) & (energy <= e0 + hi)))
    if n_pre < 2 or n_post < 1:
        raise NormalizationError(
            f"need >= 2 valid points {_window(e0, lo, pre2)} and >= 1 "
            f"{_window(e0, norm1, hi)} (have {n_pre} and {n_post})"
        )
    if pre1 > pre2:
        pre1, pre2 = pre2, pre1
    if _index_of(energy - e0, pre2) - _index_of(energy - e0, pre1) < 3:
        npre, nvict = 0, 0
    if norm1 > norm2:
        norm1, norm2 = norm2, norm1
    norm1 = min(norm1, norm2 - 2.0)
    if nnorm is None:
        nnorm = 2 if norm2 - norm1 >= 300 else 1 if norm2 - norm1 >= 30 else 0
    nnorm = max(min(int(nnorm), 5), 0)

    # pre-edge
    p1, p2 = _index_of(energy, pre1 + e0), _index_nearest(energy, pre2 + e0)
    if npre == 1 and line_span > 0 and np.ptp(energy[p1 : max(p2, p1 + 2)]) < line_span:
        npre, nvict = 0, 0
    if npre == 0:
        p2 = p2 + 1 if p2 == p1 else p2
        offset, slope = float(np.mean(mu[p1:p2])), 0.0
        pre_edge = np.full(n, offset)
    else:
        p2 = min(n, p1 + 2) if p2 - p1 < 2 else p2
        ex = energy[p1:p2]
        line = Polynomial.fit(ex, mu[p1:p2] * ex**nvict, 1).convert()
        offset, slope = (float(c) for c in np.pad(line.coef, (0, 2 - line.coef.size)))
        pre_edge = (offset + slope * energy) * energy ** (-float(nvict))

    # post-edge
    p1, p2 = _index_of(energy, norm1 + e0), _index_nearest(energy, norm2 + e0)
    p1 = min(p1, n - 3)
    if p2 - p1 < 2:
        p1, nnorm = p1 - 2, 0
    elif p2 - p1 < 5:
        nnorm = min(1, nnorm)
    poly = Polynomial.fit(energy[p1:p2], (mu - pre_edge)[p1:p2], nnorm).convert()
    post = poly(energy)
    post_edge = pre_edge + post
    edge_step = float(post_edge[ie0] - pre_edge[ie0]) if step is None else float(step)
    if not np.isfinite(edge_step) or edge_step <= 0:
        raise NormalizationError(f"no positive edge step (step = {edge_step:.3g})")
    norm = (mu - pre_edge) / edge_step
    residue = post / edge_step
    flat = norm - residue + residue[ie0]
    flat[:ie0] = norm[:ie0]
    return Normalization(
        energy=energy,
        mu=mu,
        norm=norm,
        e0=e0,
        edge_step=edge_step,
        pre_slope=slope,
        pre_offset=offset,
        flat=flat,
        pre_edge=pre_edge,
        post_edge=post_edge,
        pre1=float(pre1),
        pre2=float(pre2),
        norm1=float(norm1),
        norm2=float(norm2),
        npre=int(npre),
        nvict=int(nvict),
        nnorm=int(nnorm),
        norm_coefs=tuple(float(c) for c in poly.coef),
    )


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def best_shift_pearson(
    energy: ArrayLike,
    mu: ArrayLike,
    ref_energy: ArrayLike,
    ref_mu: ArrayLike,
    *,
    max_shift: float = 3.0,
    step: float = 0.02,
) -> tuple[float, float]:
    """Pearson's r between ``mu(energy)`` and ``ref_mu(energy + shift)``, maximised over the
    shift.

    Parameters
    ----------
    energy, mu : array_like
        The measured (normalised) spectrum, NaN-free.
    ref_energy, ref_mu : array_like
        The known spectrum, energies increasing; 0 below its start, held past its end.
    max_shift, step : float
        Shifts tried: ``-max_shift`` to ``max_shift`` in steps of ``step`` (eV).

    Returns
    -------
    r, shift : float
    """
    energy = np.asarray(energy, dtype=float)
    mu = np.asarray(mu, dtype=float)
    ref_energy = np.asarray(ref_energy, dtype=float)
    ref_mu = np.asarray(ref_mu, dtype=float)
    best = (-np.inf, 0.0)
    for s in np.arange(-max_shift, max_shift + step / 2, step):
        ref = np.interp(energy + s, ref_energy, ref_mu, left=0.0, right=ref_mu[-1])
        r = _pearson(mu, ref)
        if r > best[0]:
            best = (r, float(s))
    return best


def fit_energy_offset(
    energy_rb: ArrayLike,
    mu: ArrayLike,
    ref_energy: Sequence[float] | np.ndarray,
    ref_mu: Sequence[float] | np.ndarray,
    *,
    max_shift: float = 3.0,
    step: float = 0.01,
) -> tuple[float, float]:
    """The mono's calibration offset (true = readback + offset) by least squares.

    For each trial offset the measured ``mu`` is fitted by ``a + b * E + c * ref(E + offset)``
    (background and scale free, the shape fixed); the offset with the smallest residual is refined
    by a parabola through its neighbours.

    Parameters
    ----------
    energy_rb, mu : array_like
        The mono's readbacks and raw mu; non-finite points are dropped.
    ref_energy, ref_mu : sequence of float or ndarray
        The known spectrum on the true energy axis, energies increasing.
    max_shift, step : float
        Offsets tried: ``-max_shift`` to ``max_shift`` in steps of ``step`` (eV).

    Returns
    -------
    offset, r : float
        The offset in eV and the correlation of the fitted model with the data.

    Raises
    ------
    NormalizationError
        Fewer than 10 valid points, or the best offset at the limit of the search.
    """
    e = np.asarray(energy_rb, dtype=float)
    m = np.asarray(mu, dtype=float)
    ok = np.isfinite(e) & np.isfinite(m)
    e, m = e[ok], m[ok]
    if e.size < 10:
        raise NormalizationError(f"only {e.size} valid points to fit the energy offset")
    shifts = np.arange(-max_shift, max_shift + step / 2, step)
    rss = np.empty_like(shifts)
    ec = e - e.mean()
    for k, s in enumerate(shifts):
        ref = np.interp(e + s, ref_energy, ref_mu, left=0.0, right=ref_mu[-1])
        design = np.column_stack([np.ones_like(e), ec, ref])
        _, res, rank, _ = np.linalg.lstsq(design, m, rcond=None)
        rss[k] = res[0] if res.size and rank == 3 else np.inf
    k = int(np.argmin(rss))
    if k in (0, len(shifts) - 1) or not np.isfinite(rss[k]):
        raise NormalizationError(
            f"no energy offset found within +-{max_shift} eV (best at the search limit)"
        )
    y0, y1, y2 = rss[k - 1], rss[k], rss[k + 1]
    den = y0 - 2 * y1 + y2
    offset = shifts[k] + (0.5 * step * (y0 - y2) / den if den > 0 else 0.0)
    r = float(np.sqrt(max(0.0, 1.0 - y1 / np.sum((m - m.mean()) ** 2))))
    return float(offset), r


def _sorted_unique(energy, mu):
    e = np.asarray(energy, dtype=float)
    y = np.asarray(mu, dtype=float)
    good = np.isfinite(e) & np.isfinite(y)
    e, y = e[good], y[good]
    order = np.argsort(e, kind="stable")
    e, y = e[order], y[order]
    if e.size and np.any(np.diff(e) == 0):  # repeated energies: average them
        ue, inv = np.unique(e, return_inverse=True)
        y = np.bincount(inv, weights=y) / np.bincount(inv)
        e = ue
    return e, y


def find_peak_energies(
    energy: ArrayLike, mu: ArrayLike, *, min_prominence: float = 0.05
) -> np.ndarray:
    """Energies of the peaks of ``mu`` whose prominence is at least ``min_prominence`` x max|mu|.

    Peaks (pi* and sigma* resonances) are the features that tell molecules apart; the threshold is
    relative so it works on raw and normalised spectra alike.

    Parameters
    ----------
    energy, mu : array_like
        Points in any order (NaNs are dropped, repeated energies averaged).
    min_prominence : float
        Least prominence of a peak, as a fraction of max|mu|.

    Returns
    -------
    np.ndarray
        The peaks' energies, increasing (empty for fewer than 3 points or mu = 0).
    """
    e, y = _sorted_unique(energy, mu)
    if y.size < 3:
        return np.empty(0)
    scale = np.max(np.abs(y))
    if scale == 0:
        return np.empty(0)
    from scipy.signal import find_peaks  # ~1 s to import: not for the sim IOC's CSV loader

    idx, _ = find_peaks(y, prominence=min_prominence * scale)
    return e[idx]


class SpectrumError(ValueError):
    """A known spectrum (or its file) that cannot be used: unreadable, too short, not increasing."""


def check_spectrum(
    energy: ArrayLike,
    mu: ArrayLike,
    *,
    source: str = "spectrum",
    energy_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A known spectrum ``mu(energy)``, checked: 1-D, >= 5 points, finite, strictly increasing
    energies (inside ``energy_range`` when given, e.g. a mono's travel), mu not constant.

    Parameters
    ----------
    energy, mu : array_like
        The spectrum (eV, on FEFF10's absolute axis).
    source : str
        Where it came from (a file name), the first word of every message.
    energy_range : (float, float), optional
        Lowest and highest allowed energy (eV).

    Returns
    -------
    energy, mu : np.ndarray
        As float arrays.

    Raises
    ------
    SpectrumError
        With a one-line message naming ``source`` and the problem.
    """
    e = np.asarray(energy, dtype=float)
    m = np.asarray(mu, dtype=float)
    if e.ndim != 1 or e.shape != m.shape:
        raise SpectrumError(f"{source}: energy and mu must be 1-D of the same length")
    if e.size < 5:
        raise SpectrumError(f"{source}: needs at least 5 points, got {e.size}")
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(m))):
        raise SpectrumError(f"{source}: non-finite energy or mu values")
    if np.any(np.diff(e) <= 0):
        raise SpectrumError(f"{source}: energies must be strictly increasing")
    if energy_range is not None:
        lo, hi = energy_range
        if e[0] < lo or e[-1] > hi:
            raise SpectrumError(
                f"{source}: energies {e[0]:.1f}-{e[-1]:.1f} eV lie outside the mono's "
                f"{lo:.0f}-{hi:.0f} eV (expected FEFF10's absolute axis, in eV)"
            )
    if np.ptp(m) <= 0:
        raise SpectrumError(f"{source}: mu is constant (no edge)")
    return e, m


def load_spectrum_csv(
    path: str | Path, *, energy_range: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a CSV ``energy_eV,mu`` (header row, then numbers), checked by :func:`check_spectrum`.

    Parameters
    ----------
    path : str or Path
        The file.
    energy_range : (float, float), optional
        Passed to :func:`check_spectrum`.

    Returns
    -------
    energy, mu : np.ndarray

    Raises
    ------
    SpectrumError
        With a one-line message naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise SpectrumError(f"{path}: no such file")
    rows: list[tuple[float, float]] = []
    try:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise SpectrumError(f"{path}: empty file")
            names = [h.strip() for h in header]
            if names[:2] != ["energy_eV", "mu"]:
                raise SpectrumError(
                    f"{path}: header must be 'energy_eV,mu', got {','.join(names)!r}"
                )
            for lineno, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                try:
                    rows.append((float(row[0]), float(row[1])))
                except (ValueError, IndexError):
                    raise SpectrumError(f"{path}:{lineno}: not two numbers: {row!r}") from None
    except UnicodeDecodeError:
        raise SpectrumError(f"{path}: not a text CSV file") from None
    if not rows:
        raise SpectrumError(f"{path}: no data rows")
    arr = np.asarray(rows, dtype=float)
    return check_spectrum(arr[:, 0], arr[:, 1], source=str(path), energy_range=energy_range)
