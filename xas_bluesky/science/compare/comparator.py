"""Score a partially measured spectrum against N candidate spectra, point by point.

Pure numpy: no Bluesky, no EPICS, no torch.

The model
---------
For candidate c with predicted spectrum p_c(E) (mean of the model's ensemble) and spread s_c(E),
a raw measured point (E_j, y_j +- sigma_j) -- raw mu, not the running normalisation, which changes
as points arrive -- is modelled as ::

    y_j = a_c * p_c(E_j + delta) + b_c + g_c * (E_j - E_ref) + noise,
    var(noise) = sigma_j^2 + a_ref^2 * [e^2 + kappa^2 s_c^2 + step^2 / 12 * p_c'^2](E_j + delta_w)

* ``delta`` is the mono's calibration offset: ONE number for the whole measurement, shared by all
  candidates, marginalised over a grid within +-``offset_max`` with a Gaussian prior of width
  ``offset_sigma``.  (A free shift per candidate would erase the chemical shifts that tell isomers
  apart.)  Sign: the model spectrum at E + delta matches the measurement at mono reading E.
* ``a_c > 0`` (edge-step scale), ``b_c`` and ``g_c`` (a linear background, which absorbs the
  pre-edge line of raw TEY) are fitted per candidate by weighted linear least squares and profiled
  out.
* The variance holds the noise, the model's error -- e(E), its rms error at each energy measured
  on the validation split (``model_error``), and/or its ensemble spread s_c times ``std_scale``
  kappa (the shipped calibrations use e alone: the spread cost 8-16 points of top-1,
  ``benchmarks/likelihood.py``) -- and the offset grid's discretisation (the true offset lies within +-step/2 of a grid node: the model at the node
  errs by up to step/2 x dmu/dE).  The model terms enter with a fixed reference scale ``a_ref``
  (the probability-weighted fitted scale), so that the fit stays linear, and at a fixed offset
  ``delta_w`` (the current estimate), so that the weights depend on candidate and point only.
  When either estimate moves (a_ref by more than a factor 1.5, moved half-way; delta by more
  than 0.5 eV) the sums are rebuilt from the stored points: a few times early in a scan, after
  24 points only for a factor 3 or 1.5 eV.

Because every quantity is a sum over points, one new point costs a fixed number of passes over
(n_offsets x n_candidates) float32 arrays (:meth:`Comparator.add_points`), and a result another
few (:meth:`Comparator.result`), independent of how many points came before.

Likelihood and calibration
--------------------------
log L_c(delta) = -(chi2_min + sum_j log var_j) / (2 T).  The model's errors are correlated across
energies (a misplaced resonance is wrong at many points at once), so a naive Gaussian likelihood
(T = 1) is overconfident, the more so the more points: T = T0 (max(n, 6) / 6) ** gamma, with T0
and gamma fitted on the validation split so that the probabilities are calibrated
(:func:`~xas_bluesky.science.compare.calibration.calibrate`, :func:`calibration_for`).  P(c) is
the prior-weighted sum over the offset grid, normalised over candidates; the offset posterior is
the sum over candidates.  No temperature makes every answer honest: the model sometimes
mispredicts the true molecule while another candidate happens to fit.  The reported
probabilities are therefore (1 - eps) P + eps / C, eps (``outlier_probability``) fitted with T0
and gamma, so that no answer claims more than the model's track record supports.  One
temperature curve cannot fit every confidence at once (the shipped models were under-confident
at p 0.3-0.8 and over-confident near the cap), so a top-label map (Platt scaling of the best
candidate's probability, :func:`recalibrate_top`; Gupta and Ramdas, "Top-label calibration",
ICLR 2022) fitted on the same trials finishes the calibration.

Next energy
-----------
Among the probable candidates (cumulative probability 0.999, at most 64), each predicts the next
reading at every energy of the edge window, with the fitted scale and background at the current
offset.  The most informative energy maximises 1/2 log(1 + Var_P[prediction] / E_P[variance]), a
Gaussian approximation of the mutual information between the reading and the candidate's
identity: where probable candidates disagree most, relative to the noise and the model's own
uncertainty.  Energies within ``exclusion_ev`` of a measured point are skipped.

This module is the live hot path only; the offline fitting of the temperature (simulated scans,
reliability) is :mod:`xas_bluesky.science.compare.calibration`, which this module never imports.
"""

from __future__ import annotations

import bisect
import heapq
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the predictor imports torch: for the annotation only
    from xas_bluesky.science.model.predictor import Predictor

__all__ = [
    "Comparator",
    "MatchResult",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TEMPERATURE_EXPONENT",
    "effective_temperature",
    "calibration_for",
    "recalibrate_top",
]

logger = logging.getLogger(__name__)

#: Temperature T0 and its growth exponent used when none are given: the shipped GNN's, pooled
#: over O and N (its 3-member ensemble spread is ~2.6x smaller than its error, and the errors
#: are correlated across energies).  Modest for a model with a calibrated spread, and never
#: overconfident for this one.
DEFAULT_TEMPERATURE = 12.5
DEFAULT_TEMPERATURE_EXPONENT = 1.0

#: points at which the top-label map's term in the number of points vanishes (an adaptive
#: scan's budget)
TOP_REFERENCE_POINTS = 49


def calibration_for(model: Predictor | dict | str | None) -> dict[str, Any]:
    """Comparator keywords (``temperature``, ``temperature_exponent``, ``std_scale`` and, when
    measured, ``model_error``) for a model.

    The calibration belongs to the weights: training fits it
    (:func:`~xas_bluesky.science.compare.calibration.calibrate_shipped`) and stores it in the
    checkpoint's metadata, the only place it is looked up.

    Parameters
    ----------
    model : Predictor, dict, str or None
        A :class:`~xas_bluesky.science.model.predictor.Predictor`, its metadata dict or its model
        version; ``None`` for FEFF itself as the model.

    Returns
    -------
    dict
        The metadata's ``"calibration"`` entry (``model_error`` as an array); without one (or for a bare model version, which
        carries none) :data:`DEFAULT_TEMPERATURE`, :data:`DEFAULT_TEMPERATURE_EXPONENT` and
        ``std_scale`` 1, with a warning when the model version is known (not for ``None``).
    """
    meta = getattr(model, "metadata", model)
    if isinstance(meta, dict):
        cal = meta.get("calibration")
        if cal:
            keys = ("temperature", "temperature_exponent", "std_scale", "outlier_probability")
            out: dict = {k: float(cal[k]) for k in keys if k in cal}
            if cal.get("top_calibration") is not None:
                out["top_calibration"] = tuple(float(x) for x in cal["top_calibration"])
            if cal.get("model_error") is not None:
                out["model_error"] = np.asarray(cal["model_error"], dtype=float)
            return out
        version = meta.get("model_version")
    else:
        version = meta
    if version is not None:
        logger.warning(
            "no calibration for model version %s: temperature %s (run calibrate())",
            version,
            DEFAULT_TEMPERATURE,
        )
    return {
        "temperature": DEFAULT_TEMPERATURE,
        "temperature_exponent": DEFAULT_TEMPERATURE_EXPONENT,
        "std_scale": 1.0,
    }


_N_PARAMS = 3

