"""mu(E) from detector channels, its noise, normalisation as points arrive, and peaks.

Pure numpy/scipy: no Bluesky, no EPICS.

Detection modes (``mode``):

``"transmission"``
    mu = ln(I0 / It): Beer-Lambert through the sample.
``"fluorescence"``
    mu ~ If / I0: the fluorescence yield is proportional to the absorption of a dilute or thin
    sample (self-absorption is not corrected).
``"tey"`` (total electron yield, the default of soft X-ray NEXAFS)
    mu ~ Iey / I0: the drain current counts the electrons the absorption releases near the surface.

Dark currents (offsets of the amplifiers with the beam off) are subtracted from each channel when
given.  A reading that cannot give a trustworthy mu -- NaN, inf, I0 <= 0 after the dark
subtraction, or It <= 0 in transmission -- is never turned into a number: :func:`mu_from_channels`
raises :class:`BadReading` naming the channel and the value, or (``strict=False``) flags the point
and returns NaN there.

Normalisation (:func:`normalize`) follows Athena: a line fitted to the pre-edge is subtracted, a
line fitted to the post-edge is extrapolated to E0 and the difference at E0 is the edge step that
mu is divided by.  E0 is found from the data (the first strong maximum of dmu/dE), on FEFF10's
energy axis like everything else here (the O K onset sits near 530 eV, the N K onset near 399 eV).
With too few points the result says ``ok=False`` and why, rather than returning garbage.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "SpectrumError",
    "check_spectrum",
    "load_spectrum_csv",
    "MODES",
    "BadReading",
    "MuResult",
    "mu_from_channels",
    "noise_from_scatter",
    "find_e0",
    "Normalization",
    "normalize",
    "RunningNormalizer",
    "find_peak_energies",
]

MODES = ("transmission", "fluorescence", "tey")
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


class SpectrumError(ValueError):
    """A known spectrum (or its file) that cannot be used: unreadable, too short, not increasing."""


def check_spectrum(
    energy,
    mu,
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
        raise ValueError(f"unknown detection mode {mode!r}: expected one of {MODES}") from None


def mu_from_channels(
    mode: str,
    i0,
    signal,
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
        var(N) = N of the raw (not dark-subtracted) counts, propagated to mu.  For currents from
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
    errors.sort(key=lambda err: err.index or 0)  # report in point order
    if errors and strict:
        raise errors[0]
    problems = [str(err) for err in errors]

    mu = np.full(raw0.shape, np.nan)
    sigma = np.full(raw0.shape, np.nan) if counts else None
    g = ok
    if mode == "transmission":
        mu[g] = np.log(a0[g] / s[g])
    else:
        mu[g] = s[g] / a0[g]
    if counts:
        # Poisson: var = raw counts (the dark level is treated as known exactly)
        v0 = np.maximum(raw0[g], 1.0) / a0[g] ** 2  # relative variance of I0
        if mode == "transmission":
            sigma[g] = np.sqrt(v0 + np.maximum(raws[g], 1.0) / s[g] ** 2)
        else:
            # var(S/I0) = var(S)/I0^2 + S^2 var(I0)/I0^4
            sigma[g] = np.sqrt(np.maximum(raws[g], 1.0) / a0[g] ** 2 + mu[g] ** 2 * v0)
    if scalar:
        mu, sigma, ok = mu[:1], None if sigma is None else sigma[:1], ok[:1]
    return MuResult(mu, sigma, ok, problems)


def noise_from_scatter(mu, *, floor: float = 0.0) -> float:
    """Noise of a spectrum from its point-to-point scatter (for channels that are not counts).

    Uses the second difference d_i = mu_i - (mu_{i-1} + mu_{i+1}) / 2, which removes a smooth
    signal; for white noise of std s, var(d) = 1.5 s^2.  The median absolute deviation keeps
    edges and peaks from inflating it.  Returns ``floor`` when fewer than 5 points are given.
    """
    y = np.asarray(mu, dtype=float)
    y = y[np.isfinite(y)]
    if y.size < 5:
        return float(floor)
    d = y[1:-1] - 0.5 * (y[:-2] + y[2:])
    s = 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(1.5)
    return float(max(s, floor))


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


def find_e0(energy, mu, *, fraction: float = 0.5, smooth_ev: float = 0.5) -> float | None:
    """E0: the first maximum of dmu/dE that reaches ``fraction`` of the largest one.

    Athena takes the largest derivative; in NEXAFS that can be a sigma* resonance 5 eV above the
    onset, so the first strong rise is taken instead (it is the largest one for most molecules).
    The derivative is taken after a light running mean over ``smooth_ev``.  Returns None when the
    data cannot say (fewer than 5 points, or no rise).
    """
    e, y = _sorted_unique(energy, mu)
    if e.size < 5:
        return None
    step = np.median(np.diff(e))
    width = max(1, int(round(smooth_ev / step))) if step > 0 else 1
    if width > 1 and e.size > 2 * width:
        y = np.convolve(np.pad(y, width // 2, mode="edge"), np.ones(width) / width, mode="valid")[
            : e.size
        ]
    from scipy.signal import find_peaks  # ~1 s to import: not for the sim IOC's CSV loader

    d = np.gradient(y, e)
    if not np.any(d > 0):
        return None
    dmax = d.max()
    peaks, _ = find_peaks(np.concatenate([[-np.inf], d, [-np.inf]]), height=fraction * dmax)
    if peaks.size == 0:
        return float(e[int(np.argmax(d))])
    return float(e[peaks[0] - 1])


@dataclass
class Normalization:
    """Result of :func:`normalize`.

    ``ok`` False means "not yet normalisable": ``reason`` says why and the arrays are empty.
    ``norm`` is (mu - pre-edge line) / edge step on the sorted, de-duplicated ``energy``.
    """

    ok: bool
    reason: str = ""
    e0: float | None = None
    edge_step: float | None = None
    energy: np.ndarray = field(default_factory=lambda: np.empty(0))
    mu: np.ndarray = field(default_factory=lambda: np.empty(0))
    norm: np.ndarray = field(default_factory=lambda: np.empty(0))
    pre_line: tuple[float, float] | None = None  # (slope, intercept at E0)
    post_line: tuple[float, float] | None = None  # (slope, intercept at E0)


def normalize(
    energy,
    mu,
    *,
    e0: float | None = None,
    pre: tuple[float, float] = (-np.inf, -3.0),
    post: tuple[float, float] = (20.0, np.inf),
    min_points: int = 3,
    noise: float | None = None,
    min_step_snr: float = 5.0,
    min_lever_ev: float = 5.0,
    post_line: bool = False,
) -> Normalization:
    """Athena-style normalisation: pre-edge line, edge step at E0, post-edge level.

    Parameters
    ----------
    energy, mu : array_like
        Points in any order (NaNs are dropped, repeated energies averaged).
    e0 : float, optional
        Edge energy; found from the data with :func:`find_e0` when not given.
    pre, post : (float, float)
        Pre- and post-edge fit windows relative to E0 (eV).  NEXAFS windows are short (the model
        grids span ~4 eV below and ~45 eV above the onset), hence lines rather than Athena's
        Victoreen / quadratic forms, and a post-edge window that starts past the sharp resonances.
    min_points : int
        Points needed in each window.
    noise : float, optional
        Noise of mu; estimated from the scatter when not given.  The edge step must exceed
        ``min_step_snr`` times it.
    min_lever_ev : float
        A pre-edge window narrower than this gets a constant instead of a line.
    post_line : bool
        False (default, the NEXAFS convention): the edge step is the mean of the post-edge
        window after the pre-edge line is removed.  True: Athena's post-edge line, extrapolated
        to E0 (sigma* resonances 10-30 eV above a K edge of a small molecule tilt that line).

    Returns
    -------
    Normalization
        ``ok=False`` with a reason while the points do not yet allow a trustworthy normalisation.
    """
    e, y = _sorted_unique(energy, mu)
    if e.size < 2 * min_points + 1:
        return Normalization(False, f"only {e.size} points (need {2 * min_points + 1})")
    if e0 is None:
        e0 = find_e0(e, y)
        if e0 is None:
            return Normalization(False, "no absorption edge found in the data yet")
    e0 = float(e0)
    x = e - e0
    pre_m = (x >= pre[0]) & (x <= pre[1])
    post_m = (x >= post[0]) & (x <= post[1])
    if pre_m.sum() < min_points:
        return Normalization(False, f"{int(pre_m.sum())} pre-edge points (need {min_points})", e0)
    if post_m.sum() < min_points:
        return Normalization(False, f"{int(post_m.sum())} post-edge points (need {min_points})", e0)
    # a line needs a lever arm: a slope from a short window, extrapolated 40 eV, is noise
    deg_pre = 1 if np.ptp(x[pre_m]) >= min_lever_ev else 0
    pre_c = np.polyfit(x[pre_m], y[pre_m], deg_pre)
    pre_c = np.concatenate([np.zeros(2 - pre_c.size), pre_c])
    sub = y - np.polyval(pre_c, x)
    if post_line and np.ptp(x[post_m]) >= min_lever_ev:
        # Athena: post-edge line extrapolated to E0
        post_c = np.polyfit(x[post_m], sub[post_m], 1) + pre_c
    else:
        # NEXAFS: the mean above the resonances, after the pre-edge line is removed
        post_c = np.array([pre_c[0], pre_c[1] + np.mean(sub[post_m])])
    step = float(post_c[1] - pre_c[1])
    if noise is None:
        noise = noise_from_scatter(y)
    if not np.isfinite(step) or step <= 0:
        return Normalization(False, f"edge step {step:.3g} is not positive", e0)
    if step < min_step_snr * noise:
        return Normalization(
            False, f"edge step {step:.3g} is below {min_step_snr} x noise ({noise:.3g})", e0
        )
    norm = (y - np.polyval(pre_c, x)) / step
    return Normalization(
        True,
        "",
        e0,
        step,
        e,
        y,
        norm,
        (float(pre_c[0]), float(pre_c[1])),
        (float(post_c[0]), float(post_c[1])),
    )


class RunningNormalizer:
    """Normalisation of a spectrum that grows point by point.

    Every :meth:`add` stores the points; :meth:`result` renormalises all of them (a few hundred
    points cost well under a millisecond), so E0 and the lines improve as the scan fills in.
    ``kwargs`` are passed to :func:`normalize`.
    """

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.reset()

    def reset(self) -> None:
        self._e: list[float] = []
        self._y: list[float] = []

    def add(self, energy, mu) -> None:
        e = np.atleast_1d(np.asarray(energy, dtype=float))
        y = np.atleast_1d(np.asarray(mu, dtype=float))
        if e.shape != y.shape:
            raise ValueError(f"energy and mu differ in shape: {e.shape} vs {y.shape}")
        good = np.isfinite(e) & np.isfinite(y)
        self._e.extend(e[good].tolist())
        self._y.extend(y[good].tolist())

    @property
    def n_points(self) -> int:
        return len(self._e)

    def result(self) -> Normalization:
        return normalize(np.asarray(self._e), np.asarray(self._y), **self.kwargs)


def find_peak_energies(
    energy: Sequence[float] | np.ndarray, mu, *, min_prominence: float = 0.05
) -> np.ndarray:
    """Energies of the peaks of ``mu`` whose prominence is at least ``min_prominence`` x max(mu).

    Peaks (pi* and sigma* resonances) are the features that tell molecules apart; the threshold is
    relative so it works on raw and normalised spectra alike.
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
