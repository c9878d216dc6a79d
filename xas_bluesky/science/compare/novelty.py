"""When the molecule is not on the list: functional groups from the spectrum, and ``in_library``.

Pure numpy, on comparators' results: nothing here changes the comparator's likelihood; it reads
:meth:`Comparator.log_likelihood_table` (offsets x columns, untempered),
:attr:`Comparator.log_prior` and :attr:`Comparator.n_points`.

Two references, two comparators (:class:`OpenWorld` builds both):

* the **model library**: the GNN's predictions of some thousands of QM9 training-split molecules
  (:func:`~xas_bluesky.science.groups.shipped_library`), scored by ONE comparator together with
  the candidates, so that every column shares the same reference scale, offset grid and
  constants (``in_library`` compares columns);
* the **FEFF library**: FEFF's own spectra of the data set's training molecules
  (:func:`~xas_bluesky.science.groups.shipped_feff_library`), scored by a second comparator: no
  model error, but only ~1,000 molecules.

Evidence of a column
    ``l_c = log sum_k prior_k exp(table[k, c] / T)``, the offset marginalised with the
    comparator's prior, at the effective temperature ``T = T0 (max(n, 6) / 6) ** gamma`` of
    :func:`~xas_bluesky.science.compare.comparator.effective_temperature` (``T0``, ``gamma`` of
    this module's calibration, fitted on validation molecules: not the comparator's own).

Functional groups (mixtures: independent per-group probabilities)
    A molecule has a SET of groups (its spectrum is the mean over its absorbing sites).  The
    posterior over a library's molecules ``p_r ~ exp(l_r)`` gives, for every group ``g``
    independently, ``P_lib(g) = (1 - eps) sum_r p_r [g in groups(r)] + eps pi_g`` (``pi_g`` the
    group's share of the library, ``eps`` fitted).  The two libraries' are averaged and
    recalibrated by one logistic (Platt) map fitted on validation molecules:
    ``P(g) = sigma(a + b logit((P_model(g) + P_feff(g)) / 2))``.  The probabilities do not sum to
    1: they are "the molecule has g", one per group (their sum is about the expected number of
    groups, >= 1).  :func:`group_set_probabilities` gives the distribution over whole group sets
    of one library (sums to 1).  The top group is the most probable one; it is right when the
    molecule has it.

``in_library``
    Whether the sample is among the candidates.  Two features compare the candidates with the
    model library (which never holds a candidate): ``best = max_cand l - max_ref l`` (does the
    best candidate fit as well as the best of thousands of other molecules?) and the log Bayes
    factor ``mean = log mean_cand exp(l) - log mean_ref exp(l)``; a logistic regression on both,
    fitted on validation trials with the truth among 200 candidates and not (half each: a prior
    of 1/2), turns them into a probability.

The fitting functions (:func:`fit_groups`, :func:`fit_in_library`, :func:`fit_combination`) take
recorded :class:`NoveltyTrial` s; ``benchmarks/groups.py --calibrate`` records them on the
validation split with the simulated beamline's detector model and stores the result in the
package (:func:`xas_bluesky.resources.open_world_calibration`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from xas_bluesky.contracts import GROUPS
from xas_bluesky.science.compare.comparator import Comparator, effective_temperature

__all__ = [
    "NoveltyCalibration",
    "NoveltyResult",
    "NoveltyTrial",
    "column_evidence",
    "group_probabilities",
    "combine_group_probabilities",
    "group_set_probabilities",
    "in_library_features",
    "in_library_probability",
    "assess",
    "OpenWorld",
    "fit_groups",
    "fit_combination",
    "fit_in_library",
    "top_group_reliability",
]

logger = logging.getLogger(__name__)


@dataclass
class NoveltyCalibration:
    """The fitted constants of the open-world analysis of one edge.

    Attributes
    ----------
    edge : str
    temperature, exponent, floor : float
        T0, gamma and eps of the model library's group probabilities (see the module's
        docstring).
    feff_temperature, feff_exponent, feff_floor : float
        The same for the FEFF library.
    combine : tuple of float
        ``(a, b)`` of ``P = sigma(a + b logit(mean of the two libraries' P))``.
    in_temperature : float
        T0 of the evidence that ``in_library`` reads (gamma as for the groups).
    in_coef : tuple of float
        ``(w0, w_best, w_mean)`` of the logistic ``in_library = sigma(w0 + w_best best +
        w_mean mean)``.
    source : str
        What it was fitted with (libraries, model version, trials).
    metrics : dict
        Validation figures of the fit.
    """

    edge: str
    temperature: float = 5.0
    exponent: float = 0.75
    floor: float = 0.02
    feff_temperature: float = 50.0
    feff_exponent: float = 0.75
    feff_floor: float = 0.02
    combine: tuple[float, float] = (0.0, 1.0)
    in_temperature: float = 5.0
    in_coef: tuple[float, float, float] = (0.0, 1.0, 0.0)
    source: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["in_coef"] = list(self.in_coef)
        d["combine"] = list(self.combine)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NoveltyCalibration:
        """From :meth:`to_dict` (unknown keys ignored)."""
        known = set(cls.__dataclass_fields__)
        d = {k: v for k, v in d.items() if k in known}
        if "in_coef" in d:
            d["in_coef"] = tuple(float(x) for x in d["in_coef"])
        if "combine" in d:
            d["combine"] = tuple(float(x) for x in d["combine"])
        return cls(**d)

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def shipped(cls, edge: str, model_version: str | None = None) -> NoveltyCalibration:
        """The calibration shipped for ``edge`` (:func:`xas_bluesky.resources.open_world_calibration`).

        Without one, the defaults, with a warning; with ``model_version`` given, a warning too
        when the calibration was fitted for another model.
        """
        from xas_bluesky.resources import open_world_calibration

        entry = open_world_calibration(edge)
        if entry is None:
            logger.warning("no open-world calibration shipped for %s: defaults", edge)
            return cls(edge)
        cal = cls.from_dict(entry)
        if model_version is not None and model_version not in cal.source:
            logger.warning(
                "open-world calibration of %s was fitted for another model (%s)", edge, cal.source
            )
        return cal


@dataclass
class NoveltyResult:
    """The open-world reading of a measurement.

    Attributes
    ----------
    groups : tuple of str
        ``GROUPS[edge]``, the order of the arrays.
    group_probabilities : np.ndarray
        (G,) P(the molecule has group g): both libraries combined (the model library's alone
        without a FEFF library).
    top_group : str
        The most probable group.
    top_probability : float
        Its probability.
    in_library : float
        P(the sample is one of the candidates); NaN without candidates.
    model_group_probabilities, feff_group_probabilities : np.ndarray or None
        (G,) each library's own (None without the FEFF library).
    candidate_group_probabilities : np.ndarray or None
        (G,) the same from the posterior over the candidates (None without candidates or their
        groups).
    best_reference : int
        Column of the best-fitting model-library molecule.
    best_candidate : int or None
        Column of the best-fitting candidate.
    features : dict
        ``best`` and ``mean`` (see the module's docstring), the effective temperature and the
        points.
    """

    groups: tuple[str, ...]
    group_probabilities: np.ndarray
    top_group: str
    top_probability: float
    in_library: float
    model_group_probabilities: np.ndarray
    feff_group_probabilities: np.ndarray | None
    candidate_group_probabilities: np.ndarray | None
    best_reference: int
    best_candidate: int | None
    features: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        """Group name -> probability, the top group and ``in_library`` (JSON-able but NaN)."""
        return {
            "group_probabilities": dict(
                zip(self.groups, map(float, self.group_probabilities), strict=True)
            ),
            "top_group": self.top_group,
            "top_probability": self.top_probability,
            "in_library": self.in_library,
        }


def _logsumexp(x: np.ndarray, axis: int | None = None) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def column_evidence(
    table: np.ndarray, log_prior: np.ndarray, n_points: int, temperature: float, exponent: float
) -> np.ndarray:
    """(C,) log evidence of every column: the offset marginalised at the effective temperature.

    Parameters
    ----------
    table : np.ndarray
        (K, C) :meth:`Comparator.log_likelihood_table` (float32 tables are computed in float32).
    log_prior : np.ndarray
        (K,) :attr:`Comparator.log_prior`.
    n_points : int
        Points measured (the temperature grows with them).
    temperature, exponent : float
        T0 and gamma.
    """
    t = effective_temperature(temperature, exponent, n_points)
    tab = np.asarray(table)
    if tab.dtype != np.float32:
        tab = tab.astype(float)
    lp = np.asarray(log_prior).astype(tab.dtype)[:, None]
    return _logsumexp(tab * tab.dtype.type(1.0 / t) + lp, axis=0).astype(float)


def _posterior(evidence: np.ndarray, index: np.ndarray) -> np.ndarray:
    e = evidence[index]
    p = np.exp(e - e.max())
    return p / p.sum()


def group_probabilities(
    evidence: np.ndarray,
    groups: np.ndarray,
    reference: np.ndarray,
    floor: float = 0.0,
) -> np.ndarray:
    """(G,) P(the molecule has group g) from the posterior over the ``reference`` columns.

    Parameters
    ----------
    evidence : np.ndarray
        (C,) :func:`column_evidence`.
    groups : np.ndarray
        (C, G) booleans: column c's molecule has group g.
    reference : np.ndarray
        Column indices of the reference molecules.
    floor : float
        ``eps``: the result is ``(1 - eps) P + eps pi`` with ``pi`` the groups' shares of the
        reference (a molecule unlike any of the reference keeps some probability of each group).
    """
    reference = np.asarray(reference, dtype=np.int64)
    g = np.asarray(groups, dtype=float)[reference]
    p = _posterior(np.asarray(evidence, dtype=float), reference) @ g
    return (1.0 - floor) * p + floor * g.mean(axis=0)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), 1e-6, 1.0 - 1e-6)
    return np.log(q) - np.log1p(-q)


def combine_group_probabilities(
    model: np.ndarray, feff: np.ndarray | None, combine: Sequence[float]
) -> np.ndarray:
    """``sigma(a + b logit((model + feff) / 2))``; ``model`` itself without ``feff``."""
    if feff is None:
        return np.asarray(model, dtype=float)
    z = combine[0] + combine[1] * _logit(0.5 * (np.asarray(model) + np.asarray(feff)))
    return 1.0 / (1.0 + np.exp(-z))


def group_set_probabilities(
    evidence: np.ndarray, groups: np.ndarray, reference: np.ndarray, edge: str
) -> dict[frozenset[str], float]:
    """The posterior over whole group sets (sums to 1), most probable first."""
    reference = np.asarray(reference, dtype=np.int64)
    p = _posterior(np.asarray(evidence, dtype=float), reference)
    names = GROUPS[edge]
    out: dict[frozenset[str], float] = {}
    for pr, row in zip(p, np.asarray(groups, dtype=bool)[reference], strict=True):
        key = frozenset(names[k] for k in np.flatnonzero(row))
        out[key] = out.get(key, 0.0) + float(pr)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def in_library_features(
    evidence: np.ndarray, candidates: np.ndarray, reference: np.ndarray
) -> np.ndarray:
    """``(best, mean)``: the best candidate's log evidence over the best reference molecule's,
    and the log Bayes factor (mean likelihood of the candidates over that of the reference)."""
    ev = np.asarray(evidence, dtype=float)
    c = ev[np.asarray(candidates, dtype=np.int64)]
    r = ev[np.asarray(reference, dtype=np.int64)]
    best = float(c.max() - r.max())
    mean = float((_logsumexp(c) - math.log(c.size)) - (_logsumexp(r) - math.log(r.size)))
    return np.array([best, mean])


def in_library_probability(features: np.ndarray, coef: Sequence[float]) -> float:
    """sigma(w0 + w . features)."""
    z = float(coef[0] + np.dot(coef[1:], features))
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


def assess(
    comparator: Comparator,
    groups: np.ndarray,
    candidates: np.ndarray | Sequence[int] | None,
    calibration: NoveltyCalibration,
    reference: np.ndarray | Sequence[int] | None = None,
    candidate_groups_known: bool = True,
    feff_comparator: Comparator | None = None,
    feff_groups: np.ndarray | None = None,
) -> NoveltyResult:
    """Group probabilities and ``in_library`` of the comparators' points so far.

    Parameters
    ----------
    comparator : Comparator
        Over the union of the model library and the candidates (any order), with points added;
        read only through :meth:`~Comparator.log_likelihood_table`,
        :attr:`~Comparator.log_prior` and :attr:`~Comparator.n_points`.
    groups : np.ndarray
        (C, G) booleans over ``GROUPS[calibration.edge]`` for every column (a candidate's row may
        be all False when its groups are unknown: pass ``candidate_groups_known=False``).
    candidates : array of int or None
        The candidates' columns; None or empty when there are none (then ``in_library`` is NaN).
    calibration : NoveltyCalibration
    reference : array of int, optional
        The model library's columns; every column not a candidate when None.
    candidate_groups_known : bool
        Whether ``groups`` holds the candidates' groups.
    feff_comparator, feff_groups : optional
        A comparator over the FEFF library with the same points, and its (F, G) groups; the
        model library's probabilities alone when None.

    Returns
    -------
    NoveltyResult
    """
    c = comparator.n_candidates
    cand = np.asarray([] if candidates is None else candidates, dtype=np.int64)
    if reference is None:
        mask = np.ones(c, dtype=bool)
        mask[cand] = False
        ref = np.flatnonzero(mask)
    else:
        ref = np.asarray(reference, dtype=np.int64)
    if ref.size == 0:
        raise ValueError("no reference columns")
    groups = np.asarray(groups, dtype=bool)
    names = GROUPS[calibration.edge]
    if groups.shape != (c, len(names)):
        raise ValueError(f"groups must be ({c}, {len(names)}), got {groups.shape}")
    cal = calibration
    n = comparator.n_points
    table = comparator.log_likelihood_table()
    ev = column_evidence(table, comparator.log_prior, n, cal.temperature, cal.exponent)
    p_model = group_probabilities(ev, groups, ref, cal.floor)
    p_feff = None
    if feff_comparator is not None:
        if feff_groups is None:
            raise ValueError("feff_groups are needed with a feff_comparator")
        fev = column_evidence(
            feff_comparator.log_likelihood_table(),
            feff_comparator.log_prior,
            feff_comparator.n_points,
            cal.feff_temperature,
            cal.feff_exponent,
        )
        p_feff = group_probabilities(
            fev, feff_groups, np.arange(feff_comparator.n_candidates), cal.feff_floor
        )
    p = combine_group_probabilities(p_model, p_feff, cal.combine)
    top = int(np.argmax(p))
    feats = {
        "effective_temperature": effective_temperature(cal.temperature, cal.exponent, n),
        "n_points": float(n),
    }
    if cand.size:
        ev_in = column_evidence(table, comparator.log_prior, n, cal.in_temperature, cal.exponent)
        f = in_library_features(ev_in, cand, ref)
        feats.update(best=float(f[0]), mean=float(f[1]))
        p_in = in_library_probability(f, cal.in_coef)
        best_cand: int | None = int(cand[np.argmax(ev_in[cand])])
        p_cand = group_probabilities(ev, groups, cand) if candidate_groups_known else None
    else:
        p_in, best_cand, p_cand = math.nan, None, None
    return NoveltyResult(
        groups=tuple(names),
        group_probabilities=p,
        top_group=names[top],
        top_probability=float(p[top]),
        in_library=p_in,
        model_group_probabilities=p_model,
        feff_group_probabilities=p_feff,
        candidate_group_probabilities=p_cand,
        best_reference=int(ref[np.argmax(ev[ref])]),
        best_candidate=best_cand,
        features=feats,
    )


class OpenWorld:
    """The open-world analysis of one measurement: a comparator over model library +
    candidates, and one over the FEFF library.

    Parameters
    ----------
    library : GroupLibrary
        The model library (:func:`~xas_bluesky.science.groups.shipped_library`): the model's
        predictions of molecules none of which is a candidate.
    candidate_mean, candidate_std : np.ndarray, optional
        (C, E) the candidates' predictions on ``library.energy`` (as the live comparator has
        them); None for none.
    candidate_names : sequence of str
    candidate_groups : np.ndarray, optional
        (C, G) booleans (:func:`~xas_bluesky.science.groups.group_matrix` of
        :func:`~xas_bluesky.science.groups.groups_of`); unknown when None.
    feff_library : GroupLibrary, optional
        :func:`~xas_bluesky.science.groups.shipped_feff_library`; the model library's group
        probabilities alone when None.
    calibration : NoveltyCalibration, optional
        :meth:`NoveltyCalibration.shipped` of the library's edge when None.
    **comparator_kwargs
        Keywords of both :class:`Comparator` s (e.g. :func:`calibration_for` of the model, the
        offset prior): use the live comparator's.

    Notes
    -----
    The points go to these comparators as to the live one (:meth:`add_points`); a
    :meth:`result` costs a :meth:`Comparator.result` and a log-likelihood table of each (about
    1 s for 10,000 columns after a 491-point scan on the development machine).
    """

    def __init__(
        self,
        library: Any,
        candidate_mean: np.ndarray | None = None,
        candidate_std: np.ndarray | None = None,
        candidate_names: Sequence[str] = (),
        candidate_groups: np.ndarray | None = None,
        feff_library: Any = None,
        calibration: NoveltyCalibration | None = None,
        **comparator_kwargs: Any,
    ) -> None:
        self.library = library
        self.calibration = calibration or NoveltyCalibration.shipped(library.edge)
        n_lib = len(library.names)
        ng = len(GROUPS[library.edge])
        mean = np.asarray(library.mean)
        std = None if library.std is None else np.asarray(library.std)
        groups = np.asarray(library.groups, dtype=bool)
        names = list(library.names)
        n_cand = 0 if candidate_mean is None else int(np.asarray(candidate_mean).shape[0])
        if n_cand:
            cm = np.asarray(candidate_mean)
            if len(candidate_names) != n_cand:
                raise ValueError(f"{len(candidate_names)} names for {n_cand} candidates")
            if std is not None or candidate_std is not None:
                std = np.concatenate(
                    [
                        np.zeros_like(mean) if std is None else std,
                        np.zeros_like(cm) if candidate_std is None else np.asarray(candidate_std),
                    ]
                )
            mean = np.concatenate([mean, cm])
            names += [str(x) for x in candidate_names]
            cg = (
                np.zeros((n_cand, ng), dtype=bool)
                if candidate_groups is None
                else np.asarray(candidate_groups, dtype=bool)
            )
            groups = np.concatenate([groups, cg])
        self.candidate_groups_known = candidate_groups is not None
        self.groups = groups
        self.candidates = n_lib + np.arange(n_cand)
        self.reference = np.arange(n_lib)
        self.comparator = Comparator(library.energy, mean, std, names, **comparator_kwargs)
        self.feff_library = feff_library
        self.feff_comparator = (
            None
            if feff_library is None
            else Comparator(
                feff_library.energy,
                feff_library.mean,
                feff_library.std,
                feff_library.names,
                **comparator_kwargs,
            )
        )

    def _comparators(self) -> list[Comparator]:
        return [c for c in (self.comparator, self.feff_comparator) if c is not None]

    def reset(self) -> None:
        """Forget every point (a new measurement)."""
        for c in self._comparators():
            c.reset()

    def add_points(self, energy: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> None:
        """Raw measured points, as :meth:`Comparator.add_points`."""
        for c in self._comparators():
            c.add_points(energy, mu, sigma)

    def result(self) -> NoveltyResult:
        """Group probabilities and ``in_library`` for the points so far (:func:`assess`)."""
        for c in self._comparators():
            c.result()  # moves each comparator's reference scale and offset
        return assess(
            self.comparator,
            self.groups,
            self.candidates,
            self.calibration,
            reference=self.reference,
            candidate_groups_known=self.candidate_groups_known,
            feff_comparator=self.feff_comparator,
            feff_groups=None if self.feff_library is None else self.feff_library.groups,
        )


# ---------------------------------------------------------------------------------------------
# offline: fitting on recorded validation trials


@dataclass
class NoveltyTrial:
    """One recorded measurement for the fits.

    Attributes
    ----------
    table : np.ndarray
        (K, C') the untempered log-likelihood table, restricted to the columns the trial needs.
    n_points : int
    truth_groups : np.ndarray
        (G,) booleans: the measured molecule's groups.
    groups : np.ndarray
        (C', G) the columns' groups.
    reference : np.ndarray
        Reference columns (of the restricted table).
    candidates : np.ndarray
        Candidate columns.
    in_library : bool or None
        Whether the truth is among ``candidates`` (None: a groups-only trial).
    truth_column : int or None
        The truth's candidate column when it is among them.
    """

    table: np.ndarray
    n_points: int
    truth_groups: np.ndarray
    groups: np.ndarray
    reference: np.ndarray
    candidates: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    in_library: bool | None = None
    truth_column: int | None = None


def top_group_reliability(
    probabilities: Sequence[np.ndarray], truth: Sequence[np.ndarray], n_bins: int = 10
) -> dict[str, Any]:
    """Top-group accuracy and calibration.

    Parameters
    ----------
    probabilities : sequence of (G,) arrays
    truth : sequence of (G,) booleans
    n_bins : int

    Returns
    -------
    dict
        ``top1`` (the top group is one the molecule has), ``ece`` (count-weighted
        ``abs(accuracy - confidence)`` over ``n_bins`` equal bins of the top probability),
        ``mean_confidence``, ``brier`` (mean over groups and trials of (P - has)^2), ``nll``
        (mean Bernoulli log loss over groups), and the bins.
    """
    p = np.asarray(probabilities, dtype=float)
    t = np.asarray(truth, dtype=bool)
    top = p.argmax(axis=1)
    conf = p[np.arange(len(p)), top]
    hit = t[np.arange(len(p)), top]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges) - 1, 0, n_bins - 1)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        m = which == b
        if m.any():
            bins.append((float(conf[m].mean()), float(hit[m].mean()), int(m.sum())))
            ece += m.sum() * abs(hit[m].mean() - conf[m].mean())
    pc = np.clip(p, 1e-12, 1 - 1e-12)
    return {
        "top1": float(hit.mean()),
        "ece": float(ece / max(len(p), 1)),
        "mean_confidence": float(conf.mean()),
        "brier": float(np.mean((p - t) ** 2)),
        "nll": float(-np.mean(np.where(t, np.log(pc), np.log1p(-pc)))),
        "bins": bins,
    }


def _trial_group_probabilities(
    trials: Sequence[NoveltyTrial], log_prior: np.ndarray, t0: float, gamma: float, eps: float
) -> list[np.ndarray]:
    return [
        group_probabilities(
            column_evidence(tr.table, log_prior, tr.n_points, t0, gamma),
            tr.groups,
            tr.reference,
            eps,
        )
        for tr in trials
    ]


def _search_log(f, lo: float, hi: float, n_coarse: int = 9, n_fine: int = 7):
    """Minimise ``f`` over [lo, hi] on a log scale: a coarse grid, then a fine one around its
    best point.  Returns the best x and every (x, f(x)) evaluated."""
    seen: dict[float, float] = {}

    def ev(x: float) -> float:
        if x not in seen:
            seen[x] = f(x)
        return seen[x]

    coarse = np.geomspace(lo, hi, n_coarse)
    k = int(np.argmin([ev(float(x)) for x in coarse]))
    a, b = coarse[max(k - 1, 0)], coarse[min(k + 1, n_coarse - 1)]
    for x in np.geomspace(a, b, n_fine):
        ev(float(x))
    best = min(seen, key=seen.__getitem__)
    return best, sorted(seen.items())


def fit_groups(
    trials: Sequence[NoveltyTrial],
    log_prior: np.ndarray,
    temperature_range: tuple[float, float] = (0.25, 1000.0),
    exponents: Sequence[float] = (1.0,),
    floors: Sequence[float] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2),
) -> tuple[float, float, float, dict[str, Any]]:
    """T0, gamma and eps minimising the mean Bernoulli log loss of the groups over ``trials``.

    T0 is searched on a log scale within ``temperature_range`` (a coarse grid, then a fine one),
    for every exponent gamma; eps over ``floors``.

    Returns
    -------
    t0, gamma, eps : float
    report : dict
        :func:`top_group_reliability` at the optimum and the loss of every (T0, gamma, eps)
        tried (``grid``).
    """
    truths = [tr.truth_groups for tr in trials]
    shares = [np.asarray(tr.groups, float)[tr.reference].mean(0) for tr in trials]
    grid: list[tuple[float, float, float, float]] = []

    def loss(t0: float, gamma: float) -> float:
        # the evidence once per (t0, gamma); the floor is a cheap mix afterwards
        raw = _trial_group_probabilities(trials, log_prior, t0, gamma, 0.0)
        out = math.inf
        for eps in floors:
            probs = [(1 - eps) * p + eps * sh for p, sh in zip(raw, shares, strict=True)]
            nll = top_group_reliability(probs, truths)["nll"]
            grid.append((t0, gamma, float(eps), nll))
            out = min(out, nll)
        return out

    for gamma in exponents:
        _search_log(lambda t, g=float(gamma): loss(t, g), *temperature_range)
    t0, gamma, eps, _ = min(grid, key=lambda row: row[3])
    probs = _trial_group_probabilities(trials, log_prior, t0, gamma, eps)
    report = top_group_reliability(probs, truths)
    report["grid"] = grid
    return t0, gamma, eps, report


def _logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 100) -> np.ndarray:
    """Weights (w0, w...) of a logistic regression by Newton's method, a small ridge."""
    xa = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(xa.shape[1])
    for _ in range(iters):
        z = np.clip(xa @ w, -30, 30)
        p = 1.0 / (1.0 + np.exp(-z))
        g = xa.T @ (p - y) + l2 * np.r_[0.0, w[1:]]
        h = (xa * (p * (1 - p))[:, None]).T @ xa + l2 * np.diag(np.r_[0.0, np.ones(len(w) - 1)])
        step = np.linalg.solve(h + 1e-12 * np.eye(len(w)), g)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


def fit_combination(
    model: Sequence[np.ndarray], feff: Sequence[np.ndarray], truth: Sequence[np.ndarray]
) -> tuple[float, float]:
    """``(a, b)`` of :func:`combine_group_probabilities`: a logistic regression of "has g" on
    the logit of the two libraries' mean probability, over every trial and group."""
    x = _logit(0.5 * (np.asarray(model) + np.asarray(feff))).ravel()[:, None]
    w = _logistic_fit(x, np.asarray(truth, dtype=float).ravel())
    return float(w[0]), float(w[1])


def fit_in_library(
    trials: Sequence[NoveltyTrial],
    log_prior: np.ndarray,
    exponent: float,
    temperature: float | None = None,
    features: Sequence[int] = (0, 1),
    temperature_range: tuple[float, float] = (0.25, 1000.0),
) -> tuple[float, tuple[float, float, float], dict[str, Any]]:
    """The logistic of ``in_library`` on the trials with ``in_library`` set.

    Parameters
    ----------
    trials : sequence of NoveltyTrial
    log_prior : np.ndarray
    exponent : float
        gamma of the evidence (that of the groups).
    temperature : float, optional
        T0 of the evidence; searched (lowest log loss) within ``temperature_range`` when None.
    features : sequence of int
        Which of ``(best, mean)`` enter (the others get weight 0).

    Returns
    -------
    t0 : float
    coef : (w0, w_best, w_mean)
    report : dict
        Fraction of in-trials with P >= 0.5 (``in_accepted``), of out-trials with P < 0.5
        (``out_rejected``), the log loss (``nll``).
    """
    use = [tr for tr in trials if tr.in_library is not None and tr.candidates.size]
    y = np.array([float(bool(tr.in_library)) for tr in use])
    cols = list(features)

    def fit(t0: float):
        x = np.array(
            [
                in_library_features(
                    column_evidence(tr.table, log_prior, tr.n_points, t0, exponent),
                    tr.candidates,
                    tr.reference,
                )
                for tr in use
            ]
        )
        w = _logistic_fit(x[:, cols], y)
        coef = [float(w[0]), 0.0, 0.0]
        for k, col in enumerate(cols):
            coef[1 + col] = float(w[1 + k])
        p = np.array([in_library_probability(f, coef) for f in x])
        pc = np.clip(p, 1e-12, 1 - 1e-12)
        report = {
            "n_in": int(y.sum()),
            "n_out": int((1 - y).sum()),
            "in_accepted": float(np.mean(p[y == 1] >= 0.5)) if y.sum() else math.nan,
            "out_rejected": float(np.mean(p[y == 0] < 0.5)) if (1 - y).sum() else math.nan,
            "nll": float(-np.mean(y * np.log(pc) + (1 - y) * np.log1p(-pc))),
        }
        return (coef[0], coef[1], coef[2]), report

    if temperature is None:
        temperature, _ = _search_log(lambda t: fit(t)[1]["nll"], *temperature_range, 7, 5)
    coef, report = fit(float(temperature))
    return float(temperature), coef, report