#: points of the coarse pass, below which the temperature does not grow (see
#: :func:`effective_temperature`)
TEMPERATURE_POINTS = (
    6  # a, b, g: with this many distinct energies or fewer every candidate fits exactly
)


def effective_temperature(t0: float, exponent: float, n_points: int) -> float:
    """The likelihood temperature after ``n_points`` points.

    Parameters
    ----------
    t0 : float
        Temperature T0 of the coarse pass.
    exponent : float
        Growth exponent gamma.
    n_points : int
        Points measured so far, n.

    Returns
    -------
    float
        T0 (max(n, N0) / N0) ** gamma, with N0 = :data:`TEMPERATURE_POINTS` = 6 (the coarse pass
        of a scan).
    """
    return float(t0) * (max(int(n_points), TEMPERATURE_POINTS) / TEMPERATURE_POINTS) ** exponent


def recalibrate_top(
    prob: np.ndarray, top_calibration: Sequence[float], n_points: int = TOP_REFERENCE_POINTS
) -> np.ndarray:
    """Platt map of the best candidate's probability (top-label calibration).

    The best candidate's p becomes sigmoid(a logit(p) + b + c log(n / 49)); the others share
    the rest in their old proportions, so the distribution still sums to 1.  The optional term
    in the number of points n would correct what the temperature's growth law
    T0 (n / 6) ** gamma leaves between a 49-point scan and a 491-point grid; the shipped maps
    have none (c = 0: it did not help on the calibration molecules).  The map never demotes
    the best candidate: its new probability stays above the runner-up's.

    Parameters
    ----------
    prob : np.ndarray
        (C,) probabilities (after the outlier term).
    top_calibration : sequence of float
        (a, b) or (a, b, c), a > 0, fitted on calibration trials
        (:func:`~xas_bluesky.science.compare.calibration.fit_top_calibration`).
    n_points : int
        Points measured.

    Returns
    -------
    np.ndarray
        (C,) the recalibrated probabilities.
    """
    a, b = float(top_calibration[0]), float(top_calibration[1])
    c = float(top_calibration[2]) if len(top_calibration) > 2 else 0.0
    prob = np.asarray(prob, dtype=float)
    if prob.size < 2:
        return prob.copy()
    best = int(np.argmax(prob))
    p1 = float(np.clip(prob[best], 1e-12, 1.0 - 1e-12))
    shift = b + c * np.log(max(int(n_points), 1) / TOP_REFERENCE_POINTS)
    g = 1.0 / (1.0 + np.exp(-(a * np.log(p1 / (1.0 - p1)) + shift)))
    rest = 1.0 - p1
    # selected from the low end of -prob: numpy's introselect at the high end crawls when most
    # candidates share the outlier floor's value (1 ms instead of 50 us at 10,000 candidates)
    p2 = float(-np.partition(-prob, 1)[1])
    # the runner-up after rescaling is p2 (1 - g) / rest: keep g just above it
    g = min(max(g, p2 / (rest + p2) * (1.0 + 1e-9)), 1.0) if rest > 0 else g
    out = prob * ((1.0 - g) / rest) if rest > 0 else np.zeros_like(prob)
    out[best] = g
    return out


