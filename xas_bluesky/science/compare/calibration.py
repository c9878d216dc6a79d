"""Calibrate the comparator's likelihood: simulated scans, the temperature fit, reliability.

Offline tools, never on the live path.  The model's errors are correlated across energies and
larger than its ensemble spread, so a plain Gaussian likelihood is overconfident.
:func:`calibrate` fits the likelihood temperature T0, its growth exponent and optionally a factor
on the spread on a split of the FEFF data set: every molecule's FEFF spectrum is measured in a
simulated adaptive scan (:func:`simulate_trials`) against the candidates' predictions, and the fit
(:func:`fit_temperature`) minimises the mean negative log probability of the true molecule.
Without a model the candidates are FEFF spectra with realistic errors (:func:`perturbed_model`,
the stand-in).

For a trained ensemble, :func:`calibrate_shipped` fits it with the ensemble's predictions of the
validation molecules and :func:`store_calibration` puts the result into the checkpoint's metadata
(``calibration``), where :func:`~xas_bluesky.science.compare.comparator.calibration_for` finds
it, so a retrained model is never scored with another model's temperature.

Command line::

    python -m xas_bluesky.science.compare.calibration [O N]          # the stand-in's report
    python -m xas_bluesky.science.compare.calibration --store [O N]  # shipped ensembles: store
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from xas_bluesky.science.compare.comparator import (
    TOP_REFERENCE_POINTS,
    Comparator,
    effective_temperature,
    recalibrate_top,
)
from xas_bluesky.science.dataset import default_data_files, load_molecules
from xas_bluesky.science.grids import energy_grid
from xas_bluesky.science.structures import structure_from_xyz

logger = logging.getLogger(__name__)

__all__ = [
    "STAND_IN_TEMPERATURE",
    "Trial",
    "perturbed_model",
    "simulate_trials",
    "isomer_trials",
    "fit_temperature",
    "tempered_probabilities",
    "fit_top_calibration",
    "calibration_molecules",
    "reliability",
    "calibrate",
    "store_calibration",
    "calibrate_shipped",
    "isomer_predictions",
    "ISOMER_SET_SIZE",
]

#: Temperature of the stand-in model (:func:`perturbed_model`: FEFF spectra with correlated
#: errors and a spread of 0.8x the true error): :func:`calibrate` on the validation split, pooled
#: over both edges and seeds 0-2 (per run: O 1.73, 2.09, 1.58; N 2.29, 1.90, 2.29; the growth
#: exponent came out 0 in four runs of six), with exponent 0.
STAND_IN_TEMPERATURE = 2.1


#: eps values :func:`calibrate_shipped` tries (the comparator's ``outlier_probability``)
OUTLIER_PROBABILITIES = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08)

#: with fewer calibration molecules than this, :func:`calibrate_shipped` falls back to the
#: validation split (and says so in the stored ``split``)
MIN_CALIBRATION_MOLECULES = 20

#: candidates of an isomer trial of :func:`calibrate_shipped`: the molecule and up to this many
#: - 1 QM9 isomers (the identification benchmark's isomer sets have as many)
ISOMER_SET_SIZE = 200

#: the top-label map is fitted on the trials of at least this many points: the finished scans
#: (49 adaptive points, the grid), whose answers a scientist reads
TOP_MIN_POINTS = 49


@dataclass
class Trial:
    """One simulated measurement stage used for calibration.

    Attributes
    ----------
    true_index : int
        Index of the measured sample's own candidate.
    n_points : int
        Points measured at this stage.
    table : np.ndarray
        (K, C) untempered log likelihood per offset and candidate.
    probabilities : np.ndarray
        (C,) candidate probabilities at the temperature the scan ran with.
    energies : np.ndarray
        Mono energies measured so far.
    molecule : int
        Index of the measured molecule in the calibration set (cross-fitting splits by it); the
        true index when -1 (a trial among the calibration set's own predictions).
    """

    true_index: int
    n_points: int
    table: np.ndarray  # (K, C) untempered log likelihood
    probabilities: np.ndarray  # (C,) at the temperature the scan ran with
    energies: np.ndarray = field(default_factory=lambda: np.empty(0))  # mono energies measured
    molecule: int = -1

    def __post_init__(self) -> None:
        if self.molecule < 0:
            self.molecule = self.true_index


def perturbed_model(
    energy: np.ndarray,
    mu: np.ndarray,
    rng: np.random.Generator,
    *,
    error: float = 0.08,
    corr_ev: float = 2.0,
    shift_ev: float = 0.3,
    std_ratio: float = 0.8,
) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in for an ML model: FEFF spectra with realistic, correlated errors.

    Each spectrum is shifted by N(0, ``shift_ev``) eV (misplaced resonances), scaled by
    N(1, 0.05) and given a smooth error (white noise convolved with a Gaussian of ``corr_ev`` eV,
    so that neighbouring energies err together) of rms ``error`` x (0.3 + mu / max mu): larger
    on the resonances, as for real models.  The returned spread is ``std_ratio`` times the
    true rms error, that of the shift (``shift_ev`` x dmu/dE) included: ensembles disagree most
    on the flanks of resonances, and are usually under-dispersed.

    Parameters
    ----------
    energy : np.ndarray
        (E,) energy grid of ``mu``.
    mu : np.ndarray
        (C, E) or (E,) spectra.
    rng : np.random.Generator
        Source of the errors.
    error, corr_ev, shift_ev, std_ratio : float
        Rms error scale, its correlation length (eV), the shift's width (eV) and the spread's
        ratio to the true error.

    Returns
    -------
    mean, std : np.ndarray
        (C, E) the stand-in's predictions and its spread.
    """
    mu = np.atleast_2d(np.asarray(mu, dtype=float))
    step = float(np.median(np.diff(energy)))
    half = int(np.ceil(3 * corr_ev / step))
    kern = np.exp(-0.5 * (np.arange(-half, half + 1) * step / corr_ev) ** 2)
    mean = np.empty_like(mu)
    std = np.empty_like(mu)
    for i, m in enumerate(mu):
        shifted = np.interp(energy + rng.normal(0.0, shift_ev), energy, m)
        envelope = error * (0.3 + np.abs(m) / max(np.abs(m).max(), 1e-12))
        g = np.convolve(rng.standard_normal(m.size + 2 * half), kern, mode="valid")
        g /= g.std()
        mean[i] = shifted * rng.normal(1.0, 0.05) + envelope * g
        # an ensemble disagrees on where the resonances are: spread ~ shift x slope
        slope = np.gradient(m, energy)
        std[i] = std_ratio * np.sqrt(envelope**2 + (shift_ev * slope) ** 2)
    return mean, std


def simulate_trials(
    energy: np.ndarray,
    truth: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray | None,
    rng: np.random.Generator,
    *,
    checkpoints: Sequence[int] = (6, 8, 12, 16, 24, 32, 49),
    n_coarse: int = 6,
    noise: float = 0.01,
    temperature: float = 1.0,
    grid: np.ndarray | None = None,
    **comparator_kwargs,
) -> list[Trial]:
    """Scan every sample of ``truth`` adaptively against the candidates ``mean``/``std``.

    ``truth[i]`` (e.g. a FEFF spectrum) is the measured sample whose candidate is ``mean[i]``
    (the model's prediction for the same molecule).  Each scan has a random shared offset
    (the prior), a scale, a sloping background and Gaussian noise of ``noise`` x the edge step;
    it starts with ``n_coarse`` evenly spaced points and continues at the comparator's next
    energy.  At every checkpoint the untempered log-likelihood table is recorded.

    Parameters
    ----------
    energy : np.ndarray
        (E,) the model's energy grid.
    truth : np.ndarray
        (N, E) the measured samples' spectra.
    mean, std : np.ndarray
        (C, E) the candidates' predictions and spread (``std`` may be None).
    rng : np.random.Generator
        Source of the offsets, scales, backgrounds and noise.
    checkpoints : sequence of int
        Numbers of points at which a :class:`Trial` is recorded.
    n_coarse : int
        Evenly spaced points of the coarse pass.
    noise : float
        Noise relative to the edge step.
    temperature : float
        Likelihood temperature T0 the scans run at.
    grid : np.ndarray, optional
        Mono energies of a conventional grid scan: each sample is also measured on it (same
        offset, scale, background) and recorded as one more trial, so that the temperature's
        growth is fitted over the whole range of points a measurement has (the adaptive scan's
        few to the grid's hundreds), not extrapolated.
    **comparator_kwargs
        Further keywords of :class:`~xas_bluesky.science.compare.comparator.Comparator`.

    Returns
    -------
    list of Trial
        One per sample and checkpoint.
    """
    names = [f"c{i}" for i in range(mean.shape[0])]
    cmp = Comparator(energy, mean, std, names, temperature=temperature, **comparator_kwargs)
    lo, hi = cmp.edge_window
    trials = []
    for i, t in enumerate(truth):
        cmp.reset()
        delta = float(np.clip(rng.normal(0.0, cmp.offset_sigma), -0.95 * cmp.offsets[-1], None))
        delta = min(delta, 0.95 * cmp.offsets[-1])
        scale = 0.02 * rng.uniform(0.5, 2.0)
        bg, slope = 0.05 * rng.uniform(0.5, 2.0), scale * rng.normal(0.0, 0.005)

        def measure(e, t=t, delta=delta, scale=scale, bg=bg, slope=slope):
            e = np.atleast_1d(e)
            y = scale * np.interp(e + delta, energy, t, left=0.0) + bg + slope * (e - lo)
            return y + noise * scale * rng.standard_normal(e.size), np.full(e.size, noise * scale)

        e = np.linspace(lo + 1.0, hi - 1.0, n_coarse)
        cmp.add_points(e, *measure(e))
        n = n_coarse
        for target in sorted(checkpoints):
            while n < target:
                nxt = cmp.result().next_energy
                if nxt is None:
                    break
                cmp.add_points(np.array([nxt]), *measure(nxt))
                n += 1
            res = cmp.settled_result()  # as the engine publishes a run's final result
            trials.append(
                Trial(i, n, cmp.log_likelihood_table(), res.probabilities, np.array(cmp._pe))
            )
        if grid is not None:
            cmp.reset()
            g = np.asarray(grid, dtype=float)
            cmp.add_points(g, *measure(g))
            res = cmp.result()
            trials.append(Trial(i, g.size, cmp.log_likelihood_table(), res.probabilities, g))
    return trials


def isomer_trials(
    energy: np.ndarray,
    truth: np.ndarray,
    own: np.ndarray,
    isomer_candidates: Sequence[np.ndarray],
    rng: np.random.Generator,
    **kwargs,
) -> list[Trial]:
    """Scan every molecule among its isomers: the hard case a chemist following a reaction faces.

    Molecule i (``truth[i]``) is measured by :func:`simulate_trials` against its own prediction
    ``own[i]`` (candidate 0, the true one) and ``isomer_candidates[i]`` (the model's predictions
    of other molecules of the same formula); a molecule without isomers gives no trial.

    Parameters
    ----------
    energy : np.ndarray
        (E,) the model's energy grid.
    truth, own : np.ndarray
        (N, E) the molecules' spectra and the model's predictions of them.
    isomer_candidates : sequence of np.ndarray
        (n_i, E) predictions of each molecule's isomers.
    rng : np.random.Generator
        Source of the scans' offsets, scales, backgrounds and noise.
    **kwargs
        Further keywords of :func:`simulate_trials` (the comparator's, without a spread).

    Returns
    -------
    list of Trial
        ``true_index`` 0, ``molecule`` i.
    """
    if len(isomer_candidates) != len(truth) or len(own) != len(truth):
        raise ValueError(
            f"{len(truth)} molecules, {len(own)} predictions, {len(isomer_candidates)} isomer sets"
        )
    out: list[Trial] = []
    for i, iso in enumerate(isomer_candidates):
        iso = np.asarray(iso, dtype=float).reshape(-1, energy.size)
        if iso.shape[0] == 0:
            continue
        mean = np.vstack([own[i : i + 1], iso])
        for tr in simulate_trials(energy, truth[i : i + 1], mean, None, rng, **kwargs):
            out.append(replace(tr, molecule=i))
    return out


def fit_temperature(
    trials: Sequence[Trial],
    log_prior: np.ndarray,
    temperatures: np.ndarray | None = None,
    exponent: float = 0.0,
    outlier_probability: float = 0.0,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Temperature T0 minimising the mean negative log probability of the true candidate.

    Each trial is tempered at :func:`effective_temperature` (T0, ``exponent``, its points); the
    offset is re-marginalised at every temperature (the prior is not tempered).

    Parameters
    ----------
    trials : sequence of Trial
        Recorded scans.
    log_prior : np.ndarray
        (K,) log prior of the offsets (:attr:`Comparator.log_prior`).
    temperatures : np.ndarray, optional
        T0 values searched; 81 from 0.25 to 400, geometrically spaced, when None.
    exponent : float
        Growth exponent gamma of the temperature with the points.
    outlier_probability : float
        The comparator's eps (see :func:`tempered_probabilities`).

    Returns
    -------
    best : float
        The T0 of the lowest mean NLL.
    temperatures : np.ndarray
        The T0 values searched.
    nll : np.ndarray
        Mean NLL of the truth per T0.
    """
    if temperatures is None:
        temperatures = np.geomspace(0.25, 400.0, 81)
    nll = np.zeros(temperatures.size)
    for tr in trials:
        f = effective_temperature(1.0, exponent, tr.n_points)
        for j, t in enumerate(temperatures):
            p = tempered_probabilities(tr, log_prior, t * f, outlier_probability)
            nll[j] -= np.log(max(p[tr.true_index], 1e-300))
    nll /= max(len(trials), 1)
    return float(temperatures[int(np.argmin(nll))]), temperatures, nll


def tempered_probabilities(
    trial: Trial,
    log_prior: np.ndarray,
    temperature: float,
    outlier_probability: float = 0.0,
    top_calibration: Sequence[float] | None = None,
) -> np.ndarray:
    """Candidate probabilities of a recorded trial at another (effective) temperature.

    Parameters
    ----------
    trial : Trial
        A recorded scan stage.
    log_prior : np.ndarray
        (K,) log prior of the offsets (not tempered).
    temperature : float
        The effective temperature.
    outlier_probability : float
        eps of the comparator: (1 - eps) P + eps / C.
    top_calibration : sequence of float, optional
        The comparator's top-label map, applied last at the trial's points
        (:func:`~xas_bluesky.science.compare.comparator.recalibrate_top`).

    Returns
    -------
    np.ndarray
        (C,) probabilities, the offset marginalised.
    """
    lm = np.logaddexp.reduce(trial.table / temperature + np.asarray(log_prior)[:, None], axis=0)
    p = np.exp(lm - lm.max())
    p /= p.sum()
    if outlier_probability > 0:
        p = (1.0 - outlier_probability) * p + outlier_probability / p.size
    if top_calibration is not None:
        p = recalibrate_top(p, top_calibration, trial.n_points)
    return p


def fit_top_calibration(
    probabilities: Sequence[np.ndarray],
    true_indices: Sequence[int],
    n_points: Sequence[int] | None = None,
) -> tuple[float, ...]:
    """Fit the top-label map: a logistic regression of "the best candidate is the true one"
    on the logit of its probability (Platt scaling of the top label) and, with ``n_points``,
    on log(n / 49).

    Parameters
    ----------
    probabilities : sequence of np.ndarray
        (C,) probabilities per trial, as the comparator reports them (eps included).
    true_indices : sequence of int
        The true candidate of each trial.
    n_points : sequence of int, optional
        Points of each trial; without them the map has no term in n.

    Returns
    -------
    tuple of float
        (a, b) or (a, b, c) of :func:`~xas_bluesky.science.compare.comparator.recalibrate_top`;
        a is kept in [0.05, 10] so that the map stays increasing, c in [-3, 3].
    """
    from scipy.optimize import minimize

    conf = np.array([float(np.max(p)) for p in probabilities])
    hits = np.array(
        [int(np.argmax(p)) == int(t) for p, t in zip(probabilities, true_indices, strict=True)]
    )
    conf = np.clip(conf, 1e-9, 1.0 - 1e-9)
    x = np.log(conf / (1.0 - conf))
    u = (
        np.zeros_like(x)
        if n_points is None
        else np.log(np.maximum(np.asarray(n_points, float), 1.0) / TOP_REFERENCE_POINTS)
    )

    def nll(theta):
        z = theta[0] * x + theta[1] + theta[2] * u
        # -log sigmoid(z) for hits, -log sigmoid(-z) otherwise
        return float(np.mean(np.logaddexp(0.0, np.where(hits, -z, z))))

    bounds = [(0.05, 10.0), (-10.0, 10.0), (-3.0, 3.0) if n_points is not None else (0.0, 0.0)]
    fit = minimize(nll, x0=np.array([1.0, 0.0, 0.0]), bounds=bounds)
    a, b, c = (float(v) for v in fit.x)
    return (a, b) if n_points is None else (a, b, c)


def calibration_molecules(edge: str, paths: Sequence[str | Path] | None = None) -> list:
    """The molecules the shipped calibration is fitted on: test-split molecules outside the
    shipped held-out set.

    They played no part in training: not in its data, not in early stopping (the validation
    split chose each member's epoch, so the model errs less there than on new molecules, and a
    calibration fitted there is over-confident), and they are not the held-out samples the
    benchmarks score.  The set grows as FEFF data is committed.

    Parameters
    ----------
    edge : str
        ``"O"`` or ``"N"``.
    paths : sequence of str or Path, optional
        The FEFF data files (default: the committed ones).

    Returns
    -------
    list of Molecule
        Complete molecules (every site of the edge's element computed), in data-set order.
    """
    from xas_bluesky.resources import heldout_samples

    held = {int(s["qm9_index"]) for s in heldout_samples(edge)[1]}
    paths = default_data_files() if paths is None else paths
    return [
        m
        for m in load_molecules(paths, edge)
        if m.split == "test" and m.complete and m.qm9_index not in held
    ]


def _split_molecules(edge: str, split: str, paths: Sequence[str | Path]) -> list:
    if split == "cal":
        return calibration_molecules(edge, paths)
    return [m for m in load_molecules(paths, edge) if m.split == split]


def reliability(
    probabilities: Sequence[np.ndarray],
    true_indices: Sequence[int],
    n_bins: int = 10,
    n_draws: int = 500,
    seed: int = 0,
) -> dict:
    """Reliability of the top-1 probability: per confidence bin, its mean and the accuracy.

    Parameters
    ----------
    probabilities : sequence of np.ndarray
        Candidate probabilities of each trial.
    true_indices : sequence of int
        The true candidate of each trial.
    n_bins : int
        Confidence bins over [0, 1].
    n_draws : int
        Draws of the noise floor (0: none).
    seed : int
        Seed of those draws.

    Returns
    -------
    dict
        ``confidence``, ``accuracy``, ``count`` per non-empty bin, the expected calibration error
        ``ece`` (count-weighted ``abs(accuracy - confidence)``), ``top1`` accuracy, the mean top-1
        ``mean_confidence``, the mean negative log probability of the truth ``nll``, and
        ``ece_floor`` / ``ece_floor_p90``: the mean and 90th percentile of the ECE that a
        *perfectly calibrated* predictor with the same confidences would show on this many
        trials (each answer right with probability equal to its confidence).  The binned ECE is
        biased upwards on small samples: with ~150 trials spread over 10 bins the floor is
        ~0.05, so an ECE is only evidence of miscalibration where it clearly exceeds the floor.
    """
    conf = np.array([float(np.max(p)) for p in probabilities])
    hit = np.array(
        [int(np.argmax(p)) == int(t) for p, t in zip(probabilities, true_indices, strict=True)]
    )
    nll = -np.mean(
        [np.log(max(p[int(t)], 1e-300)) for p, t in zip(probabilities, true_indices, strict=True)]
    )
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges) - 1, 0, n_bins - 1)
    out: dict[str, Any] = {"confidence": [], "accuracy": [], "count": []}
    ece = 0.0
    for b in range(n_bins):
        m = which == b
        if not m.any():
            continue
        out["confidence"].append(float(conf[m].mean()))
        out["accuracy"].append(float(hit[m].mean()))
        out["count"].append(int(m.sum()))
        ece += m.sum() * abs(hit[m].mean() - conf[m].mean())
    out["ece"] = float(ece / max(conf.size, 1))
    floors = _ece_of_calibrated(conf, which, n_bins, n_draws, seed)
    out["ece_floor"] = float(floors.mean()) if floors.size else float("nan")
    out["ece_floor_p90"] = float(np.quantile(floors, 0.9)) if floors.size else float("nan")
    out["top1"] = float(hit.mean()) if hit.size else float("nan")
    out["mean_confidence"] = float(conf.mean()) if conf.size else float("nan")
    out["nll"] = float(nll)
    return out


def _ece_of_calibrated(
    conf: np.ndarray, which: np.ndarray, n_bins: int, n_draws: int, seed: int
) -> np.ndarray:
    """ECEs of ``n_draws`` simulated outcomes, each answer right with probability ``conf``."""
    if n_draws <= 0 or conf.size == 0:
        return np.empty(0)
    rng = np.random.default_rng(seed)
    hits = rng.random((n_draws, conf.size)) < conf  # (draws, trials)
    ece = np.zeros(n_draws)
    for b in range(n_bins):
        m = which == b
        if m.any():
            ece += m.sum() * np.abs(hits[:, m].mean(axis=1) - conf[m].mean())
    return ece / conf.size


def calibrate(
    edge: str,
    *,
    split: str = "val",
    predictions: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
    rounds: int = 2,
    std_scales: Sequence[float] = (1.0,),
    exponents: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    paths: Sequence[str | Path] | None = None,
    error_model: str = "spread",
    outlier_probabilities: Sequence[float] = (0.0,),
    outlier_floor: float = 0.0,
    top_label: bool = False,
    top_min_points: int = TOP_MIN_POINTS,
    top_points_term: bool = False,
    isomer_candidates: Sequence[np.ndarray] | None = None,
    **kwargs,
) -> dict:
    """Fit the likelihood temperature, its growth with the points and the spread's scale on a
    split of the FEFF data set.

    The measured samples are the split's FEFF spectra; the candidates are ``predictions``
    ((mean, std) of the model for the same molecules, in the same order) or, without a model,
    :func:`perturbed_model` of them.  For every ``std_scales`` value the scans run at the
    temperature being fitted (the next-energy choice depends on it), ``rounds`` times, and T0 is
    fitted for every exponent of ``exponents``; the combination with the lowest mean negative log
    probability of the truth wins.

    Parameters
    ----------
    edge : str
        ``"O"`` or ``"N"``.
    split : str
        The data set's split whose molecules are measured, or ``"cal"``: the test-split
        molecules outside the shipped held-out set (:func:`calibration_molecules`).
    predictions : (np.ndarray, np.ndarray), optional
        (mean, std) of the model for the split's molecules, in the same order; the stand-in
        (:func:`perturbed_model`) when None.
    seed : int
        Seed of the stand-in's errors (``seed``) and of the scans (``seed + 1``).
    rounds : int
        Scans at the temperature fitted in the round before (the first at T = 1).
    std_scales : sequence of float
        Factors on the spread tried.
    exponents : sequence of float
        Growth exponents tried.
    paths : sequence of str or Path, optional
        The FEFF data files (default: the committed ones).
    error_model : {"spread", "rms"}
        ``"spread"``: the candidates' ensemble spread (times each of ``std_scales``) is the
        model's error; ``"rms"``: the per-energy rms of (truth - prediction) over the split is
        (the comparator's ``model_error``, returned as ``model_error``) and the spread is left
        out.
    outlier_probabilities : sequence of float
        The comparator's eps values tried (fitted with T0 and the exponent, by the same NLL).
    outlier_floor : float
        The least eps allowed (the values of ``outlier_probabilities`` below it are replaced
        by it).
    top_label : bool
        Also fit the top-label map (:func:`fit_top_calibration`) on the trials of at least
        ``top_min_points`` points at the fitted T0, exponent and eps, and report its
        reliability on those trials in-sample (``reliability_top``) and cross-fitted over two
        halves of the molecules (``reliability_crossfit``: each half scored with the map
        fitted on the other); ``reliability_late`` is theirs without the map.
    top_min_points : int
        See ``top_label``: the answers a scientist reads are those of a finished scan (49
        adaptive points, a grid), and the early checkpoints' many low-confidence trials would
        otherwise set the map.
    top_points_term : bool
        Give the map a term in log(n / 49) (:func:`fit_top_calibration`).  Off for the shipped
        calibrations: cross-fitted on the calibration molecules' finished scans it did not
        lower the ECE (O 0.036 -> 0.034, N 0.035 -> 0.044).
    isomer_candidates : sequence of np.ndarray, optional
        Per molecule of the split, the model's (n_i, E) predictions of its isomers: each
        molecule is also scanned among them and its own prediction (:func:`isomer_trials`, at
        the fitted T0, exponent and eps), and the top-label map is fitted on the finished scans
        of both kinds of candidate sets.  T0 and eps stay fitted on the split's own
        predictions: a map fitted on random sets alone was over-confident where the candidates
        are alike (``benchmarks/isomer_calibration.py``).  Needs ``error_model="rms"``.
    **kwargs
        Further keywords of :func:`simulate_trials` and the comparator.

    Returns
    -------
    dict
        ``temperature`` (T0), ``temperature_exponent``, ``std_scale``, ``nll`` (per T0 at the
        chosen values), ``scan`` (per scale), ``reliability`` at the fitted values and at T = 1,
        and the numbers of molecules and trials; with ``top_label``, ``top_calibration``
        (a, b) too.
    """
    energy = energy_grid(edge)
    paths = default_data_files() if paths is None else paths
    mols = _split_molecules(edge, split, paths)
    truth = np.array([m.spectrum() for m in mols])
    rng = np.random.default_rng(seed)
    if predictions is None:
        mean, std = perturbed_model(energy, truth, rng)
    else:
        mean, std = (np.asarray(a, dtype=float) for a in predictions)
    log_prior = Comparator(energy, mean[:1], None, ["x"], **_offset_kwargs(kwargs)).log_prior
    model_error = None
    if error_model == "rms":
        model_error = np.sqrt(np.mean((truth - mean) ** 2, axis=0))
        kwargs["model_error"] = model_error
        std_scales = (0.0,)
    elif error_model != "spread":
        raise ValueError(f"error_model must be 'spread' or 'rms', not {error_model!r}")
    eps_tried = sorted({max(float(o), float(outlier_floor)) for o in outlier_probabilities})
    best = None
    scan = []
    for kappa in std_scales:
        t, g = 1.0, 0.0
        for _ in range(rounds):
            trials = simulate_trials(
                energy,
                truth,
                mean,
                std,
                np.random.default_rng(seed + 1),
                temperature=t,
                temperature_exponent=g,
                std_scale=kappa,
                **kwargs,
            )
            fits = [
                (*fit_temperature(trials, log_prior, exponent=e, outlier_probability=o), e, o)
                for e in exponents
                for o in eps_tried
            ]
            t, temps, nll, g, eps = min(fits, key=lambda f: f[2].min())
        scan.append(
            {
                "std_scale": float(kappa),
                "temperature": t,
                "temperature_exponent": g,
                "outlier_probability": eps,
                "nll": float(nll.min()),
            }
        )
        if best is None or nll.min() < best[4].min():
            best = (float(kappa), t, g, trials, nll, eps)
    assert best is not None  # std_scales is not empty
    kappa, t, g, trials, nll, eps = best
    truth_idx = [tr.true_index for tr in trials]

    def at(t0, e, o=0.0, of=trials):
        return [
            tempered_probabilities(tr, log_prior, effective_temperature(t0, e, tr.n_points), o)
            for tr in of
        ]

    iso_trials: list[Trial] = []
    if isomer_candidates is not None and top_label:  # they serve the map only
        if kappa != 0.0:
            raise ValueError("isomer_candidates need error_model='rms' (no ensemble spread)")
        iso_trials = isomer_trials(
            energy, truth, mean, isomer_candidates, np.random.default_rng(seed + 2),
            temperature=t, temperature_exponent=g, std_scale=kappa, **kwargs,
        )  # fmt: skip
    top = None
    rel: dict[str, dict | None] = {}
    if top_label:
        # the map is fitted on the finished scans of both kinds of candidate sets; its
        # reliability is reported per kind ("" random, "_isomer")
        late_random = [tr for tr in trials if tr.n_points >= top_min_points]
        late = late_random + [tr for tr in iso_trials if tr.n_points >= top_min_points]
        kind = np.arange(len(late)) >= len(late_random)
        probs = at(t, g, eps, late)
        truth_late = [tr.true_index for tr in late]
        n_late = [tr.n_points for tr in late]
        n_fit = n_late if top_points_term else None
        top = fit_top_calibration(probs, truth_late, n_fit)
        mapped = [recalibrate_top(p, top, n) for p, n in zip(probs, n_late, strict=True)]
        # two halves by molecule: each scored with the map the other half fitted
        half = np.array([tr.molecule % 2 for tr in late])
        crossed: list[np.ndarray] = [np.empty(0)] * len(late)
        for h in (0, 1):
            on = np.flatnonzero(half != h)
            abc = fit_top_calibration(
                [probs[j] for j in on],
                [truth_late[j] for j in on],
                None if n_fit is None else [n_late[j] for j in on],
            )
            for j in np.flatnonzero(half == h):
                crossed[j] = recalibrate_top(probs[j], abc, n_late[j])
        for suffix, sel in (("", ~kind), ("_isomer", kind)):
            idx = np.flatnonzero(sel)
            if idx.size == 0:
                continue
            t_idx = [truth_late[j] for j in idx]
            rel["reliability_late" + suffix] = reliability([probs[j] for j in idx], t_idx)
            rel["reliability_top" + suffix] = reliability([mapped[j] for j in idx], t_idx)
            rel["reliability_crossfit" + suffix] = reliability([crossed[j] for j in idx], t_idx)
    return {
        "reliability_late": rel.get("reliability_late"),
        "top_calibration": top,
        "reliability_top": rel.get("reliability_top"),
        "reliability_crossfit": rel.get("reliability_crossfit"),
        **{k: v for k, v in rel.items() if k.endswith("_isomer")},
        "n_isomer_trials": len(iso_trials),
        "edge": edge,
        "split": split,
        "model": "predictions" if predictions is not None else "perturbed FEFF (stand-in)",
        "n_molecules": len(mols),
        "n_trials": len(trials),
        "temperature": t,
        "temperature_exponent": g,
        "std_scale": kappa,
        "outlier_probability": eps,
        "scan": scan,
        "temperatures": temps.tolist(),
        "nll": nll.tolist(),
        "reliability": reliability(at(t, g, eps), truth_idx),
        "reliability_T1": reliability(at(1.0, 0.0), truth_idx),
        "error_model": error_model,
        "model_error": None if model_error is None else model_error.tolist(),
    }


def _offset_kwargs(kwargs: dict) -> dict:
    return {k: kwargs[k] for k in ("offset_sigma", "offset_max", "offset_step") if k in kwargs}


def store_calibration(directory: str | Path, calibration: dict) -> None:
    """Add ``calibration`` to the metadata of the ensemble in ``directory``.

    The weights are untouched, so the model version stays the same.

    Parameters
    ----------
    directory : str or Path
        The ensemble's checkpoint directory.
    calibration : dict
        Stored as the metadata's ``calibration`` entry, in the weights file and the metadata
        JSON.
    """
    # torch (and the checkpoint module, which imports it) only here: the live path imports the
    # package face of the comparator, which must stay free of torch
    import torch

    from xas_bluesky.science.model.checkpoint import METADATA_FILE, WEIGHTS_FILE

    directory = Path(directory)
    blob = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    cal = json.loads(json.dumps(calibration, default=float))
    blob["metadata"]["calibration"] = cal
    torch.save(blob, directory / WEIGHTS_FILE)
    meta = json.loads((directory / METADATA_FILE).read_text())
    meta["calibration"] = cal
    (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def isomer_predictions(
    edge: str, mols: Sequence, predictor, n: int = ISOMER_SET_SIZE, seed: int = 0
) -> list[np.ndarray] | None:
    """The model's predictions of up to ``n - 1`` QM9 isomers of each molecule of ``mols``.

    Isomers are drawn at random (``seed``) among the QM9 molecules with the molecule's formula
    and the edge's element, never the molecule itself nor a shipped held-out sample (those
    score the calibration).  (``benchmarks/identification.py`` draws the held-out samples'
    isomers from the test split first; here every split alike: few QM9 molecules have FEFF
    data, so few decoys are training molecules either way.)  None, with a warning, where QM9
    is not installed (extra ``qm9``).

    Parameters
    ----------
    edge : str
        ``"O"`` or ``"N"``.
    mols : sequence of Molecule
        The calibration molecules (``symbols``, ``qm9_index``).
    predictor : Predictor
        The ensemble being calibrated.
    n : int
        Size of a candidate set with its molecule.
    seed : int
        Seed of the draw.

    Returns
    -------
    list of np.ndarray or None
        (n_i, E) per molecule, n_i <= n - 1 (0 for a molecule without isomers).
    """
    from xas_bluesky.resources import heldout_samples
    from xas_bluesky.science.qm9 import formula, isomers

    try:
        pools = isomers({formula(m.symbols) for m in mols}, (edge,))
    except ImportError as exc:
        logger.warning("no isomer trials in the calibration: %s", exc)
        return None
    held = {int(s["qm9_index"]) for s in heldout_samples(edge)[1]}
    rng = random.Random(seed)
    chosen: list[list] = []
    for m in mols:
        pool = [
            q
            for q in pools[formula(m.symbols)]
            if q["qm9_index"] != m.qm9_index and q["qm9_index"] not in held
        ]
        rng.shuffle(pool)
        structs: list = []
        for q in pool:
            if len(structs) >= n - 1:
                break
            try:
                structs.append(
                    structure_from_xyz(
                        f"qm9_{q['qm9_index']:06d}", q["symbols"], np.asarray(q["xyz"]), edge
                    )
                )
            except ValueError:  # a geometry RDKit cannot perceive: not a candidate
                continue
        chosen.append(structs)
    unique = {s.name: s for structs in chosen for s in structs}
    names = list(unique)
    mean = np.empty((0, len(predictor.energy)))
    if names:
        mean = np.asarray(predictor.predict([unique[k] for k in names]))
    row = {k: i for i, k in enumerate(names)}
    return [mean[[row[s.name] for s in structs]] for structs in chosen]


def calibrate_shipped(
    edge: str,
    directory: str | Path | None = None,
    seed: int = 0,
    paths: Sequence[str | Path] | None = None,
    error_model: str = "rms",
    split: str = "cal",
    top_label: bool = True,
    isomer_set_size: int = ISOMER_SET_SIZE,
) -> dict:
    """Fit the comparator's calibration for an ensemble and store it in its checkpoint.

    The ensemble's predictions of the calibration molecules (:func:`calibration_molecules`,
    molecules that played no part in training) are the candidates of :func:`calibrate`; the
    result goes to :func:`store_calibration`.

    Parameters
    ----------
    edge : str
        ``"O"`` or ``"N"``.
    directory : str or Path, optional
        The ensemble's checkpoint directory; the shipped model of ``edge`` when None.
    seed : int
        Seed of :func:`calibrate`.
    paths : sequence of str or Path, optional
        The FEFF data files (default: the committed ones).
    error_model : {"rms", "spread"}
        See :func:`calibrate`; ``"rms"`` (measured better, ``benchmarks/likelihood.py``) stores
        the per-energy ``model_error``.
    split : str
        ``"cal"`` (default) or a data-set split (``"val"``: how the models before this
        calibration split were calibrated).
    top_label : bool
        Fit the top-label map too (see :func:`calibrate`).
    isomer_set_size : int
        Candidates of the isomer trials the map is also fitted on (:func:`isomer_predictions`,
        ``isomer_candidates`` of :func:`calibrate`); 0, or QM9 not installed: random sets only.

    Returns
    -------
    dict
        The stored calibration: ``temperature``, ``temperature_exponent``, ``std_scale``,
        ``outlier_probability``, ``top_calibration``, ``model_error`` (or None),
        ``n_molecules``, ``n_trials``, ``model_version``, ``split``, ``molecules`` (their QM9
        indices, so that a benchmark can leave them out), ``cal_ece`` (every trial, before the
        top-label map), ``cal_ece_late`` (trials of >= :data:`TOP_MIN_POINTS` points, before
        it), ``cal_ece_top`` (the same, after it, in-sample) and ``cal_crossfit_ece`` (after a
        map fitted on the other half of the molecules).
    """
    # torch only here (see store_calibration)
    from xas_bluesky.science.model.checkpoint import model_dir
    from xas_bluesky.science.model.predictor import Predictor

    directory = Path(directory) if directory else model_dir(edge)
    predictor = Predictor.load(edge, device="cpu", directory=directory)
    paths = default_data_files() if paths is None else paths
    mols = _split_molecules(edge, split, paths)
    if split == "cal" and len(mols) < MIN_CALIBRATION_MOLECULES:
        # a small data set (a test's, a first training) has no calibration molecules yet:
        # the validation split, with the bias that comes with it, is all there is
        split = "val"
        mols = _split_molecules(edge, split, paths)
    structs = [structure_from_xyz(m.name, m.symbols, m.xyz, edge) for m in mols]
    mean, std = predictor.predict(structs, return_std=True)
    from xas_bluesky.science.adaptive import grid_energies

    iso = (
        isomer_predictions(edge, mols, predictor, isomer_set_size, seed)
        if isomer_set_size > 1 and top_label and error_model == "rms"
        else None
    )
    result = calibrate(
        edge,
        predictions=(np.asarray(mean), np.asarray(std)),
        seed=seed,
        paths=paths,
        error_model=error_model,
        grid=grid_energies(edge),
        outlier_probabilities=OUTLIER_PROBABILITIES,
        # rule of three: no catastrophic miss among n molecules still allows a rate of up to
        # 3 / n (95 % confidence).  Fitted freely, N's eps came out 0 on 134 molecules, and 2
        # of the 37 held-out answers it then gave at p >= 0.99 were wrong.
        outlier_floor=3.0 / max(len(mols), 1),
        split=split,
        top_label=top_label,
        isomer_candidates=iso,
    )
    keys = (
        "temperature",
        "temperature_exponent",
        "std_scale",
        "outlier_probability",
        "top_calibration",
        "model_error",
    )
    summary = {k: result[k] for k in (*keys, "n_molecules", "n_trials")}
    summary["model_version"] = predictor.model_version
    summary["split"] = split
    summary["molecules"] = [int(m.qm9_index) for m in mols]
    summary["n_isomer_trials"] = result["n_isomer_trials"]
    summary["isomer_set_size"] = isomer_set_size if summary["n_isomer_trials"] else 0
    for key, name in (
        ("reliability", f"{split}_ece"),
        ("reliability_late", f"{split}_ece_late"),
        ("reliability_top", f"{split}_ece_top"),
        ("reliability_crossfit", f"{split}_crossfit_ece"),
        ("reliability_late_isomer", f"{split}_ece_late_isomer"),
        ("reliability_top_isomer", f"{split}_ece_top_isomer"),
        ("reliability_crossfit_isomer", f"{split}_crossfit_ece_isomer"),
    ):
        rel = result.get(key) or {}
        if isinstance(rel, dict) and "ece" in rel:
            summary[name] = rel["ece"]
    store_calibration(directory, summary)
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m xas_bluesky.science.compare.calibration [--store] [EDGE ...]``.

    Without ``--store``: :func:`calibrate` of the stand-in per edge, printed as JSON (without the
    per-T0 curve).  With ``--store``: :func:`calibrate_shipped` per edge, which rewrites the
    shipped checkpoint's metadata, printed as ``EDGE {json}``.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments; ``sys.argv[1:]`` when None.
    """
    parser = argparse.ArgumentParser(
        prog="python -m xas_bluesky.science.compare.calibration",
        description="Calibrate the comparator's likelihood on the validation split.",
    )
    parser.add_argument("edges", nargs="*", default=["O", "N"], help="edges (default: O N)")
    parser.add_argument(
        "--store",
        action="store_true",
        help="calibrate the shipped ensembles and store the result in their checkpoints "
        "(default: report the stand-in's calibration, nothing written)",
    )
    args = parser.parse_args(argv)
    for edge in args.edges:
        if args.store:
            print(edge, json.dumps(calibrate_shipped(edge)))
            continue
        rep = calibrate(edge)
        rep.pop("temperatures")
        rep.pop("nll")
        print(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
