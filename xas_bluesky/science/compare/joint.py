"""Both K edges of one molecule: one posterior over the candidates from two comparators.

A molecule with O and N can be measured at both edges, and each edge constrains the other.
Each edge keeps its own comparator (its own mono offset, marginalised separately; its own
temperature and model error); the edges' spectra are independent measurements of the same
molecule, so the joint log probability of a candidate is the sum of the edges' log probabilities
before the outlier term (with a uniform prior over the shared candidates, the normalised sum is
the posterior given both).  The outlier term -- "the model is wrong about this molecule" -- is
applied once to the joint: the model can be wrong at either edge, so
``eps = 1 - prod(1 - eps_edge)``, the larger of the two cautions, never the smaller.

Candidates are matched across edges by name (use a structure key, e.g. the candidate sets'
``structure_key``, as the name when the edges' lists were built apart); a candidate missing at
one edge is left out of the joint ranking (it cannot be scored against both spectra).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from xas_bluesky.science.compare.comparator import MatchResult

__all__ = ["JointResult", "joint_result"]


@dataclass
class JointResult:
    """The joint ranking over the candidates common to every edge.

    Attributes
    ----------
    names : list of str
        Candidates scored at every edge, in the order of the first edge's list.
    probabilities : numpy.ndarray
        Joint probabilities (sum 1), the outlier term included.
    best_name : str
        The most probable candidate.
    best_probability : float
        Its probability.
    outlier_probability : float
        eps of the joint, ``1 - prod(1 - eps_edge)``.
    edges : tuple of str
        The edges combined.
    n_left_out : dict
        Per edge, its candidates not found at every other edge.
    """

    names: list[str]
    probabilities: np.ndarray
    best_name: str
    best_probability: float
    outlier_probability: float
    edges: tuple[str, ...]
    n_left_out: dict[str, int]

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` most probable candidates as (name, probability)."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.names[i], float(self.probabilities[i])) for i in order]


def joint_result(results: Mapping[str, MatchResult]) -> JointResult:
    """Combine the edges' results over their shared candidates.

    Parameters
    ----------
    results : mapping of str to MatchResult
        One result per edge (e.g. ``{"O": ..., "N": ...}``), each from its own comparator.

    Returns
    -------
    JointResult

    Raises
    ------
    ValueError
        With no result, with a result that has no fit yet (too few points: its probabilities are
        uniform, and it would add nothing), or when no candidate is shared by every edge.
    """
    if not results:
        raise ValueError("no results to combine")
    edges = tuple(results)
    common = set(results[edges[0]].names)
    for e in edges[1:]:
        common &= set(results[e].names)
    names = [n for n in results[edges[0]].names if n in common]
    if not names:
        raise ValueError(f"no candidate is shared by the edges {', '.join(edges)}")
    total = np.zeros(len(names))
    keep_one_minus_eps = 1.0
    for e in edges:
        r = results[e]
        if r.model_log_probabilities is None:
            raise ValueError(f"edge {e}: no fit yet ({r.n_points} points)")
        index = {n: i for i, n in enumerate(r.names)}
        total += np.asarray(r.model_log_probabilities, float)[[index[n] for n in names]]
        keep_one_minus_eps *= 1.0 - float(r.outlier_probability)
    prob = np.exp(total - total.max())
    prob /= prob.sum()
    eps = 1.0 - keep_one_minus_eps
    prob = (1.0 - eps) * prob + eps / prob.size
    best = int(np.argmax(prob))
    return JointResult(
        names=names,
        probabilities=prob,
        best_name=names[best],
        best_probability=float(prob[best]),
        outlier_probability=eps,
        edges=edges,
        n_left_out={e: len(results[e].names) - len(names) for e in edges},
    )
