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
    :func:`normalize`: a pre-edge line (or level) subtracted, divided by the edge step, the mean
    of the post-edge window; E0 is the edge's onset on FEFF10's axis (:data:`ONSET_EV`) unless
    given.  Too few points or no positive step raise :class:`NormalizationError`.
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


@dataclass(frozen=True)
class Normalization:
    """A normalised spectrum (:func:`normalize`).

    Attributes
    ----------
    energy, mu : np.ndarray
        The valid points, sorted by energy (NaN-free, repeated energies kept).
    norm : np.ndarray
        ``(mu - pre-edge line) / edge_step`` on ``energy``.
    e0 : float
        The edge energy the windows are relative to (eV).
    edge_step : float
        Mean of ``mu - pre-edge line`` over the post-edge window.
    pre_slope, pre_offset : float
        The pre-edge line, ``pre_slope * energy + pre_offset`` (``pre_slope`` 0 for a level).
    """

    energy: np.ndarray
    mu: np.ndarray
    norm: np.ndarray
    e0: float
    edge_step: float
    pre_slope: float
    pre_offset: float


def _window(e0: float, lo: float, hi: float) -> str:
    if np.isinf(lo):
        return f"below {e0 + hi:.1f} eV"
    if np.isinf(hi):
        return f"above {e0 + lo:.1f} eV"
    return f"in {e0 + lo:.1f}-{e0 + hi:.1f} eV"


def normalize(
    energy: ArrayLike,
    mu: ArrayLike,
    edge: str,
    *,
    e0: float | None = None,
    pre1: float = -np.inf,
    pre2: float = -1.0,
    norm1: float = 15.0,
    norm2: float = np.inf,
    line_span: float = 8.0,
) -> Normalization:
    """Pre-edge line / edge-step normalisation.

    The pre-edge -- a line fitted to the points in ``[e0 + pre1, e0 + pre2)`` when they span at
    least ``line_span`` eV, else their mean -- is subtracted; the result is divided by the edge
    step, the mean of the points in ``(e0 + norm1, e0 + norm2]`` (a FEFF-like spectrum is ~1
    there).  The window names are Larch's ``pre_edge`` ones, relative to E0; the post-edge is a
    constant (Larch's ``nnorm=0``), the pre-edge a plain line (``nvict=0``).

    The model's grids leave only ~3 eV below the onset: a line fitted there, extrapolated 45 eV,
    tilts the spectrum far more than the matrix background it would remove (r 0.97 against 0.999
    for the level on the sim beamline), hence the level for short pre-edges.

    Parameters
    ----------
    energy, mu : array_like
        Points in any order; non-finite ones are dropped.
    edge : str
        ``"O"`` or ``"N"``: E0 defaults to its onset on FEFF10's axis (:data:`ONSET_EV`).
    e0 : float, optional
        Edge energy (eV), instead of the onset of ``edge``.
    pre1, pre2 : float
        Pre-edge window relative to E0 (eV); ``pre2`` excluded.
    norm1, norm2 : float
        Post-edge window relative to E0 (eV); ``norm1`` excluded.
    line_span : float
        A pre-edge window narrower than this (eV) gets a level instead of a line.

    Returns
    -------
    Normalization

    Raises
    ------
    NormalizationError
        Fewer than 2 valid points in the pre-edge window or none in the post-edge window, or an
        edge step that is not positive.
    """
    energy = np.asarray(energy, dtype=float)
    mu = np.asarray(mu, dtype=float)
    keep: NDArray[np.bool_] = np.isfinite(energy) & np.isfinite(mu)  # typed: keeps energy an array
    energy, mu = energy[keep], mu[keep]
    order = np.argsort(energy)
    energy, mu = energy[order], mu[order]
    e0 = ONSET_EV[edge] if e0 is None else float(e0)
    pre_mask = (energy >= e0 + pre1) & (energy < e0 + pre2)
    post_mask = (energy > e0 + norm1) & (energy <= e0 + norm2)
    if pre_mask.sum() < 2 or post_mask.sum() < 1:
        raise NormalizationError(
            f"need >= 2 valid points {_window(e0, pre1, pre2)} and >= 1 "
            f"{_window(e0, norm1, norm2)} (have {pre_mask.sum()} and {post_mask.sum()})"
        )
    if np.ptp(energy[pre_mask]) >= line_span:
        slope, intercept = np.polyfit(energy[pre_mask], mu[pre_mask], 1)
    else:  # too short a lever arm for a slope: a level
        slope, intercept = 0.0, float(np.mean(mu[pre_mask]))
    flat = mu - (slope * energy + intercept)
    step = float(np.mean(flat[post_mask]))
    if not np.isfinite(step) or step <= 0:
        raise NormalizationError(f"no positive edge step (step = {step:.3g})")
    return Normalization(energy, mu, flat / step, e0, step, float(slope), float(intercept))


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
