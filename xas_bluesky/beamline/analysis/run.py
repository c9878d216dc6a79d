"""What the live analysis knows of one followed run: :class:`RunState`.

The engine (:mod:`.engine`) writes it; sinks (:mod:`.sinks`) read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from xas_bluesky.beamline.catalog import final_ranking
from xas_bluesky.contracts import TOP_K, MatchSummary
from xas_bluesky.science.candidates import CandidateSet
from xas_bluesky.science.compare import MatchResult

__all__ = ["RunState"]


@dataclass
class RunState:
    """What the engine knows of one followed run (sinks read it; only the engine writes it)."""

    start: dict
    element: str
    mode: str
    fields: dict[str, str]
    energy_offset: float
    descriptors: set[str] = field(default_factory=set)
    candidates: CandidateSet | None = None
    comparator: Any = None
    #: (energy, mu, sigma) not scored yet
    pending: list[tuple[float, float, float]] = field(default_factory=list)
    n_events: int = 0  # primary events handled (bad points included)
    n_scored: int = 0  # ... of which the comparator has seen the good ones
    n_bad: int = 0
    last_energy: float = math.nan
    last_event_time: float | None = None
    result: MatchResult | None = None
    problems: list[str] = field(default_factory=list)
    fatal: str | None = None
    energies: list[float] = field(default_factory=list)
    mus: list[float] = field(default_factory=list)
    #: uid of the linked analysis run, once a sink has opened one
    analysis_uid: str | None = None
    stopped: bool = False

    @property
    def uid(self) -> str:
        return self.start["uid"]

    @property
    def sample_name(self) -> str | None:
        return self.start.get("sample_name")

    def summary(self, status: str, message: str, top_k: int = TOP_K) -> MatchSummary:
        """The run's state as a :class:`~xas_bluesky.contracts.MatchSummary`.

        After a failure it carries no scores rather than stale ones.
        """
        s = MatchSummary(
            run_uid=self.uid,
            n_events=self.n_scored,
            status=status,
            message=message,
            last_energy=self.last_energy,
            n_candidates=len(self.candidates) if self.candidates is not None else 0,
            event_time=self.last_event_time,
        )
        r = None if self.fatal else self.result
        if r is not None:
            top = r.top_indices(top_k)
            s.n_points = int(r.n_points)
            s.best_name = r.best_name
            s.best_smiles = self.candidates.smiles[r.best_index] if self.candidates else ""
            s.best_probability = float(r.best_probability)
            s.entropy = float(r.entropy)
            s.next_energy = math.nan if r.next_energy is None else float(r.next_energy)
            s.offset_ev = float(r.offset_ev)
            s.top_names = [r.names[i] for i in top]
            s.top_probabilities = [float(r.probabilities[i]) for i in top]
        return s

    def ranking(self) -> list[dict]:
        """The final ranking of every candidate, best first (empty before the first point)."""
        return [] if self.result is None else final_ranking(self.result, self.candidates)
