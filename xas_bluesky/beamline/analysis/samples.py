"""The sample-level posterior: both K edges of one sample, combined across runs.

A molecule with O and N is measured in one run per edge.  The engine keeps, per sample, the
newest result of each edge (of a finished run, or of a run still open: a plan that measures
both edges point by point keeps both runs open); while a run of another edge of the same
sample is scored, its live result is combined with them by
:func:`~xas_bluesky.science.compare.joint.joint_result` (each edge its own offset and
calibration; log probabilities summed, the outlier term once).  A sample is the start
document's ``sample_uid`` (the plans' ``md``), or its ``sample_name`` when it has none.
Candidates are matched across edges by structure key (the candidate sets' ``keys``: the same
molecule under two names, or from two files, is one candidate), by name where a set has none.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np

from xas_bluesky.science.candidates import CandidateSet
from xas_bluesky.science.compare.comparator import MatchResult
from xas_bluesky.science.compare.joint import JointResult, joint_result

__all__ = ["EdgeResult", "SampleJoint", "SamplePosteriors", "sample_key"]


def sample_key(start: dict) -> str | None:
    """The sample a run measured: ``sample_uid``, else ``sample_name`` (None: unknown)."""
    for key in ("sample_uid", "sample_name"):
        value = start.get(key)
        if isinstance(value, str) and value:
            return f"{key}:{value}"
    return None


def _keys(result: MatchResult, cands: CandidateSet | None) -> list[str]:
    if cands is not None and len(cands.keys) == len(result.names):
        return list(cands.keys)
    return list(result.names)


@dataclass
class EdgeResult:
    """The final result of one edge's run of a sample."""

    run_uid: str
    edge: str
    result: MatchResult
    keys: list[str]


@dataclass
class SampleJoint:
    """The joint posterior of a sample over its edges, in the current run's candidates' names."""

    joint: JointResult
    names: list[str]
    smiles: list[str]
    run_uids: dict[str, str]

    @property
    def edges(self) -> str:
        return ",".join(sorted(self.joint.edges))

    def order(self) -> np.ndarray:
        """Candidates best first; ties broken by name, never by input order."""
        return np.lexsort((np.asarray(self.names, dtype=object), -self.joint.probabilities))

    def ranking(self) -> list[dict]:
        """Every shared candidate, best first: ``name``, ``smiles``, ``probability``."""
        p = self.joint.probabilities
        return [
            {"name": self.names[i], "smiles": self.smiles[i], "probability": float(p[i])}
            for i in self.order()
        ]


class SamplePosteriors:
    """Per sample, the newest result of each edge (the newest ``max_samples`` samples)."""

    def __init__(self, max_samples: int = 64):
        self.max_samples = int(max_samples)
        self._samples: OrderedDict[str, dict[str, EdgeResult]] = OrderedDict()

    def record(
        self, key: str | None, run_uid: str, edge: str, result: MatchResult | None, cands
    ) -> None:
        """Keep a run's result (final, or live while it is open) as its sample's ``edge``; a
        later result, of this run or another, replaces it."""
        if key is None or result is None or result.model_log_probabilities is None:
            return
        edges = self._samples.pop(key, {})
        edges[edge] = EdgeResult(run_uid, edge, result, _keys(result, cands))
        self._samples[key] = edges
        while len(self._samples) > self.max_samples:
            self._samples.popitem(last=False)

    def joint(
        self, key: str | None, run_uid: str, edge: str, result: MatchResult | None, cands
    ) -> SampleJoint | None:
        """The joint of a run's live ``result`` with its sample's other edges; None when there
        is no other edge, no fit yet, or no candidate shared by the edges."""
        if key is None or result is None or result.model_log_probabilities is None:
            return None
        others = {e: r for e, r in self._samples.get(key, {}).items() if e != edge}
        if not others:
            return None
        keys = _keys(result, cands)
        results = {edge: replace(result, names=keys, _name_rank=None)}
        for e, r in others.items():
            results[e] = replace(r.result, names=r.keys, _name_rank=None)
        try:
            joint = joint_result(results)
        except ValueError:  # no shared candidate
            return None
        index = {k: i for i, k in enumerate(keys)}
        rows = [index[k] for k in joint.names]
        smiles = list(cands.smiles) if cands is not None else [""] * len(keys)
        return SampleJoint(
            joint=joint,
            names=[result.names[i] for i in rows],
            smiles=[smiles[i] for i in rows],
            run_uids={edge: run_uid, **{e: r.run_uid for e, r in others.items()}},
        )