@dataclass
class MatchResult:
    """Scores of a partial measurement against every candidate.

    Attributes
    ----------
    probabilities : np.ndarray
        (C,) posterior probability of each candidate (input order), sums to 1.
    names : list[str]
        Candidate names, input order.
    best_index, best_name, best_probability
        The most probable candidate (ties broken by name).
    entropy : float
        Entropy of ``probabilities`` in nats (log C when nothing is known yet).
    offset_ev : float
        The shared energy offset (model energy = mono reading + offset): the posterior mean, or,
        when the posterior is narrower than the grid step, the vertex of a parabola through the
        log posterior at its peak.
    offset_posterior : np.ndarray
        Posterior over ``offset_grid``.
    next_energy : float or None
        Most informative next mono energy (eV), None when every energy in the window is measured.
    next_gain : float
        What a reading at ``next_energy`` is expected to tell about the candidate's identity
        (nats; the Gaussian mutual information with the model's variance at the current
        temperature): a plan measuring two edges compares the edges by it.  NaN before the
        first fit.
    n_points : int
        Points scored so far.
    offset_grid, offset_std_ev
        The offsets marginalised over and the posterior standard deviation of the offset.
    temperature : float
        The likelihood temperature used for this result (T0 grown with the points).
    scale : float or None
        Fitted edge-step scale a of the best candidate, in raw mu per model unit.
    n_rejected : int
        Points set aside as glitches: no probable candidate comes within
        :attr:`Comparator.GLITCH_Z` of them (they are in ``n_points``, not in the scores).
    """

    probabilities: np.ndarray
    names: list[str]
    best_index: int
    best_name: str
    best_probability: float
    entropy: float
    offset_ev: float
    offset_posterior: np.ndarray
    next_energy: float | None
    n_points: int
    offset_grid: np.ndarray = field(default_factory=lambda: np.empty(0))
    offset_std_ev: float = 0.0
    temperature: float = 1.0
    next_gain: float = float("nan")
    scale: float | None = None  # a of the best candidate, in raw mu per model unit
    n_rejected: int = 0  # points set aside as glitches (see Comparator.GLITCH_Z)
    #: log probabilities before the outlier term (None before the first fit), and its eps:
    #: what :func:`~xas_bluesky.science.compare.joint.joint_result` combines across edges
    model_log_probabilities: np.ndarray | None = None
    outlier_probability: float = 0.0
    _name_rank: np.ndarray | None = field(default=None, repr=False)

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` most probable candidates as (name, probability); ties broken by name."""
        idx = _top_indices(self.probabilities, k, self._rank())
        return [(self.names[i], float(self.probabilities[i])) for i in idx]

    def top_indices(self, k: int) -> np.ndarray:
        """Indices of the ``k`` most probable candidates; ties broken by name."""
        return _top_indices(self.probabilities, k, self._rank())

    def _rank(self) -> np.ndarray:
        if self._name_rank is None:
            self._name_rank = _name_ranks(self.names)
        return self._name_rank


def _name_ranks(names: Sequence[str]) -> np.ndarray:
    order = sorted(range(len(names)), key=lambda i: (names[i], i))
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    return rank


def _top_indices(prob: np.ndarray, k: int, rank: np.ndarray) -> np.ndarray:
    """Indices of the k largest ``prob``, ties (equal values) by ``rank``: O(C + k log k)."""
    n = prob.size
    k = max(0, min(int(k), n))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k < n:
        kth = -np.partition(-prob, k - 1)[k - 1]  # from the low end of -prob: see recalibrate_top
        cand = np.flatnonzero(prob >= kth)  # includes every candidate tied with the k-th
    else:
        cand = np.arange(n)
    order = np.lexsort((rank[cand], -prob[cand]))
    return cand[order[:k]]


class _RunningMedian:
    """The median of a growing set of numbers: two heaps, O(log n) per value, O(1) per query."""

    def __init__(self) -> None:
        self._lo: list[float] = []  # the smaller half, negated (a max-heap)
        self._hi: list[float] = []  # the larger half

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            v = float(v)
            if self._lo and v > -self._lo[0]:
                heapq.heappush(self._hi, v)
            else:
                heapq.heappush(self._lo, -v)
            if len(self._lo) > len(self._hi) + 1:
                heapq.heappush(self._hi, -heapq.heappop(self._lo))
            elif len(self._hi) > len(self._lo):
                heapq.heappush(self._lo, -heapq.heappop(self._hi))

    def value(self) -> float:
        if not self._lo:
            raise ValueError("median of no values")
        if len(self._lo) > len(self._hi):
            return -self._lo[0]
        return 0.5 * (-self._lo[0] + self._hi[0])


class Comparator:
    """Incremental scores of a measured spectrum against C candidate spectra.

    Parameters
    ----------
    energy : np.ndarray
        (E,) the model's energy grid (FEFF10's axis), increasing.
    mean, std : np.ndarray
        (C, E) predicted spectra and ensemble spread of the candidates on ``energy``; ``std`` may
        be None (a model without uncertainty, e.g. FEFF spectra themselves).
    names : sequence of str
        Candidate names (used for ties and in results).
    offset_sigma, offset_max, offset_step : float
        Prior width (the mono's calibration uncertainty), range and grid step of the shared
        energy offset (eV).  The cost of a point is proportional to the number of offsets; a step
        equal to the model grid's (0.25 eV) also lets the interpolation use slices of the model
        instead of gathers.  A finer step resolves nothing the model grid does not, but the
        reported offset is refined between grid nodes (see :attr:`MatchResult.offset_ev`).
    temperature : float, optional
        Likelihood temperature T0; :data:`DEFAULT_TEMPERATURE` when None.
    temperature_exponent : float, optional
        gamma of the temperature's growth with the number of points n:
        T = T0 (max(n, 6) / 6) ** gamma (see :func:`effective_temperature`); with gamma = 1 the
        evidence stops growing with n, as it should where the model's correlated errors, not
        the noise, limit what more points can tell.  :data:`DEFAULT_TEMPERATURE_EXPONENT` when
        None.
    edge_window : (float, float), optional
        Mono energies the next point may be chosen from; the model grid when None.
    exclusion_ev : float, optional
        Energies this close to a measured point are not proposed; half the grid step when None.
    std_scale : float
        Factor on the model's spread: small ensembles are under-dispersed (the shipped GNN's rms
        error is ~2.6x its ensemble spread); fitted with the temperature by
        :func:`~xas_bluesky.science.compare.calibration.calibrate`, see :func:`calibration_for`.
    std_floor : float
        Floor of the model spread (model units, i.e. fractions of the edge step): no model is
        better than 0.1 %, and the floor keeps float32 sums meaningful when the noise is tiny.
    model_error : array_like, optional
        (E,) rms error of the model at each energy of ``energy`` (model units), measured against
        FEFF on the validation split: the same for every candidate, it weights the energies by
        how far the model can be trusted there.  Measured for the shipped GNN, it names the
        right molecule more often than the ensemble spread does (whose members share their
        mistakes, so a candidate they disagree on is forgiven its misfit): see
        ``benchmarks/likelihood.py``.  ``std_scale=0`` leaves the spread out.
    outlier_probability : float
        eps, the probability that the model is wrong about the measured molecule in a way no
        temperature covers (a misplaced resonance that another candidate happens to have):
        the reported probabilities are (1 - eps) P + eps / C, so none exceeds
        1 - eps (1 - 1/C).  Fitted with the temperature on the validation split; without it,
        1 in 12 answers given with p >= 0.99 on held-out grid scans was wrong.
    top_calibration : sequence of float, optional
        (a, b) or (a, b, c) of the top-label map applied last (:func:`recalibrate_top`); None
        leaves the probabilities as the temperature and eps make them.
    """

    def __init__(
        self,
        energy: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray | None,
        names: Sequence[str],
        *,
        offset_sigma: float = 1.0,
        offset_max: float = 3.0,
        offset_step: float = 0.25,
        temperature: float | None = None,
        temperature_exponent: float | None = None,
        edge_window: tuple[float, float] | None = None,
        exclusion_ev: float | None = None,
        std_floor: float = 1e-3,
        std_scale: float = 1.0,
        model_error: Sequence[float] | np.ndarray | None = None,
        outlier_probability: float = 0.0,
        top_calibration: Sequence[float] | None = None,
    ) -> None:
        energy = np.asarray(energy, dtype=float)
        mean = np.asarray(mean)
        if energy.ndim != 1 or energy.size < 2 or np.any(np.diff(energy) <= 0):
            raise ValueError("energy must be a 1-d increasing grid of >= 2 points")
        if mean.ndim != 2 or mean.shape[1] != energy.size:
            raise ValueError(f"mean must be (C, {energy.size}), got {mean.shape}")
        n_cand = mean.shape[0]
        if n_cand < 1:
            raise ValueError("no candidates")
        if len(names) != n_cand:
            raise ValueError(f"{len(names)} names for {n_cand} candidates")
        if not np.all(np.isfinite(mean)):
            raise ValueError("mean holds NaN or inf")
        if std is not None:
            std = np.asarray(std)
            if std.shape != mean.shape:
                raise ValueError(f"std must have mean's shape {mean.shape}, got {std.shape}")
            if not np.all(np.isfinite(std)) or np.any(std < 0):
                raise ValueError("std holds NaN, inf or negative values")
        if offset_sigma <= 0 or offset_max < 0 or offset_step <= 0:
            raise ValueError("offset_sigma and offset_step must be > 0, offset_max >= 0")

        self.energy = energy
        self._grid_list = energy.tolist()
        self.names = [str(n) for n in names]
        self._rank = _name_ranks(self.names)
        self.n_candidates = n_cand
        self.temperature = float(DEFAULT_TEMPERATURE if temperature is None else temperature)
        self.temperature_exponent = float(
            DEFAULT_TEMPERATURE_EXPONENT if temperature_exponent is None else temperature_exponent
        )
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")
        if not 0.0 <= outlier_probability < 1.0:
            raise ValueError("outlier_probability must be in [0, 1)")
        self.outlier_probability = float(outlier_probability)
        if top_calibration is not None:
            top = tuple(float(x) for x in top_calibration)
            if len(top) not in (2, 3) or not (top[0] > 0 and np.all(np.isfinite(top))):
                raise ValueError("top_calibration must be (a > 0, b[, c]), finite")
        self.top_calibration = None if top_calibration is None else top
        self.offset_sigma = float(offset_sigma)
        n_half = int(np.floor(offset_max / offset_step + 1e-9))
        self.offsets = offset_step * np.arange(-n_half, n_half + 1)
        steps = np.diff(energy)
        self._aligned = bool(np.allclose(steps, offset_step, rtol=1e-6, atol=1e-9))
        lp = -0.5 * (self.offsets / self.offset_sigma) ** 2
        self.log_prior = lp - np.logaddexp.reduce(lp)
        self._log_prior32 = self.log_prior.astype(np.float32)
        self.edge_window = (
            (float(energy[0]), float(energy[-1])) if edge_window is None else tuple(edge_window)
        )
        step = float(np.median(np.diff(energy)))
        self.exclusion_ev = 0.5 * step if exclusion_ev is None else float(exclusion_ev)

        # energy-major float32 copies: one energy is one contiguous row of C values
        self._m = np.ascontiguousarray(mean.T, dtype=np.float32)  # (E, C)
        self._d = np.ascontiguousarray(np.diff(self._m, axis=0))  # (E-1, C) for interpolation
        if not std_scale >= 0:
            raise ValueError("std_scale must be >= 0")
        self.std_scale = float(std_scale)
        var = (
            np.zeros_like(self._m)
            if std is None
            else (np.float32(std_scale) * np.asarray(std.T, dtype=np.float32)) ** 2
        )
        self.model_error = None
        if model_error is not None:
            err = np.asarray(model_error, dtype=float)
            if err.shape != energy.shape or not np.all(np.isfinite(err)) or np.any(err < 0):
                raise ValueError(
                    f"model_error must be ({energy.size},) finite values >= 0, got {err.shape}"
                )
            self.model_error = err
            var += (err.astype(np.float32) ** 2)[:, None]
        var = np.maximum(var, np.float32(std_floor) ** 2)
        # the true offset lies anywhere within +-step/2 of the nearest grid offset: the model at
        # a grid offset errs by up to step/2 x dmu/dE, variance step^2/12 (dmu/dE)^2.  Without
        # it, precise data would pick whichever similar candidate happens to sit on a grid node
        slope = np.gradient(self._m, energy, axis=0)
        var += np.float32(offset_step**2 / 12.0) * slope * slope
        self._v = np.ascontiguousarray(var)
        # candidate-major copies for the few probable candidates of the next-energy search
        self._m_c = np.ascontiguousarray(self._m.T)
        self._v_c = np.ascontiguousarray(self._v.T)
        self._x_ref = float(np.mean(energy))
        self._x_scale = 10.0  # eV: keeps the background's slope term of order 1

        k, c = self.offsets.size, n_cand
        # the (K, C) work runs over blocks of ~250,000 (offset, candidate) pairs (10,000
        # candidates at 25 offsets): measured best here, 2x faster than one block at 100,000
        # candidates; a power-of-two block would alias in the L1 cache
        chunk = min(c, max(256, 250_000 // k))
        chunk += chunk % 2 == 0 and chunk < c and (chunk & (chunk - 1)) == 0
        self._blocks = [(c0, min(c0 + chunk, c)) for c0 in range(0, c, chunk)]
        self._buf = [np.empty((k, chunk), np.float32) for _ in range(3)]
        self._swp = np.zeros((k, c), np.float32)
        self._swpp = np.zeros((k, c), np.float32)
        self._swpx = np.zeros((k, c), np.float32)
        self._swpy = np.zeros((k, c), np.float32)
        self._sc = np.zeros((7, c))  # float64: w, wx, wxx, wy, wxy, wyy, sum log var
        # clamps against a row: np.maximum(array, scalar) is ~3x slower than against an array
        self._zero_row = np.zeros(chunk, np.float32)
        self._floor_row = np.full(chunk, -80.0, np.float32)
        self.n_rebuilds = 0
        self._prior_gain: np.ndarray | None = None
        for b in self._buf:  # touch the pages now rather than in the first result
            b.fill(0.0)
        self.reset()

    # ------------------------------------------------------------------ points
    def reset(self) -> None:
        """Forget every point (a new measurement)."""
        self._pe: list[float] = []
        self._py: list[float] = []
        self._ps: list[float] = []
        # for the exclusion of measured energies: distinct ones, sorted, kept as an array so a
        # long run's next-energy search does not convert a list of every point each update
        self._sorted_e = np.empty(0)
        self._noise_median = _RunningMedian()  # of sigma: O(log n) per point, not a sort per result
        self._distinct: set[float] = set()
        self._post: np.ndarray | None = None  # last offset posterior
        self._checked = 0  # points before this index were checked for glitches
        self._checked_at = 0  # distinct energies at the last check of every point
        self._rejected: dict[int, float] = {}  # point index -> its |z| against the best fit
        self._n_results = 0
        self._y_ref: float | None = None
        self._a_ref: float | None = None
        self._delta_w = 0.0
        self._scale_moves = 0
        self._offset_moves = 0
        self._zero_sums()

    def _zero_sums(self) -> None:
        for a in (self._swp, self._swpp, self._swpx, self._swpy, self._sc):
            a.fill(0.0)

    @property
    def n_points(self) -> int:
        return len(self._pe)

    def add_points(self, energy: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> None:
        """Add measured points: mono energies (eV), raw mu and its 1-sigma noise (mu's units).

        Points may come in any order and any number per call.  NaN / inf anywhere, or sigma <= 0,
        is refused with ``ValueError`` before anything is added, so a bad call never changes the
        scores.
        """
        e = np.atleast_1d(np.asarray(energy, dtype=float)).ravel()
        y = np.atleast_1d(np.asarray(mu, dtype=float)).ravel()
        if e.shape != y.shape:
            raise ValueError(f"energy and mu differ in shape: {e.shape} vs {y.shape}")
        try:
            s = np.broadcast_to(np.asarray(sigma, dtype=float), y.shape).ravel()
        except ValueError:
            raise ValueError(f"sigma does not match mu's shape {y.shape}") from None
        for name, arr in (("energy", e), ("mu", y), ("sigma", s)):
            bad = ~np.isfinite(arr)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{name}[{i}] = {arr[i]!r} is not finite: points refused")
        if np.any(s <= 0):
            i = int(np.flatnonzero(s <= 0)[0])
            raise ValueError(f"sigma[{i}] = {s[i]!r} must be > 0: points refused")
        el = e.tolist()
        self._pe.extend(el)
        self._py.extend(y.tolist())
        self._ps.extend(s.tolist())
        self._insert_sorted(e)
        self._noise_median.extend(s)
        for v in el:
            self._distinct.add(round(v, 6))
        if self._a_ref is not None:
            for j in range(e.size):
                self._accumulate(e[j], y[j], s[j])

    def _insert_sorted(self, e: np.ndarray) -> None:
        new = np.unique(e)
        old = self._sorted_e
        if old.size:
            j = np.searchsorted(old, new)
            new = new[old[np.minimum(j, old.size - 1)] != new]  # already measured
        self._sorted_e = np.insert(old, np.searchsorted(old, new), new)

    def _locate1(self, model_energy: float) -> tuple[int, float]:
        """Scalar :meth:`_locate` without array overhead."""
        grid = self._grid_list
        i = min(max(bisect.bisect_right(grid, model_energy) - 1, 0), len(grid) - 2)
        t = (model_energy - grid[i]) / (grid[i + 1] - grid[i])
        return i, min(max(t, 0.0), 1.0)

    def _locate(self, model_energy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid interval index and fraction of each model energy (held at the grid's ends)."""
        grid = self.energy
        i = np.searchsorted(grid, model_energy, side="right") - 1
        i = np.minimum(np.maximum(i, 0), grid.size - 2)  # np.clip costs 10x more on small arrays
        t = np.minimum(np.maximum((model_energy - grid[i]) / (grid[i + 1] - grid[i]), 0.0), 1.0)
        return i, t

    def _offset_rows(self, e: float):
        """Where e + every offset falls on the grid: ("slice", i0, t) when the offsets step with
        the grid (rows i0..i0+K-1, one fraction t), else ("take", rows, fractions)."""
        k = self.offsets.size
        i0, t0 = self._locate1(e + float(self.offsets[0]))
        i1, t1 = self._locate1(e + float(self.offsets[-1]))
        if self._aligned and i1 - i0 == k - 1 and abs(t1 - t0) < 1e-6:
            return "slice", i0, np.float32(t0)
        i, t = self._locate(e + self.offsets)
        return "take", i, t.astype(np.float32)[:, None]

    def _interp_block(self, rows, c0: int, c1: int, out: np.ndarray, tmp: np.ndarray):
        """Candidate means c0:c1 at e + every offset -> out (K, c1 - c0)."""
        kind, i, t = rows
        if kind == "slice":
            k = self.offsets.size
            np.multiply(self._d[i : i + k, c0:c1], t, out=out)
            out += self._m[i : i + k, c0:c1]
            return out
        np.take(self._m[:, c0:c1], i, axis=0, out=out)
        np.take(self._d[:, c0:c1], i, axis=0, out=tmp)
        tmp *= t
        out += tmp
        return out

    def _accumulate(self, e: float, y: float, s: float, sign: float = 1.0) -> None:
        """Add one point to the sums (``sign`` -1: take it out): a fixed number of passes over
        (K, C); every sum is linear in the weight, so taking out is exact."""
        assert self._y_ref is not None and self._a_ref is not None  # set by _rebuild first
        yy = (y - self._y_ref) / self._a_ref
        x = (e - self._x_ref) / self._x_scale
        i, t = self._locate1(e + self._delta_w)
        var = (s / self._a_ref) ** 2 + ((1.0 - t) * self._v[i] + t * self._v[i + 1]).astype(float)
        w = sign / var
        sc = self._sc
        sc[:6] += np.multiply.outer([1.0, x, x * x, yy, x * yy, yy * yy], w)
        sc[6] += sign * np.log(var)
        w32 = w.astype(np.float32)
        x32, y32 = np.float32(x), np.float32(yy)
        rows = self._offset_rows(e)
        for c0, c1 in self._blocks:
            n = c1 - c0
            p, wp, tmp = (b[:, :n] for b in self._buf)
            self._interp_block(rows, c0, c1, p, tmp)
            np.multiply(p, w32[c0:c1], out=wp)
            self._swp[:, c0:c1] += wp
            np.multiply(wp, x32, out=tmp)
            self._swpx[:, c0:c1] += tmp
            np.multiply(wp, y32, out=tmp)
            self._swpy[:, c0:c1] += tmp
            wp *= p
            self._swpp[:, c0:c1] += wp

    def _rebuild(self, a_ref: float, delta_w: float) -> None:
        """Recompute the sums from the stored points with new reference scale / offset."""
        self._a_ref = float(a_ref)
        self._delta_w = float(delta_w)
        self._zero_sums()
        self.n_rebuilds += 1
        for j, (e, y, s) in enumerate(zip(self._pe, self._py, self._ps, strict=True)):
            if j not in self._rejected:
                self._accumulate(e, y, s)

    # ----------------------------------------------------------------- scores
    def _bootstrap_scale(self) -> float:
        """First guess of a_ref: spread of the data over the candidates' median spread there."""
        keep = np.ones(len(self._pe), bool)
        keep[list(self._rejected)] = False
        e = np.asarray(self._pe)[keep]
        y = np.asarray(self._py)[keep]
        i, t = self._locate(e)
        p = self._m[i] + t.astype(np.float32)[:, None] * self._d[i]  # (n, C), n small
        spread_p = float(np.median(np.std(p, axis=0)))
        spread_y = float(np.std(y))
        if spread_p <= 0 or spread_y <= 0:
            return max(float(np.median(self._ps)) * 10.0, 1e-300)
        return spread_y / spread_p

    def _n_distinct(self) -> int:
        return len(self._distinct)

    def _make_result(self, prob, post, next_energy, scale=None, logp=None) -> MatchResult:
        best = int(np.argmax(prob))
        ties = np.flatnonzero(prob == prob[best])
        if ties.size > 1:  # never by input order
            best = int(ties[np.argmin(self._rank[ties])])
        if logp is None:
            logp = np.log(prob)
        entropy = float(-(prob @ np.where(prob > 0, logp, 0.0)))
        off = float(post @ self.offsets)
        off_std = float(np.sqrt(max(post @ (self.offsets - off) ** 2, 0.0)))
        return MatchResult(
            probabilities=prob,
            names=self.names,
            best_index=best,
            best_name=self.names[best],
            best_probability=float(prob[best]),
            entropy=max(entropy, 0.0) + 0.0,
            offset_ev=self._refine_offset(post, off, off_std),
            offset_posterior=post,
            next_energy=next_energy,
            n_points=self.n_points,
            offset_grid=self.offsets,
            offset_std_ev=off_std,
            temperature=self._temperature_now(),
            scale=scale,
            n_rejected=len(self._rejected),
            _name_rank=self._rank,
        )

    def _refine_offset(self, post: np.ndarray, mean: float, std: float) -> float:
        """Posterior mean, or the vertex of a parabola through the log posterior at its peak
        when the posterior is narrower than the grid (the mean would stick to a node)."""
        step = self.offsets[1] - self.offsets[0] if self.offsets.size > 1 else 0.0
        k = int(np.argmax(post))
        if std >= 0.5 * step or k == 0 or k == post.size - 1:
            return mean
        with np.errstate(divide="ignore"):
            lm, l0, lp = np.log(post[k - 1 : k + 2])
        if not np.all(np.isfinite([lm, l0, lp])):
            return float(self.offsets[k])
        curv = lm - 2 * l0 + lp
        if curv >= 0:
            return mean
        return float(self.offsets[k] + 0.5 * step * (lm - lp) / curv)

    def settled_result(self) -> MatchResult:
        """The result the points so far give when they all arrive at once (a run's final word).

        :meth:`result` moves the reference scale and offset (and sets glitches aside) as points
        arrive, so its value depends on when it was asked: two workers on one stream, batching
        the same points differently, ended 0.2 % apart in p.  This recomputes from the stored
        points in their order, as a comparator given them in one call would (as the grid-scan
        benchmarks and calibration do); later points then continue from this state.
        """
        pts = (np.asarray(self._pe), np.asarray(self._py), np.asarray(self._ps))
        rebuilds = self.n_rebuilds
        self.reset()
        self.add_points(*pts)
        res = self.result()
        self.n_rebuilds += rebuilds
        return res

    def result(self) -> MatchResult:
        """Probabilities, entropy, shared offset and next energy for the points so far.

        With 3 distinct energies or fewer every candidate fits exactly (scale and a linear
        background), so the probabilities are uniform and the offset posterior is the prior.
        """
        if self._n_distinct() <= _N_PARAMS:
            prior = np.exp(self.log_prior)
            c = self.n_candidates
            return self._make_result(np.full(c, 1.0 / c), prior, self._next_energy_prior())
        bootstrapped = self._a_ref is None
        if bootstrapped:
            self._y_ref = float(self._py[0])
            self._rebuild(self._bootstrap_scale(), 0.0)
        assert self._a_ref is not None  # _rebuild set it
        prob, post, top, coef, logp = self._score(*self._live_offsets())
        rejected = self._reject_glitches(top, int(np.argmax(post)))
        if rejected:
            if bootstrapped:  # the first guess of the scale saw the glitch too
                self._rebuild(self._bootstrap_scale(), 0.0)
            prob, post, top, coef, logp = self._score()
        a_hat = float(prob[top] @ coef[:, 0] / max(prob[top].sum(), 1e-300)) * self._a_ref
        off = float(post @ self.offsets)
        # a rebuild costs one accumulation per point so far: late in a scan only a large move
        # is worth it (the reference scale and offset only place the model's spread).  The
        # scale moves half-way (geometrically): a_ref changes the weights, hence which
        # candidates are probable, hence a_hat -- a full step can oscillate between two values.
        # The offset's threshold does not grow with the points: the variance places the
        # model's slope (the offset grid's discretisation) at delta_w, and a measurement that
        # arrives all at once (a grid scan) must still have it where the spectrum is -- left at
        # 0 while the true offset was 1.3 eV, sharp FEFF peaks made the right candidate lose
        # confidently (p ~ 1e-100).  After 3 moves only a large one counts (no thrashing).
        # a glitch set aside may have held the scale far off: let it move as early on
        late = (self.n_points > self.REBUILD_LATE or self._scale_moves >= 3) and not rejected
        move_a = a_hat > 0 and abs(np.log(a_hat / self._a_ref)) > np.log(3.0 if late else 1.5)
        move_d = abs(off - self._delta_w) > (1.5 if self._offset_moves >= 3 else 0.5)
        if move_a or move_d:  # at most one rebuild per result
            a_new = float(np.sqrt(a_hat * self._a_ref)) if move_a else self._a_ref
            self._scale_moves += move_a
            self._offset_moves += move_d
            self._rebuild(a_new, off if move_d else self._delta_w)
            prob, post, top, coef, logp = self._score()
        self._post = post
        self._n_results += 1
        k_hat = int(np.argmax(post))
        best_pos = int(np.argmax(prob[top]))
        next_energy, next_gain = self._next_energy(prob, top, coef, k_hat)
        model_logp = logp
        if self.outlier_probability > 0:
            prob, logp = self._with_outlier(prob)
        if self.top_calibration is not None:
            prob = recalibrate_top(prob, self.top_calibration, self.n_points)
            logp = np.log(np.maximum(prob, 1e-300))
        res = self._make_result(
            prob,
            post,
            next_energy,
            scale=float(coef[best_pos, 0] * self._a_ref),
            logp=logp,
        )
        res.model_log_probabilities = model_logp
        res.outlier_probability = float(self.outlier_probability)
        res.next_gain = next_gain
        return res

    #: a point that no probable candidate's fit comes within this many standard deviations of
    #: (noise and model error together) is a glitch: set aside, not scored
    GLITCH_Z = 8.0
    #: glitches are looked for once this many distinct energies are measured (before, the fit
    #: follows every point) ...
    GLITCH_MIN_POINTS = 10
    #: ... and at most 1 + n / GLITCH_EVERY of n points are set aside: more misfits than that
    #: say the model does not describe the sample, which must lower no candidate's share of
    #: the blame by dropping the points that show it
    GLITCH_EVERY = 50
    #: ... and only a point that also stands out of its neighbours' misfit (by GLITCH_Z, on
    #: the difference of its residual and theirs): where the sample is none of the candidates,
    #: or the model is off, whole stretches misfit together, and no point of them is a glitch
    GLITCH_LOCAL = True
    #: ... and every point again each time the distinct energies double
    GLITCH_RECHECK = True

    def _residuals(
        self, pts: np.ndarray, top: np.ndarray, coef: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Residual, variance, model value and scaled energy of stored points ``pts`` under
        the fits ``coef`` of candidates ``top`` at offset index k, in reference units (m, T)."""
        assert self._a_ref is not None and self._y_ref is not None
        e = np.asarray(self._pe)[pts]
        yy = (np.asarray(self._py)[pts] - self._y_ref) / self._a_ref
        s = np.asarray(self._ps)[pts] / self._a_ref
        i, t = self._locate(e + float(self.offsets[k]))
        t = t[:, None]
        p = (1 - t) * self._m[np.ix_(i, top)] + t * self._m[np.ix_(i + 1, top)]
        i, t = self._locate(e + self._delta_w)
        t = t[:, None]
        v = (1 - t) * self._v[np.ix_(i, top)] + t * self._v[np.ix_(i + 1, top)]
        x = ((e - self._x_ref) / self._x_scale)[:, None]
        pred = coef[:, 0] * p + coef[:, 1] + coef[:, 2] * x
        return yy[:, None] - pred, s[:, None] ** 2 + v, p, np.broadcast_to(x, p.shape)

    def _stands_alone(self, idx: int, c: int, coef: np.ndarray, k: int) -> bool:
        """Whether point ``idx`` misfits candidate ``c`` (fit ``coef``) by more than its
        nearest kept neighbours on either side in energy do, by GLITCH_Z."""
        e = np.asarray(self._pe)
        keep = np.abs(e - e[idx]) > 1e-9
        if self._rejected:
            keep[list(self._rejected)] = False
        nb = []
        for side in (e < e[idx], e > e[idx]):
            cand = np.flatnonzero(keep & side)
            if cand.size:
                nb.append(int(cand[np.argmin(np.abs(e[cand] - e[idx]))]))
        if not nb:
            return True
        top = np.array([c])
        r, var, _, _ = self._residuals(np.array([idx, *nb]), top, coef[None, :], k)
        d = r[0, 0] - r[1:, 0].mean()
        var_d = var[0, 0] + var[1:, 0].sum() / len(nb) ** 2
        return bool(abs(d) > self.GLITCH_Z * np.sqrt(var_d))

    def _reject_glitches(self, top: np.ndarray, k: int) -> bool:
        """Check the points not checked yet (all of them, each time the distinct energies
        double) against the probable candidates' fits at offset index k; take glitches out of
        the sums.  True when any was taken out."""
        n = len(self._pe)
        n_distinct = self._n_distinct()
        if n_distinct < self.GLITCH_MIN_POINTS:
            return False
        if self.GLITCH_RECHECK and n_distinct >= 2 * self._checked_at:
            # a point checked early, when the posterior was spread over many candidates (one
            # of which fitted the spike), is checked again each time the distinct energies
            # double: one in-range spike among 49 points cost 13 of 154 right answers checked
            # once, 10 checked again (SchNet O, test_compare's trials on all held-out samples)
            self._checked_at = n_distinct
            kept = np.ones(n, dtype=bool)
            kept[list(self._rejected)] = False
            j = np.flatnonzero(kept)
        elif self._checked < n:
            j = np.arange(self._checked, n)
        else:
            return False
        self._checked = n
        coef, normal = self._normal_equations(top, k)
        r, var, p, x = self._residuals(j, top, coef, k)
        # leave-one-out: a point that drags the fit to itself (a saturated reading among 33)
        # has leverage h -> 1; r / sqrt(var (1 - h)) is its misfit against the fit without it
        xi = np.stack([p, np.ones_like(p), x], axis=-1)  # (m, T, 3)
        h = np.einsum("mti,tij,mtj->mt", xi, np.linalg.inv(normal), xi) / var
        z = np.abs(r) / np.sqrt(var * np.maximum(1.0 - h, 1e-6))
        best = z.argmin(axis=1)
        zmin = z[np.arange(z.shape[0]), best]
        budget = 1 + n // self.GLITCH_EVERY - len(self._rejected)
        out = False
        for q in np.argsort(-zmin):
            if zmin[q] <= self.GLITCH_Z or budget <= 0:
                break
            idx = int(j[q])
            if self.GLITCH_LOCAL and not self._stands_alone(
                idx, int(top[best[q]]), coef[best[q]], k
            ):
                continue
            self._accumulate(self._pe[idx], self._py[idx], self._ps[idx], sign=-1.0)
            self._rejected[idx] = float(zmin[q])
            budget -= 1
            out = True
        if out:
            logger.info("points set aside as glitches: %s", self.rejected_points)
        return out

    @property
    def rejected_points(self) -> list[tuple[float, float, float]]:
        """(energy, mu, abs(z)) of the points set aside as glitches, in order of arrival."""
        return [(self._pe[j], self._py[j], z) for j, z in sorted(self._rejected.items())]

    def _with_outlier(self, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1 - eps) P + eps / C: with probability eps the model is wrong about the sample's
        molecule, and then the measurement says nothing about which candidate it is."""
        eps = self.outlier_probability
        out = (1.0 - eps) * prob + eps / prob.size
        return out, np.log(out)

    #: after this many points (or 3 moves of a_ref), only a large move of a_ref (x3) triggers a
    #: rebuild; delta_w needs 1.5 eV only after 3 moves
    REBUILD_LATE = 24

    #: offsets whose posterior (at the last result) is below this fraction of the largest are
    #: left out of a result's (K, C) work; every 10th result, and after a rebuild, uses all
    LIVE_THRESHOLD = 1e-9

    def _live_offsets(self, force_full: bool = False) -> tuple[int, int]:
        """Range [lo, hi) of offset indices a result computes.

        The offset is shared, so P(c, k) <= P(k) for every candidate: an offset whose posterior
        is negligible is negligible for every candidate.  The range keeps two neighbours on each
        side, and :meth:`_score` falls back to all offsets if the posterior at its edges is not
        negligible (the offset moved).  Accumulation always covers every offset.
        """
        k = self.offsets.size
        if force_full or self._post is None or self._n_results % 10 == 0:
            return 0, k
        live = np.flatnonzero(self._post > self.LIVE_THRESHOLD * self._post.max())
        return max(int(live[0]) - 2, 0), min(int(live[-1]) + 3, k)

    def _background_inverse(self):
        """(C,) pieces of the linear background's normal equations (float64)."""
        w, wx, wxx, wy, wxy, wyy, slogv = self._sc
        det = w * wxx - wx * wx
        # inverse of [[w, wx], [wx, wxx]]; results need >= 4 distinct energies, so det > 0
        # (a constant only, should all points share one energy)
        if np.all(det > 1e-9 * w * wxx):
            inv = 1.0 / det
            g11, g12, g22 = wxx * inv, -wx * inv, w * inv
        else:
            ok = det > 1e-9 * np.maximum(w * wxx, 1e-300)
            with np.errstate(divide="ignore", invalid="ignore"):
                g11 = np.where(ok, wxx / det, 1.0 / w)
                g12 = np.where(ok, -wx / det, 0.0)
                g22 = np.where(ok, w / det, 0.0)
        h1 = g11 * wy + g12 * wxy
        h2 = g12 * wy + g22 * wxy
        qyy = wyy - (wy * h1 + wxy * h2)  # chi2 of the background-only fit
        return g11, g12, g22, h1, h2, qyy, slogv

    def log_likelihood_table(self) -> np.ndarray:
        """Untempered profiled log likelihood (K offsets, C candidates), float64.

        -(chi2_min + sum log var) / 2 up to a constant; what :func:`fit_temperature` needs.
        """
        if self._n_distinct() <= _N_PARAMS:
            return np.zeros((self.offsets.size, self.n_candidates))
        if self._a_ref is None:
            self.result()
        bg, row = self._background32()
        k = self.offsets.size
        out = np.empty((k, self.n_candidates))
        for c0, c1 in self._blocks:
            out[:, c0:c1] = self._explained(0, k, c0, c1, bg)
        return 0.5 * (out - row[None, :])

    def _explained(self, lo: int, hi: int, c0: int, c1: int, bg) -> np.ndarray:
        """chi2 reduction by candidates c0:c1 at offsets lo:hi, in a work buffer.

        ``bg`` is :meth:`_background_inverse` as float32 (C,) arrays.
        """
        n, nc = hi - lo, c1 - c0
        g11, g12x2, g22, h1, h2, qyy = (a[c0:c1] for a in bg)
        u1, u2 = self._swp[lo:hi, c0:c1], self._swpx[lo:hi, c0:c1]
        swpp, swpy = self._swpp[lo:hi, c0:c1], self._swpy[lo:hi, c0:c1]
        qpp, qpy, tmp = (b[:n, :nc] for b in self._buf)
        zero = self._zero_row[:nc]
        # Q_py = S_wpy - u^T h, Q_pp = S_wpp - u^T G u: the candidate after the background
        np.multiply(u1, h1, out=qpy)
        np.multiply(u2, h2, out=tmp)
        qpy += tmp
        np.subtract(swpy, qpy, out=qpy)
        np.multiply(u1, g11, out=qpp)
        np.multiply(u2, g12x2, out=tmp)
        qpp += tmp
        qpp *= u1
        np.multiply(u2, g22, out=tmp)
        tmp *= u2
        qpp += tmp
        np.subtract(swpp, qpp, out=qpp)
        # a = Q_py / Q_pp > 0: a candidate whose best scale is negative explains nothing, nor
        # does one that is linear in E over the points (Q_pp below float32 rounding of S_wpp;
        # left in, 0/0-like noise would hand it a spurious share of the background's chi2).
        # explained chi2 = Q_py^2 / Q_pp, clamped to [0, chi2 of the background-only fit].
        np.multiply(swpp, np.float32(1e-4), out=tmp)
        np.maximum(qpp, tmp, out=qpp)  # Q_py ~ rounding there too: Q_py^2 / floor ~ 0
        np.maximum(qpy, zero, out=qpy)
        qpy *= qpy
        with np.errstate(divide="ignore", invalid="ignore"):
            qpy /= qpp
        np.fmax(qpy, zero, out=qpy)  # first: NaN (0/0) -> 0
        np.minimum(qpy, qyy, out=qpy)
        return qpy

    def _background32(self):
        """:meth:`_background_inverse` as the float32 (C,) rows the block work needs, and the
        float64 chi2_bg + sum log var."""
        g11, g12, g22, h1, h2, qyy, slogv = self._background_inverse()
        f32 = np.float32
        bg = tuple(a.astype(f32) for a in (g11, 2.0 * g12, g22, h1, h2, qyy))
        return bg, qyy + slogv

    def _score(self, lo: int = 0, hi: int | None = None):
        """Probabilities (C,), offset posterior (K,), probable set and its fitted coefficients,
        from the offsets lo:hi (see :meth:`_live_offsets`)."""
        k = self.offsets.size
        hi = k if hi is None else hi
        n = hi - lo
        bg, row = self._background32()
        beta = 0.5 / self._temperature_now()
        beta32 = np.float32(beta)
        lp = self._log_prior32[lo:hi, None]
        logmarg = np.empty(self.n_candidates)
        parts, refs = [], []
        for c0, c1 in self._blocks:
            # log joint(k, c) = beta * (expl_kc - row_c) + log prior_k; row_c is taken out of
            # the max, so the (K, C) work is: scale, add prior, max, subtract, exp, sum
            lj = self._explained(lo, hi, c0, c1, bg)
            lj *= beta32
            lj += lp
            m = lj.max(axis=0)
            lj -= m
            # below exp(-80) nothing counts; the clamp keeps float32 out of subnormals (x86
            # computes on subnormals ~100x slower, which doubled the time of a result)
            np.maximum(lj, self._floor_row[: c1 - c0], out=lj)
            np.exp(lj, out=lj)
            ssum = lj.sum(axis=0).astype(np.float64)  # K terms in [1.8e-35, 1]
            base = m.astype(float) - beta * row[c0:c1]
            logmarg[c0:c1] = base + np.log(ssum)
            # this block's share of the offset posterior, relative to its own largest term
            ref = float(base.max())
            parts.append(lj @ np.exp(base - ref))  # float64: no subnormals
            refs.append(ref)
        mm = logmarg.max()
        prob = np.exp(logmarg - mm)
        psum = prob.sum()
        prob /= psum
        logp = logmarg - (mm + np.log(psum))
        top_ref = max(refs)
        part = np.zeros(n)
        for v, r in zip(parts, refs, strict=True):
            part += np.maximum(v, 0.0) * np.exp(r - top_ref)
        part /= part.sum()
        edge = max(part[0] if lo > 0 else 0.0, part[-1] if hi < k else 0.0)
        if edge > self.LIVE_THRESHOLD:  # the offset moved out of the range: all offsets
            return self._score(0, k)
        post = np.zeros(k)
        post[lo:hi] = part
        top = self._probable(prob)
        coef = self._coefficients(top, int(np.argmax(post)))
        return prob, post, top, coef, logp

    def _temperature_now(self) -> float:
        return effective_temperature(self.temperature, self.temperature_exponent, self.n_points)

    def _coefficients(self, idx: np.ndarray, k: int) -> np.ndarray:
        """(a, b, g) of candidates ``idx`` at offset index k, a >= 0 (float64, few candidates)."""
        return self._normal_equations(idx, k)[0]

    def _normal_equations(self, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(a, b, g) as :meth:`_coefficients`, and the normal matrices X^T W X (n, 3, 3)."""
        w, wx, wxx, wy, wxy, _, _ = self._sc[:, idx]
        swp = self._swp[k, idx].astype(float)
        swpx = self._swpx[k, idx].astype(float)
        swpp = self._swpp[k, idx].astype(float)
        swpy = self._swpy[k, idx].astype(float)
        A = np.empty((idx.size, 3, 3))
        A[:, 0, 0], A[:, 0, 1], A[:, 0, 2] = swpp, swp, swpx
        A[:, 1, 0], A[:, 1, 1], A[:, 1, 2] = swp, w, wx
        A[:, 2, 0], A[:, 2, 1], A[:, 2, 2] = swpx, wx, wxx
        rhs = np.empty((idx.size, 3))
        rhs[:, 0], rhs[:, 1], rhs[:, 2] = swpy, wy, wxy
        ridge = 1e-9 * np.maximum(np.abs(A).max(axis=(1, 2)), 1e-300)
        A += ridge[:, None, None] * np.eye(3)
        coef = np.linalg.solve(A, rhs[..., None])[..., 0]
        neg = coef[:, 0] < 0  # a < 0 is not allowed: background only
        if neg.any():
            bg = np.linalg.solve(A[neg][:, 1:, 1:], rhs[neg][:, 1:, None])[..., 0]
            coef[neg] = np.column_stack([np.zeros(bg.shape[0]), bg])
        return coef, A

    @staticmethod
    def _probable(prob: np.ndarray, mass: float = 0.999, max_n: int = 64) -> np.ndarray:
        n = min(max_n, prob.size)
        idx = np.argpartition(-prob, n - 1)[:n] if n < prob.size else np.arange(prob.size)
        idx = idx[np.argsort(-prob[idx], kind="stable")]
        keep = int(np.searchsorted(np.cumsum(prob[idx]), mass) + 1)
        return np.sort(idx[: max(2, min(keep, idx.size))])

    def _window_energies(self, delta: float) -> np.ndarray:
        """Mono energies whose model energy is a grid node, inside the window, not yet measured."""
        lo, hi = self.edge_window
        e = self.energy - delta
        e = e[(e >= lo - 1e-9) & (e <= hi + 1e-9)]
        if self._sorted_e.size and e.size:
            pts = self._sorted_e
            j = np.searchsorted(pts, e)
            left = pts[np.maximum(j - 1, 0)]
            right = pts[np.minimum(j, pts.size - 1)]
            near = np.minimum(np.abs(e - left), np.abs(e - right))
            e = e[near > self.exclusion_ev]
        return e

    def _next_energy_prior(self) -> float | None:
        """Before any fit: where the candidates' spectra differ most, relative to their spread."""
        e = self._window_energies(0.0)
        if e.size == 0:
            return None
        if self._prior_gain is None:  # once: (E,) over all candidates
            between = self._m.var(axis=1, dtype=np.float64)
            within = self._v.mean(axis=1, dtype=np.float64)
            self._prior_gain = np.log1p(between / within)
        idx = np.minimum(np.searchsorted(self.energy, e - 1e-9), self.energy.size - 1)
        return float(e[int(np.argmax(self._prior_gain[idx]))])

    def _next_energy(self, prob, top, coef, k_hat) -> tuple[float | None, float]:
        """The most informative next energy and its gain (nats, at the current temperature)."""
        delta = float(self.offsets[k_hat])
        e = self._window_energies(delta)
        if e.size == 0:
            return None, 0.0
        idx = np.minimum(np.searchsorted(self.energy, e + delta - 1e-9), self.energy.size - 1)
        p = self._m_c[top][:, idx].T.astype(float)  # (n_e, T)
        v = self._v_c[top][:, idx].T.astype(float)
        x = ((e - self._x_ref) / self._x_scale)[:, None]
        a = coef[:, 0]
        pred = a * p + coef[:, 1] + coef[:, 2] * x
        assert self._a_ref is not None  # a result has been made: the scale is set
        noise = (self._noise_median.value() / self._a_ref) ** 2
        var = noise + a**2 * v
        pw = prob[top] / prob[top].sum()
        mean = pred @ pw
        between = ((pred - mean[:, None]) ** 2) @ pw
        within = var @ pw
        # the tempered likelihood is a Gaussian of variance T x var: the same argmax (log1p is
        # monotone), and a gain comparable between two comparators at different temperatures
        ratio = between / within
        best = int(np.argmax(ratio))
        return float(e[best]), float(0.5 * np.log1p(ratio[best] / self._temperature_now()))
