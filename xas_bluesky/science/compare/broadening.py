"""Gaussian broadening of the predictions, marginalised over a few widths.

FEFF10's spectra carry the core-hole lifetime only; a measured one is broader: the mono's
resolution (soft X-ray gratings: 0.05-0.3 eV at the O K edge), vibrational broadening of the
resonances (a few tenths of an eV) and the sample's inhomogeneity.  Its width is not known
beforehand, and a sharp model against a broad measurement loses to whichever candidate happens to
be smooth there.

:class:`BroadenedComparator` scores the candidates at each width of :data:`DEFAULT_WIDTHS_EV` (FWHM
of a Gaussian convolved with the prediction, 0 = the prediction itself) with ONE
:class:`~xas_bluesky.science.compare.comparator.Comparator` over the (width, candidate) columns,
so all of them share the offset grid, reference scale and temperature, and each molecule's
probability is the sum over its widths (an equal prior over the widths)::

    P(c | data) = sum_w P(c, w | data),   P(c, w) prior = 1 / (W C)

The width posterior (the sum over molecules) says how broad the measurement looked.  The cost is
that of a comparator with W times the candidates.

Pure numpy (and :func:`scipy.ndimage.gaussian_filter1d`); nothing here changes the comparator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from xas_bluesky.science.compare.comparator import Comparator, MatchResult

__all__ = [
    "DEFAULT_WIDTHS_EV",
    "FWHM_PER_SIGMA",
    "gaussian_broaden",
    "BroadenedComparator",
]

#: FWHM of a Gaussian in units of its sigma, 2 sqrt(2 ln 2)
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: Gaussian FWHM (eV) marginalised over by default: none, and the range of soft X-ray beamlines
#: plus vibrational broadening (see ``docs/real_samples.rst`` for how they were chosen)
DEFAULT_WIDTHS_EV: tuple[float, ...] = (0.0, 0.5, 1.0)


def gaussian_broaden(energy: ArrayLike, spectra: ArrayLike, fwhm_ev: float) -> np.ndarray:
    """Convolve spectra with a unit-area Gaussian of FWHM ``fwhm_ev``.

    Parameters
    ----------
    energy : array_like
        (E,) increasing energies (eV).  A uniform grid is filtered on itself; otherwise (or when
        its step exceeds sigma / 2) the spectra are interpolated onto a uniform grid of step
        <= sigma / 4, filtered and interpolated back.
    spectra : array_like
        (E,) or (..., E) spectra on ``energy``.
    fwhm_ev : float
        Full width at half maximum (eV); 0 returns a copy.

    Returns
    -------
    np.ndarray
        The broadened spectra, the shape of ``spectra`` (float64).  Beyond the ends the
        spectra are held at their end values (pre-edge and post-edge plateaus).
    """
    from scipy.ndimage import gaussian_filter1d

    e = np.asarray(energy, dtype=float)
    y = np.array(spectra, dtype=float)
    if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
        raise ValueError("energy must be a 1-d increasing grid of >= 2 points")
    if y.shape[-1] != e.size:
        raise ValueError(f"spectra's last axis must have {e.size} points, got {y.shape}")
    if not (fwhm_ev >= 0 and math.isfinite(fwhm_ev)):
        raise ValueError(f"FWHM must be >= 0, got {fwhm_ev!r}")
    if fwhm_ev == 0:
        return y
    sigma = fwhm_ev / FWHM_PER_SIGMA
    steps = np.diff(e)
    uniform = np.ptp(steps) <= 1e-6 * steps.mean()
    if uniform and steps.mean() <= sigma / 2:
        return gaussian_filter1d(y, sigma / steps.mean(), axis=-1, mode="nearest", truncate=5.0)
    step = min(sigma / 4.0, float(steps.min()))
    fine = np.arange(e[0], e[-1] + 0.5 * step, step)
    flat = y.reshape(-1, e.size)
    yf = np.stack([np.interp(fine, e, row) for row in flat])
    yf = gaussian_filter1d(yf, sigma / step, axis=-1, mode="nearest", truncate=5.0)
    out = np.stack([np.interp(e, fine, row) for row in yf])
    return out.reshape(y.shape)


def per_molecule_log(log_probs: np.ndarray | None, n_candidates: int) -> np.ndarray | None:
    """Width-major column log probabilities summed per molecule (a log-sum-exp over widths),
    normalised: the model's probabilities before any outlier term, per molecule."""
    from scipy.special import logsumexp

    if log_probs is None:
        return None
    mol = logsumexp(np.asarray(log_probs, dtype=float).reshape(-1, n_candidates), axis=0)
    return mol - logsumexp(mol)


