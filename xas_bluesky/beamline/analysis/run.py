"""What the live analysis knows of one followed run: :class:`RunState`.

The engine (:mod:`.engine`) writes it; sinks (:mod:`.sinks`) read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from xas_bluesky.beamline.analysis.readings import RunReadings
from xas_bluesky.beamline.catalog import final_ranking
from xas_bluesky.contracts import NO_MATCH_BELOW, TOP_K, MatchSummary
from xas_bluesky.science.candidates import CandidateSet
from xas_bluesky.science.compare import MatchResult

__all__ = ["RunState", "CappedList", "SeqTracker"]

#: messages a run keeps (the newest; older ones are counted in ``dropped``)
MAX_PROBLEMS = 100


class CappedList(list):
    """A list that keeps its newest ``cap`` items on :meth:`append`; ``dropped`` counts the rest.

    Messages of a long run (refused points, errors) stay bounded.  Only ``append`` caps.
    """

    def __init__(self, cap: int = MAX_PROBLEMS):
        super().__init__()
        self.cap = max(1, int(cap))
        self.dropped = 0

    def append(self, item) -> None:
        super().append(item)
        if len(self) > self.cap:
            extra = len(self) - self.cap
            del self[:extra]
            self.dropped += extra


class SeqTracker:
    """The ``seq_num`` s seen of one event stream: repeats and gaps in bounded memory.

    The RunEngine numbers events per stream from 1, and a resumed plan re-sends a rewound
    point with the ``seq_num`` it had.  Every number up to ``floor`` is settled (seen, or
    given up as missing once ``window`` newer ones have arrived); seen numbers above it are kept
    in a set; numbers given up are kept (up to ``window``) so that a late one is still scored.
    """

    def __init__(self, window: int = 4096):
        self.window = max(1, int(window))
        self.floor = 0
        self.above: set[int] = set()
        self.lost: set[int] = set()
        self.max_seen = 0
        self.n_seen = 0

    def add(self, seq: int) -> bool:
        """Record ``seq``; False when it was seen before (a repeat)."""
        seq = int(seq)
        if seq <= self.floor:
            if seq not in self.lost:
                return False
            self.lost.discard(seq)
        elif seq in self.above:
            return False
        else:
            self.above.add(seq)
        self.n_seen += 1
        self.max_seen = max(self.max_seen, seq)
        while self.floor + 1 in self.above:
            self.floor += 1
            self.above.discard(self.floor)
        while self.max_seen - self.floor > self.window:  # give up on the oldest missing one
            self.floor += 1
            if self.floor in self.above:
                self.above.discard(self.floor)
            elif len(self.lost) < self.window:
                self.lost.add(self.floor)
        return True

    @property
    def missing(self) -> int:
        """Numbers up to the highest one seen that never arrived."""
        return self.max_seen - self.n_seen


def _leading(nov: Any, k: int = 3) -> str:
    """The leading groups of an open-world result, e.g. ``ether 0.93, alcohol 0.41``."""
    pairs = list(zip(nov.groups, nov.probabilities, strict=False))[:k]
    return ", ".join(f"{g} {p:.2f}" for g, p in pairs) or "-"


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
    n_events: int = 0  # distinct primary events handled (flagged points included)
    n_scored: int = 0  # ... of which the comparator has seen the good ones
    n_bad: int = 0  # flagged: never scored because of the reading
    n_duplicates: int = 0  # events that repeated a seq_num (not scored again)
    #: seq_nums of flagged points: a repeat of one is a new chance, scored if its reading is good
    flagged_seqs: set[int] = field(default_factory=set)
    #: seq_nums of the followed stream (one tracker: the RunEngine numbers per stream)
    seqs: SeqTracker = field(default_factory=SeqTracker)
    #: events the stop document counts beyond the highest seq_num received
    missing_tail: int = 0
    #: the per-point checks of this run (set by the engine)
    readings: RunReadings | None = None
    last_energy: float = math.nan
    last_event_time: float | None = None
    result: MatchResult | None = None
    #: the newest messages (flagged points, gaps, skipped candidates); ``problems.dropped`` more
    problems: CappedList = field(default_factory=CappedList)
    fatal: str | None = None
    energies: list[float] = field(default_factory=list)
    mus: list[float] = field(default_factory=list)
    #: sigma of each scored point (parallel to ``energies`` / ``mus``)
    sigmas: list[float] = field(default_factory=list)
    #: the open-world analysis follows this run (groups, ``in_library``)
    open_world: bool = False
    #: no candidates at all (open world: groups only, no comparator)
    open_world_only: bool = False
    #: the newest open-world result (:class:`~.open_world.LiveNovelty`) and the version of it
    #: the last scored update (an event of the analysis run) carried
    novelty: Any = None
    novelty_published: int = 0
    #: uid of the linked analysis run, once a sink has opened one
    analysis_uid: str | None = None
    stopped: bool = False
    #: the joint posterior with this sample's other edges (:class:`~.samples.SampleJoint`),
    #: None while no other edge of the sample is scored
    joint: Any = None

    @property
    def uid(self) -> str:
        return self.start["uid"]

    @property
    def sample_name(self) -> str | None:
        return self.start.get("sample_name")

    @property
    def gaps(self) -> int:
        """Events of the followed stream never received."""
        return self.seqs.missing + self.missing_tail

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
            n_flagged=self.n_bad,
            n_duplicates=self.n_duplicates,
            gaps=self.gaps,
            event_time=self.last_event_time,
        )
        nov = None if self.fatal else self.novelty
        if nov is not None:
            s.groups = list(nov.groups)
            s.group_probabilities = list(nov.probabilities)
            s.in_library = float(nov.in_library)
            s.groups_n_points = int(nov.n_points)
            if (
                status in ("Running", "Warning", "Done")
                and math.isfinite(s.in_library)
                and s.in_library < NO_MATCH_BELOW
            ):
                s.status = "NoMatch"
                best = self.result.best_name if self.result is not None else "-"
                s.message = (
                    f"no match: in_library {s.in_library:.2f} < {NO_MATCH_BELOW:g}, the sample "
                    f"is probably none of the {s.n_candidates} candidates (best {best}); "
                    f"groups: {_leading(nov)}" + (f"; {message}" if message else "")
                )
            elif not message and nov.note:
                s.message = f"groups: {_leading(nov)}; {nov.note}"
        elif self.open_world and not message and status == "Running":
            s.message = "groups not available yet (the first open-world result is on its way)"
        r = None if self.fatal else self.result
        if r is not None:
            top = r.top_indices(top_k)
            s.n_points = int(r.n_points)
            s.best_name = r.best_name
            s.n_glitches = int(r.n_rejected)
            s.best_smiles = self.candidates.smiles[r.best_index] if self.candidates else ""
            s.best_probability = float(r.best_probability)
            s.entropy = float(r.entropy)
            s.next_energy = math.nan if r.next_energy is None else float(r.next_energy)
            s.next_gain = float(r.next_gain)
            s.offset_ev = float(r.offset_ev)
            s.top_names = [r.names[i] for i in top]
            s.top_probabilities = [float(r.probabilities[i]) for i in top]
        j = None if self.fatal else self.joint
        if j is not None:
            order = j.order()
            jb = int(order[0])
            s.joint_edges = j.edges
            s.joint_best_name = j.names[jb]
            s.joint_best_smiles = j.smiles[jb]
            s.joint_best_probability = float(j.joint.probabilities[jb])
            s.joint_top_names = [j.names[i] for i in order[:top_k]]
            s.joint_top_probabilities = [float(j.joint.probabilities[i]) for i in order[:top_k]]
            s.joint_n_candidates = len(j.names)
        return s

    def ranking(self) -> list[dict]:
        """The final ranking of every candidate, best first (empty before the first point)."""
        return [] if self.result is None else final_ranking(self.result, self.candidates)
