"""The names every layer shares: spelled here once, imported everywhere else.

These names are a contract with users and their scripts (``docs/cli.rst``): the start-document
keys of an XAS run, the match summary and its fixed names on each surface (score PVs, the
analysis run, tiled's match record, the CLI's JSON), the measurement modes and the default PV
prefix.  Add to them; never rename one.

Nothing here imports the rest of the package: every layer may import this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

__all__ = [
    "DEFAULT_PREFIX",
    "MODES",
    "DEFAULT_MODE",
    "XASStart",
    "START_KEYS",
    "REQUIRED_FIELDS",
    "OPTIONAL_FIELDS",
    "STATES",
    "TOP_K",
    "MatchSummary",
    "PV_SUFFIXES",
    "PV_ATTRS",
    "ANALYSIS_KEYS",
    "TILED_KEYS",
    "RANKING_KEYS",
    "ranking",
    "is_xas_start",
    "GROUPS",
    "NO_CANDIDATES",
    "NO_MATCH_BELOW",
]

#: default prefix of the score PVs (``XAS:Match:BestProb-I``)
DEFAULT_PREFIX = "XAS:"

#: measurement modes a plan writes into ``xas_mode``: electron yield, partial fluorescence
#: yield, transmission (mu = signal / I0 for the yields, ln(I0 / It) in transmission)
MODES = ("TEY", "PFY", "TRANS")
#: the mode of a start document that names none (soft X-ray O/N K edges: electron yield)
DEFAULT_MODE = "TEY"


class XASStart(TypedDict, total=False):
    """The keys of a start document that make it an XAS run the live analysis follows.

    ``xas_element`` and ``xas_fields`` (with ``energy``, ``i0`` and ``signal``) are required;
    the rest have defaults.
    """

    #: absorbing element, ``"O"`` or ``"N"`` (K edge)
    xas_element: str
    #: the edge, ``"K"``
    xas_edge: str
    #: one of :data:`MODES`
    xas_mode: str
    #: data keys of the primary stream: ``{"energy": ..., "i0": ..., "signal": ...}`` and, where
    #: the run records them, the optional :data:`OPTIONAL_FIELDS` (``"ring_current"`` in mA,
    #: ``"i0_alarm"`` / ``"signal_alarm"``: the EPICS alarm severity of each channel's reading)
    xas_fields: dict[str, str]
    #: the scan's regions: ``[{"start", "stop", "step", "dwell"}, ...]``
    xas_regions: list[dict[str, float]]
    #: the edge onset on FEFF10's axis (eV)
    xas_e0: float
    #: the slot / sample measured
    sample_name: str | None
    #: the candidate set: a structure file, ``tiled:<spec>``, None for the shipped library, or
    #: :data:`NO_CANDIDATES` for none at all (open world: functional groups only)
    candidates: str | None
    #: mono calibration: true photon energy = readback + energy_offset (eV)
    energy_offset: float
    #: XDI 1.0 metadata by namespace, ``{"Element": {"symbol", "edge"}, "Mono": {"name"[,
    #: "d_spacing"]}, "Detector": {"I0", <mode>}, "Sample": {"name"}}``: nested, not dotted
    #: (tiled reads a dot as a path), written into ``xas-bluesky export``'s files
    xdi: dict[str, dict[str, str]]


#: every key of :class:`XASStart`, in order
START_KEYS: tuple[str, ...] = tuple(XASStart.__annotations__)

#: ``candidates`` of a start document that measures without candidates (open world: the live
#: analysis publishes functional groups only, no ranking)
NO_CANDIDATES = "none:"

#: keys of ``xas_fields`` every XAS run has
REQUIRED_FIELDS = ("energy", "i0", "signal")
#: keys of ``xas_fields`` a run may add: the data key of the ring current (mA) and of the EPICS
#: alarm severity (0 NO_ALARM, 1 MINOR, 2 MAJOR, 3 INVALID) of the I0 and signal readings
OPTIONAL_FIELDS = ("ring_current", "i0_alarm", "signal_alarm")


def is_xas_start(start: Mapping[str, Any]) -> bool:
    """Whether a start document describes an XAS run the live analysis can follow."""
    fields_ = start.get("xas_fields")
    return (
        start.get("xas_element") is not None
        and isinstance(fields_, dict)
        and all(fields_.get(k) for k in REQUIRED_FIELDS)
    )


#: states of ``Match:Status-Sts`` (an enum: append, never reorder)
STATES = ("Idle", "Predicting", "Running", "Done", "Warning", "Error", "NoMatch")
#: ``in_library`` below this sets the status ``NoMatch`` (the sample is probably none of the
#: candidates; the reason is on ``Match:Message-Name``)
NO_MATCH_BELOW = 0.5
#: candidates listed on ``Match:TopNames-Wfm`` / ``Match:TopScores-Wfm``
TOP_K = 10


@dataclass
class MatchSummary:
    """One state of the live analysis of a run: what every surface publishes.

    The score PVs, the analysis run's events, tiled's match record and the CLI's JSON each
    show these fields under their own fixed names (:data:`PV_ATTRS`, :data:`ANALYSIS_KEYS`,
    :data:`TILED_KEYS`).  A summary without a result (``best_name == ""``) only reports a
    status.
    """

    run_uid: str = ""
    #: primary events handled so far, flagged points included, repeated ones (a resumed plan's
    #: re-sent ``seq_num``) not (``Match:NPoints-I``: a plan waits for it to reach the count of
    #: its own events)
    n_events: int = 0
    #: points the comparator holds (the flagged ones not)
    n_points: int = 0
    status: str = "Idle"
    message: str = ""
    best_name: str = ""
    best_smiles: str = ""
    best_probability: float = math.nan
    #: entropy of the posterior over candidates (nats)
    entropy: float = math.nan
    #: most informative next energy (eV)
    next_energy: float = math.nan
    #: what a reading there is expected to tell about the molecule (nats, at the likelihood's
    #: current temperature): a plan measuring both edges of a sample compares the edges by it
    next_gain: float = math.nan
    #: fitted mono calibration offset (eV)
    offset_ev: float = math.nan
    #: energy of the last point scored (eV)
    last_energy: float = math.nan
    n_candidates: int = 0
    top_names: Sequence[str] = ()
    top_probabilities: Sequence[float] = ()
    #: points never scored because of their reading (alarm, over range, negative counts, I0 or
    #: ring current down, mu not finite; see ``docs/faults.rst``)
    n_flagged: int = 0
    #: events that repeated a ``seq_num`` already handled (counted once in ``n_events``;
    #: scored only when the first reading was flagged and this one is good)
    n_duplicates: int = 0
    #: ``seq_num`` s of the primary stream never received (missing events)
    gaps: int = 0
    #: points whose reading passed the checks but that no probable candidate's fit comes
    #: within 8 sigma of: set aside by the comparator as glitches (in ``n_points``, not scored;
    #: ``docs/faults.rst``)
    n_glitches: int = 0
    #: functional groups of the absorber (:data:`GROUPS` of the edge), most probable first, and
    #: their probabilities ("the molecule has it"; independent, they do not sum to 1); empty
    #: until the open-world analysis has a result (``docs/open_world.rst``)
    groups: Sequence[str] = ()
    group_probabilities: Sequence[float] = ()
    #: probability that the sample is among the candidates (NaN: not computed -- no candidates,
    #: or the model's reference library is not predicted yet)
    in_library: float = math.nan
    #: points the groups and ``in_library`` were computed from (they lag the scores a little)
    groups_n_points: int = 0
    #: both edges of one sample (``docs/real_samples.rst``): the edges combined, e.g. ``"N,O"``
    #: (empty: no other edge of this sample scored yet, and the joint fields are empty too), the
    #: best candidate of the joint posterior, its probability, the joint top candidates and the
    #: candidates scored at every edge
    joint_edges: str = ""
    joint_best_name: str = ""
    joint_best_smiles: str = ""
    joint_best_probability: float = math.nan
    joint_top_names: Sequence[str] = ()
    joint_top_probabilities: Sequence[float] = ()
    joint_n_candidates: int = 0
    #: ``time.time()`` of the newest event this summary includes (latency bookkeeping only)
    event_time: float | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The fields by name (JSON-able but for NaN)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: score IOC attribute -> PV suffix (after the prefix).  ``heartbeat`` and ``update`` belong to
#: the IOC itself, not to a summary.
PV_SUFFIXES = {
    "best_name": "Match:Best-Name",
    "best_prob": "Match:BestProb-I",
    "entropy": "Match:Entropy-I",
    "npoints": "Match:NPoints-I",
    "next_energy": "Match:NextEnergy-I",
    "run_uid": "Match:RunUID-I",
    "top_names": "Match:TopNames-Wfm",
    "top_scores": "Match:TopScores-Wfm",
    "status": "Match:Status-Sts",
    "heartbeat": "Match:Heartbeat-I",
    "offset": "Match:Offset-I",
    "best_smiles": "Match:BestSmiles-Name",
    "message": "Match:Message-Name",
    "last_energy": "Match:LastEnergy-I",
    "ncandidates": "Match:NCandidates-I",
    "update": "Match:Update-I",
    "groups": "Match:Groups-Wfm",
    "group_scores": "Match:GroupScores-Wfm",
    "in_library": "Match:InLibrary-I",
    "joint_edges": "Match:Joint:Edges-Name",
    "joint_best_name": "Match:Joint:Best-Name",
    "joint_best_smiles": "Match:Joint:BestSmiles-Name",
    "joint_best_prob": "Match:Joint:BestProb-I",
    "joint_top_names": "Match:Joint:TopNames-Wfm",
    "joint_top_scores": "Match:Joint:TopScores-Wfm",
    "joint_ncandidates": "Match:Joint:NCandidates-I",
    "next_gain": "Match:NextGain-I",
    "nflagged": "Match:NFlagged-I",
}

#: :class:`MatchSummary` field -> score IOC attribute (a key of :data:`PV_SUFFIXES`; also the
#: component names of the ophyd ``MatchScores`` device, so data keys read ``scores_best_prob``)
PV_ATTRS = {
    "run_uid": "run_uid",
    "n_events": "npoints",
    "status": "status",
    "message": "message",
    "best_name": "best_name",
    "best_smiles": "best_smiles",
    "best_probability": "best_prob",
    "entropy": "entropy",
    "next_energy": "next_energy",
    "offset_ev": "offset",
    "last_energy": "last_energy",
    "n_candidates": "ncandidates",
    "top_names": "top_names",
    "top_probabilities": "top_scores",
    "groups": "groups",
    "group_probabilities": "group_scores",
    "in_library": "in_library",
    "joint_edges": "joint_edges",
    "joint_best_name": "joint_best_name",
    "joint_best_smiles": "joint_best_smiles",
    "joint_best_probability": "joint_best_prob",
    "joint_top_names": "joint_top_names",
    "joint_top_probabilities": "joint_top_scores",
    "joint_n_candidates": "joint_ncandidates",
    "next_gain": "next_gain",
    "n_flagged": "nflagged",
}

#: :class:`MatchSummary` field -> data key of the analysis run's primary stream
ANALYSIS_KEYS = {
    "n_events": "n_events",
    "n_points": "n_points",
    "last_energy": "last_energy",
    "best_name": "best_name",
    "best_smiles": "best_smiles",
    "best_probability": "best_probability",
    "entropy": "entropy",
    "offset_ev": "offset",
    "next_energy": "next_energy",
    "top_names": "top_names",
    "top_probabilities": "top_probabilities",
    "n_flagged": "n_flagged",
    "n_duplicates": "n_duplicates",
    "gaps": "gaps",
    "n_glitches": "n_glitches",
    "status": "status",
    "message": "message",
    "groups": "groups",
    "group_probabilities": "group_probabilities",
    "in_library": "in_library",
    "groups_n_points": "groups_n_points",
    "joint_edges": "joint_edges",
    "joint_best_name": "joint_best_name",
    "joint_best_probability": "joint_best_probability",
    "next_gain": "next_gain",
}

#: :class:`MatchSummary` field -> metadata key of tiled's match record
TILED_KEYS = {
    "run_uid": "run_uid",
    "n_candidates": "n_candidates",
    "best_name": "best_name",
    "best_probability": "best_probability",
    "entropy": "entropy",
    "offset_ev": "offset_ev",
    "next_energy": "next_energy",
    "n_points": "n_points",
    "n_flagged": "n_flagged",
    "n_duplicates": "n_duplicates",
    "gaps": "gaps",
    "n_glitches": "n_glitches",
    "groups": "groups",
    "group_probabilities": "group_probabilities",
    "in_library": "in_library",
    "joint_edges": "joint_edges",
    "joint_best_name": "joint_best_name",
    "joint_best_probability": "joint_best_probability",
    "joint_n_candidates": "joint_n_candidates",
    "next_gain": "next_gain",
}

#: functional groups of the absorbing atom that the open-world analysis names, per K edge (the
#: SMARTS of each are :data:`xas_bluesky.science.groups.SITE_RULES`; add, never rename or reorder)
GROUPS: dict[str, tuple[str, ...]] = {
    "O": (
        "carbonyl",
        "carboxyl",
        "alcohol",
        "ether",
        "amide",
        "carbamate",
        "carbonate",
        "N-O",
        "aromatic-O",
    ),
    "N": ("amine", "amide", "nitrile", "aromatic-N", "pyrrole-N", "nitro"),
}

#: keys of one entry of a final ranking (tiled's match table, ``query --run``, the demo's JSON)
RANKING_KEYS = ("name", "smiles", "probability")


def ranking(
    names: Sequence[str], smiles: Sequence[str], probabilities: Sequence[float], order
) -> list[dict[str, Any]]:
    """A final ranking: one entry (:data:`RANKING_KEYS`) per candidate index in ``order``."""
    return [
        dict(zip(RANKING_KEYS, (names[i], smiles[i], float(probabilities[i])), strict=True))
        for i in order
    ]