class BroadenedComparator:
    """A :class:`Comparator` over candidates x broadening widths, read per molecule.

    Parameters
    ----------
    energy : np.ndarray
        (E,) the model grid.
    mean, std : np.ndarray
        (C, E) predictions and ensemble spread (``std`` may be None), unbroadened.
    names : sequence of str
        Candidate names.
    widths_ev : sequence of float
        Gaussian FWHM (eV) to marginalise over, equal prior; :data:`DEFAULT_WIDTHS_EV`.
    **comparator_kwargs
        Keywords of :class:`Comparator` (the model's calibration, the offset prior).

    Notes
    -----
    The spread is broadened like the mean (the model's errors are correlated across energies,
    so the broadened spread is not reduced by averaging).  Columns are ordered width-major:
    column ``w * C + c`` is candidate ``c`` at width ``widths_ev[w]``, named ``"name@FWHM"``.
    """

    def __init__(
        self,
        energy: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray | None,
        names: Sequence[str],
        *,
        widths_ev: Sequence[float] = DEFAULT_WIDTHS_EV,
        **comparator_kwargs: Any,
    ) -> None:
        widths = tuple(float(w) for w in widths_ev)
        if not widths:
            raise ValueError("no broadening widths")
        if len(set(widths)) != len(widths):
            raise ValueError(f"repeated broadening widths: {widths}")
        energy = np.asarray(energy, dtype=float)
        mean = np.asarray(mean, dtype=float)
        self.names = [str(n) for n in names]
        self.widths_ev = widths
        self.energy = energy
        self.n_candidates = mean.shape[0] if mean.ndim == 2 else 0
        means = [gaussian_broaden(energy, mean, w) for w in widths]
        stds = None if std is None else [gaussian_broaden(energy, std, w) for w in widths]
        cols = [f"{n}@{w:g}" for w in widths for n in self.names]
        self.comparator = Comparator(
            energy,
            np.concatenate(means).astype(np.float32),
            None if stds is None else np.concatenate(stds).astype(np.float32),
            cols,
            **comparator_kwargs,
        )
        self.width_posterior = np.full(len(widths), 1.0 / len(widths))
        self.joint: np.ndarray | None = None  # (W, C) of the last result

    @property
    def n_points(self) -> int:
        return self.comparator.n_points

    @property
    def log_prior(self) -> np.ndarray:
        """The offset prior of the underlying comparator."""
        return self.comparator.log_prior

    def reset(self) -> None:
        """Forget every point."""
        self.comparator.reset()
        self.width_posterior = np.full(len(self.widths_ev), 1.0 / len(self.widths_ev))
        self.joint = None

    def add_points(self, energy: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> None:
        """Raw measured points, as :meth:`Comparator.add_points`."""
        self.comparator.add_points(energy, mu, sigma)

    @property
    def width_ev(self) -> float:
        """Posterior mean of the broadening FWHM (eV) at the last result."""
        return float(self.width_posterior @ np.asarray(self.widths_ev))

    @property
    def best_width_ev(self) -> float:
        """The most probable width (eV) at the last result."""
        return float(self.widths_ev[int(np.argmax(self.width_posterior))])

    def result(self) -> MatchResult:
        """Per-molecule :class:`MatchResult`: probabilities summed over the widths.

        Offset, next energy and its gain, temperature, glitches set aside, outlier probability
        and scale are the underlying comparator's (the scale of its best column); the model's
        log probabilities are summed over the widths; :attr:`width_posterior` and :attr:`joint`
        are updated.  The live analysis takes it as its comparator (``comparator_factory``).
        """
        return self._per_molecule(self.comparator.result())

    def settled_result(self) -> MatchResult:
        """:meth:`result` from :meth:`Comparator.settled_result`: a run's final word, the same
        however the points were batched."""
        return self._per_molecule(self.comparator.settled_result())

    def _per_molecule(self, r: MatchResult) -> MatchResult:
        """Sum the width-major columns of ``r`` per molecule; update the width posterior."""
        c = self.n_candidates
        joint = r.probabilities.reshape(len(self.widths_ev), c)
        prob = joint.sum(axis=0)
        prob = prob / prob.sum()
        self.joint = joint
        self.width_posterior = joint.sum(axis=1) / joint.sum()
        tmp = MatchResult(
            probabilities=prob,
            names=self.names,
            best_index=0,
            best_name="",
            best_probability=0.0,
            entropy=0.0,
            offset_ev=r.offset_ev,
            offset_posterior=r.offset_posterior,
            next_energy=r.next_energy,
            n_points=r.n_points,
            offset_grid=r.offset_grid,
            offset_std_ev=r.offset_std_ev,
            temperature=r.temperature,
            next_gain=r.next_gain,
            scale=r.scale,
            n_rejected=r.n_rejected,
            model_log_probabilities=per_molecule_log(r.model_log_probabilities, c),
            outlier_probability=r.outlier_probability,
        )
        best = int(tmp.top_indices(1)[0])
        tmp.best_index = best
        tmp.best_name = self.names[best]
        tmp.best_probability = float(prob[best])
        pos = prob[prob > 0]
        tmp.entropy = float(max(-(pos @ np.log(pos)), 0.0))
        return tmp
